#!/usr/bin/env bash
# README row ICL+PMD on movingfashion: same as scripts/eval.sh movingfashion icl_pmd DATA_ROOT CKPT_PATH [flags].
exec bash "$(dirname "${BASH_SOURCE[0]}")/eval.sh" movingfashion icl_pmd "$@"
