#!/usr/bin/env bash
# Evaluate the ICL checkpoint on MovingFashion (README row "ICL"), embedding ranking.
# Usage: bash scripts/eval_movingfashion_icl.sh DATA_ROOT CKPT_PATH [more flags, e.g. --precision bf16]
# Env: N_GPU (default 2), OUTPUT_DIR (default outputs/eval_movingfashion_icl).
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 DATA_ROOT CKPT_PATH [flags...]" >&2; exit 2; fi
DATA_ROOT=$1; CKPT=$2; shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}
"$PYTHON" "$ROOT/movingfashion_eval.py" --data_root "$DATA_ROOT" --n_gpu "${N_GPU:-2}" \
    --sim_header mean_pooling --one_stage --embedding_sim \
    --ckpt_path "$CKPT" --output_dir "${OUTPUT_DIR:-outputs/eval_movingfashion_icl}" "$@"
