#!/usr/bin/env bash
# Train the ICL model on LPR4M (LPR750K or, with --index, the full set) (README "Training" row "ICL": --sim_header mean_pooling --one_stage),
# with configs/lpr4m_icl.yaml under torchrun (default: one machine, 2 GPUs, global batch 96).
# Usage: DATA_ROOT=/data/lpr750k PRETRAINED_CLIP=/models/ViT-B-32.pt bash scripts/train_lpr4m_icl.sh [more flags, e.g. --max_steps 2000]
# Env: OUTPUT_DIR (default outputs/lpr4m_icl), NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT,
# PYTHON: see scripts/train_common.sh. Rerunning with the same OUTPUT_DIR resumes the run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/train_common.sh" lpr4m_icl "$@"
