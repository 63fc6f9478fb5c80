#!/usr/bin/env bash
# The CUDA checks of lus on a GPU machine, in one sitting (benches/README.md, "CUDA"):
#   1. the test binaries with CUDA variants (test_device!: the same bodies on the CPU and CUDA);
#   2. benches/pytorch_unet_step.py on CUDA (lus and PyTorch, same network, same sitting) at
#      several batch sizes, sizes and precisions, and once on the machine's CPU;
#   3. the quick study (experiments/quick.toml) on CUDA, its report and run tables archived.
# Run from the repository root:
#   benches/gpu/device-run.sh BIN_DIR OUT_DIR [QUICK_TIMEOUT_S]
# BIN_DIR is what benches/gpu/build.sh made. Each step goes on after a failure of the one
# before; the exit status is that of the first failure.
set -uo pipefail
# LUS_DEVICE_RUN_DEVICE=cpu rehearses the script on a machine without a GPU.
gpu=${LUS_DEVICE_RUN_DEVICE:-cuda}
bin=$(realpath "$1"); out=$(realpath -m "$2"); quick_timeout=${3:-240}
mkdir -p "$out"
status=0
step() { echo "== $(date +%T) $*"; }
fail() { echo "!! $*"; [ "$status" -ne 0 ] || status=1; }

# The CUDA 13 libraries candle links (cublas, cublasLt, curand, nvrtc, cudart): the machine's
# PyTorch wheels carry them.
cu=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1)
if [ -z "$cu" ]; then
  cu=$(dirname "$(find / -xdev -name 'libcublas.so.13' 2>/dev/null | head -1)")
fi
export LD_LIBRARY_PATH="$cu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python=$(command -v python3)
step "GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.csv"
if ! "$bin/lus" bench unet-step --device "$gpu" --batch 2 --size 64 --rounds 1; then
  ldd "$bin/lus" | grep -E "not found|cuda|cublas|curand|nvrtc"
  echo "!! lus does not run on $gpu here; stopping"; exit 2
fi

# The test binaries find their fixtures through the CARGO_MANIFEST_DIR they were built under.
built_root=$(cat "$bin/source-root" 2>/dev/null)
if [ -n "$built_root" ] && [ ! -e "$built_root" ]; then
  mkdir -p "$(dirname "$built_root")" && ln -s "$PWD" "$built_root"
fi
step "tests (CPU and CUDA variants)"
for test in "$bin"/test-*; do
  [ -x "$test" ] || continue
  echo "-- $(basename "$test")"
  "$test" --test-threads=1 --nocapture 2>&1 || fail "$(basename "$test")"
done > "$out/tests.log"
grep -E "^test |test result|panicked|on Cuda|cuda:0|^-- " "$out/tests.log"

step "train step, lus vs PyTorch"
# device batch size precision rounds depth base; depth 4 / base 16 is the issue-6 network,
# depth 5 / base 32 the one of experiments/paper.toml.
while read -r device batch size precision rounds depth base; do
  [ "$device" = gpu ] && device=$gpu
  "$python" benches/pytorch_unet_step.py --lus "$bin/lus" --device "$device" --batch "$batch" \
    --size "$size" --precision "$precision" --rounds "$rounds" --depth "$depth" --base "$base" \
    --json-out "$out/bench.jsonl" || fail "bench $device $batch $size $precision $depth $base"
done <<LIST
${LUS_DEVICE_RUN_BENCHES:-gpu 8 128 f32 10 4 16
gpu 8 128 tf32 10 4 16
gpu 8 128 bf16 10 4 16
gpu 1 128 f32 10 4 16
gpu 8 256 f32 10 4 16
gpu 32 256 f32 5 5 32
gpu 32 256 tf32 5 5 32
gpu 32 256 bf16 5 5 32
cpu 8 128 f32 3 4 16}
LIST

step "quick study on $gpu (timeout ${quick_timeout} s)"
start=$(date +%s)
timeout "$quick_timeout" "$bin/lus" run experiments/quick.toml --quiet \
  --set runs_dir=/tmp/gpu-runs --set reports_dir=/tmp/gpu-reports \
  --set pretrain.train.device="$gpu" --set classify.train.device="$gpu" > "$out/quick.log" 2>&1
quick_status=$?
echo "quick study: exit $quick_status after $(( $(date +%s) - start )) s" | tee -a "$out/quick.log"
[ "$quick_status" -eq 0 ] || fail "quick study"
tar czf "$out/quick-$gpu.tar.gz" --exclude='*.safetensors' -C /tmp gpu-reports gpu-runs 2>/dev/null
tail -5 "$out/quick.log"
exit "$status"
