#!/usr/bin/env bash
# Fills .whl/ (repository root; git-ignored) with the wheels that cuda/gpu_check.sh installs on the
# lent GPU machine, which has no network: the scipy-openblas32 BLAS that the CPU part of the
# extension links (the machine's image lacks it), and the build tools scikit-build-core and pybind11
# (the image has both, at versions nobody here has checked; carrying ours makes the build the one
# tested here). Run it HERE, before the device call, then name `.whl` in the call's `carry`
# (cuda/README.md, "On a lent GPU"). The pins are the versions this project builds with on the
# development machine; the machine's Python is 3.12 on x86-64 (.library/device/KINDS.md), but these
# three wheels are py3-none, so the same files also serve the dry run here.
#
#   bash cuda/fetch_wheels.sh          # -> .whl/*.whl (about 8.5 MB)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.whl"
PY=${PYTHON:-python3}
PINS=(scipy-openblas32==0.3.34.481.3 scikit-build-core==1.1.2 pybind11==3.1.0)

mkdir -p "$dest"
rm -f "$dest"/*.whl  # one version of each: two would stop the install there
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${PINS[@]}"
ls -l "$dest"
du -sh "$dest"
