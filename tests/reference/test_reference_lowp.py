"""The reference's low-precision mode (``storage="bfloat16" | "float16"``, fastrnn/reference/stack.py):
its results are values of the 16-bit type, it differs from float64 by about that type's rounding
(neither nothing nor more), its backward follows the forward's mode, and ``storage=None`` is the
float64 reference unchanged. The kernels are held to it in tests/kernels/test_storage16.py."""
import numpy as np
import pytest

import fastrnn
from fastrnn import reference

ml_dtypes = pytest.importorskip("ml_dtypes")
DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
HALF_ULP = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def problem(cell, seed=0):
    rng = np.random.default_rng(seed)
    w = fastrnn.init_weights(cell, 6, 9, num_layers=2, bidirectional=True, dtype=np.float64, seed=seed)
    x = rng.standard_normal((7, 3, 6))
    dy = rng.standard_normal((7, 3, 18))
    return x, w, dy


def results(cell, storage, seed=0):
    x, w, dy = problem(cell, seed)
    out = reference.forward(cell, x, w, bidirectional=True, lengths=np.array([7, 3, 5]), storage=storage)
    g = reference.backward(out.saved, dy)
    arrays = {"output": out.output, "h_n": out.h_n, "dx": g.dx, "dh0": g.dh0}
    arrays.update({f"dw{k}_{i}": a for k, e in enumerate(g.dweights) for i, a in enumerate(e)})
    if out.c_n is not None:
        arrays.update(c_n=out.c_n, dc0=g.dc0)
    return arrays


@pytest.mark.parametrize("storage", DTYPES)
@pytest.mark.parametrize("cell", fastrnn.CELLS)
def test_results_are_16bit_values_off_by_about_its_rounding(cell, storage):
    low, exact = results(cell, storage), results(cell, None)
    for name, a in low.items():
        assert a.dtype == np.float64
        assert np.array_equal(a.astype(DTYPES[storage]).astype(np.float64), a), f"{name} is not {storage}-valued"
        rel = np.linalg.norm(a - exact[name]) / np.linalg.norm(exact[name])
        # rounded inputs and stores: at least a fraction of one rounding, at most a few dozen of them;
        # rnn_relu's gradients more (a rounding that crosses the kink flips a unit's derivative)
        most = (200 if cell == "rnn_relu" and name.startswith("d") else 40) * HALF_ULP[storage]
        assert HALF_ULP[storage] / 16 <= rel <= most, f"{name}: relative error {rel:.3g}"


@pytest.mark.parametrize("cell", fastrnn.CELLS)
def test_no_storage_is_the_float64_reference(cell):
    x, w, dy = problem(cell)
    plain = reference.forward(cell, x, w, bidirectional=True)
    same = reference.forward(cell, x, w, bidirectional=True, storage=None)
    assert np.array_equal(plain.output, same.output) and np.array_equal(plain.h_n, same.h_n)
    a, b = reference.backward(plain.saved, dy), reference.backward(same.saved, dy)
    assert np.array_equal(a.dx, b.dx)
    assert all(np.array_equal(p, q) for e, f in zip(a.dweights, b.dweights) for p, q in zip(e, f))


def test_unknown_storage_is_refused():
    x, w, _ = problem("gru")
    with pytest.raises(AssertionError, match="storage must be None, 'bfloat16' or 'float16'"):
        reference.forward("gru", x, w, bidirectional=True, storage="int8")
