#!/usr/bin/env bash
# README row ICL on movingfashion: same as scripts/eval.sh movingfashion icl DATA_ROOT CKPT_PATH [flags].
exec bash "$(dirname "${BASH_SOURCE[0]}")/eval.sh" movingfashion icl "$@"
