#!/usr/bin/env bash
# The first thing to run on a lent GPU machine: on a bare machine with its own python3
# (torch with CUDA), nvcc and no network, it builds the extension for sm_90 only, runs the CUDA
# kernel tests (tests/cuda/test_cuda.py; the LSTM variants, training modifiers, float16/bfloat16, the
# projected LSTM and, as a phase of its own, layer norm in tests/cuda/test_cuda_features.py), the torch layers on CUDA tensors (tests/cuda/test_nn_cuda.py) and
# the GPU benchmark (python -m fastrnn.bench --device cuda --quick), then, while time is left,
# compute-sanitizer's memcheck on the kernel tests, the full GPU suite and the rest of the tests. Everything goes
# into OUTDIR, at most 8 files (what the device tool brings back), and a summary table is printed
# last. Each phase has a time cap and the whole run a budget (GPU_CHECK_BUDGET_S, default 420 s),
# so it ends by itself well inside a 10-minute call (the build's own cap, 330 s, is
# GPU_CHECK_BUILD_CAP_S for a dry run on a slow machine); a build error stops it at once, with the
# compiler's message in OUTDIR/build.log and on stdout. Wheels the machine lacks come from .whl/
# (filled here by cuda/fetch_wheels.sh and carried with the call); cuda/README.md gives the call.
#
#   bash cuda/gpu_check.sh OUTDIR          # exit 0: every phase that ran passed
#
# OUTDIR files: summary.json (phases: status, exit code, seconds), system.txt (nvidia-smi, driver,
# CUDA, torch, compilers), build.log (pip/CMake/nvcc, with ptxas's registers and spills per kernel),
# tests.log (test_cuda.py, then test_nn_cuda.py), <date>-<gpu>-quick.json/.md (the quick benchmark),
# <date>-gpu-full.json (as much of the full GPU suite as the budget allows), extra.log (the
# benchmarks' own output, memcheck, the rest of the suite).
# Without a GPU (a dry run) the same script builds, the GPU tests skip, the benchmark says that no
# GPU is visible and the phases that need a GPU are skipped.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bash cuda/gpu_check.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" && OUTDIR=$(cd "$1" && pwd) || exit 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-420}
SITE=${GPU_CHECK_SITE:-/tmp/fastrnn-gpu-check-site}  # everything installed goes here, nowhere else
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
START=$(date +%s)
PHASES=$(mktemp /tmp/gpu_check_phases.XXXXXX)  # folded into summary.json at the end (OUTDIR: 8 files at most)
: >"$PHASES"
EXTRA="$OUTDIR/extra.log"
: >"$EXTRA"

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

# phase NAME CAP_S LOG CMD...: runs CMD with its output appended to LOG, for at most CAP_S seconds
# and never past the budget; records status (ok / failed / timeout, or "refused" for an exit code
# listed in $REFUSED_RC), exit code and wall time; returns CMD's exit code.
phase() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left t0 rc status ms
  left=$(remaining)
  if [ "$left" -lt 20 ]; then
    record "$name" skipped "" 0 "budget spent"
    return 99
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "==== $name (cap ${cap}s): $*" >>"$log"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$cap" "$@" >>"$log" 2>&1
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  for r in ${REFUSED_RC:-}; do [ "$rc" = "$r" ] && status=refused; done
  echo "==== $name: $status (exit $rc, ${ms} ms)" >>"$log"
  record "$name" "$status" "$rc" "$((ms / 1000)).$((ms % 1000 / 100))" "$(basename "$log")"
  return $rc
}

record() {  # name status rc wall note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$PHASES"
  printf '%-18s %-8s %8s s  %s\n' "$1" "$2" "$4" "$5"
}

finish() {  # write summary.json, print the table and the logs' key lines, exit with $1
  "$PY" - "$PHASES" "$OUTDIR/summary.json" "$BUDGET_S" "$(($(date +%s) - START))" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
phases = [{"phase": r[0], "status": r[1], "exit_code": int(r[2]) if r[2] else None,
           "wall_s": round(float(r[3] or 0), 1), "note": r[4]} for r in rows]
json.dump({"phases": phases, "budget_s": int(sys.argv[3]), "total_wall_s": int(sys.argv[4])},
          open(sys.argv[2], "w"), indent=1)
EOF
  rm -f "$PHASES"
  echo
  echo "---- key lines ----"
  [ -f "$OUTDIR/tests.log" ] && grep -E "^(FAILED|ERROR|==== [a-z_]+: )|[0-9]+ (passed|failed|skipped|error)" "$OUTDIR/tests.log" |
    tail -n 24 | sed "s|^|tests.log: |"
  grep -E "VERIFICATION|speed-up|no CUDA|no GPU|Error" "$EXTRA" | tail -n 12 | sed 's|^|extra.log: |'
  for f in "$OUTDIR"/*-quick.md; do [ -f "$f" ] && tail -n 45 "$f"; done
  echo
  echo "---- phases (total $(($(date +%s) - START)) s of a ${BUDGET_S} s budget; logs in $OUTDIR) ----"
  "$PY" -c "import json,sys; [print(f\"{p['phase']:<18} {p['status']:<8} {p['wall_s']:>7} s  {p['note']}\") for p in json.load(open(sys.argv[1]))['phases']]" "$OUTDIR/summary.json"
  exit "$1"
}

# ---- what the machine is ---------------------------------------------------------------------------
t0=$(date +%s)
{
  echo "date: $(date -u)"; echo "uname: $(uname -a)"; echo "cores: $(nproc)"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'unknown (no .git in the copy)')"
  echo; echo "== nvidia-smi"; timeout 30 nvidia-smi 2>&1 || echo "(no nvidia-smi or no GPU)"
  echo; echo "== nvidia-smi --query-gpu"
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,persistence_mode,compute_mode --format=csv 2>&1 || true
  echo; echo "== nvcc"; timeout 30 nvcc --version 2>&1 || echo "(no nvcc)"
  echo; echo "== host compiler"; timeout 30 g++ --version 2>&1 | head -n 1
  echo "cmake: $(timeout 30 cmake --version 2>&1 | head -n 1)"; echo "ninja: $(timeout 30 ninja --version 2>&1)"
  echo "compute-sanitizer: $(command -v compute-sanitizer || echo absent)"
  echo; echo "== python and torch"
  timeout 120 "$PY" - <<'EOF' 2>&1
import ctypes.util, os, platform, sys, sysconfig
print("libcublas on the loader's path:", ctypes.util.find_library("cublas"))
print("python", platform.python_version(), sys.executable)
include = sysconfig.get_paths()["include"]  # the build needs Python.h (pybind11)
print("Python.h:", include, "present" if os.path.exists(os.path.join(include, "Python.h")) else "ABSENT: the build will fail")
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device", p.name, "capability", (p.major, p.minor), "SMs", p.multi_processor_count, "memory GiB", round(p.total_memory / 2**30, 1))
        print("allow_tf32: matmul", torch.backends.cuda.matmul.allow_tf32, "cudnn", torch.backends.cudnn.allow_tf32)
except Exception as e:
    print("torch: not usable:", type(e).__name__, e)
for name in ("numpy", "pytest", "hypothesis", "matplotlib", "scikit_build_core", "pybind11", "scipy_openblas32"):
    try:
        m = __import__(name)
        print(name, getattr(m, "__version__", "?"))
    except ImportError:
        print(name, "absent")
EOF
  echo; echo "== carried wheels"; ls -l .whl 2>&1
} >"$OUTDIR/system.txt" 2>&1
record system ok 0 $(($(date +%s) - t0)) system.txt
HAVE_GPU=0
grep -q "^cuda available True" "$OUTDIR/system.txt" && HAVE_GPU=1
[ $HAVE_GPU = 1 ] || echo "no GPU visible to torch: a dry run (GPU tests skip, GPU phases are skipped)"

# ---- build ------------------------------------------------------------------------------------------
BUILD="$OUTDIR/build.log"
: >"$BUILD"
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "no wheels in .whl/: run 'bash cuda/fetch_wheels.sh' on the development machine and carry .whl" | tee -a "$BUILD"
  record wheels failed 1 0 build.log
  finish 1
fi
rm -rf "$SITE"
phase wheels 120 "$BUILD" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .whl/*.whl || finish 1
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# sm_90 only (the H200), in a build folder of its own; FASTRNN_WITH_CUDA=ON: no nvcc is an error here.
# -Xptxas=-v: every kernel's registers, shared memory and spills go into build.log. pybind11_DIR:
# the carried pybind11 (scikit-build-core would otherwise find the one in the image's site-packages).
export FASTRNN_WITH_CUDA=ON
pybind11_dir=$("$PY" -c "import pybind11; print(pybind11.get_cmake_dir())" 2>>"$BUILD")
if ! phase build "${GPU_CHECK_BUILD_CAP_S:-330}" "$BUILD" "$PY" -m pip install -v --no-index --no-deps --no-build-isolation \
  --no-cache-dir --upgrade --target "$SITE" -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
  -C cmake.define.CMAKE_CUDA_FLAGS=-Xptxas=-v -C "cmake.define.pybind11_DIR=$pybind11_dir" \
  -C "build-dir=build/gpu-check-{wheel_tag}" .; then
  echo
  echo "---- BUILD FAILED: the compiler's messages (all of it in build.log) ----"
  grep -n -E "error|Error|FAILED|fatal" "$BUILD" | grep -v -E "Werror|-Wno-error" | head -n 40
  echo "---- the last lines of build.log ----"
  tail -n 40 "$BUILD"
  finish 1
fi
# Where the build's time went (ninja's log: wall seconds per target, the slowest first), for the
# next session's build tuning; the parallelism it ran with.
{
  echo "==== build: ${CMAKE_BUILD_PARALLEL_LEVEL} parallel jobs on $(nproc) cores; the slowest targets (wall s):"
  for log in build/gpu-check-*/.ninja_log; do
    [ -f "$log" ] && awk 'NR > 1 { printf "%8.1f  %s\n", ($2 - $1) / 1000, $4 }' "$log" | sort -rn | head -n 20
  done
} >>"$BUILD" 2>&1
phase import 60 "$BUILD" "$PY" -c "import fastrnn, fastrnn._core as c; print(fastrnn.__file__); \
assert fastrnn.cuda_available(), 'built without CUDA'; print('CUDA devices seen by fastrnn:', c.cuda.device_count())" || finish 1

# ---- tests ------------------------------------------------------------------------------------------
FAIL=0
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfEs --durations=5)
TESTS="$OUTDIR/tests.log"
: >"$TESTS"
if ! phase test_cuda 150 "$TESTS" "${PYTEST[@]}" tests/cuda/test_cuda.py; then
  FAIL=1
  # Which GEMM is to blame: the same matrix with every product on the own GEMM (cuda/gemm.cuh).
  FASTRNN_CUBLAS=0 phase test_cuda_own_gemm 90 "$TESTS" "${PYTEST[@]}" tests/cuda/test_cuda.py \
    -k "matches_reference or tile_edges or deterministic"
fi
phase test_cuda_features 120 "$TESTS" "${PYTEST[@]}" tests/cuda/test_cuda_features.py -k "not layer_norm" || FAIL=1
# layer norm's row kernels (cuda/layer_norm.cuh) and fastrnn.nn's layer_norm=True on CUDA tensors
phase test_cuda_layer_norm 90 "$TESTS" "${PYTEST[@]}" tests/cuda/test_cuda_features.py -k "layer_norm" || FAIL=1
phase test_nn_cuda 150 "$TESTS" "${PYTEST[@]}" tests/cuda/test_nn_cuda.py || FAIL=1
# the persistent small-batch forward (cuda/persistent.cuh: cooperative launch, grid barrier per step)
phase test_cuda_persistent 60 "$TESTS" "${PYTEST[@]}" tests/cuda/test_cuda_persistent.py || FAIL=1
if [ $HAVE_GPU = 1 ]; then
  # (test_cuda.py's no-device test skips wherever a GPU is present, by design)
  grep "^SKIPPED" "$TESTS" | grep -v "a GPU is present" | sed "s|^|tests.log: SKIPPED ON A GPU MACHINE: |"
fi

# ---- benchmark --------------------------------------------------------------------------------------
# The quick GPU suite; --max-seconds: it starts no new case after that (what it measured is saved).
# It leaves ~2 minutes for memcheck. Without a GPU it must refuse (exit 2, with its reason).
left=$(remaining)
bench_cap=$((left - 130))
[ $bench_cap -gt 180 ] && bench_cap=180
[ $bench_cap -lt 45 ] && bench_cap=45
REFUSED_RC=$([ $HAVE_GPU = 1 ] || echo 2) phase bench $((bench_cap + 40)) "$EXTRA" "$PY" -m fastrnn.bench \
  --device cuda --quick --max-seconds "$bench_cap" --no-progress --save "$OUTDIR"
rc=$?
[ $rc -ne 0 ] && { [ $HAVE_GPU = 1 ] || [ $rc -ne 2 ]; } && FAIL=1

# ---- while time is left (a timeout here is no failure) --------------------------------------------
optional() {  # rc of an optional phase -> FAIL, unless it timed out or was skipped
  [ "$1" -ne 0 ] && [ "$1" -ne 124 ] && [ "$1" -ne 137 ] && [ "$1" -ne 99 ] && FAIL=1
  return 0
}
if [ $HAVE_GPU = 1 ] && command -v compute-sanitizer >/dev/null && [ "$(remaining)" -gt 90 ]; then
  phase memcheck 110 "$EXTRA" compute-sanitizer --tool memcheck --error-exitcode 9 "${PYTEST[@]}" -x \
    tests/cuda/test_cuda.py -k "tile_edges and f32 and (lstm or gru)"
  optional $?
  phase memcheck_features 60 "$EXTRA" compute-sanitizer --tool memcheck --error-exitcode 9 "${PYTEST[@]}" -x \
    tests/cuda/test_cuda_features.py -k "variants_tile_edges or 16bit_variant or reset_before_tile_edges or layer_norm_tile_edges or projection_tile_edges or 16bit_projection"
  optional $?
  # the persistent kernel: its dynamic shared memory and the h exchange between blocks
  phase memcheck_persistent 40 "$EXTRA" compute-sanitizer --tool memcheck --error-exitcode 9 "${PYTEST[@]}" -x \
    tests/cuda/test_cuda_persistent.py -k "matches_reference and lstm and L2-bi-ragged-nostate"
  optional $?
  # the row kernels' shared-memory reductions (partials, then thread 0's merge) between barriers
  phase racecheck_layer_norm 40 "$EXTRA" compute-sanitizer --tool racecheck --error-exitcode 9 "${PYTEST[@]}" -x \
    tests/cuda/test_cuda_features.py -k "layer_norm_tile_edges"
  optional $?
else
  record memcheck skipped "" 0 "no GPU, no compute-sanitizer or too little time"
fi
# The full GPU suite (114 cases) as far as the budget goes; its JSON only (OUTDIR's 8 files), the
# table is in extra.log and cuda/README.md says how to rebuild the .md from the JSON.
if [ $HAVE_GPU = 1 ] && [ "$(remaining)" -gt 100 ]; then
  full_cap=$(($(remaining) - 60))
  phase bench_full $((full_cap + 40)) "$EXTRA" "$PY" -m fastrnn.bench --device cuda --max-seconds "$full_cap" \
    --no-progress --json "$OUTDIR/$(date -u +%F)-gpu-full.json"
  optional $?
else
  record bench_full skipped "" 0 "no GPU or too little time"
fi
if [ "$(remaining)" -gt 60 ]; then
  phase rest_of_suite 600 "$EXTRA" "${PYTEST[@]}" tests --ignore=tests/cuda/test_cuda.py --ignore=tests/cuda/test_nn_cuda.py \
    --ignore=tests/cuda/test_cuda_features.py --ignore=tests/cuda/test_cuda_persistent.py
  optional $?
else
  record rest_of_suite skipped "" 0 "too little time"
fi
finish $FAIL
