#!/bin/sh
# Builds the CPU emulation of the CUDA back end (cuda_runtime.h here) as the Python module
# _cuda_emu in $1 (default: this directory). Then run the CUDA tests against it:
#   sh cuda/emu/build.sh /tmp/emu && FASTRNN_CUDA_EMU=/tmp/emu python -m pytest tests/cuda/test_cuda.py -q
# With FASTRNN_EMU_CUBLAS=1 it also compiles the cuBLAS path (cuda/blas.cpp) and builds the stand-in
# cuBLAS (fake_cublas.cpp) as $1/libfake_cublas.so, which the tests then load through the cuBLAS path:
#   FASTRNN_EMU_CUBLAS=1 sh cuda/emu/build.sh /tmp/emu-blas && FASTRNN_CUDA_EMU=/tmp/emu-blas \
#     FASTRNN_CUBLAS_LIBRARY=/tmp/emu-blas/libfake_cublas.so python -m pytest tests/cuda/test_cuda.py -q
# A development tool (no GPU needed), not part of the package or of CI.
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here}
mkdir -p "$out"
PY=${PYTHON:-python3}
ext=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
blas=""
if [ "${FASTRNN_EMU_CUBLAS:-0}" = 1 ]; then
  g++ -std=c++17 -O1 -shared -fPIC -Wall "$here/fake_cublas.cpp" -o "$out/libfake_cublas.so"
  blas="-DFASTRNN_CUDA_CUBLAS=1 -x c++ $root/cuda/blas.cpp"
  echo "built $out/libfake_cublas.so"
fi
g++ -std=c++20 -O1 -g -shared -fPIC -pthread -DFASTRNN_CUDA_EMULATION -Wall -Wno-unknown-pragmas \
  -I"$here" -I"$root/csrc" $("$PY" -m pybind11 --includes) \
  -x c++ "$root/cuda/stack.cu" -x c++ "$root/cuda/layer_instances.cu" -x c++ "$root/cuda/device.cu" $blas -x none "$root/cuda/bindings_cuda.cpp" "$here/module.cpp" \
  -ldl -o "$out/_cuda_emu$ext"
echo "built $out/_cuda_emu$ext"
