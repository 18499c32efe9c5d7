#!/usr/bin/env bash
# Train one README row on one dataset with torchrun and configs/<DATASET>.yaml --row <ROW>.
# Usage: DATA_ROOT=/data/lpr750k PRETRAINED_CLIP=/models/ViT-B-32.pt bash scripts/train.sh DATASET ROW [flags]
#   DATASET: lpr4m | movingfashion;  ROW: icl | icl_pmd | icl_pmd_pfr
# (scripts/train_<dataset>_<row>.sh are shortcuts for the six combinations.)
#
# Environment:
#   DATA_ROOT        required: dataset root (LPR750K/LPR4M layout, or a prepared MovingFashion root)
#   PRETRAINED_CLIP  required: the OpenAI CLIP checkpoint ViT-B-32.pt to start from
#   OUTPUT_DIR       run folder (default: outputs/<dataset>_<row> in the repository)
#   NPROC_PER_NODE   processes (GPUs) per machine (default 2, the README setting)
#   NNODES           machines (default 1)
#   NODE_RANK        this machine's index, 0 .. NNODES-1 (default 0)
#   MASTER_ADDR      address of machine 0, reachable from every machine (default 127.0.0.1;
#                    must be set when NNODES > 1)
#   MASTER_PORT      a free TCP port on machine 0 (default 29500)
#   PYTHON           interpreter (default: the project's .venv, see scripts/common.sh)
#   RECIPE           a release recipe with a config, e.g. v1_release: configs/<dataset>_<RECIPE>.yaml
#                    replaces configs/<dataset>.yaml and the run folder is outputs/<dataset>_<RECIPE>_<row>
#
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
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 DATA_ROOT=... PRETRAINED_CLIP=... bash scripts/train.sh lpr4m icl
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 DATA_ROOT=... PRETRAINED_CLIP=... bash scripts/train.sh lpr4m icl
# --batch_size stays the GLOBAL batch, split over NNODES x NPROC_PER_NODE processes.
#
# Rendezvous: one machine uses torchrun --standalone (a c10d store on a free local port), so two
# single-machine runs on one host (e.g. on different CUDA_VISIBLE_DEVICES) never collide on
# MASTER_PORT; several machines use the c10d backend at MASTER_ADDR:MASTER_PORT (the machine
# whose address it is hosts the store). torchrun assigns node ranks itself under c10d;
# NODE_RANK is passed along all the same and checked here to be in range.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.sh"
[ $# -ge 2 ] || rice_fail "usage: bash scripts/train.sh DATASET ROW [flags...]  (e.g. lpr4m icl_pmd_pfr)"
DATASET=$1; ROW=$2; shift 2
rice_check_dataset_row "$DATASET" "$ROW"
RUN="${DATASET}_${ROW}"
CONFIG="configs/$DATASET.yaml"
if [ -n "${RECIPE:-}" ]; then
  CONFIG="configs/${DATASET}_${RECIPE}.yaml"; RUN="${DATASET}_${RECIPE}_${ROW}"
  [ -f "$ROOT/$CONFIG" ] || rice_fail "RECIPE=$RECIPE: no $CONFIG; the recipes with a config for $DATASET: $(cd "$ROOT/configs" && ls "${DATASET}"_*.yaml 2>/dev/null | sed "s/^${DATASET}_//; s/\.yaml$//" | tr '\n' ' ')(unset RECIPE for configs/$DATASET.yaml)"
fi

[ -n "${DATA_ROOT:-}" ] || rice_fail "DATA_ROOT is not set: set it to the dataset root, e.g.
  DATA_ROOT=/path/to/dataset PRETRAINED_CLIP=/models/ViT-B-32.pt bash scripts/train.sh $DATASET $ROW"
[ -d "$DATA_ROOT" ] || rice_fail "DATA_ROOT=$DATA_ROOT is not a directory: point it at the dataset root (README 'Preparing data')"
[ -n "${PRETRAINED_CLIP:-}" ] || rice_fail "PRETRAINED_CLIP is not set: set it to the OpenAI CLIP checkpoint ViT-B-32.pt, e.g.
  DATA_ROOT=$DATA_ROOT PRETRAINED_CLIP=/models/ViT-B-32.pt bash scripts/train.sh $DATASET $ROW"
[ -f "$PRETRAINED_CLIP" ] || rice_fail "PRETRAINED_CLIP=$PRETRAINED_CLIP is not a file: point it at ViT-B-32.pt (the OpenAI CLIP release)"
DATA_ROOT="$(rice_abs "$DATA_ROOT")"
PRETRAINED_CLIP="$(rice_abs "$PRETRAINED_CLIP")"
if [ -n "${OUTPUT_DIR:-}" ]; then OUTPUT_DIR="$(rice_abs "$OUTPUT_DIR")"; else OUTPUT_DIR="outputs/$RUN"; fi

NPROC_PER_NODE=${NPROC_PER_NODE:-2}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
rice_int NPROC_PER_NODE "$NPROC_PER_NODE" 1
rice_int NNODES "$NNODES" 1
rice_int NODE_RANK "$NODE_RANK" 0
rice_int MASTER_PORT "$MASTER_PORT" 1
[ "$NODE_RANK" -lt "$NNODES" ] || rice_fail "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES"

if [ "$NNODES" -eq 1 ]; then
  LAUNCH=(--nnodes 1 --nproc_per_node "$NPROC_PER_NODE" --node_rank 0 --standalone)
else
  case "$MASTER_ADDR" in
    127.*|localhost|::1) rice_fail "NNODES=$NNODES needs MASTER_ADDR set to machine 0's address that every machine can reach (not $MASTER_ADDR)" ;;
  esac
  LAUNCH=(--nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK"
          --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv_id "rice_$RUN")
fi

cd "$ROOT"  # configs/, the default OUTPUT_DIR and lpr4m_train.py are relative to the repository
CMD=("$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" lpr4m_train.py --config "$CONFIG" --row "$ROW"
     --data_root "$DATA_ROOT" --pretrained_clip "$PRETRAINED_CLIP" --output_dir "$OUTPUT_DIR"
     --resume latest "$@")
echo "[train] $RUN on $NNODES x $NPROC_PER_NODE processes, output in $OUTPUT_DIR" >&2
echo "[train] $(printf '%q ' "${CMD[@]}")" >&2
exec "${CMD[@]}"
