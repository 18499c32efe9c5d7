#!/usr/bin/env bash
# Livestream recognition end to end on synthetic data (docs/livestream.md):
#   1. the demo's ICL model: reused from OUTPUT_DIR/runs/ICL/model.pt, else trained (tools/demo.py --rows ICL);
#   2. a synthetic livestream with a known product schedule (tools/make_synthetic_livestream.py);
#   3. recognize_livestream.py on it (timeline.json/.csv, report.html, timeline.png);
#   4. per-second accuracy and segment F1 beside chance (tools/score_timeline.py).
# Usage: bash scripts/demo_livestream.sh [--minutes 10] [--seed 3] [--output_dir demo_output]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINUTES=10
SEED=3
OUT=demo_output
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --output_dir) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
bash "$ROOT/scripts/setup_env.sh" requirements.txt
PY="${RICE_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"
MODEL="$OUT/runs/ICL/model.pt"
if [ -f "$MODEL" ]; then
  echo "[demo_livestream] reusing the demo model $MODEL"
else
  echo "[demo_livestream] no $MODEL: training the demo's ICL row"
  "$PY" tools/demo.py --rows ICL --output_dir "$OUT" --no_progress
fi
LIVE="$OUT/livestream"
"$PY" tools/make_synthetic_livestream.py --output_dir "$LIVE/data" --minutes "$MINUTES" --seed "$SEED"
"$PY" recognize_livestream.py --video "$LIVE/data/live.mp4" --shop "$LIVE/data/shop" --ckpt "$MODEL" \
  --output_dir "$LIVE/out" --no_progress
"$PY" tools/score_timeline.py --schedule "$LIVE/data/schedule.json" --timeline "$LIVE/out/timeline.json"
echo "[demo_livestream] report: $LIVE/out/report.html, figure: $LIVE/out/timeline.png"
