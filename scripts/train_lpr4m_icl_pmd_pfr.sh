#!/usr/bin/env bash
# Train the ICL+PMD+PFR model on LPR4M (LPR750K or, with --index, the full set) (README "Training" row "ICL+PMD+PFR": --sim_header cross_attention --cross_num_hidden_layers 2 --recons_feat),
# with configs/lpr4m_icl_pmd_pfr.yaml under torchrun (default: one machine, 2 GPUs, global batch 96).
# Usage: DATA_ROOT=/data/lpr750k PRETRAINED_CLIP=/models/ViT-B-32.pt bash scripts/train_lpr4m_icl_pmd_pfr.sh [more flags, e.g. --max_steps 2000]
# Env: OUTPUT_DIR (default outputs/lpr4m_icl_pmd_pfr), NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT,
# PYTHON: see scripts/train_common.sh. Rerunning with the same OUTPUT_DIR resumes the run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/train_common.sh" lpr4m_icl_pmd_pfr "$@"
