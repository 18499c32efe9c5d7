#!/usr/bin/env bash
# The main job: set up .venv, generate synthetic LPR-format data, train the three
# ablation rows (ICL, ICL+PMD, ICL+PMD+PFR) with a small ViT on CPU, evaluate each
# on the synthetic test split, print R1/R5/R10 beside chance, draw the curves.
#   bash scripts/demo.sh                                   # synthetic data, CPU only
#   bash scripts/demo.sh --data_root /data/lpr750k --pretrained_clip ViT-B-32.pt --max_steps 2000
# All flags: bash scripts/demo.sh --help   (they go to tools/demo.py)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" requirements.txt
VENV="${RICE_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" tools/demo.py "$@"
