"""Tests of the training modifiers of every cell: zoneout / zoneout_cell, recurrent
dropout, weight dropout (DropConnect on W_hh), gradient clipping in BPTT and dilation.

- The reference (``fastrnn.reference``, explicit masks) against finite differences for the
  deterministic ones (eval-mode zoneout, given masks, dilation), and its clamped BPTT against a
  plain-torch loop with ``h_t.register_hook(lambda g: g.clamp(-C, C))`` on every step.
- The kernels (NumPy API, given masks) against the reference: every cell, stacked,
  bidirectional, ragged lengths, float32 and float64.
- ``fastrnn.nn`` against a plain-torch implementation of the same equations given the same masks
  (re-drawn from the same seed in the documented order), and the sharp stochastic checks: with
  H = 1 a zoned-out step equals exactly h_{t-1} or h~_t, in the fraction p +- 4 sigma; a recurrent
  dropout mask is constant over time (a whole sequence equals one of two deterministic runs); p = 0
  is bit-identical to the plain cell; a fixed seed reproduces a run; masks differ between calls;
  eval mode draws nothing.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.types import CELLS, GATES
from tolerances import assert_close

from helpers import reference_problem as make_problem, check_modified_kernels, loss_weights, nn_drawn_masks, numeric_grad, torch_modified_loop, FD_ATOL, FD_RTOL

T, B, I, H = 5, 3, 3, 2
RAGGED = np.array([5, 2, 4])


def _masks(cell, L, D, seed, t=T, b=B, h=H, p=0.4):
    """Explicit masks of every modifier: recurrent m [L*D, B, H], weight M (L*D of [G*H, H]), zoneout 0/1."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    return dict(
        recurrent_mask=(rng.random((L * D, b, h)) >= p) / (1 - p),
        weight_mask=[(rng.random((G * h, h)) >= p) / (1 - p) for _ in range(L * D)],
        zoneout_mask=(rng.random((L * D, t, b, h)) < p).astype(np.float64),
        zoneout_cell_mask=(rng.random((L * D, t, b, h)) < p).astype(np.float64) if cell == "lstm" else None,
    )


# ---- the reference against finite differences --------------------------------------------------------
def _check_fd(cell, num_layers, bidirectional, lengths, **mods):
    x, weights, h0, c0 = make_problem(cell, num_layers, bidirectional, t=T, b=B, i=I, h=H)
    weights = [tuple(np.array(a) for a in w) for w in weights]
    kw = dict(lengths=lengths, bidirectional=bidirectional, **mods)
    res = reference.forward(cell, x, weights, h0, c0, **kw)
    r_out, r_h, r_c = loss_weights(res, 7)

    def loss():
        o = reference.forward(cell, x, weights, h0, c0, training=False, **kw)
        return np.sum(o.output * r_out) + np.sum(o.h_n * r_h) + (0 if r_c is None else np.sum(o.c_n * r_c))

    grads = reference.backward(res.saved, r_out, r_h, r_c)
    for name, analytic, arr in [("dx", grads.dx, x), ("dh0", grads.dh0, h0)] + \
            ([("dc0", grads.dc0, c0)] if cell == "lstm" else []) + \
            [(f"weights[{k}][{j}]", grads.dweights[k][j], weights[k][j]) for k in range(len(weights)) for j in range(4)]:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), rtol=FD_RTOL, atol=FD_ATOL, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("which", ["recurrent", "weight", "zoneout_masks", "zoneout_eval", "dilation", "all"])
def test_reference_matches_finite_differences(cell, which):
    L, D = 2, 2
    m = _masks(cell, L, D, seed=3)
    lstm = cell == "lstm"
    mods = {
        "recurrent": dict(recurrent_mask=m["recurrent_mask"]),
        "weight": dict(weight_mask=m["weight_mask"]),
        "zoneout_masks": dict(zoneout_mask=m["zoneout_mask"], zoneout_cell_mask=m["zoneout_cell_mask"]),
        # eval-mode zoneout: d = p everywhere, h = p h_prev + (1 - p) h~
        "zoneout_eval": dict(zoneout_mask=np.full((L * D, T, B, H), 0.3),
                             zoneout_cell_mask=np.full((L * D, T, B, H), 0.2) if lstm else None),
        "dilation": dict(dilation=[2, 3]),
        "all": dict(dilation=[3, 2], recurrent_mask=m["recurrent_mask"], weight_mask=m["weight_mask"],
                    zoneout_mask=m["zoneout_mask"], zoneout_cell_mask=m["zoneout_cell_mask"]),
    }[which]
    _check_fd(cell, L, True, RAGGED, **mods)


def test_reference_dilation_one_is_the_plain_recurrence():
    x, weights, h0, c0 = make_problem("lstm", 2, True, t=T, b=B, i=I, h=H)
    a = reference.forward("lstm", x, weights, h0, c0, lengths=RAGGED, bidirectional=True)
    b = reference.forward("lstm", x, weights, h0, c0, lengths=RAGGED, bidirectional=True, dilation=[1, 1])
    np.testing.assert_array_equal(a.output, b.output)


def test_reference_dilation_reads_step_t_minus_d():
    """Layer with dilation d = d interleaved plain sequences: step t = k*d + r is step k of sequence r."""
    d, t_ = 3, 7
    x, weights, h0, _ = make_problem("gru", 1, False, t=t_, b=B, i=I, h=H)
    out = reference.forward("gru", x, weights, h0, dilation=d).output
    for r in range(d):
        sub = reference.forward("gru", x[r::d], weights, h0).output
        np.testing.assert_allclose(out[r::d], sub, rtol=0, atol=1e-15)


# ---- grad_clip: the reference's clamped BPTT against plain torch with hooks -----------------------------
def _entries(weights):
    """Weight tuples (w_ih, w_hh[, b_ih, b_hh]) as helpers.torch_modified_loop's dicts."""
    return [dict(w_ih=w[0], w_hh=w[1], b_ih=w[2] if len(w) > 2 else None, b_hh=w[3] if len(w) > 2 else None)
            for w in weights]


def _torch_grads(torch, cell, x, weights, h0, c0, r, **kw):
    """Run helpers.torch_modified_loop on float64 tensors and return (outputs, grads) as NumPy arrays."""
    leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in [x, h0] + ([c0] if c0 is not None else [])]
    tw = [tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in w) for w in weights]
    masks = ("recurrent_mask", "zoneout", "zoneout_cell")
    conv = {k: (torch.as_tensor(v, dtype=torch.float64) if k in masks and v is not None else v) for k, v in kw.items()}
    y, hn, cn = torch_modified_loop(torch, cell, leaves[0], _entries(tw), leaves[1], leaves[2] if c0 is not None else None,
                                    **conv)
    loss = (y * torch.tensor(r[0])).sum() + (hn * torch.tensor(r[1])).sum()
    if cn is not None:
        loss = loss + (cn * torch.tensor(r[2])).sum()
    loss.backward()
    return (y.detach().numpy(), hn.detach().numpy()), [t.grad.numpy() for t in leaves], \
        [[t.grad.numpy() for t in w] for w in tw]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("extra", ["plain", "masks", "dilation"])
def test_clamped_bptt_matches_torch_hooks(cell, extra):
    torch = pytest.importorskip("torch")
    L, D, C = 2, 2, 0.15
    x, weights, h0, c0 = make_problem(cell, L, True, t=T, b=B, i=I, h=H)
    m = _masks(cell, L, D, seed=5)
    kw = dict(lengths=RAGGED, bidirectional=True, grad_clip=C)
    if extra == "masks":
        kw.update(recurrent_mask=m["recurrent_mask"], zoneout=m["zoneout_mask"], zoneout_cell=m["zoneout_cell_mask"])
    if extra == "dilation":
        kw.update(dilation=[2, 3])
    ref_kw = {("zoneout_mask" if k == "zoneout" else "zoneout_cell_mask" if k == "zoneout_cell" else k): v
              for k, v in kw.items()}
    res = reference.forward(cell, x, weights, h0, c0, **ref_kw)
    r = loss_weights(res, 11)
    r = (3 * r[0], 3 * r[1], None if r[2] is None else 3 * r[2])  # large enough that the clamp acts
    g = reference.backward(res.saved, *r)
    (y, hn), leaf_grads, wgrads = _torch_grads(torch, cell, x, weights, h0, c0, r, **kw)
    np.testing.assert_allclose(res.output, y, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g.dx, leaf_grads[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.dh0, leaf_grads[1], rtol=1e-10, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(g.dc0, leaf_grads[2], rtol=1e-10, atol=1e-12)
    for k in range(L * D):
        for j in range(4):
            np.testing.assert_allclose(g.dweights[k][j], wgrads[k][j], rtol=1e-10, atol=1e-12, err_msg=f"{k} {j}")
    # the clamp acted: without it the gradients differ
    plain = reference.backward(reference.forward(cell, x, weights, h0, c0, **{**ref_kw, "grad_clip": None}).saved, *r)
    assert np.abs(plain.dx - g.dx).max() > 1e-3


# ---- the kernels (NumPy API, given masks) against the reference --------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("which", ["grad_clip", "recurrent", "weight", "dilation", "zoneout", "zoneout_eval",
                                   "zoneout_clip", "all"])
@pytest.mark.parametrize("layout", ["L1-uni", "L2-bi-ragged"])
def test_kernels_match_reference(cell, which, dtype, layout):
    L, bi, lengths = (1, False, None) if layout == "L1-uni" else (2, True, RAGGED)
    D = 2 if bi else 1
    t_, b_, i_, h_ = 7, 3, 4, 17  # H = 17: several unit blocks of odd width across the threads
    x, weights, h0, c0 = make_problem(cell, L, bi, t=t_, b=b_, i=i_, h=h_)
    # weights halved: with H = 17 and masks of 2 the products stay O(1), as in the tolerance table's cases
    weights = [tuple(0.5 * a for a in w) for w in weights]
    # p = 0.5: the masks' 2 is exact in float32, so m * h adds no rounding the reference lacks
    m = _masks(cell, L, D, seed=2, t=t_, b=b_, h=h_, p=0.5)
    zone = dict(zoneout_mask=m["zoneout_mask"], zoneout_cell_mask=m["zoneout_cell_mask"])
    zone_eval = dict(zoneout_mask=np.full((L * D, t_, b_, h_), 0.25),
                     zoneout_cell_mask=np.full((L * D, t_, b_, h_), 0.5) if cell == "lstm" else None)
    mods = {"grad_clip": dict(grad_clip=0.05), "recurrent": dict(recurrent_mask=m["recurrent_mask"]),
            "weight": dict(weight_mask=m["weight_mask"]), "dilation": dict(dilation=[3] * L),
            "zoneout": zone, "zoneout_eval": zone_eval, "zoneout_clip": dict(grad_clip=0.05, **zone),
            "all": dict(grad_clip=0.08, recurrent_mask=m["recurrent_mask"], weight_mask=m["weight_mask"],
                        dilation=[2, 4][:L], **zone)}[which]
    check_modified_kernels(cell, x, weights, h0, c0, mods, dtype, lengths=lengths, bidirectional=bi)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_kernels_dilation_short_sequences_and_batch_first(cell):
    """Sequences shorter than the dilation (some folded sequences have no step), T not a multiple of d."""
    x, weights, h0, c0 = make_problem(cell, 2, True, t=7, b=4, i=3, h=5)
    lengths = np.array([1, 7, 2, 5])
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    res = fastrnn.forward(cell, xb, weights, h0, c0, lengths=lengths, bidirectional=True, batch_first=True,
                          training=True, dilation=[4, 3])
    ref = reference.forward(cell, xb, weights, h0, c0, lengths=lengths, bidirectional=True, batch_first=True,
                            dilation=[4, 3])
    for name in ("output", "h_n", "c_n"):
        assert_close(getattr(res, name), getattr(ref, name), np.float64, name)
    r = loss_weights(ref, 1)
    got, want = fastrnn.backward(res.saved, *r), reference.backward(ref.saved, *r)
    for name in ("dx", "dh0", "dc0"):
        assert_close(getattr(got, name), getattr(want, name), np.float64, name)


def test_kernels_neutral_modifiers_are_bit_identical():
    """A recurrent mask of ones, a clip no gradient reaches and dilation 1 change nothing, bit for bit."""
    for cell in CELLS:
        x, weights, h0, c0 = make_problem(cell, 2, True, t=6, b=3, i=4, h=9)
        x, h0 = x.astype(np.float32), h0.astype(np.float32)
        c0 = None if c0 is None else c0.astype(np.float32)
        weights = [tuple(a.astype(np.float32) for a in w) for w in weights]
        kw = dict(lengths=np.array([6, 2, 4]), bidirectional=True, training=True)
        a = fastrnn.forward(cell, x, weights, h0, c0, **kw)
        b = fastrnn.forward(cell, x, weights, h0, c0, recurrent_mask=np.ones((4, 3, 9), np.float32), grad_clip=1e30,
                            dilation=[1, 1], weight_mask=[np.ones_like(w[1]) for w in weights], **kw)
        np.testing.assert_array_equal(a.output, b.output)
        dy = np.ones_like(a.output)
        ga, gb = fastrnn.backward(a.saved, dy), fastrnn.backward(b.saved, dy)
        np.testing.assert_array_equal(ga.dx, gb.dx)
        for wa, wb in zip(ga.dweights, gb.dweights):
            for u, v in zip(wa, wb):
                np.testing.assert_array_equal(u, v)


def test_numpy_api_draws_masks_from_rng():
    x, weights, h0, c0 = make_problem("lstm", 1, False, t=6, b=4, i=3, h=8)
    kw = dict(training=True, recurrent_dropout=0.5, weight_dropout=0.3)
    a = fastrnn.forward("lstm", x, weights, h0, c0, rng=1, **kw)
    b = fastrnn.forward("lstm", x, weights, h0, c0, rng=np.random.default_rng(1), **kw)
    c = fastrnn.forward("lstm", x, weights, h0, c0, rng=2, **kw)
    np.testing.assert_array_equal(a.output, b.output)  # a seed and a Generator of it: the same masks
    assert np.abs(a.output - c.output).max() > 1e-3
    # the masks drawn are Bernoulli(1 - p) / (1 - p) and used as documented
    ref = reference.forward("lstm", x, weights, h0, c0, recurrent_mask=a.saved.recurrent_mask,
                            weight_mask=a.saved.weight_mask)
    assert_close(a.output, ref.output, np.float64, "output")
    assert set(np.unique(a.saved.recurrent_mask)) <= {0.0, 2.0}
    # not training: no mask, the plain cell
    e = fastrnn.forward("lstm", x, weights, h0, c0, recurrent_dropout=0.5, weight_dropout=0.3, rng=1)
    np.testing.assert_array_equal(e.output, fastrnn.forward("lstm", x, weights, h0, c0).output)


@pytest.mark.parametrize("kw, err", [
    (dict(recurrent_dropout=1.0), ValueError), (dict(weight_dropout=-0.1), ValueError),
    (dict(grad_clip=0), ValueError), (dict(grad_clip=-1.0), ValueError), (dict(dilation=0), ValueError),
    (dict(dilation=[1, 2]), ValueError), (dict(recurrent_mask=np.ones((1, 2, 2))), ValueError),
    (dict(weight_mask=[np.ones((3, 3))]), ValueError), (dict(zoneout=1.0), ValueError),
    (dict(zoneout_cell=0.2), ValueError), (dict(zoneout_mask=np.ones((1, 3, 3, 3))), ValueError),
])
def test_numpy_api_bad_modifiers(kw, err):
    x, weights, h0, _ = make_problem("gru", 1, False, t=3, b=3, i=3, h=2)
    with pytest.raises(err):
        fastrnn.forward("gru", x, weights, h0, training=True, **kw)


# ---- fastrnn.nn ------------------------------------------------------------------------------------------
def _nn_module(torch, cls, num_layers=2, bidirectional=True, **kw):
    torch.manual_seed(123)
    return getattr(fastrnn_nn(), cls)(I, H + 2, num_layers=num_layers, bidirectional=bidirectional, **kw).double()


def fastrnn_nn():
    import fastrnn.nn
    return fastrnn.nn


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("kw", [dict(grad_clip=0.05), dict(recurrent_dropout=0.4), dict(weight_dropout=0.4),
                                dict(zoneout=0.3), dict(dilation=[2, 3]),
                                dict(zoneout=0.2, recurrent_dropout=0.3, weight_dropout=0.2, grad_clip=0.1,
                                     dilation=[3, 1])],
                         ids=["clip", "recurrent", "weight", "zoneout", "dilation", "all"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
def test_nn_matches_plain_torch_given_the_same_masks(cls, kw, ragged):
    torch = pytest.importorskip("torch")
    if cls == "LSTM" and "zoneout" in kw:
        kw = dict(kw, zoneout_cell=0.25)
    m = _nn_module(torch, cls, **kw)
    T_, B_ = 6, 4
    x = torch.randn(T_, B_, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 3]) if ragged else None
    inp = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.manual_seed(99)
    out, hn = m(inp)
    y = out if lengths is None else torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T_)[0]
    torch.manual_seed(99)
    # packed input: fastrnn.nn draws its masks for the sorted batch
    perm = None if lengths is None else torch.sort(lengths, descending=True)[1]
    masks = nn_drawn_masks(torch, m, T_, B_)
    D = 2
    w = [tuple(getattr(m, n) for n in names) for names in m._all_weights]
    weight_masks = masks.pop("weight_masks", None)
    if weight_masks is not None:
        w = [(e[0], e[1] * wm) + tuple(e[2:]) for e, wm in zip(w, weight_masks)]
    xs = x if perm is None else x[:, perm]
    ls = None if lengths is None else lengths[perm]
    cell = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn_tanh"}[cls]
    zeros = torch.zeros(2 * D, B_, m.hidden_size, dtype=torch.float64)
    y_ref, hn_ref, cn_ref = torch_modified_loop(torch, cell, xs, _entries(w), zeros, zeros if cls == "LSTM" else None,
                                                ls, True, grad_clip=m.grad_clip, dilation=m.dilation, **masks)
    if perm is not None:
        inv = torch.argsort(perm)
        y_ref, hn_ref = y_ref[:, inv], hn_ref[:, inv]
        cn_ref = None if cn_ref is None else cn_ref[:, inv]
    h_out = hn[0] if cls == "LSTM" else hn
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_out, hn_ref, rtol=1e-12, atol=1e-12)
    if cls == "LSTM":
        torch.testing.assert_close(hn[1], cn_ref, rtol=1e-12, atol=1e-12)
    # gradients: the same loss through both
    g = torch.randn_like(y) * 3
    params = list(m.parameters())
    got = torch.autograd.grad((y * g).sum() + h_out.sum(), [x] + params)
    want = torch.autograd.grad((y_ref * g).sum() + hn_ref.sum(), [x] + params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_nn_zoneout_step_is_exactly_previous_or_new_state():
    """H = 1: each zoned-out training step equals exactly h_{t-1} or h~_t (the cell's new state from
    h_{t-1}), in the fraction p +- 4 sigma."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    p, T_, B_ = 0.3, 20, 200
    for cls in ("GRU", "LSTM"):
        torch.manual_seed(0)
        m = getattr(fastrnn_nn(), cls)(3, 1, zoneout=p).double()
        x = torch.randn(T_, B_, 3, dtype=torch.float64)
        with torch.no_grad():
            y, _ = m(x)
            h_prev = torch.zeros(B_, 1, dtype=torch.float64)
            c = torch.zeros(B_, 1, dtype=torch.float64)
            kept = new = 0
            for t in range(T_):
                gi, gh = F.linear(x[t], m.weight_ih_l0, m.bias_ih_l0), F.linear(h_prev, m.weight_hh_l0, m.bias_hh_l0)
                if cls == "GRU":
                    ri, zi, ni = gi.chunk(3, 1)
                    rh, zh, nh = gh.chunk(3, 1)
                    r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
                    h_new = (1 - z) * torch.tanh(ni + r * nh) + z * h_prev
                else:
                    i, f, g, o = (gi + gh).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h_new = torch.sigmoid(o) * torch.tanh(c)
                is_prev = y[t] == h_prev
                is_new = (y[t] - h_new).abs() <= 1e-15 * (1 + h_new.abs())
                assert bool((is_prev | is_new).all()), cls
                kept += int((is_prev & ~is_new).sum())
                new += int((is_new & ~is_prev).sum())
                h_prev = y[t].clone()
        n = kept + new
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(kept / n - p) <= 4 * sigma, (cls, kept / n)


def test_nn_recurrent_dropout_mask_is_constant_over_time():
    """H = 1: the mask of a sequence is 0 or 1/(1-p) for all steps, so each whole sequence equals one of
    the two deterministic runs (W_hh h multiplied by 0, or by 1/(1-p), at every step)."""
    torch = pytest.importorskip("torch")
    p, T_, B_ = 0.5, 12, 64
    for cls in ("LSTM", "GRU", "RNN"):
        torch.manual_seed(1)
        m = getattr(fastrnn_nn(), cls)(2, 1, recurrent_dropout=p).double()
        x = torch.randn(T_, B_, 2, dtype=torch.float64)
        with torch.no_grad():
            y, _ = m(x)
            runs = []
            for value in (0.0, 1 / (1 - p)):
                ref = fastrnn.forward({"LSTM": "lstm", "GRU": "gru", "RNN": "rnn_tanh"}[cls], x.numpy(),
                                      [tuple(t.numpy() for t in m._weights())],
                                      recurrent_mask=np.full((1, B_, 1), value))
                runs.append(torch.from_numpy(ref.output))
        match = [((y - r).abs().amax(dim=(0, 2)) <= 1e-13) for r in runs]  # [B] per run
        assert bool((match[0] | match[1]).all()), cls
        assert 0 < int(match[0].sum()) < B_  # both masks occurred


@pytest.mark.parametrize("kw", [dict(zoneout=0.0), dict(recurrent_dropout=0.0), dict(weight_dropout=0.0),
                                dict(dilation=1), dict(zoneout_cell=0.0)])
def test_nn_p_zero_is_bit_identical_to_the_plain_cell(kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    plain = fastrnn_nn().LSTM(I, H, num_layers=2, bidirectional=True)
    m = fastrnn_nn().LSTM(I, H, num_layers=2, bidirectional=True, **kw)
    m.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, I, requires_grad=True)
    y1, _ = plain(x)
    g1 = torch.autograd.grad(y1.sum(), [x] + list(plain.parameters()))
    y2, _ = m(x)
    g2 = torch.autograd.grad(y2.sum(), [x] + list(m.parameters()))
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_nn_fixed_seed_reproduces_and_masks_differ_between_calls():
    torch = pytest.importorskip("torch")
    for kw in (dict(zoneout=0.3, zoneout_cell=0.2), dict(recurrent_dropout=0.3), dict(weight_dropout=0.3)):
        m = fastrnn_nn().LSTM(I, 8, num_layers=2, **kw)
        x = torch.randn(6, 4, I)
        torch.manual_seed(5)
        y1, _ = m(x)
        g1 = torch.autograd.grad(y1.sum(), list(m.parameters()))
        torch.manual_seed(5)
        y2, _ = m(x)
        g2 = torch.autograd.grad(y2.sum(), list(m.parameters()))
        assert torch.equal(y1, y2), kw
        assert all(torch.equal(a, b) for a, b in zip(g1, g2)), kw
        y3, _ = m(x)  # the generator moved on: other masks
        assert (y3 - y1).abs().max() > 1e-4, kw


def test_nn_eval_draws_no_mask():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    plain = fastrnn_nn().GRU(I, H, num_layers=2)
    m = fastrnn_nn().GRU(I, H, num_layers=2, recurrent_dropout=0.5, weight_dropout=0.5, zoneout=0.25).eval()
    m.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, I)
    state = torch.get_rng_state()
    y, _ = m(x)
    assert torch.equal(state, torch.get_rng_state())
    # eval zoneout: h = p h_prev + (1 - p) h~ with no dropout at all
    zoned = fastrnn_nn().GRU(I, H, num_layers=2, zoneout=0.25).eval()
    zoned.load_state_dict(plain.state_dict())
    assert torch.equal(y, zoned(x)[0])
    ref = reference.forward("gru", x.double().numpy(), [tuple(t.double().detach().numpy() for t in plain._weights()[k * 4:k * 4 + 4])
                                                        for k in range(2)],
                            zoneout_mask=np.full((2, 5, 3, H), 0.25))
    np.testing.assert_allclose(y.detach().numpy(), ref.output, rtol=0, atol=1e-6)


def test_nn_bad_modifiers():
    torch = pytest.importorskip("torch")
    nn = fastrnn_nn()
    for kw in (dict(zoneout=1.0), dict(recurrent_dropout=-0.1), dict(weight_dropout="0.1"), dict(grad_clip=0.0),
               dict(dilation=[1, 2, 3]), dict(dilation=0)):
        with pytest.raises(ValueError):
            nn.LSTM(I, H, num_layers=2, **kw)
    with pytest.raises(TypeError):
        nn.GRU(I, H, zoneout_cell=0.1)  # the GRU has no c
    assert "recurrent_dropout=0.2" in repr(nn.GRU(I, H, recurrent_dropout=0.2))


def test_nn_torch_compile_grad_clip_and_recurrent_dropout():
    torch = pytest.importorskip("torch")
    m = fastrnn_nn().LSTM(I, 8, num_layers=2, grad_clip=0.01, bidirectional=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 3, I, requires_grad=True)
    y1, _ = m(x)
    g1 = torch.autograd.grad(y1.sum(), [x] + list(m.parameters()))
    y2, _ = compiled(x)
    g2 = torch.autograd.grad(y2.sum(), [x] + list(m.parameters()))
    torch.testing.assert_close(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    # recurrent dropout under compile: a mask of 0 / 1/(1-p), the op traced with it (eval: no mask)
    r = fastrnn_nn().GRU(I, 8, recurrent_dropout=0.5).eval()
    torch.testing.assert_close(torch.compile(r, fullgraph=True, backend="aot_eager")(x)[0], r(x)[0])


def test_numpy_api_zoneout_draws_and_eval_formula():
    x, weights, h0, c0 = make_problem("lstm", 2, True, t=6, b=4, i=3, h=8)
    kw = dict(bidirectional=True, zoneout=0.4, zoneout_cell=0.3)
    a = fastrnn.forward("lstm", x, weights, h0, c0, training=True, rng=3, **kw)
    b = fastrnn.forward("lstm", x, weights, h0, c0, training=True, rng=3, **kw)
    np.testing.assert_array_equal(a.output, b.output)
    d_h, d_c = a.saved.zoneout[0]
    assert set(np.unique(d_h)) == {0.0, 1.0} and set(np.unique(d_c)) == {0.0, 1.0}
    ref = reference.forward("lstm", x, weights, h0, c0, bidirectional=True, zoneout_mask=d_h, zoneout_cell_mask=d_c)
    assert_close(a.output, ref.output, np.float64, "output")
    # not training: the eval formula, d = p everywhere
    e = fastrnn.forward("lstm", x, weights, h0, c0, **kw)
    full = lambda p: np.full((4, 6, 4, 8), p)
    ref = reference.forward("lstm", x, weights, h0, c0, bidirectional=True, zoneout_mask=full(0.4),
                            zoneout_cell_mask=full(0.3))
    assert_close(e.output, ref.output, np.float64, "output")
    assert_close(e.c_n, ref.c_n, np.float64, "c_n")


def test_modifiers_combine_with_the_cell_variants():
    """Every modifier is accepted with every cell variant ("combinable with the cell
    variants"); what they compute together: tests/kernels/test_modifier_variants.py (reference,
    kernels) and tests/nn/test_nn_modifier_variants.py (fastrnn.nn)."""
    torch = pytest.importorskip("torch")
    import fastrnn.nn
    x = torch.zeros(3, 2, 3)
    for cls, kwargs in (("LSTM", dict(peephole=True)), ("LSTM", dict(coupled=True)), ("LSTM", dict(cell_clip=1.0)),
                        ("LSTM", dict(layer_norm=True)), ("LSTM", dict(proj_size=2)), ("GRU", dict(layer_norm=True)),
                        ("GRU", dict(reset_after=False))):
        for modifier in (dict(grad_clip=1.0), dict(zoneout=0.1), dict(recurrent_dropout=0.1), dict(weight_dropout=0.1),
                         dict(dilation=2)) + ((dict(zoneout_cell=0.1),) if cls == "LSTM" else ()):
            y = getattr(fastrnn.nn, cls)(3, 4, **kwargs, **modifier)(x)[0]
            assert y.shape == (3, 2, 2 if "proj_size" in kwargs else 4)
    xs, weights, h0, c0 = make_problem("lstm", 1, False, t=3, b=2, i=3, h=4)
    peep = [w + (np.zeros((3, 4)),) for w in weights]
    res = fastrnn.forward("lstm", xs, peep, h0, c0, training=True, peephole=True, grad_clip=1.0, zoneout=0.2, rng=0)
    assert len(fastrnn.backward(res.saved, np.ones_like(res.output)).dweights[0]) == 5
