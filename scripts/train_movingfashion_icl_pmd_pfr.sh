#!/usr/bin/env bash
# README row ICL+PMD+PFR on movingfashion: same as scripts/train.sh movingfashion icl_pmd_pfr (the environment it reads is described there).
exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" movingfashion icl_pmd_pfr "$@"
