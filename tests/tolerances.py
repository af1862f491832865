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
    # layer_norm=True (tests/kernels/test_fused_variants.py): LN divides by the row's standard
    # deviation, so a row whose values nearly agree (the cell norm over H = 5 units of a second
    # layer) amplifies the float32 rounding of the stored c and products: worst seen 1.2e-5 (outputs)
    # and 1.2e-3 (dln_bias_c) over that file's matrix and 20 random sizes up to 12; float64 6.5e-14
    # in the same case, where a real mistake (>= 1e-3) shows. Tolerances ~4-8x the worst seen.
    "float32-layer-norm": {
        "output": 1e-4,
        "grad": 5e-3,
    },
    "float64-layer-norm": {
        "output": 1e-13,
        "grad": 5e-13,
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
    # The CUDA kernels in float16 / bfloat16 storage (float32 arithmetic and recurrent state; only
    # what they store is rounded: the input projection, the outputs, the reserve, the gradients),
    # tests/cuda/test_cuda_features.py, inputs that are values of the 16-bit type against the float64
    # reference on the same values. Measured on the CPU emulator (cuda/emu/, the own GEMM; no GPU yet),
    # 2026-12-01, over that file's 16-bit cases (every cell, L1-uni and L2-bi-ragged, the peephole +
    # coupled + clip LSTM, B=17 I=70 H=33 with recurrent dropout, zoneout and grad_clip).
    # output: STYLE.md's rule, the kernels at most 2x as far from float64 as a reference that rounds
    #   to the storage type where the kernels store (rounding_reference_forward there: gi, y, h_n,
    #   c_n rounded). That reference's worst was 3.2e-4 (float16) and 3.0e-3 (bfloat16), the
    #   rounding of y itself (half an ulp: 2^-11, 2^-8), and the kernels' worst was the same; the
    #   tolerance is 2x the reference's worst (each case also checks the rule itself).
    # grad: no rounding reference for backward yet (dG, the reserve and the weight gradients are
    #   stored rounded, and dW sums T*B rounded terms): ~3x the worst seen, 4.3e-3 (float16, dW_ih)
    #   and 3.7e-2 (bfloat16, dW_ih); rnn_relu was no worse in these cases.
    # The projected LSTM (proj_size, emulator, 2026-12-01, L2-bi-ragged H=7 P=3, plain, peephole +
    #   clip and coupled): the outputs exactly as far from float64 as the rounding reference, the
    #   gradients at most 1.1e-3 (float16, dW_hr) and 1.2e-2 (bfloat16, dx): inside these rows.
    "cuda-float16": {"output": 6.5e-4, "grad": 1.5e-2},
    "cuda-bfloat16": {"output": 6.5e-3, "grad": 1.1e-1},
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


def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected|| over the whole array (Frobenius; 0 for a zero expected
    that is matched exactly): the 16-bit tests' measure, where an elementwise bound would fail at the
    rnn_relu kink (one rounding flips a unit's derivative, an O(1) difference in one element)."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected, dtype=np.float64)
    num, den = np.linalg.norm(a - e), np.linalg.norm(e)
    return float(num / den) if den > 0 else float(num)


# 16-bit storage (tests/kernels/test_storage16.py): the kernels on float16 / bfloat16 inputs against the
# float64 reference on the same 16-bit values, relative_error per array. The rounding of each stored
# activation (half an ulp: 2^-11 float16, 2^-8 bfloat16, relative) dominates. Worst seen over the
# test's shapes plus 3-layer, T=30 and H=64 cases, two seeds each (2026-12-01): rnn_tanh/lstm/gru
# outputs 3.3e-4 (float16), 3.0e-3 (bfloat16); gradients 7.3e-4, 6.3e-3. rnn_relu's gradients
# are far worse for both (3.0e-2, 0.11: db of a layer whose pre-activations sit near the kink,
# where a rounding flips a unit's derivative), hence their own row. Each tolerance ~4-6x the worst.
STORAGE16 = {
    "float16": {"output": 2e-3, "grad": 4e-3},
    "bfloat16": {"output": 1.5e-2, "grad": 3e-2},
    "float16-relu": {"output": 2e-3, "grad": 1.5e-1},
    "bfloat16-relu": {"output": 1.5e-2, "grad": 5e-1},
}

# STYLE.md's rule for 16-bit types (tests/kernels/test_storage16.py): the kernels' error against
# float64 (relative_error, and the median elementwise relative error where values are small) at
# most LOW_PRECISION_RATIO times that of the reference in the same low precision
# (fastrnn.reference.forward(..., storage=dtype): rounded where the kernels store). An error below
# LOW_PRECISION_FLOOR (a quarter of the type's half-ulp, 2^-13 float16, 2^-10 bfloat16) counts as
# that floor, so that a quantity the low-precision reference happens to get almost exact does not
# demand the impossible. Measured (2026-12-01, avx512_bf16 build, the test's cases): whole-array
# ratios at most 1.27 (bfloat16: gru db_ih), 1.24 (rnn_tanh), 1.17 (lstm), 1.02 (rnn_relu); float16
# at most 1.16 (lstm dW_hh); small values (median elementwise, 1e-3 and 1e-7) at most 1.01;
# layer_norm=True (the LSTM and GRU, 2026-12-01) at most 1.32 (bfloat16 lstm dW_hh), 1.25 (float16). The
# rule's 2.0 is STYLE.md's; the kernels sit well inside it because they round in fewer places than
# the reference (float32 products of float32 A on the widening paths).
LOW_PRECISION_RATIO = 2.0
LOW_PRECISION_FLOOR = {"float16": 2.0 ** -13, "bfloat16": 2.0 ** -10}

# fastrnn.nn with 16-bit types on the CPU (tests/nn/test_nn_16bit.py), relative_error against torch.nn
# in float64 on the same 16-bit-valued weights and inputs (T=9, B=5, I=12, H=20, 2 layers, both
# directions). Worst seen (2026-12-01): float16 outputs 2.9e-4, gradients 5.0e-4 (rnn_relu 3.9e-4);
# bfloat16 2.5e-3, 4.6e-3 (rnn_relu's gradients 2.0e-2: the kink); the same under autocast. torch.nn
# under the same CPU autocast is further from float64 than fastrnn (LSTM bfloat16 2.4e-3 / 5.1e-3,
# GRU 3.6e-3 / 6.9e-3), and the two differ by at most 7.8e-3: the test allows 2x the row there.
# Each row ~5x the worst.
NN16 = {
    "float16": {"output": 2e-3, "grad": 4e-3},
    "bfloat16": {"output": 1.5e-2, "grad": 3e-2},
    "float16-relu": {"output": 2e-3, "grad": 2e-2},
    "bfloat16-relu": {"output": 1.5e-2, "grad": 1e-1},
}
