"""The one table of tolerances the kernel tests compare the fast path against the float64 reference
with, by dtype and by kind of quantity (forward outputs vs gradients), and ``assert_close``, which
applies it and on failure names the quantity, the worst element's index, its values and the max
absolute error. An element passes when ``|actual - expected| <= tol * (1 + |expected|)``: an
absolute bound for the O(1) outputs and a relative one for the gradients, which are sums over T*B
terms and reach |e| ~ 40 at the sizes tested. For float32 the reference runs on float64 casts of
the same float32 data, so the error measured is the kernels' own rounding, not input rounding.
"""
from __future__ import annotations

import numpy as np

# How the numbers were chosen: ``observed`` below records the worst |actual - expected| / (1 + |e|)
# per row. It was read (1) after the whole suite (the test_kernels.py matrix at T=6, B=3, I=4, H=5,
# its awkward sizes up to T=40, B=97, I=H=97, and the test_random.py sweep, sizes <= 20), and (2)
# after a 400-configuration exploratory sweep like test_random.py with T, B, I, H up to 40 (not
# kept as a test, to keep the suite fast). Each tolerance is ~10x the worst of (1) and at least
# 3x the worst of (2): errors grow with T*B (the weight and bias gradients sum T*B terms in
# float32), so tests much larger than T*B ~ 1600 need their own numbers. Every tolerance is still
# orders of magnitude below a real mistake (a wrong term is typically >= 1e-3 at these sizes).
TOLERANCES = {
    # dtype: {kind: tol}
    "float32": {
        # worst (1) 2.9e-7, (2) 6.0e-7, on outputs of 2-3 layer stacks: a few ulp of float32.
        "output": 3e-6,
        # worst (1) 2.8e-6 (dW_ih), (2) 3.1e-5 (db_ih of one of the larger cases): the
        # kernels sum the T*B rows of the bias and weight gradients in float32.
        "grad": 1e-4,
    },
    "float64": {
        # worst (1) 6.4e-16, (2) 1.1e-15: summation order only, a few ulp.
        "output": 1e-14,
        # worst (1) 8.8e-15 (db_ih), (2) 3.4e-14 (dW_ih).
        "grad": 1e-13,
    },
    # fastrnn.PreparedCell(..., weight_dtype="float16"): float32 maths on weights rounded to float16
    # (relative 2^-12). A gate sums I+H such products, so its error grows like sqrt(I+H) * |w| * |x|;
    # worst seen 4.7e-4 (test_prepared.py: I+H up to 1024, x and h standard normal): tol ~4x that.
    "float16-weights": {
        "output": 2e-3,
    },
    # float32 with TF32 allowed for the products on cuBLAS (allow_tf32=True; the CUDA back end's
    # step kernels stay float32). Not yet measured (no GPU so far): derived. TF32 rounds each
    # operand to 11 significant bits (relative 2^-11 ~ 4.9e-4), so a product summed over K terms of
    # size |x||w| is off by ~ sqrt(K) * 2^-10 * |x||w|: ~1e-3 at the tests' K <= 100 and weights
    # ~0.1-0.3; outputs pass that through sigmoid/tanh (slope <= 1), gradients are sums of such
    # terms (relative). Tolerance ~10x that; replace it with ~10x the worst seen once measured.
    "tf32": {
        "output": 1e-2,
        "grad": 1e-2,
    },
}

# Worst |actual - expected| / (1 + |expected|) seen per (dtype, kind) in this process, with where.
# To re-measure: python -c "import pytest, sys; sys.path.insert(0, 'tests'); import tolerances;
#   pytest.main(['-q', 'tests']); print(tolerances.observed)"
observed: dict = {}


def kind_of(what: str) -> str:
    """'grad' for names of gradients (dx, dh0, dc0, dW..., db...), 'output' otherwise."""
    return "grad" if what.startswith("d") else "output"


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else np.dtype(dtype).name


def tolerance(dtype, what: str) -> float:
    return TOLERANCES[_dtype_name(dtype)][kind_of(what)]


def assert_close(actual, expected, dtype, what: str) -> None:
    """Assert ``actual`` (fast path, any float dtype) matches ``expected`` (reference, float64) to
    the table's tolerance for ``dtype`` (a NumPy dtype or a row name of TOLERANCES) and the kind of ``what`` (a gradient iff it starts with 'd');
    ``None`` must match ``None``. The message names ``what``, the max abs error and its index."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: one is None (actual {type(actual).__name__}, " \
                                                    f"expected {type(expected).__name__})"
        return
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values at {np.argwhere(~np.isfinite(actual))[:5].tolist()}"
    tol = tolerance(dtype, what)
    err = np.abs(actual.astype(np.float64) - expected)
    scaled = err / (1.0 + np.abs(expected))
    worst = np.unravel_index(int(np.argmax(scaled)), scaled.shape) if scaled.size else ()
    if scaled.size:
        key = (_dtype_name(dtype), kind_of(what))
        if scaled[worst] > observed.get(key, (0.0, ""))[0]:
            observed[key] = (float(scaled[worst]), what)
    assert not scaled.size or scaled[worst] <= tol, (
        f"{what} ({_dtype_name(dtype)}): max abs error {err.max():.3g}, worst at index {tuple(map(int, worst))}: "
        f"actual {float(actual[worst])!r} vs expected {float(expected[worst])!r} (|err|/(1+|e|) = {scaled[worst]:.3g} > tol {tol:g})")

# Median elementwise relative error of outputs and weight gradients whose values are all small
# (activations of 1e-3, 1e-7 and 1e-15: tests/kernels/test_reliability.py, test_small_values_relative_accuracy),
# where the absolute floor of TOLERANCES above would pass anything. Measured after the small-|x| tanh
# (csrc/cells/spec.h): float32 medians 5.7e-8 .. 1.7e-7 over every cell, scale and quantity, torch.nn's
# float32 on the same inputs 5.7e-8 .. 1.6e-7 (the same to two digits in most cases); float64 at
# most 3.4e-16. ~6x the worst, far below what the exp-based tanh gave (float32: 3e-5 at 1e-3,
# 0.1 .. 1 at 1e-7, 1 at 1e-15 where it returned 0; float64: 8e-2 at 1e-15).
SMALL_VALUES_RELATIVE = {
    "float32": 1e-6,
    "float64": 2e-15,
}

# The examples' per-batch training losses, fastrnn.nn against torch.nn from the same weights with
# dropout off (tests/examples/test_examples_nlp.py, --quick runs, 1 thread). They differ only in float32
# summation order, but every optimizer step feeds the difference back into the weights, so the
# curves drift apart exponentially along a run: the language model (SGD at lr 20) goes from 3.9e-7
# (relative, worst of its first 15 batches) to 2.7e-5 by batch 25 and 5e-3 by batch 40; the
# translation model (Adam) from 9e-8 (first 15) to 5e-6 by batch 75 and 5.5e-4 by batch 100.
# So the first "batches" batches must agree to "rtol" (~13x the worst measured over the four
# examples' first 15 batches, 2026-12-01: SST-2 <= 1.8e-7, UD EWT <= 3.6e-7, Multi30k 9e-8,
# WikiText-2 3.9e-7), and the mean loss over the whole run to "mean_rtol" (a wrong gradient or a
# lost state changes the first batches' losses by far more than either).
EXAMPLE_LOSS_CURVE = {"batches": 15, "rtol": 5e-6, "mean_rtol": 2e-2}
