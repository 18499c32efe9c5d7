#!/usr/bin/env bash
# README row ICL+PMD on movingfashion: same as scripts/train.sh movingfashion icl_pmd (the environment it reads is described there).
exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" movingfashion icl_pmd "$@"
