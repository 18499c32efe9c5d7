#!/usr/bin/env bash
# Evaluate the ICL+PMD checkpoint on MovingFashion (README row "ICL+PMD"), embedding ranking.
# Usage: bash scripts/eval_movingfashion_icl_pmd.sh DATA_ROOT CKPT_PATH [more flags, e.g. --precision bf16]
# Env: N_GPU (default 2), OUTPUT_DIR (default outputs/eval_movingfashion_icl_pmd).
# Drop --embedding_sim (edit below) to also re-rank the top-K with the PMD head.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 DATA_ROOT CKPT_PATH [flags...]" >&2; exit 2; fi
DATA_ROOT=$1; CKPT=$2; shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}
"$PYTHON" "$ROOT/movingfashion_eval.py" --data_root "$DATA_ROOT" --n_gpu "${N_GPU:-2}" \
    --sim_header cross_attention --cross_num_hidden_layers 2 --embedding_sim \
    --ckpt_path "$CKPT" --output_dir "${OUTPUT_DIR:-outputs/eval_movingfashion_icl_pmd}" "$@"
