#!/usr/bin/env bash
# README row ICL+PMD+PFR on lpr4m: same as scripts/eval.sh lpr4m icl_pmd_pfr DATA_ROOT CKPT_PATH [flags].
exec bash "$(dirname "${BASH_SOURCE[0]}")/eval.sh" lpr4m icl_pmd_pfr "$@"
