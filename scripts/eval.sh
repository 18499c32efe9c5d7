#!/usr/bin/env bash
# Evaluate a checkpoint of one README row on one dataset's test set, by embedding ranking
# (how the released numbers were measured).
# Usage: bash scripts/eval.sh DATASET ROW DATA_ROOT CKPT_PATH [flags...]
#   DATASET: lpr4m | movingfashion;  ROW: icl | icl_pmd | icl_pmd_pfr
# (scripts/eval_<dataset>_<row>.sh are shortcuts for the six combinations.)
# Env: N_GPU (default 2; the GPUs that exist are used, the CPU if none), OUTPUT_DIR (default
# outputs/eval_<dataset>_<row>), PYTHON (default: the project's .venv, see scripts/common.sh).
# Extra flags go to the evaluation script last, e.g. --precision bf16. To also re-rank the
# top-K of a PMD row with its decoder, run the evaluation script itself without --embedding_sim.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.sh"
[ $# -ge 4 ] || rice_fail "usage: bash scripts/eval.sh DATASET ROW DATA_ROOT CKPT_PATH [flags...]"
DATASET=$1; ROW=$2; DATA_ROOT=$3; CKPT=$4; shift 4
rice_check_dataset_row "$DATASET" "$ROW"
case "$DATASET" in lpr4m) SCRIPT=lpr4m_embedding_eval.py ;; *) SCRIPT=movingfashion_eval.py ;; esac
exec "$PYTHON" "$ROOT/$SCRIPT" --data_root "$DATA_ROOT" --ckpt_path "$CKPT" --n_gpu "${N_GPU:-2}" \
    --row "$ROW" --embedding_sim --output_dir "${OUTPUT_DIR:-outputs/eval_${DATASET}_${ROW}}" "$@"
