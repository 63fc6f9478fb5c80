#!/usr/bin/env bash
# Copy of ../shared/tools/cuda-check.sh kept in the repository so CI does not depend on a
# folder outside the clone.
# Build (or check) a candle-based workspace with its CUDA features on a machine that has no GPU
# and no CUDA toolkit: nvcc and the CUDA 13.0 libraries come from PyPI wheels.
#
#   usage: cuda-check.sh [check|build] [cargo args...]
#     e.g. cuda-check.sh check --workspace --features cuda
#          cuda-check.sh build --release -p lus-experiments --features cuda
#   env:   LUS_CUDA_HOME  where the toolchain is kept (default ~/.cache/lus-cuda), reused across runs
#          CUDA_COMPUTE_CAP  target GPU (default 90 = H100/H200, kernels built for sm_90a)
#
# Facts this recipe rests on (candle 0.11.1):
# - candle-kernels builds its .cu files with nvcc found on PATH; without nvidia-smi it needs CUDA_COMPUTE_CAP.
# - cudarc takes the CUDA version from `nvcc --version`; pin 13.0.x: the H100 machines run driver 580
#   (CUDA 13.0) and PTX from nvcc >= 13.1 does not load there.
# - candle-core links the CUDA libraries dynamically (-lcuda -lcublas -lcublasLt -lcurand -lnvrtc -lcudart):
#   the wheels ship only libX.so.N and no libcuda at all, so a link needs unversioned symlinks and a stub
#   libcuda (soname libcuda.so.1). `check` needs neither; `build` does.
# - A binary built with cuda needs libcuda.so.1 to START: it cannot run on a machine without a driver.
#   On the H100 machines the CUDA 13 libraries live in /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib
#   (set LD_LIBRARY_PATH there, or bake an rpath in).
# - A cold `cargo build --release --features cuda` of candle takes about 13 minutes on 2 cores.
set -euo pipefail
mode=${1:-check}; shift || true
root=${LUS_CUDA_HOME:-$HOME/.cache/lus-cuda}
mkdir -p "$root/stubs"
if [ ! -x "$root/venv/bin/nvcc-ready" ]; then
  python3 -m venv "$root/venv"
  "$root/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  touch "$root/venv/bin/nvcc-ready"; chmod +x "$root/venv/bin/nvcc-ready"
fi
cu=$(echo "$root"/venv/lib/python3*/site-packages/nvidia/cu13)
if [ "$mode" = build ] && [ ! -e "$root/stubs/libcuda.so" ]; then
  gcc -E -P -D__CUDA_API_VERSION_INTERNAL=0 -I"$cu/include" "$cu/include/cuda.h" \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' | sort -u \
    | awk '{print "void " $1 "(void){}"}' > "$root/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/stubs/libcuda.so" "$root/stubs/libcuda_stub.c"
  for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
    ln -sf "$cu/lib/lib$l" "$root/stubs/lib${l%%.so*}.so"
  done
fi
export CUDA_HOME=$cu CUDA_PATH=$cu CUDA_ROOT=$cu PATH=$cu/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$root/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
nvcc --version | tail -1
exec cargo "$mode" "$@"
