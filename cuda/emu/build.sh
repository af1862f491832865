#!/bin/sh
# Builds the CPU emulation of the CUDA back end (cuda_runtime.h here) as the Python module
# _cuda_emu in $1 (default: this directory). Then run the CUDA tests against it:
#   sh cuda/emu/build.sh /tmp/emu && FASTRNN_CUDA_EMU=/tmp/emu python -m pytest tests/test_cuda.py -q
# A development tool (no GPU needed), not part of the package or of CI.
set -e
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here}
mkdir -p "$out"
PY=${PYTHON:-python3}
ext=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
g++ -std=c++20 -O1 -g -shared -fPIC -pthread -DFASTRNN_CUDA_EMULATION -Wall -Wno-unknown-pragmas \
  -I"$here" -I"$root/csrc" $("$PY" -m pybind11 --includes) \
  -x c++ "$root/cuda/stack.cu" -x c++ "$root/cuda/device.cu" -x none "$root/cuda/bindings_cuda.cpp" "$here/module.cpp" \
  -o "$out/_cuda_emu$ext"
echo "built $out/_cuda_emu$ext"
