"""The training modifiers combined with the cell variants, in the reference
and the NumPy API: zoneout / zoneout_cell, recurrent dropout, weight dropout, grad_clip and
dilation with the peephole / coupled / cell_clip LSTM, the layer-normalised LSTM and GRU, the
reset-before GRU and the projected LSTM (proj_size, also with peephole and cell_clip; the NumPy API
refuses the modifiers with it: tests/kernels/test_projection.py) ("valid for every cell and
combinable with the cell variants").

- The reference (one loop that composes every modifier with every cell step) against central
  finite differences for the deterministic cases (given masks, eval-mode zoneout, dilation), and
  its clamped BPTT against a plain-torch loop with ``register_hook(clamp)`` on every h_t and c_t
  (``helpers.torch_modified_loop``, the issue's equations written out once for every variant and
  modifier; tests/nn/test_nn_modifier_variants.py compares fastrnn.nn with it too).
- The kernels (fastrnn.forward / backward, given masks) against the reference for the LSTM
  variants the kernels fuse: stacked, bidirectional, ragged lengths, float32 and float64, every
  gradient (the peepholes' included); neutral modifiers bit-identical to the variant alone; masks
  drawn from ``rng``.
- The zoneout semantics with the variants (decided from Krueger et al. 2017 / haste): the cell
  runs whole on the carried state, so within step t o's peephole, cell_clip and tanh see the
  cell's own c~_t; the state carried to t + 1 is the zoned-out c_t = d c_{t-1} + (1 - d) c~_t.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from helpers import FD_ATOL, FD_RTOL, check_modified_kernels, loss_weights, numeric_grad, torch_modified_loop
from tolerances import assert_close

T, B, I, H = 4, 3, 3, 2
RAGGED = np.array([4, 1, 3])

# (cell, options) of every variant: the LSTM's fused in the kernels, the rest reference / fastrnn.nn only
LSTM_VARIANTS = [dict(peephole=True), dict(coupled=True), dict(cell_clip=0.4), dict(peephole=True, coupled=True),
                 dict(peephole=True, coupled=True, cell_clip=0.4)]
# proj_size = 3 > H = 2: h (P wide) and c (H wide) differ, so a mask of the wrong width fails
ALL_VARIANTS = [("lstm", v) for v in LSTM_VARIANTS] + [("lstm", dict(layer_norm=True)),
                                                       ("gru", dict(layer_norm=True)), ("gru", dict(reset_after=False)),
                                                       ("lstm", dict(proj_size=3)),
                                                       ("lstm", dict(proj_size=3, peephole=True, cell_clip=0.4))]


def _ids(cases):
    return [c + "-" + "-".join(k for k in o) for c, o in cases]


def gates(cell, opts):
    return 3 if opts.get("coupled") else {"lstm": 4, "gru": 3}.get(cell, 1)


def make_problem(cell, opts, num_layers, bidirectional, t=T, b=B, i=I, h=H, seed=0, scale=2.0):
    """Weights as fastrnn.init_weights draws them (times ``scale``, so that a cell_clip of 0.4 acts at
    some units and not at others), the peepholes last, then the layer norm's vectors (gains around 1,
    biases around 0, perturbed so that they matter); x [T, B, I], h0, c0 [L*D, B, H] (float64)."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    weights = fastrnn.init_weights(cell, i, h, num_layers, bidirectional=bidirectional, dtype=np.float64, seed=seed,
                                   peephole=opts.get("peephole", False), coupled=opts.get("coupled", False),
                                   proj_size=opts.get("proj_size", 0))
    weights = [tuple(scale * w for w in entry) for entry in weights]
    if opts.get("layer_norm"):
        G = gates(cell, opts)
        vectors = lambda: [1 + 0.3 * rng.standard_normal(G * h), 1 + 0.3 * rng.standard_normal(G * h)] + \
            ([1 + 0.3 * rng.standard_normal(h), 0.3 * rng.standard_normal(h)] if cell == "lstm" else [])
        weights = [entry + tuple(vectors()) for entry in weights]
    x = rng.standard_normal((t, b, i))
    h0 = 0.5 * rng.standard_normal((num_layers * D, b, opts.get("proj_size") or h))  # h: P wide when projected
    c0 = 0.5 * rng.standard_normal((num_layers * D, b, h)) if cell == "lstm" else None
    return x, weights, h0, c0


def make_masks(cell, opts, L, D, seed, t=T, b=B, h=H, p=0.4):
    """Explicit masks of every modifier: recurrent m [L*D, B, H] and weight M (L*D of [G*H, H]), both
    Bernoulli(1-p)/(1-p); zoneout d [L*D, T, B, H] of 0/1 (zoneout_cell for the LSTM). With
    proj_size = P, h's masks are P wide ([L*D, B, P], [G*H, P], [L*D, T, B, P]), c's H wide."""
    rng = np.random.default_rng(seed)
    G = gates(cell, opts)
    hw = opts.get("proj_size") or h
    return dict(recurrent_mask=(rng.random((L * D, b, hw)) >= p) / (1 - p),
                weight_mask=[(rng.random((G * h, hw)) >= p) / (1 - p) for _ in range(L * D)],
                zoneout_mask=(rng.random((L * D, t, b, hw)) < p).astype(np.float64),
                zoneout_cell_mask=(rng.random((L * D, t, b, h)) < p).astype(np.float64) if cell == "lstm" else None)


def modifier_cases(cell, opts, L, D, seed=3, t=T, b=B, h=H, p=0.4):
    """name -> the reference's modifier arguments, for the deterministic cases."""
    m = make_masks(cell, opts, L, D, seed, t=t, b=b, h=h, p=p)
    lstm = cell == "lstm"
    zone = dict(zoneout_mask=m["zoneout_mask"], zoneout_cell_mask=m["zoneout_cell_mask"])
    return {
        "recurrent": dict(recurrent_mask=m["recurrent_mask"]),
        "weight": dict(weight_mask=m["weight_mask"]),
        "zoneout": zone,
        # eval-mode zoneout: d = p everywhere
        "zoneout_eval": dict(zoneout_mask=np.full((L * D, t, b, opts.get("proj_size") or h), 0.3),
                             zoneout_cell_mask=np.full((L * D, t, b, h), 0.6) if lstm else None),
        "dilation": dict(dilation=[2, 3][:L]),
        "all": dict(dilation=[3, 2][:L], recurrent_mask=m["recurrent_mask"], weight_mask=m["weight_mask"], **zone),
    }


# ---- the reference against finite differences --------------------------------------------------------
@pytest.mark.parametrize("which", ["all", "zoneout_eval"])
@pytest.mark.parametrize("cell,opts", ALL_VARIANTS, ids=_ids(ALL_VARIANTS))
def test_reference_matches_finite_differences(cell, opts, which):
    L, D = 2, 2
    x, weights, h0, c0 = make_problem(cell, opts, L, True, seed=7)
    mods = modifier_cases(cell, opts, L, D)[which]
    if which == "zoneout_eval":  # with a recurrent mask too: two modifiers at once
        mods = dict(mods, recurrent_mask=modifier_cases(cell, opts, L, D)["recurrent"]["recurrent_mask"])
    kw = dict(lengths=RAGGED, bidirectional=True, **opts, **mods)
    res = reference.forward(cell, x, weights, h0, c0, **kw)
    r_out, r_h, r_c = loss_weights(res, 5)

    def loss():
        o = reference.forward(cell, x, weights, h0, c0, training=False, **kw)
        return np.sum(o.output * r_out) + np.sum(o.h_n * r_h) + (0 if r_c is None else np.sum(o.c_n * r_c))

    g = reference.backward(res.saved, r_out, r_h, r_c)
    checks = [("dx", g.dx, x), ("dh0", g.dh0, h0)] + ([("dc0", g.dc0, c0)] if cell == "lstm" else [])
    for k, entry in enumerate(weights):
        assert len(g.dweights[k]) == len(entry)
        checks += [(f"weights[{k}][{j}]", g.dweights[k][j], w) for j, w in enumerate(entry)]
    for name, analytic, arr in checks:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), rtol=FD_RTOL, atol=FD_ATOL, err_msg=name)


def test_reference_cell_clip_acts_in_the_problems():
    """The clip of 0.4 changes the problems' results (else the cell_clip cases test nothing), and the
    same problem runs unclipped states beyond 0.4 at some units and within it at others."""
    opts = dict(peephole=True, coupled=True)
    x, weights, h0, c0 = make_problem("lstm", opts, 2, True, seed=7)
    kw = dict(lengths=RAGGED, bidirectional=True, **opts)
    free = reference.forward("lstm", x, weights, h0, c0, **kw)
    clipped = reference.forward("lstm", x, weights, h0, c0, cell_clip=0.4, **kw)
    assert np.abs(free.output - clipped.output).max() > 1e-3
    assert (np.abs(free.c_n) > 0.4).any() and (np.abs(free.c_n) < 0.4).any()


# ---- the zoneout semantics with the variants, by hand ----------------------------------------------------
def test_reference_zoneout_with_peephole_and_clip_by_hand():
    """Two steps of the peephole + cell_clip LSTM with zoneout of h and c written out: o's peephole and
    h~ read the cell's own (clipped) c~_1; step 2's i, f peepholes read the zoned-out c_1."""
    rng = np.random.default_rng(4)
    h_, i_, C = 3, 2, 0.5
    sig = lambda a: 1 / (1 + np.exp(-a))
    w_ih, w_hh = rng.standard_normal((4 * h_, i_)), rng.standard_normal((4 * h_, h_))
    b_ih, b_hh, w_ch = rng.standard_normal(4 * h_), rng.standard_normal(4 * h_), rng.standard_normal((3, h_))
    x, h, c = rng.standard_normal((2, 1, i_)), rng.standard_normal((1, h_)), 2 * rng.standard_normal((1, h_))
    d_h = np.array([[[[1.0, 0.0, 0.0]]], [[[0.0, 1.0, 0.0]]]]).reshape(1, 2, 1, h_)
    d_c = np.array([[[[0.0, 1.0, 0.0]]], [[[1.0, 0.0, 1.0]]]]).reshape(1, 2, 1, h_)
    res = reference.forward("lstm", x, [(w_ih, w_hh, b_ih, b_hh, w_ch)], h[None], c[None], peephole=True,
                            cell_clip=C, zoneout_mask=d_h, zoneout_cell_mask=d_c)
    for t in range(2):
        a = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
        i, f = sig(a_i + w_ch[0] * c), sig(a_f + w_ch[1] * c)
        c_new = np.clip(f * c + i * np.tanh(a_g), -C, C)  # c~_t
        h_new = sig(a_o + w_ch[2] * c_new) * np.tanh(c_new)  # h~_t: o sees c~_t
        h = d_h[0, t] * h + (1 - d_h[0, t]) * h_new
        c = d_c[0, t] * c + (1 - d_c[0, t]) * c_new  # carried: the zoned-out c_t
        np.testing.assert_allclose(res.output[t], h, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(res.c_n[0], c, rtol=1e-13, atol=1e-14)


# ---- grad_clip: the reference's clamped BPTT against plain torch with hooks -------------------------------
def numpy_entries(torch, cell, opts, weights, weight_mask=None):
    """NumPy weights entries (the reference's layout) -> torch leaf tensors (float64, requires_grad)
    and torch_modified_loop's dicts (W_hh times the weight mask where one is given)."""
    names = ["w_ih", "w_hh", "b_ih", "b_hh"] + (["w_ch"] if opts.get("peephole") else []) + \
        (["w_hr"] if opts.get("proj_size") else []) + ((["ln_ih", "ln_hh"] + (["ln_c_w", "ln_c_b"] if cell == "lstm" else [])) if opts.get("layer_norm") else [])
    leaves, dicts = [], []
    for k, entry in enumerate(weights):
        ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in entry]
        leaves.append(ts)
        e = dict(zip(names, ts))
        if weight_mask is not None:
            e["w_hh"] = e["w_hh"] * torch.as_tensor(weight_mask[k])
        dicts.append(e)
    return leaves, dicts


_LOOP_OPTS = ("peephole", "coupled", "cell_clip", "reset_after", "layer_norm")


@pytest.mark.parametrize("extra", ["masks", "dilation"])
@pytest.mark.parametrize("cell,opts", ALL_VARIANTS, ids=_ids(ALL_VARIANTS))
def test_reference_clamped_bptt_matches_torch_hooks(cell, opts, extra):
    torch = pytest.importorskip("torch")
    L, D, C = 2, 2, 0.15
    x, weights, h0, c0 = make_problem(cell, opts, L, True, seed=2)
    cases = modifier_cases(cell, opts, L, D, seed=5)
    mods = cases["all"] if extra == "masks" else cases["dilation"]
    res = reference.forward(cell, x, weights, h0, c0, lengths=RAGGED, bidirectional=True, grad_clip=C, **opts, **mods)
    r = tuple(None if a is None else 3 * a for a in loss_weights(res, 11))  # large enough that the clamp acts
    g = reference.backward(res.saved, *r)

    leaves, entries = numpy_entries(torch, cell, opts, weights, mods.get("weight_mask"))
    states = [torch.tensor(a, requires_grad=True) for a in ([x, h0] + ([c0] if c0 is not None else []))]
    tmask = lambda name: None if mods.get(name) is None else torch.as_tensor(mods[name])
    y, hn, cn = torch_modified_loop(torch, cell, states[0], entries, states[1], states[2] if c0 is not None else None,
                                    RAGGED, True, recurrent_mask=tmask("recurrent_mask"),
                                    zoneout=tmask("zoneout_mask"), zoneout_cell=tmask("zoneout_cell_mask"),
                                    grad_clip=C, dilation=mods.get("dilation", 1),
                                    **{k: v for k, v in opts.items() if k in _LOOP_OPTS})
    loss = (y * torch.tensor(r[0])).sum() + (hn * torch.tensor(r[1])).sum()
    if cn is not None:
        loss = loss + (cn * torch.tensor(r[2])).sum()
    loss.backward()
    np.testing.assert_allclose(res.output, y.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g.dx, states[0].grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.dh0, states[1].grad.numpy(), rtol=1e-10, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(g.dc0, states[2].grad.numpy(), rtol=1e-10, atol=1e-12)
    for k in range(L * D):
        for j, leaf in enumerate(leaves[k]):
            np.testing.assert_allclose(g.dweights[k][j], leaf.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{k} {j}")
    # the clamp acted: without it the gradients differ
    plain = reference.backward(reference.forward(cell, x, weights, h0, c0, lengths=RAGGED, bidirectional=True,
                                                 **opts, **mods).saved, *r)
    assert np.abs(plain.dx - g.dx).max() > 1e-3


# ---- the kernels (NumPy API, given masks) against the reference --------------------------------------
# The variants the kernels fuse (a variant fused later, such as the reset-before GRU, joins by one
# entry here once fastrnn.forward runs it).
KERNEL_VARIANTS = [("lstm", o) for o in LSTM_VARIANTS]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("which", ["grad_clip", "recurrent", "weight", "dilation", "zoneout", "zoneout_eval",
                                   "zoneout_clip", "all"])
@pytest.mark.parametrize("layout", ["L1-uni", "L2-bi-ragged"])
@pytest.mark.parametrize("cell,opts", KERNEL_VARIANTS, ids=_ids(KERNEL_VARIANTS))
def test_kernels_match_reference(cell, opts, which, dtype, layout):
    L, bi, lengths = (1, False, None) if layout == "L1-uni" else (2, True, np.array([7, 2, 5]))
    D = 2 if bi else 1
    t_, b_, i_, h_ = 7, 3, 4, 17  # H = 17: several unit blocks of odd width across the threads
    # weights init_weights' scale (1/sqrt(17)) times 2: products O(1), the clip of 0.4 active somewhere
    x, weights, h0, c0 = make_problem(cell, opts, L, bi, t=t_, b=b_, i=i_, h=h_, seed=1, scale=2.0)
    # p = 0.5: the masks' 2 is exact in float32, so m * h adds no rounding the reference lacks
    cases = modifier_cases(cell, opts, L, D, seed=2, t=t_, b=b_, h=h_, p=0.5)
    mods = dict(cases, grad_clip=dict(grad_clip=0.05), zoneout_clip=dict(grad_clip=0.05, **cases["zoneout"]),
                all=dict(grad_clip=0.08, **cases["all"]))[which]
    if which == "all":  # dilations of 2 and 4 (T = 7: the last folded step is padding)
        mods = dict(mods, dilation=[2, 4][:L])
    check_modified_kernels(cell, x, weights, h0, c0, mods, dtype, lengths=lengths, bidirectional=bi, opts=opts)


@pytest.mark.parametrize("opts", LSTM_VARIANTS, ids=_ids([("lstm", o) for o in LSTM_VARIANTS]))
def test_kernels_grad_clip_acts_on_the_variants(opts):
    """The clamp of dL/dc_t changes the variants' gradients (the variant cells read the bound)."""
    x, weights, h0, c0 = make_problem("lstm", opts, 1, False, t=6, b=3, i=3, h=5, seed=4)
    kw = dict(training=True, **opts)
    dy = 4 * np.random.default_rng(0).standard_normal((6, 3, 5))
    plain = fastrnn.backward(fastrnn.forward("lstm", x, weights, h0, c0, **kw).saved, dy)
    clipped = fastrnn.backward(fastrnn.forward("lstm", x, weights, h0, c0, grad_clip=0.05, **kw).saved, dy)
    ref = reference.forward("lstm", x, weights, h0, c0, grad_clip=0.05, **opts)
    want = reference.backward(ref.saved, dy)
    assert np.abs(plain.dx - clipped.dx).max() > 1e-3
    assert_close(clipped.dx, want.dx, np.float64, "dx")
    assert_close(clipped.dc0, want.dc0, np.float64, "dc0")


@pytest.mark.parametrize("opts", LSTM_VARIANTS, ids=_ids([("lstm", o) for o in LSTM_VARIANTS]))
def test_kernels_neutral_modifiers_are_bit_identical(opts):
    """A recurrent mask of ones, a weight mask of ones, a clip no gradient reaches, zoneout masks of
    zeros and dilation 1 leave the variant's outputs and gradients unchanged, bit for bit."""
    x, weights, h0, c0 = make_problem("lstm", opts, 2, True, t=6, b=3, i=4, h=9, seed=5)
    x, h0, c0 = x.astype(np.float32), h0.astype(np.float32), c0.astype(np.float32)
    weights = [tuple(a.astype(np.float32) for a in w) for w in weights]
    kw = dict(lengths=np.array([6, 2, 4]), bidirectional=True, training=True, **opts)
    zeros = np.zeros((4, 6, 3, 9), np.float32)
    a = fastrnn.forward("lstm", x, weights, h0, c0, **kw)
    b = fastrnn.forward("lstm", x, weights, h0, c0, recurrent_mask=np.ones((4, 3, 9), np.float32), grad_clip=1e30,
                        dilation=[1, 1], weight_mask=[np.ones_like(w[1]) for w in weights], zoneout_mask=zeros,
                        zoneout_cell_mask=zeros, **kw)
    for name in ("output", "h_n", "c_n"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    dy = np.ones_like(a.output)
    ga, gb = fastrnn.backward(a.saved, dy), fastrnn.backward(b.saved, dy)
    np.testing.assert_array_equal(ga.dx, gb.dx)
    np.testing.assert_array_equal(ga.dc0, gb.dc0)
    for wa, wb in zip(ga.dweights, gb.dweights):
        for u, v in zip(wa, wb):
            np.testing.assert_array_equal(u, v)


def test_numpy_api_draws_masks_for_the_variants():
    """rng draws the masks for a variant as for the base cells (the coupled LSTM's weight masks are
    [3H, H]); the masks kept in saved reproduce the run through the reference; eval: the formula."""
    opts = dict(peephole=True, coupled=True, cell_clip=0.4)
    x, weights, h0, c0 = make_problem("lstm", opts, 2, True, t=6, b=4, i=3, h=8, seed=6)
    kw = dict(bidirectional=True, recurrent_dropout=0.5, weight_dropout=0.3, zoneout=0.4, zoneout_cell=0.3, **opts)
    a = fastrnn.forward("lstm", x, weights, h0, c0, training=True, rng=3, **kw)
    b = fastrnn.forward("lstm", x, weights, h0, c0, training=True, rng=np.random.default_rng(3), **kw)
    np.testing.assert_array_equal(a.output, b.output)
    assert [m.shape for m in a.saved.weight_mask] == [(24, 8)] * 4
    d_h, d_c = a.saved.zoneout[0]
    ref = reference.forward("lstm", x, weights, h0, c0, bidirectional=True, recurrent_mask=a.saved.recurrent_mask,
                            weight_mask=a.saved.weight_mask, zoneout_mask=d_h, zoneout_cell_mask=d_c, **opts)
    assert_close(a.output, ref.output, np.float64, "output")
    assert_close(a.c_n, ref.c_n, np.float64, "c_n")
    e = fastrnn.forward("lstm", x, weights, h0, c0, **kw)  # not training: no dropout, d = p
    full = lambda p: np.full((4, 6, 4, 8), p)
    ref = reference.forward("lstm", x, weights, h0, c0, bidirectional=True, zoneout_mask=full(0.4),
                            zoneout_cell_mask=full(0.3), **opts)
    assert_close(e.output, ref.output, np.float64, "output")
    assert_close(e.c_n, ref.c_n, np.float64, "c_n")


def test_numpy_api_dilation_with_a_variant_and_batch_first():
    """Dilation folds [T, B] around the kernels: the variant's options and peepholes go with it."""
    opts = dict(peephole=True, cell_clip=0.4)
    x, weights, h0, c0 = make_problem("lstm", opts, 2, True, t=7, b=4, i=3, h=5, seed=8)
    lengths = np.array([1, 7, 2, 5])
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    kw = dict(lengths=lengths, bidirectional=True, batch_first=True, dilation=[4, 3], **opts)
    res = fastrnn.forward("lstm", xb, weights, h0, c0, training=True, **kw)
    ref = reference.forward("lstm", xb, weights, h0, c0, **kw)
    for name in ("output", "h_n", "c_n"):
        assert_close(getattr(res, name), getattr(ref, name), np.float64, name)
    r = loss_weights(ref, 1)
    got, want = fastrnn.backward(res.saved, *r), reference.backward(ref.saved, *r)
    for name in ("dx", "dh0", "dc0"):
        assert_close(getattr(got, name), getattr(want, name), np.float64, name)
    for k in range(4):
        assert_close(got.dweights[k][4], want.dweights[k][4], np.float64, f"dW_ch[{k}]")
