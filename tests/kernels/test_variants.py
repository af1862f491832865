"""The cell variants in the NumPy API and the reference: the LSTM with peepholes, with the
coupled input-forget gate (CIFG), with cell clipping, and their combinations; init="identity";
the reset-before GRU and layer norm in the reference (their kernels: test_fused_variants.py).
(1) The reference's hand-written BPTT of every variant against central finite differences of its
own forward (float64); (2) the kernels (fastrnn.forward / backward) against the reference over the
matrix of layers x directions x lengths x dtypes, with awkward sizes on both sides of the 16-row
packing threshold; (3) the invariances: zero peepholes == plain LSTM, cell_clip=inf == plain, the
clip really clamps; (4) the API's checks. fastrnn.nn's variants: tests/nn/test_nn_variants.py.
"""
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from tolerances import assert_close
from helpers import FD_ATOL, FD_RTOL, VARIANT_IDS, VARIANTS, numeric_grad, variant_options, variant_problem

DTYPES = (np.float32, np.float64)
def run(module, p, opts=None, with_state=True):
    cast = (lambda a: None if a is None else np.asarray(a, np.float64)) if module is reference else (lambda a: a)
    weights = [tuple(cast(w) for w in entry) for entry in p["weights"]]
    res = module.forward("lstm", cast(p["x"]), weights, cast(p["h0"]) if with_state else None,
                         cast(p["c0"]) if with_state else None, lengths=p["lengths"], bidirectional=p["bidirectional"],
                         training=True, **(p["opts"] if opts is None else opts))
    grads = module.backward(res.saved, cast(p["dy"]), cast(p["dhn"]), cast(p["dcn"]))
    out = {"output": res.output, "h_n": res.h_n, "c_n": res.c_n, "dx": grads.dx, "dh0": grads.dh0, "dc0": grads.dc0}
    names = ["dw_ih", "dw_hh", "db_ih", "db_hh"][:len(p["weights"][0]) - (1 if p["opts"]["peephole"] else 0)]
    names += ["dw_ch"] if p["opts"]["peephole"] else []
    for k, entry in enumerate(grads.dweights):
        assert len(entry) == len(names)
        for name, g in zip(names, entry):
            out[f"dweights[{k}].{name}"] = g
    return out


def assert_matches_reference(p):
    fast, ref = run(fastrnn, p), run(reference, p)
    assert fast.keys() == ref.keys()
    for name in fast:
        if fast[name] is not None:
            assert fast[name].dtype == p["dtype"], name
        assert_close(fast[name], ref[name], p["dtype"], name)
    return fast


# ---- (1) the reference against finite differences -------------------------------------------------
@pytest.mark.parametrize("bidirectional,ragged", [(False, False), (True, True)], ids=["uni", "bi-ragged"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_reference_backward_matches_finite_differences(variant, bidirectional, ragged):
    # weights scaled so that the clip of 0.4 is active at some units and not at others
    p = variant_problem(variant, np.float64, 2, bidirectional, T=3, B=3, I=3, H=2, ragged=ragged, seed=7, scale=2.0)
    if variant[2] is not None:
        c_raw_seen = np.abs(reference.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], lengths=p["lengths"],
                                              bidirectional=bidirectional, **variant_options(variant[:2] + (None,))).c_n)
        assert (c_raw_seen > 0.4).any() and (c_raw_seen < 0.4).any()
    res = reference.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], lengths=p["lengths"],
                            bidirectional=bidirectional, **p["opts"])
    grads = reference.backward(res.saved, p["dy"], p["dhn"], p["dcn"])

    def loss():
        o = reference.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], lengths=p["lengths"],
                              bidirectional=bidirectional, training=False, **p["opts"])
        return np.sum(o.output * p["dy"]) + np.sum(o.h_n * p["dhn"]) + np.sum(o.c_n * p["dcn"])

    for name, analytic, arr in [("dx", grads.dx, p["x"]), ("dh0", grads.dh0, p["h0"]), ("dc0", grads.dc0, p["c0"])]:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), rtol=FD_RTOL, atol=FD_ATOL, err_msg=name)
    for k, (dw, w) in enumerate(zip(grads.dweights, p["weights"])):
        assert len(dw) == len(w)
        for j in range(len(w)):
            np.testing.assert_allclose(dw[j], numeric_grad(loss, w[j]), rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"weights[{k}][{j}]")


def test_reference_peephole_equations_by_hand():
    """One step of the peephole + clip LSTM written out: i, f see c_{t-1}, o sees the clipped c_t."""
    rng = np.random.default_rng(1)
    H, I = 3, 2
    w_ih, w_hh, b_ih, b_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H)), \
        rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    w_ch = rng.standard_normal((3, H))
    x, h0, c0 = rng.standard_normal((1, 1, I)), rng.standard_normal((1, 1, H)), 2 * rng.standard_normal((1, 1, H))
    res = reference.forward("lstm", x, [(w_ih, w_hh, b_ih, b_hh, w_ch)], h0, c0, peephole=True, cell_clip=0.5)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    a = w_ih @ x[0, 0] + b_ih + w_hh @ h0[0, 0] + b_hh
    i = sig(a[:H] + w_ch[0] * c0[0, 0])
    f = sig(a[H:2 * H] + w_ch[1] * c0[0, 0])
    c = np.clip(f * c0[0, 0] + i * np.tanh(a[2 * H:3 * H]), -0.5, 0.5)
    o = sig(a[3 * H:] + w_ch[2] * c)
    np.testing.assert_allclose(res.c_n[0, 0], c, rtol=1e-12)
    np.testing.assert_allclose(res.h_n[0, 0], o * np.tanh(c), rtol=1e-12)


# ---- (2) the kernels against the reference --------------------------------------------------------
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_kernels_match_reference(variant, dtype, num_layers, bidirectional, ragged):
    seed = zlib.crc32(repr((variant, np.dtype(dtype).name, num_layers, bidirectional, ragged)).encode())
    p = variant_problem(variant, dtype, num_layers, bidirectional, T=6, B=3, I=4, H=5, ragged=ragged, seed=seed,
                     scale=2.0)
    assert_matches_reference(p)


AWKWARD = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (5, 3, 4, 1),
    (3, 2, 37, 21),   # T*B < 16: weights read from their rows
    (3, 7, 37, 21),   # T*B >= 16: packed panels
    (2, 33, 3, 19),   # odd batch, H not a multiple of the vector width
]


@pytest.mark.parametrize("size", AWKWARD, ids=["T%d-B%d-I%d-H%d" % s for s in AWKWARD])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("variant", [(True, False, 0.4), (True, True, None), (False, True, 0.4)],
                         ids=["peep-clip", "peep-cifg", "cifg-clip"])
def test_kernels_awkward_sizes(variant, dtype, size):
    T, B, I, H = size
    p = variant_problem(variant, dtype, 2, True, T, B, I, H, ragged=True, seed=sum(size), scale=2.0)
    assert_matches_reference(p)


@pytest.mark.parametrize("variant", [(True, False, None), (True, True, 0.4)], ids=["peep", "peep-cifg-clip"])
def test_kernels_no_bias_and_no_state(variant):
    p = variant_problem(variant, np.float64, 2, True, 5, 3, 4, 6, bias=False, seed=3)
    fast, ref = run(fastrnn, p, with_state=False), run(reference, p, with_state=False)
    for name in fast:
        assert_close(fast[name], ref[name], np.float64, name)
    assert len(p["weights"][0]) == 3  # (w_ih, w_hh, w_ch)


# ---- (3) invariances ------------------------------------------------------------------------------
def assert_same_as_plain(variant, plain, dtype):
    """Within the tolerance (p*c = 0 and clamp(c, -inf, inf) add exactly nothing, but the variant's
    pointwise loop is a different function that the compiler vectorises and contracts (FMA)
    differently, which moves results by an ulp or so: float32 always, float64 too since its exp
    is vectorised like float32's), and never further than that from each other."""
    for name, v in plain.items():
        assert_close(variant[name], v, dtype, name)

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_zero_peepholes_are_the_plain_lstm(dtype):
    p = variant_problem((True, False, None), dtype, 2, True, 5, 4, 3, 6, ragged=True, seed=11)
    zero = dict(p, weights=[entry[:-1] + (np.zeros_like(entry[-1]),) for entry in p["weights"]])
    peep = run(fastrnn, zero)
    plain = run(fastrnn, dict(zero, weights=[entry[:-1] for entry in zero["weights"]],
                              opts=variant_options((False, False, None))))
    assert_same_as_plain(peep, plain, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_infinite_clip_is_the_plain_lstm(dtype):
    p = variant_problem((False, False, np.inf), dtype, 2, True, 5, 4, 3, 6, ragged=True, seed=12)
    clipped = run(fastrnn, p)
    plain = run(fastrnn, p, opts={})
    assert_same_as_plain(clipped, plain, dtype)


def test_clip_bounds_the_cell_state():
    p = variant_problem((False, False, 0.3), np.float64, 1, False, 8, 4, 3, 6, seed=13, scale=3.0)
    res = fastrnn.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], cell_clip=0.3)
    plain = fastrnn.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"])
    assert np.abs(res.c_n).max() <= 0.3 and np.abs(plain.c_n).max() > 0.3
    assert np.isclose(np.abs(res.c_n).max(), 0.3)


def test_step_by_step_equals_the_sequence():
    """Carrying (h, c) through T one-step calls gives the sequence's outputs (peephole + CIFG + clip)."""
    p = variant_problem((True, True, 0.4), np.float64, 1, False, 6, 3, 4, 5, seed=14, scale=2.0)
    seq = fastrnn.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], **p["opts"])
    h, c = p["h0"], p["c0"]
    for t in range(6):
        step = fastrnn.forward("lstm", p["x"][t:t + 1], p["weights"], h, c, **p["opts"])
        np.testing.assert_allclose(step.output[0], seq.output[t], rtol=1e-13, atol=1e-14)
        h, c = step.h_n, step.c_n
    np.testing.assert_allclose(c, seq.c_n, rtol=1e-13, atol=1e-14)


def test_defaults_are_todays_cells_bit_for_bit():
    p = variant_problem((False, False, None), np.float32, 2, True, 5, 4, 3, 6, ragged=True, seed=15)
    a = run(fastrnn, p, opts={})
    b = run(fastrnn, p, opts=dict(peephole=False, coupled=False, cell_clip=None))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_identity_init():
    w = fastrnn.init_weights("rnn_relu", 7, 50, 2, bidirectional=True, init="identity", seed=0, dtype=np.float64)
    for w_ih, w_hh, b_ih, b_hh in w:
        np.testing.assert_array_equal(w_hh, np.eye(50))
        assert not b_ih.any() and not b_hh.any()
        assert 0.0007 < w_ih.std() < 0.0013 and abs(w_ih.mean()) < 0.0005
    w_hh = fastrnn.init_weights("gru", 3, 4, init="identity", seed=0)[0][1]
    np.testing.assert_array_equal(w_hh, np.tile(np.eye(4), (3, 1)))
    with pytest.raises(ValueError, match="init must be"):
        fastrnn.init_weights("rnn_tanh", 3, 4, init="orthogonal")


# ---- (4) the API's checks ---------------------------------------------------------------------------
def test_option_errors():
    x = np.zeros((2, 1, 3), np.float32)
    w = fastrnn.init_weights("lstm", 3, 4, peephole=True)
    with pytest.raises(ValueError, match=r"w_ch.*\(3, H\)"):
        fastrnn.forward("lstm", x, [w[0][:4] + (np.zeros((2, 4), np.float32),)], peephole=True)
    with pytest.raises(ValueError, match="weights\\[0\\] must be a tuple"):
        fastrnn.forward("lstm", x, [w[0][:4]], peephole=True)
    with pytest.raises(ValueError, match="LSTM options"):
        fastrnn.forward("gru", x, fastrnn.init_weights("gru", 3, 4), peephole=True)
    with pytest.raises(ValueError, match="cell_clip must be > 0"):
        fastrnn.forward("lstm", x, fastrnn.init_weights("lstm", 3, 4), cell_clip=0)
    with pytest.raises(TypeError, match="cell_clip"):
        fastrnn.forward("lstm", x, fastrnn.init_weights("lstm", 3, 4), cell_clip="1")
    with pytest.raises(ValueError, match=r"\(3\*H, I\)"):  # coupled: 3 gate blocks
        fastrnn.forward("lstm", x, fastrnn.init_weights("lstm", 3, 4), coupled=True)
    with pytest.raises(ValueError, match="w_ch"):  # PreparedCell's peepholes: tests/kernels/test_fused_variants.py
        fastrnn.PreparedCell("lstm", *fastrnn.init_weights("lstm", 3, 4)[0], peephole=True)


# ---- the GRU with reset_after=False (reference; the kernels: tests/kernels/test_fused_variants.py) ----
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional,ragged", [(False, False), (True, True)], ids=["uni", "bi-ragged"])
def test_reference_gru_reset_before_matches_finite_differences(bidirectional, ragged, bias):
    rng = np.random.default_rng(21)
    T, B, I, H, L = 3, 3, 3, 2, 2
    D = 2 if bidirectional else 1
    weights = fastrnn.init_weights("gru", I, H, L, bidirectional=bidirectional, bias=bias, dtype=np.float64, seed=21)
    weights = [tuple(2.0 * w for w in entry) for entry in weights]
    x, h0 = rng.standard_normal((T, B, I)), 0.5 * rng.standard_normal((L * D, B, H))
    dy, dhn = rng.standard_normal((T, B, D * H)), rng.standard_normal((L * D, B, H))
    kw = dict(lengths=np.array([2, 3, 1]) if ragged else None, bidirectional=bidirectional, reset_after=False)
    res = reference.forward("gru", x, weights, h0, **kw)
    grads = reference.backward(res.saved, dy, dhn)

    def loss():
        o = reference.forward("gru", x, weights, h0, training=False, **kw)
        return np.sum(o.output * dy) + np.sum(o.h_n * dhn)

    np.testing.assert_allclose(grads.dx, numeric_grad(loss, x), rtol=FD_RTOL, atol=FD_ATOL)
    np.testing.assert_allclose(grads.dh0, numeric_grad(loss, h0), rtol=FD_RTOL, atol=FD_ATOL)
    for k, (dw, w) in enumerate(zip(grads.dweights, weights)):
        for j in range(len(w)):
            np.testing.assert_allclose(dw[j], numeric_grad(loss, w[j]), rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"weights[{k}][{j}]")


def test_reference_gru_reset_before_differs_from_reset_after():
    """The two GRUs agree when r = 1 is forced (huge r bias) and differ otherwise."""
    rng = np.random.default_rng(22)
    w = list(fastrnn.init_weights("gru", 3, 4, dtype=np.float64, seed=22)[0])
    x, h0 = rng.standard_normal((4, 2, 3)), rng.standard_normal((1, 2, 4))
    after = reference.forward("gru", x, [tuple(w)], h0).output
    before = reference.forward("gru", x, [tuple(w)], h0, reset_after=False).output
    assert np.abs(after - before).max() > 1e-3
    w[2] = w[2].copy()
    w[2][:4] = 50.0  # r = σ(50 + ...) = 1 to double precision
    np.testing.assert_allclose(reference.forward("gru", x, [tuple(w)], h0, reset_after=False).output,
                               reference.forward("gru", x, [tuple(w)], h0).output, rtol=1e-12, atol=1e-14)


def test_gru_reset_before_is_a_gru_option():
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="reset_after is a GRU option"):
        fastrnn.forward("lstm", x, fastrnn.init_weights("lstm", 3, 4), reset_after=False)


# ---- layer norm (reference; the kernels: tests/kernels/test_fused_variants.py) ---------------------
def layer_norm_problem(cell, bias, bidirectional, seed):
    """Weights as fastrnn.nn orders them with layer_norm=True: (w_ih, w_hh[, b_ih, b_hh], γ_ih, γ_hh
    [, γ_c, β_c]), the layer norm's vectors drawn away from their init (ones, zeros) so that their
    gradients are tested in general position."""
    rng = np.random.default_rng(seed)
    # H = 3: with H = 2 the cell norm of two nearly equal values is steep enough for the central
    # differences' truncation error to reach 2e-8
    T, B, I, H, L = 3, 3, 3, 3, 2
    D = 2 if bidirectional else 1
    G = 4 if cell == "lstm" else 3
    weights = fastrnn.init_weights(cell, I, H, L, bidirectional=bidirectional, bias=bias, dtype=np.float64, seed=seed)
    lns = [(1.0 + 0.3 * rng.standard_normal(G * H), 1.0 + 0.3 * rng.standard_normal(G * H))
           + ((1.0 + 0.3 * rng.standard_normal(H), 0.3 * rng.standard_normal(H)) if cell == "lstm" else ())
           for _ in weights]
    weights = [tuple(2.0 * w for w in entry) + ln for entry, ln in zip(weights, lns)]
    x, h0 = rng.standard_normal((T, B, I)), 0.5 * rng.standard_normal((L * D, B, H))
    c0 = rng.standard_normal((L * D, B, H)) if cell == "lstm" else None
    dy, dhn = rng.standard_normal((T, B, D * H)), rng.standard_normal((L * D, B, H))
    dcn = rng.standard_normal((L * D, B, H)) if cell == "lstm" else None
    return weights, x, h0, c0, dy, dhn, dcn


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional,ragged", [(False, False), (True, True)], ids=["uni", "bi-ragged"])
def test_reference_layer_norm_matches_finite_differences(cell, bidirectional, ragged, bias):
    """The hand-written BPTT of the layer-normalised LSTM/GRU, every gradient (x, h0, c0, weights,
    biases, the norm's gains and the cell norm's bias) against central differences, float64."""
    weights, x, h0, c0, dy, dhn, dcn = layer_norm_problem(cell, bias, bidirectional, seed=31)
    kw = dict(lengths=np.array([2, 3, 1]) if ragged else None, bidirectional=bidirectional, layer_norm=True)
    res = reference.forward(cell, x, weights, h0, c0, **kw)
    grads = reference.backward(res.saved, dy, dhn, dcn)

    def loss():
        o = reference.forward(cell, x, weights, h0, c0, training=False, **kw)
        return np.sum(o.output * dy) + np.sum(o.h_n * dhn) + (np.sum(o.c_n * dcn) if cell == "lstm" else 0.0)

    np.testing.assert_allclose(grads.dx, numeric_grad(loss, x), rtol=FD_RTOL, atol=FD_ATOL)
    np.testing.assert_allclose(grads.dh0, numeric_grad(loss, h0), rtol=FD_RTOL, atol=FD_ATOL)
    if cell == "lstm":
        np.testing.assert_allclose(grads.dc0, numeric_grad(loss, c0), rtol=FD_RTOL, atol=FD_ATOL)
    for k, (dw, w) in enumerate(zip(grads.dweights, weights)):
        assert len(dw) == len(w)
        for j in range(len(w)):
            np.testing.assert_allclose(dw[j], numeric_grad(loss, w[j]), rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"weights[{k}][{j}]")


def test_reference_layer_norm_equations_one_step():
    """One LSTM step written out here (LN over the whole 4H row, gains, then biases; h from the
    normalised c) against the reference; with a huge γ_c the output saturates, so c's norm is used."""
    rng = np.random.default_rng(32)
    B, I, H = 2, 3, 4
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    b_ih, b_hh = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    g_ih, g_hh, g_c, b_c = (rng.standard_normal(4 * H), rng.standard_normal(4 * H), rng.standard_normal(H),
                            rng.standard_normal(H))
    x, h, c = rng.standard_normal((1, B, I)), rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H))

    def ln(v):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)

    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    a = ln(x[0] @ w_ih.T) * g_ih + ln(h[0] @ w_hh.T) * g_hh + b_ih + b_hh
    i, f, g, o = sig(a[:, :H]), sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sig(a[:, 3 * H:])
    c_new = f * c[0] + i * g
    h_new = o * np.tanh(ln(c_new) * g_c + b_c)
    res = reference.forward("lstm", x, [(w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, g_c, b_c)], h, c, layer_norm=True)
    np.testing.assert_allclose(res.output[0], h_new, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.c_n[0], c_new, rtol=1e-12, atol=1e-14)
