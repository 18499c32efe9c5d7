#!/usr/bin/env bash
# Check and measure this project on one GPU, in under 10 minutes.
#
#   bash benchmarks/gpu_check.sh [RESULTS_FILE]      (default: outputs/gpu_check.txt)
#
# 1. the CUDA-marked tests (pytest -m cuda): fp16 with the gradient scaler, bf16, NCCL with one
#    process, memory accounting, TF32, the compiled encoder, training and evaluation on the GPU;
# 2. benchmarks/bench_train.py on cuda: the full ICL+PMD+PFR step in fp32, TF32, bf16 and fp16,
#    and its cost over the encoder's alone (--vs_encoder);
# 3. benchmarks/bench_encoder.py on cuda: ours vs timm ViT-B/32 in fp32, TF32, bf16 and fp16,
#    then eager vs torch.compile for training in fp32 and bf16, and bench_breakdown.py: the
#    matrix products' share of the encoder's training step and their rate against the GPU's peak;
# 4. benchmarks/bench_extract.py on cuda: query clips/s, gallery images/s and the projected
#    encoder time of a full LPR4M test pass, in fp32, bf16 and fp16.
# Every figure is printed as one line `name value` and written to RESULTS_FILE, with the GPU,
# torch version and commit. Each part has a time limit; a part that fails or runs out of time is
# named, the others still run, and the script then exits 1. Without a GPU it stops at once
# (one line `error: ...`, exit 2). PYTHON chooses the interpreter (default: the project's .venv).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/common.sh"
RESULTS="$(rice_abs "${1:-$ROOT/outputs/gpu_check.txt}")"
cd "$ROOT"

"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || rice_fail "gpu_check.sh needs a CUDA GPU, and PyTorch sees none (check nvidia-smi, CUDA_VISIBLE_DEVICES and that torch is a CUDA build)"
mkdir -p "$(dirname "$RESULTS")" || rice_fail "cannot create the folder of $RESULTS"
LOG="$(mktemp -d)"
trap 'rm -rf "$LOG"' EXIT
FAILED=()

figure() {  # name value: one line on the screen and in the results file
  echo "$1 $2" | tee -a "$RESULTS"
}

part() {  # label seconds command...: run with a time limit, output to $LOG/label.txt
  local label="$1" limit="$2"
  shift 2
  echo "== $label (at most ${limit}s)" >&2
  if ! timeout "$limit" "$@" >"$LOG/$label.txt" 2>"$LOG/$label.err"; then
    FAILED+=("$label")
    echo "$label FAILED or ran out of time; its last lines:" >&2
    tail -n 5 "$LOG/$label.err" "$LOG/$label.txt" >&2
    return 1
  fi
}

last_line_figures() {  # label prefix: the key=value pairs of a benchmark's last line, one figure each
  local pair
  for pair in $(tail -n 1 "$LOG/$1.txt"); do
    case "$pair" in device=*) ;; *=*) figure "$2${pair%%=*}" "${pair#*=}" ;; esac
  done
}

{
  echo "# benchmarks/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  "$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'# {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}')"
  echo "# commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$RESULTS"
cat "$RESULTS"

# 1. CUDA-marked tests.
if part tests 110 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests; then
  figure tests_passed "$(grep -oE '[0-9]+ passed' "$LOG/tests.txt" | grep -oE '[0-9]+' || echo 0)"
fi

# 2. The full training step; TF32 is fp32 with cuBLAS told to use TF32 (PyTorch's override variable).
for precision in fp32 tf32 bf16 fp16; do
  config=$precision
  env=()
  if [ "$precision" = tf32 ]; then config=fp32; env=(TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1); fi
  if part "train_$precision" 45 env ${env[@]+"${env[@]}"} "$PYTHON" benchmarks/bench_train.py --device cuda --batch 32 \
      --warmup 3 --steps 5 --vs_encoder --configs "$config"; then
    row=$(grep -E "^$config " "$LOG/train_$precision.txt" | tail -n 1)
    figure "train_step_${precision}_pairs_per_s" "$(echo "$row" | awk '{print $3}')"
    figure "train_step_${precision}_peak_gib" "$(echo "$row" | awk '{print $4}')"
    figure "train_model_${precision}_vs_encoder" "$(echo "$row" | awk '{print $8}')"
    figure "train_step_${precision}_vs_encoder" "$(echo "$row" | awk '{print $9}')"
  fi
done

# 3. The encoder against timm, eager; then eager vs compiled for training.
if part encoder 90 "$PYTHON" benchmarks/bench_encoder.py --device cuda --batch_size 256 --train_batch_size 128 \
    --iters 6 --warmup 2 --precisions fp32 tf32 bf16 fp16; then
  last_line_figures encoder encoder_
fi
if part encoder_compile 130 "$PYTHON" benchmarks/bench_encoder.py --device cuda --train_batch_size 128 \
    --iters 6 --warmup 2 --modes train --precisions fp32 bf16 --compile; then
  last_line_figures encoder_compile encoder_compile_
fi
if part breakdown 40 "$PYTHON" benchmarks/bench_breakdown.py --device cuda --batch 128 --steps 3 \
    --precisions fp32 tf32 bf16 fp16; then
  last_line_figures breakdown breakdown_
fi

# 4. Evaluation feature extraction and the projected LPR4M test pass.
if part extract 45 "$PYTHON" benchmarks/bench_extract.py --device cuda --batch 32 --steps 5 \
    --precisions fp32 bf16 fp16; then
  last_line_figures extract extract_
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu_check: failed or out of time: ${FAILED[*]}; figures so far in $RESULTS" >&2
  exit 1
fi
echo "gpu_check: all parts done; figures in $RESULTS" >&2
