"""Every CPU code path the machine can run: the kernels are compiled for AVX-512, AVX2 and baseline
x86-64 and pick one at run time, so a machine tests only its best one unless FASTRNN_CPU_ISA asks
for a lower one. Each run is a fresh process (the choice is made once per process) comparing
forward, backward and PreparedCell with the float64 reference over every cell, at sizes that leave
partial tiles and blocks (B = 7: a full row tile plus a remainder; H = 19, 37: partial panels), with
T*B rows enough to pack the weights and too few (the few-rows kernel).
"""
import os
import subprocess
import sys

import pytest

from fastrnn import _core
from helpers import TESTS_DIR

ORDER = ("baseline", "avx2", "avx512", "avx512_bf16")  # avx512_bf16: avx512 + the bfloat16 dot product
SUPPORTED = ORDER[:ORDER.index(_core.cpu_isa()) + 1]  # the paths this CPU can run (the others can't be)

CHECK = r"""
import itertools
import sys
import numpy as np
import fastrnn
from fastrnn import _core, reference
sys.path.insert(0, sys.argv[2])
from tolerances import assert_close
assert _core.cpu_isa() == sys.argv[1], (_core.cpu_isa(), sys.argv[1])
rng = np.random.default_rng(0)
# T*B = 35: weights packed; T*B = 7, 6 and 2: read from their rows (csrc/cpu/layer_kernels.inc),
# with the BLAS for small weights and rows_gemm.h's kernels from 2 MB (LSTM and GRU at H = 361)
for cell, dtype, (T, B, I, H) in itertools.product(fastrnn.CELLS, (np.float32, np.float64),
                                                   ((5, 7, 11, 37), (1, 7, 11, 37), (2, 3, 131, 361), (1, 2, 131, 361))):
    w = fastrnn.init_weights(cell, I, H, num_layers=2, dtype=dtype, seed=1)
    x = (rng.standard_normal((T, B, I)) * (0.25 if I > 100 else 1)).astype(dtype)  # as test_wide_input
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    out = fastrnn.forward(cell, x, w, training=True)
    g = fastrnn.backward(out.saved, dy)
    w64 = [tuple(a.astype(np.float64) for a in e) for e in w]
    ref = reference.forward(cell, x.astype(np.float64), w64, training=True)
    rg = reference.backward(ref.saved, dy.astype(np.float64))
    assert_close(out.output, ref.output, dtype, "output")
    assert_close(g.dx, rg.dx, dtype, "dx")
    for k, (a, e) in enumerate(zip(g.dweights, rg.dweights)):
        for name, ga, ge in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), a, e):
            assert_close(ga, ge, dtype, f"{name}[{k}]")
    step = fastrnn.PreparedCell(cell, *w[0])
    h = rng.standard_normal((B, H)).astype(dtype)
    c = h[::-1].copy() if cell == "lstm" else None
    one = reference.forward(cell, x[:1].astype(np.float64), w64[:1], h[None].astype(np.float64),
                            None if c is None else c[None].astype(np.float64))
    got = step(x[0], h, c) if c is not None else (step(x[0], h),)
    assert_close(got[0], one.h_n[0], dtype, "prepared h")
    if dtype == np.float32:
        half = fastrnn.PreparedCell(cell, *w[0], weight_dtype="float16")
        got = half(x[0], h, c) if c is not None else (half(x[0], h),)
        assert_close(got[0], one.h_n[0], "float16-weights", "prepared float16 h")
print("ok")
"""


@pytest.mark.parametrize("isa", SUPPORTED)
def test_code_path_matches_reference(isa):
    env = dict(os.environ, FASTRNN_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-c", CHECK, isa, TESTS_DIR], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_unknown_or_unsupported_request_falls_back_to_the_best():
    env = dict(os.environ, FASTRNN_CPU_ISA="avx1024")
    r = subprocess.run([sys.executable, "-c", "from fastrnn import _core; print(_core.cpu_isa())"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == _core.cpu_isa(), r.stdout + r.stderr
