#!/usr/bin/env bash
# Shared body of the training recipes scripts/train_<dataset>_<row>.sh; not run on its own.
# A recipe does:  source "$(dirname "${BASH_SOURCE[0]}")/train_common.sh" <config name> "$@"
# and this runs lpr4m_train.py under torchrun with configs/<config name>.yaml.
#
# Environment:
#   DATA_ROOT        required: dataset root (LPR750K/LPR4M layout, or a prepared MovingFashion root)
#   PRETRAINED_CLIP  required: the OpenAI CLIP checkpoint ViT-B-32.pt to start from
#   OUTPUT_DIR       run folder (default: outputs/<config name> in the repository)
#   NPROC_PER_NODE   processes (GPUs) per machine (default 2, the README setting)
#   NNODES           machines (default 1)
#   NODE_RANK        this machine's index, 0 .. NNODES-1 (default 0)
#   MASTER_ADDR      address of machine 0, reachable from every machine (default 127.0.0.1;
#                    must be set when NNODES > 1)
#   MASTER_PORT      a free TCP port on machine 0 (default 29500)
#   PYTHON           interpreter (default: .venv/bin/python of the repository, or $RICE_VENV/bin/python,
#                    if present, else python3)
# Relative DATA_ROOT, PRETRAINED_CLIP and OUTPUT_DIR are taken from where you call the recipe;
# the run itself starts in the repository root, so relative paths in extra flags are taken from there.
#
# Extra arguments go to lpr4m_train.py after the recipe's own and win over them and over the
# YAML config (e.g. --epochs 1, --max_steps 2000, --precision fp16, --validate, --index FILE).
# Every run passes --resume latest: rerunning a recipe with the same OUTPUT_DIR continues an
# interrupted run from OUTPUT_DIR/checkpoints/last.pt (and starts afresh when there is none).
#
# Several machines: run the same recipe on each, with the same NNODES, MASTER_ADDR, MASTER_PORT
# and OUTPUT_DIR on shared storage (or one per machine), and NODE_RANK=0..NNODES-1:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 DATA_ROOT=... PRETRAINED_CLIP=... bash scripts/train_lpr4m_icl.sh
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 DATA_ROOT=... PRETRAINED_CLIP=... bash scripts/train_lpr4m_icl.sh
# --batch_size stays the GLOBAL batch, split over NNODES x NPROC_PER_NODE processes.
#
# Rendezvous: one machine uses torchrun --standalone (a c10d store on a free local port), so two
# single-machine runs on one host (e.g. on different CUDA_VISIBLE_DEVICES) never collide on
# MASTER_PORT; several machines use the c10d backend at MASTER_ADDR:MASTER_PORT (the machine
# whose address it is hosts the store). torchrun assigns node ranks itself under c10d;
# NODE_RANK is passed along all the same and checked here to be in range.
set -euo pipefail

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "error: $0 is sourced by the recipes scripts/train_*.sh; run one of them instead" >&2
  exit 2
fi
if [ $# -lt 1 ]; then
  echo "error: train_common.sh needs the config name, e.g. source train_common.sh lpr4m_icl \"\$@\"" >&2
  exit 2
fi
RECIPE=$1; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="configs/$RECIPE.yaml"

_train_fail() { echo "error: $*" >&2; exit 2; }
_train_abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
_train_int() {  # name value minimum
  case "$2" in ''|*[!0-9]*) _train_fail "$1 must be a whole number, got '$2'" ;; esac
  [ "$2" -ge "$3" ] || _train_fail "$1 must be >= $3, got $2"
}

[ -f "$ROOT/$CONFIG" ] || _train_fail "no config $ROOT/$CONFIG for recipe '$RECIPE'"
[ -n "${DATA_ROOT:-}" ] || _train_fail "DATA_ROOT is not set: set it to the dataset root, e.g.
  DATA_ROOT=/path/to/dataset PRETRAINED_CLIP=/models/ViT-B-32.pt bash scripts/train_$RECIPE.sh"
[ -d "$DATA_ROOT" ] || _train_fail "DATA_ROOT=$DATA_ROOT is not a directory: point it at the dataset root (README 'Preparing data')"
[ -n "${PRETRAINED_CLIP:-}" ] || _train_fail "PRETRAINED_CLIP is not set: set it to the OpenAI CLIP checkpoint ViT-B-32.pt, e.g.
  DATA_ROOT=$DATA_ROOT PRETRAINED_CLIP=/models/ViT-B-32.pt bash scripts/train_$RECIPE.sh"
[ -f "$PRETRAINED_CLIP" ] || _train_fail "PRETRAINED_CLIP=$PRETRAINED_CLIP is not a file: point it at ViT-B-32.pt (the OpenAI CLIP release)"
DATA_ROOT="$(_train_abs "$DATA_ROOT")"
PRETRAINED_CLIP="$(_train_abs "$PRETRAINED_CLIP")"
if [ -n "${OUTPUT_DIR:-}" ]; then OUTPUT_DIR="$(_train_abs "$OUTPUT_DIR")"; else OUTPUT_DIR="outputs/$RECIPE"; fi

NPROC_PER_NODE=${NPROC_PER_NODE:-2}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
_train_int NPROC_PER_NODE "$NPROC_PER_NODE" 1
_train_int NNODES "$NNODES" 1
_train_int NODE_RANK "$NODE_RANK" 0
_train_int MASTER_PORT "$MASTER_PORT" 1
[ "$NODE_RANK" -lt "$NNODES" ] || _train_fail "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"

if [ "$NNODES" -eq 1 ]; then
  LAUNCH=(--nnodes 1 --nproc_per_node "$NPROC_PER_NODE" --node_rank 0 --standalone)
else
  case "$MASTER_ADDR" in
    127.*|localhost|::1) _train_fail "NNODES=$NNODES needs MASTER_ADDR set to machine 0's address that every machine can reach (not $MASTER_ADDR)" ;;
  esac
  LAUNCH=(--nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK"
          --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "rice_$RECIPE")
fi

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "${RICE_VENV:-$ROOT/.venv}/bin/python" ] && PYTHON="${RICE_VENV:-$ROOT/.venv}/bin/python"
fi

cd "$ROOT"  # configs/, the default OUTPUT_DIR and lpr4m_train.py are relative to the repository
CMD=("$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" lpr4m_train.py --config "$CONFIG"
     --data_root "$DATA_ROOT" --pretrained_clip "$PRETRAINED_CLIP" --output_dir "$OUTPUT_DIR"
     --resume latest "$@")
echo "[train] $RECIPE on $NNODES x $NPROC_PER_NODE processes, output in $OUTPUT_DIR" >&2
echo "[train] $(printf '%q ' "${CMD[@]}")" >&2
exec "${CMD[@]}"
