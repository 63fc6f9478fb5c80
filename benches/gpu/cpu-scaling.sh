#!/usr/bin/env bash
# lus's CPU kernels against PyTorch on a many-core CPU (the GPU machine's), at several thread
# counts, in one sitting (benches/README.md, "Many cores"):
#   - benches/pytorch_unet_step.py on the CPU with lus's direct 3x3 kernels and with
#     im2col + GEMM everywhere (RAYON_NUM_THREADS = OMP_NUM_THREADS = threads for both);
#   - lus alone with candle's element-wise pool at the same thread count
#     (CANDLE_NUM_THREADS = threads; the lus binary's default is 1).
# Run from the repository root:
#   benches/gpu/cpu-scaling.sh LUS_BINARY OUT_DIR
# LUS_BINARY is a CPU build (`cargo build --release -p lus-experiments`, stripped).
set -uo pipefail
bin=$(realpath "$1"); out=$(realpath -m "$2")
mkdir -p "$out"
status=0
python=$(command -v python3)
{ lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket|L1d|L2|L3'
  echo "avx512: $(grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  "$python" -c 'import torch; print("torch", torch.__version__)'; } | tee "$out/cpu.txt"
for threads in ${LUS_SCALING_THREADS:-16 8 4 2}; do
  for conv in direct gemm; do
    echo "== $(date +%T) $threads threads, lus $conv vs PyTorch"
    RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads "$python" benches/pytorch_unet_step.py \
      --lus "$bin" --device cpu --rounds "${LUS_SCALING_ROUNDS:-7}" --conv3x3 "$conv" \
      --json-out "$out/scaling.jsonl" || status=1
  done
  echo "== $(date +%T) $threads threads, lus direct with CANDLE_NUM_THREADS=$threads"
  RAYON_NUM_THREADS=$threads CANDLE_NUM_THREADS=$threads "$bin" bench unet-step \
    --rounds "${LUS_SCALING_ROUNDS:-7}" --json | tee -a "$out/candle-threads.jsonl" || status=1
done
exit $status
