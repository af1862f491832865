"""16-bit storage in the CPU kernels through the NumPy API: float16 arrays, and bfloat16 arrays of
``ml_dtypes`` (installed with the test extra), for every cell, layers, directions, lengths, with
T*B above and below the 16 rows that pack the weights (the packed 16-bit product kernels, and the
few-rows kernels on the widened weights). Results keep the input dtype (outputs, states, every
gradient); each is compared with the float64 reference run on the same 16-bit values, by the
relative error of the whole array (an elementwise bound fails on the rnn_relu kink, where one
rounding flips a unit's derivative), to the tolerances in tests/tolerances.py (STORAGE16). Each
instruction set the machine has runs in a process of its own (FASTRNN_CPU_ISA), bfloat16's
dot-product kernel (avx512_bf16) included.

STYLE.md's rule for 16-bit types: against float64, the kernels may be at most ~2x as far as the
reference run in the same low precision (``reference.forward(..., storage=dtype)``, which rounds
where the kernels store); tolerances.LOW_PRECISION_RATIO. Where values are small (activations of
1e-3 and, bfloat16, 1e-7), the elementwise relative error is held to the same rule. The
layer-normalised LSTM and GRU (layer_norm=True) are held to that rule too, every result including
the norm's gains' and biases' gradients.
"""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import _core, reference
from helpers import layer_norm_problem, run_layer_norm

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": BF16}
from tolerances import LOW_PRECISION_FLOOR, LOW_PRECISION_RATIO, STORAGE16, relative_error  # noqa: E402

# (T, B, I, H, layers, bidirectional, ragged): packed (T*B >= 16) with partial panels and row
# tiles, a one-step few-rows call, and a wide one
SHAPES = [(6, 4, 5, 7, 2, True, True), (5, 7, 11, 37, 2, False, False), (1, 3, 4, 5, 1, True, False),
          (9, 16, 20, 33, 1, False, True)]


def run_both(cell, dtype, T, B, I, H, L, bi, ragged, seed=0, storage=None, scale=1.0, bias=True):
    """The kernels on 16-bit inputs and the float64 reference on the same values (in its
    low-precision mode with ``storage``): (fast, ref) pairs of (forward result, grads). scale: of
    x and the initial states."""
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    w = [tuple(a.astype(dtype) for a in e)
         for e in fastrnn.init_weights(cell, I, H, num_layers=L, bidirectional=bi, bias=bias, seed=seed + 1)]
    x = (scale * rng.standard_normal((T, B, I))).astype(dtype)
    h0 = (0.5 * scale * rng.standard_normal((L * D, B, H))).astype(dtype)
    c0 = (0.5 * scale * rng.standard_normal((L * D, B, H))).astype(dtype) if cell == "lstm" else None
    lengths = rng.integers(1, T + 1, B) if ragged else None
    out = fastrnn.forward(cell, x, w, h0, c0, lengths=lengths, bidirectional=bi, training=True)
    dy = rng.standard_normal(out.output.shape).astype(dtype)
    g = fastrnn.backward(out.saved, dy)
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    ref = reference.forward(cell, f64(x), [tuple(map(f64, e)) for e in w], f64(h0), f64(c0), lengths=lengths,
                            bidirectional=bi, training=True, storage=storage)
    rg = reference.backward(ref.saved, f64(dy))
    return w, (out, g), (ref, rg)


def row(dtype_name, cell):
    """The STORAGE16 row: rnn_relu's gradients have their own."""
    return dtype_name + ("-relu" if cell == "rnn_relu" else "")


def quantities(fast, ref):
    """(name, actual, expected) of every result."""
    (out, g), (r, rg) = fast, ref
    yield from (("output", out.output, r.output), ("h_n", out.h_n, r.h_n), ("c_n", out.c_n, r.c_n),
                ("dx", g.dx, rg.dx), ("dh0", g.dh0, rg.dh0), ("dc0", g.dc0, rg.dc0))
    for k, (a, e) in enumerate(zip(g.dweights, rg.dweights)):
        for name, ga, ge in zip(("dw_ih", "dw_hh", "db_ih", "db_hh"), a, e):
            yield f"{name}[{k}]", ga, ge


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("cell", fastrnn.CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"-L{s[4]}" +
                         ("-bi" if s[5] else "") + ("-ragged" if s[6] else ""))
def test_16bit_kernels_match_the_reference(dtype_name, cell, shape):
    dtype = DTYPES[dtype_name]
    w, fast, ref = run_both(cell, dtype, *shape)
    for name, actual, expected in quantities(fast, ref):
        if expected is None:
            assert actual is None, name
            continue
        assert actual.dtype == dtype, f"{name}: dtype {actual.dtype}, expected {dtype}"
        kind = "grad" if name.startswith("d") else "output"
        err = relative_error(actual, expected)
        assert err <= STORAGE16[row(dtype_name, cell)][kind], f"{dtype_name} {cell} {name}: relative error {err:.3g}"
    for entry, grads in zip(w, fast[1].dweights):
        assert [g.shape for g in grads] == [a.shape for a in entry]


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_16bit_large_products_match_the_reference_and_agree_across_threads(dtype_name):
    """Sizes that reach every piece of the packed 16-bit products: full row tiles and a 5-row rest
    (B = 21), whole and partial panels (H = 40), odd K (I = 19), and T*B = 1302 rows, more than one
    chunk of the weight gradients (1024 rows). One and two threads give the same bits (each
    result's sums run in the same order whatever a thread's share), and both match the reference."""
    dtype = DTYPES[dtype_name]
    before = fastrnn.get_num_threads()
    runs = {}
    try:
        for n in (1, 2):
            fastrnn.set_num_threads(n)
            runs[n] = run_both("lstm", dtype, 62, 21, 19, 40, 1, False, False, seed=11)
    finally:
        fastrnn.set_num_threads(before)
    (_, fast1, ref), (_, fast2, _) = runs[1], runs[2]
    for (name, a1, e), (_, a2, _) in zip(quantities(fast1, ref), quantities(fast2, ref)):
        if e is None:
            continue
        assert np.array_equal(a1.view(np.uint16), a2.view(np.uint16)), f"{name}: 2 threads differ from 1"
        err = relative_error(a1, e)
        assert err <= STORAGE16[dtype_name]["grad" if name.startswith("d") else "output"], (name, err)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("cell", fastrnn.CELLS)
@pytest.mark.parametrize("shape", SHAPES[:2] + [(12, 5, 20, 40, 3, True, True)],
                         ids=lambda s: "x".join(map(str, s[:4])) + f"-L{s[4]}")
def test_within_twice_the_low_precision_reference(dtype_name, cell, shape):
    """Each result's relative error against float64 <= LOW_PRECISION_RATIO x the low-precision
    reference's (same inputs and seed), with LOW_PRECISION_FLOOR for errors near zero."""
    dtype = DTYPES[dtype_name]
    _, fast, exact = run_both(cell, dtype, *shape)
    _, _, lowp = run_both(cell, dtype, *shape, storage=dtype_name)
    for (name, a, e), (_, r, _) in zip(quantities(fast, exact), quantities(lowp, exact)):
        if e is None:
            continue
        err, ref_err = relative_error(a, e), relative_error(r, e)
        bound = LOW_PRECISION_RATIO * max(ref_err, LOW_PRECISION_FLOOR[dtype_name])
        assert err <= bound, f"{dtype_name} {cell} {name}: {err:.3g} vs the low-precision reference's {ref_err:.3g}"


def _median_elementwise_relative(a, e):
    e = np.asarray(e, np.float64)
    keep = e != 0
    return float(np.median(np.abs(np.asarray(a).astype(np.float64)[keep] - e[keep]) / np.abs(e[keep])))


@pytest.mark.parametrize("scale", [1e-3, 1e-7])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("cell", fastrnn.CELLS)
def test_small_values_relative_accuracy_16bit(cell, dtype_name, scale):
    """Activations of about `scale` (no bias, x and states ~scale): h_n, c_n, output and the weight
    gradients by the median elementwise relative error, kernels vs low-precision reference (both
    against float64). float16 stops at 1e-3: 1e-7 is below its smallest subnormal's resolution."""
    if dtype_name == "float16" and scale < 1e-4:
        pytest.skip("float16 has no relative precision at 1e-7 (subnormals below 6.1e-5)")
    dtype = DTYPES[dtype_name]
    shape = (5, 8, 12, 16, 1, False, False)
    _, fast, exact = run_both(cell, dtype, *shape, scale=scale, bias=False, seed=4)
    _, _, lowp = run_both(cell, dtype, *shape, scale=scale, bias=False, seed=4, storage=dtype_name)
    for (name, a, e), (_, r, _) in zip(quantities(fast, exact), quantities(lowp, exact)):
        if e is None or name in ("dx", "dh0", "dc0"):  # O(1): the tests above cover them
            continue
        err, ref_err = _median_elementwise_relative(a, e), _median_elementwise_relative(r, e)
        bound = LOW_PRECISION_RATIO * max(ref_err, LOW_PRECISION_FLOOR[dtype_name])
        assert err <= bound, f"{name} at {scale:g}: median relative error {err:.3g}, low-precision reference {ref_err:.3g}"


# (T, B, I, H, layers, bidirectional, ragged) of the layer-normalised cells: packed and few-rows
# products, a unit count that is not a multiple of the reduction block (16) nor of the vector width
LAYER_NORM_SHAPES = [(6, 4, 5, 7, 2, True, True), (5, 7, 11, 37, 1, False, False), (1, 3, 4, 5, 1, True, False)]


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("shape", LAYER_NORM_SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"-L{s[4]}" +
                         ("-bi" if s[5] else "") + ("-ragged" if s[6] else ""))
def test_layer_norm_16bit_within_twice_the_low_precision_reference(dtype_name, cell, shape):
    """layer_norm=True on 16-bit arrays: every result (outputs, states, dx, dh0, dc0 and every
    weight's gradient, the norm's vectors' included) in the input dtype, and its relative error
    against float64 at most LOW_PRECISION_RATIO x the low-precision reference's."""
    dtype = DTYPES[dtype_name]
    T, B, I, H, L, bi, ragged = shape
    p = layer_norm_problem(cell, dtype, L, bi, T, B, I, H, ragged=ragged, seed=sum(shape))
    fast = run_layer_norm(fastrnn, p)
    exact, lowp = run_layer_norm(reference, p), run_layer_norm(reference, p, storage=dtype_name)
    assert fast.keys() == exact.keys()
    for name, a in fast.items():
        e = exact[name]
        if e is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == e.shape, f"{name}: {a.dtype} {a.shape}"
        err, ref_err = relative_error(a, e), relative_error(lowp[name], e)
        bound = LOW_PRECISION_RATIO * max(ref_err, LOW_PRECISION_FLOOR[dtype_name])
        assert err <= bound, f"{dtype_name} {cell} {name}: {err:.3g} vs the low-precision reference's {ref_err:.3g}"


ISA_CHECK = r"""
import sys
import numpy as np
sys.path[:0] = sys.argv[2:4]
import test_storage16 as t
from fastrnn import _core
assert _core.cpu_isa() == sys.argv[1], (_core.cpu_isa(), sys.argv[1])
for cell in ("rnn_tanh", "lstm", "gru"):
    for name, dtype in t.DTYPES.items():
        for shape in t.SHAPES[1:3]:
            _, fast, ref = t.run_both(cell, dtype, *shape)
            for what, a, e in t.quantities(fast, ref):
                if e is not None:
                    kind = "grad" if what.startswith("d") else "output"
                    err = t.relative_error(a, e)
                    assert a.dtype == dtype and err <= t.STORAGE16[t.row(name, cell)][kind], (cell, name, what, err)
print("ok")
"""
ORDER = ("baseline", "avx2", "avx512", "avx512_bf16")


@pytest.mark.parametrize("isa", ORDER[:ORDER.index(_core.cpu_isa()) + 1])
def test_16bit_code_paths(isa):
    env = dict(os.environ, FASTRNN_CPU_ISA=isa)
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", ISA_CHECK, isa, here, os.path.dirname(here)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_rounding_is_to_nearest_even_and_keeps_specials():
    # One unit, identity-like weights: y = tanh(x * w) is rounded by the kernels' narrowing; NaN
    # stays NaN and the output is exactly representable in the storage type (a round trip).
    for dtype in DTYPES.values():
        w = [tuple(a.astype(dtype) for a in e) for e in fastrnn.init_weights("rnn_tanh", 3, 5, seed=2)]
        x = np.random.default_rng(3).standard_normal((20, 2, 3)).astype(dtype)
        x[4, 1, 0] = np.nan
        out = fastrnn.forward("rnn_tanh", x, w).output
        assert np.isnan(out[4, 1]).all() and np.isnan(out[5:, 1]).all()
        finite = out[np.isfinite(out.astype(np.float32))]
        assert np.array_equal(finite.astype(np.float32).astype(dtype), finite)


@pytest.mark.parametrize("bad", [np.int32, np.complex64, np.float128 if hasattr(np, "float128") else np.int8])
def test_other_dtypes_raise_type_errors_naming_x(bad):
    w = fastrnn.init_weights("lstm", 3, 4)
    with pytest.raises(TypeError, match="x must have dtype float32, float64, float16 or bfloat16"):
        fastrnn.forward("lstm", np.zeros((2, 1, 3), bad), w)


def test_mixed_dtypes_raise_type_errors_naming_the_argument():
    w32 = fastrnn.init_weights("gru", 3, 4)
    w16 = [tuple(a.astype(BF16) for a in e) for e in w32]
    x16 = np.zeros((2, 1, 3), BF16)
    with pytest.raises(TypeError, match=r"w_ih.*must have dtype bfloat16 \(the dtype of x\), got float32"):
        fastrnn.forward("gru", x16, w32)
    with pytest.raises(TypeError, match=r"h0 must have dtype float16 \(the dtype of x\), got bfloat16"):
        fastrnn.forward("gru", x16.astype(np.float16), [tuple(a.astype(np.float16) for a in e) for e in w32],
                        np.zeros((1, 1, 4), BF16))
    out = fastrnn.forward("gru", x16, w16, training=True)
    with pytest.raises(TypeError, match=r"dy must have dtype bfloat16 \(the dtype of x\), got float32"):
        fastrnn.backward(out.saved, np.zeros((2, 1, 4), np.float32))
