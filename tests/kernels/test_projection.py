"""The projected LSTM (proj_size = P, torch.nn.LSTM's semantics: h_t = W_hr (o * tanh(c_t)), h P
wide, c H wide) in the NumPy API, fused in the CPU kernels: fastrnn.forward / backward against
torch.nn.LSTM(proj_size=P) in float64 on the same weights (outputs, final states and every
gradient, dW_hr included), over layers x directions x lengths x h0/c0 x bias x dtypes, with sizes
on both sides of the 16-row packing threshold and of the few-rows kernels' 2 MB weight size; the
combinations with peephole / coupled / cell_clip against the NumPy reference (fastrnn.reference,
itself checked against finite differences in tests/reference/test_reference_projection.py) and a
plain-torch loop of the same equations; and the API's checks (shapes, combinations refused).
"""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from tolerances import assert_close

torch = pytest.importorskip("torch")

DTYPES = (np.float32, np.float64)


def make_problem(dtype, L, bidirectional, T, B, I, H, P, *, bias=True, ragged=False, seed=0, variant=None):
    """A seeded problem: weights from init_weights(proj_size=P), h0 [L*D, B, P], c0 [L*D, B, H],
    lengths (ragged: containing T and 1), dy [T, B, D*P], dhn, dcn."""
    variant = variant or {}
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    weights = fastrnn.init_weights("lstm", I, H, L, bidirectional=bidirectional, bias=bias, dtype=np.float64,
                                   seed=seed, proj_size=P, peephole=variant.get("peephole", False),
                                   coupled=variant.get("coupled", False))
    weights = [tuple(w.astype(dtype) for w in entry) for entry in weights]
    lengths = None
    if ragged:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        if B > 1:
            lengths[-1] = 1
        rng.shuffle(lengths)
    n = lambda *shape: rng.standard_normal(shape).astype(dtype)
    return dict(x=n(T, B, I), weights=weights, h0=0.5 * n(L * D, B, P), c0=0.5 * n(L * D, B, H), lengths=lengths,
                dy=n(T, B, D * P), dhn=n(L * D, B, P), dcn=n(L * D, B, H), L=L, bidirectional=bidirectional, H=H,
                P=P, bias=bias, variant=variant)


def run_fastrnn(p, with_state=True):
    out = fastrnn.forward("lstm", p["x"], p["weights"], p["h0"] if with_state else None,
                          p["c0"] if with_state else None, lengths=p["lengths"], bidirectional=p["bidirectional"],
                          training=True, proj_size=p["P"], **p["variant"])
    g = fastrnn.backward(out.saved, p["dy"], p["dhn"], p["dcn"])
    return out, g


def run_torch(p, with_state=True):
    """torch.nn.LSTM(proj_size=P) in float64 on the problem's weights: (y, hn, cn, dx, dh0, dc0,
    dweights in the NumPy API's order)."""
    T, B, I = p["x"].shape
    L, D = p["L"], 2 if p["bidirectional"] else 1
    m = torch.nn.LSTM(I, p["H"], L, bias=p["bias"], bidirectional=p["bidirectional"], proj_size=p["P"],
                      dtype=torch.float64)
    params = [getattr(m, name) for names in m._all_weights for name in names]  # torch's order = ours
    with torch.no_grad():
        for param, w in zip(params, [w for entry in p["weights"] for w in entry]):
            param.copy_(torch.from_numpy(np.asarray(w, np.float64)))
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
    x, h0, c0 = t(p["x"]), t(p["h0"]), t(p["c0"])
    hx = (h0, c0) if with_state else None
    if p["lengths"] is None:
        y, (hn, cn) = m(x, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.as_tensor(p["lengths"]), enforce_sorted=False)
        out, (hn, cn) = m(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    loss = (y * torch.from_numpy(np.asarray(p["dy"], np.float64))).sum() \
        + (hn * torch.from_numpy(np.asarray(p["dhn"], np.float64))).sum() \
        + (cn * torch.from_numpy(np.asarray(p["dcn"], np.float64))).sum()
    loss.backward()
    n = lambda a: a.detach().numpy()
    per = len(params) // (L * D)
    dweights = [tuple(n(params[k * per + i].grad) for i in range(per)) for k in range(L * D)]
    return (n(y), n(hn), n(cn), n(x.grad), n(h0.grad) if with_state else None,
            n(c0.grad) if with_state else None, dweights)


def compare(p, dtype, with_state=True):
    out, g = run_fastrnn(p, with_state)
    y, hn, cn, dx, dh0, dc0, dweights = run_torch(p, with_state)
    assert_close(out.output, y, dtype, "output")
    assert_close(out.h_n, hn, dtype, "h_n")
    assert_close(out.c_n, cn, dtype, "c_n")
    assert_close(g.dx, dx, dtype, "dx")
    if with_state:
        assert_close(g.dh0, dh0, dtype, "dh0")
        assert_close(g.dc0, dc0, dtype, "dc0")
    names = ["dW_ih", "dW_hh", "db_ih", "db_hh"][:4 if p["bias"] else 2] + ["dW_hr"]
    for k, (ours, theirs) in enumerate(zip(g.dweights, dweights)):
        assert len(ours) == len(theirs)
        for name, a, e in zip(names, ours, theirs):
            assert_close(a, e, dtype, f"{name}[{k}]")


MATRIX = list(itertools.product(DTYPES, [1, 2, 3], [False, True], [False, True]))


@pytest.mark.parametrize("dtype,L,bidirectional,ragged", MATRIX,
                         ids=[f"{np.dtype(d).name}-L{L}-{'bi' if b else 'uni'}{'-ragged' if r else ''}"
                              for d, L, b, r in MATRIX])
def test_against_torch(dtype, L, bidirectional, ragged):
    p = make_problem(dtype, L, bidirectional, T=6, B=3, I=4, H=7, P=3, ragged=ragged, seed=L)
    compare(p, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    dict(T=1, B=1, I=3, H=5, P=2),       # one row in all: the few-rows BLAS path
    dict(T=2, B=5, I=9, H=40, P=17),     # 10 rows, P over a 16-unit block
    dict(T=9, B=7, I=5, H=33, P=20),     # packed, P and H not multiples of 16
    dict(T=3, B=2, I=300, H=320, P=100),  # few rows, layer 0 has >= 2 MB of weights: rows_gemm.h's kernels
    dict(T=20, B=17, I=8, H=70, P=1),    # P = 1
], ids=["one-row", "few-rows", "packed-odd", "few-rows-own", "P1"])
def test_awkward_sizes(dtype, case):
    p = make_problem(dtype, 2, True, **case, ragged=True, seed=case["H"])
    compare(p, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_bias_no_state(dtype):
    p = make_problem(dtype, 2, True, T=5, B=4, I=3, H=6, P=4, bias=False, seed=3)
    compare(p, dtype, with_state=False)


def test_shapes_and_reserve_deterministic():
    """h_n is P wide and c_n H wide; the output has D*P columns; the reserve is a function of the
    inputs (two training calls agree bitwise)."""
    p = make_problem(np.float32, 2, True, T=4, B=3, I=2, H=9, P=5, ragged=True)
    a, _ = run_fastrnn(p)
    b, _ = run_fastrnn(p)
    assert a.output.shape == (4, 3, 10) and a.h_n.shape == (4, 3, 5) and a.c_n.shape == (4, 3, 9)
    assert np.array_equal(a.saved.reserve, b.saved.reserve)


def test_threads_agree(monkeypatch):
    """1 and 2 threads give the same result to the float32 tolerance."""
    p = make_problem(np.float32, 2, False, T=7, B=5, I=6, H=40, P=20, ragged=True)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        one, g1 = run_fastrnn(p)
        fastrnn.set_num_threads(2)
        two, g2 = run_fastrnn(p)
    finally:
        fastrnn.set_num_threads(before)
    assert_close(one.output, two.output, np.float32, "output")
    for e1, e2 in zip(g1.dweights, g2.dweights):
        for a, b in zip(e1, e2):
            assert_close(a, b, np.float32, "dW")


# ---- combined with the pointwise LSTM variants: against a plain-torch loop of the equations -------

def torch_variant_loop(p):
    """The projected LSTM with peephole / coupled / cell_clip as a plain float64 torch loop
    (autograd backward), one layer, forward direction, no lengths: (y, hn, cn, grads)."""
    v = p["variant"]
    H, P = p["H"], p["P"]
    t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
    ws = [t(w) for w in p["weights"][0]]
    w_ih, w_hh, b_ih, b_hh = ws[:4]
    w_ch = ws[4] if v.get("peephole") else None
    w_hr = ws[-1]
    x, h, c = t(p["x"]), t(p["h0"][0]), t(p["c0"][0])
    leaves = [x, h, c] + ws
    clip = v.get("cell_clip")
    ys = []
    for step in range(x.shape[0]):
        a = x[step] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        blocks = a.split(H, dim=1)
        if v.get("coupled"):
            a_f, a_g, a_o = blocks
            pf = w_ch[0] * c if w_ch is not None else 0
            f = torch.sigmoid(a_f + pf)
            i = 1 - f
        else:
            a_i, a_f, a_g, a_o = blocks
            i = torch.sigmoid(a_i + (w_ch[0] * c if w_ch is not None else 0))
            f = torch.sigmoid(a_f + (w_ch[1] * c if w_ch is not None else 0))
        g = torch.tanh(a_g)
        c = f * c + i * g
        if clip is not None:
            c = c.clamp(-clip, clip)
        o = torch.sigmoid(a_o + (w_ch[-1] * c if w_ch is not None else 0))
        h = (o * torch.tanh(c)) @ w_hr.T
        ys.append(h)
    y = torch.stack(ys)
    loss = (y * torch.from_numpy(np.asarray(p["dy"], np.float64))).sum() \
        + (h * torch.from_numpy(np.asarray(p["dhn"][0], np.float64))).sum() \
        + (c * torch.from_numpy(np.asarray(p["dcn"][0], np.float64))).sum()
    loss.backward()
    n = lambda a: a.detach().numpy()
    return n(y), n(h), n(c), [n(leaf.grad) for leaf in leaves]


VARIANTS = [dict(peephole=pe, coupled=co, cell_clip=cl) for pe, co, cl in
            itertools.product([False, True], [False, True], [None, 0.3]) if pe or co or cl is not None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(k for k, val in v.items() if val))
def test_with_variants(dtype, variant):
    p = make_problem(dtype, 1, False, T=6, B=4, I=3, H=8, P=5, seed=11, variant=variant)
    if variant.get("cell_clip"):  # wider weights so that the clip is active
        p["weights"] = [tuple((3 * w).astype(dtype) for w in e) for e in p["weights"]]
    out, g = run_fastrnn(p)
    y, hn, cn, grads = torch_variant_loop(p)
    assert_close(out.output, y, dtype, "output")
    assert_close(out.h_n[0], hn, dtype, "h_n")
    assert_close(out.c_n[0], cn, dtype, "c_n")
    assert_close(g.dx, grads[0], dtype, "dx")
    assert_close(g.dh0[0], grads[1], dtype, "dh0")
    assert_close(g.dc0[0], grads[2], dtype, "dc0")
    for i, (a, e) in enumerate(zip(g.dweights[0], grads[3:])):
        assert_close(a, e, dtype, f"dweights[0][{i}]")


def assert_matches_reference(out, g, ref, rg, dtype):
    """The kernels' outputs, states and every gradient (dW_hr included) against the reference's."""
    assert_close(out.output, ref.output, dtype, "output")
    assert_close(out.h_n, ref.h_n, dtype, "h_n")
    assert_close(out.c_n, ref.c_n, dtype, "c_n")
    for name in ("dx", "dh0", "dc0"):
        assert_close(getattr(g, name), getattr(rg, name), dtype, name)
    for k, (ours, theirs) in enumerate(zip(g.dweights, rg.dweights)):
        assert len(ours) == len(theirs)
        for i, (a, e) in enumerate(zip(ours, theirs)):
            assert_close(a, e, dtype, f"dweights[{k}][{i}]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [{}] + VARIANTS, ids=lambda v: "-".join(k for k, val in v.items() if val) or "plain")
@pytest.mark.parametrize("L,bidirectional,ragged", [(1, False, False), (2, True, True), (3, False, True)],
                         ids=["L1-uni", "L2-bi-ragged", "L3-uni-ragged"])
def test_kernels_match_reference(dtype, variant, L, bidirectional, ragged):
    p = make_problem(dtype, L, bidirectional, T=5, B=4, I=3, H=9, P=4, ragged=ragged, seed=L, variant=variant)
    if variant.get("cell_clip"):
        p["weights"] = [tuple((3 * w).astype(dtype) for w in e) for e in p["weights"]]
    out, g = run_fastrnn(p)
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    ref = reference.forward("lstm", f64(p["x"]), [tuple(f64(w) for w in e) for e in p["weights"]], f64(p["h0"]),
                            f64(p["c0"]), lengths=p["lengths"], bidirectional=bidirectional, proj_size=p["P"],
                            **variant)
    rg = reference.backward(ref.saved, f64(p["dy"]), f64(p["dhn"]), f64(p["dcn"]))
    assert_matches_reference(out, g, ref, rg, dtype)


def test_clip_is_active_in_variant_test():
    p = make_problem(np.float64, 1, False, T=6, B=4, I=3, H=8, P=5, seed=11, variant=dict(cell_clip=0.3))
    p["weights"] = [tuple(3 * w for w in e) for e in p["weights"]]
    out, _ = run_fastrnn(p)
    assert np.isclose(np.abs(out.c_n).max(), 0.3)


# ---- with the training modifiers the kernels run for it: grad_clip, weight dropout ---------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [{}, dict(peephole=True, cell_clip=0.5)], ids=["plain", "peep-clip"])
@pytest.mark.parametrize("L,bidirectional,ragged", [(1, False, False), (2, True, True)], ids=["L1", "L2-bi-ragged"])
def test_grad_clip_and_weight_mask_match_reference(dtype, variant, L, bidirectional, ragged):
    """grad_clip (the total reaching h_t, P wide, and c_t, clamped) and a weight mask [G*H, P] on W_hh:
    the kernels against the reference with the same mask; the clip is active (the gradients differ
    from the unclipped ones) and weight_dropout draws a [G*H, P] mask from the seed."""
    p = make_problem(dtype, L, bidirectional, T=6, B=4, I=3, H=9, P=4, ragged=ragged, seed=5 + L, variant=variant)
    p["weights"] = [tuple((3 * w).astype(dtype) for w in e) for e in p["weights"]]
    D, G = (2 if bidirectional else 1), 4
    rng = np.random.default_rng(1)
    masks = [((rng.random((G * 9, 4)) > 0.3) / 0.7).astype(dtype) for _ in range(L * D)]
    f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    kw = dict(lengths=p["lengths"], bidirectional=bidirectional, proj_size=p["P"], training=True, **variant)
    out = fastrnn.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], grad_clip=0.05, weight_mask=masks, **kw)
    g = fastrnn.backward(out.saved, p["dy"], p["dhn"], p["dcn"])
    ref = reference.forward("lstm", f64(p["x"]), [tuple(f64(w) for w in e) for e in p["weights"]], f64(p["h0"]),
                            f64(p["c0"]), grad_clip=0.05, weight_mask=[f64(m) for m in masks], **kw)
    rg = reference.backward(ref.saved, f64(p["dy"]), f64(p["dhn"]), f64(p["dcn"]))
    assert_matches_reference(out, g, ref, rg, dtype)
    unclipped = fastrnn.backward(fastrnn.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], weight_mask=masks,
                                                 **kw).saved, p["dy"], p["dhn"], p["dcn"])
    assert not np.allclose(unclipped.dx, g.dx, rtol=1e-2, atol=1e-3)
    seeded = fastrnn.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], weight_dropout=0.3, seed=3, **kw)
    assert seeded.saved.weight_mask[0].shape == (G * 9, 4)
    with pytest.raises(ValueError, match=r"weight_mask\[0\] must have shape \(G\*H, P\) = \(36, 4\)"):
        fastrnn.forward("lstm", p["x"], p["weights"], weight_mask=[np.ones((36, 9), dtype)] * (L * D), **kw)


# ---- the API's checks --------------------------------------------------------------------------

def small(P=3, **kw):
    return make_problem(np.float32, 2, True, T=3, B=2, I=4, H=5, P=P, **kw)


def test_wrong_w_hh_shape_names_it():
    p = small()
    w = list(p["weights"][0])
    w[1] = np.zeros((20, 5), np.float32)  # (4*H, H) instead of (4*H, P)
    p["weights"][0] = tuple(w)
    with pytest.raises(ValueError, match=r"w_hh.*\(4\*H, P\) = \(20, 3\)"):
        run_fastrnn(p)


def test_wrong_w_hr_shape_names_it():
    p = small()
    w = list(p["weights"][1])
    w[-1] = np.zeros((5, 3), np.float32)
    p["weights"][1] = tuple(w)
    with pytest.raises(ValueError, match=r"w_hr.*\(P, H\) = \(3, 5\)"):
        run_fastrnn(p)


def test_missing_w_hr():
    p = small()
    p["weights"] = [e[:4] for e in p["weights"]]
    with pytest.raises(ValueError, match="w_hr"):
        run_fastrnn(p)


def test_layer_above_reads_d_times_p():
    p = small()
    w = list(p["weights"][2])
    w[0] = np.zeros((20, 10), np.float32)  # D*H columns instead of D*P
    p["weights"][2] = tuple(w)
    with pytest.raises(ValueError, match=r"weights\[2\]\[0\].*\(4\*H, 2\*P\) = \(20, 6\)"):
        run_fastrnn(p)


def test_state_shapes_checked():
    p = small()
    p["h0"] = np.zeros((4, 2, 5), np.float32)  # H wide instead of P
    with pytest.raises(ValueError, match=r"h0 must have shape \(num_layers\*num_directions, B, P\)"):
        run_fastrnn(p)
    p = small()
    p["c0"] = np.zeros((4, 2, 3), np.float32)  # P wide instead of H
    with pytest.raises(ValueError, match=r"c0 must have shape \(num_layers\*num_directions, B, H\)"):
        run_fastrnn(p)


def test_backward_shapes_checked():
    p = small()
    out = fastrnn.forward("lstm", p["x"], p["weights"], training=True, bidirectional=True, proj_size=3)
    with pytest.raises(ValueError, match="dy must have shape"):
        fastrnn.backward(out.saved, np.zeros((3, 2, 10), np.float32))
    with pytest.raises(ValueError, match=r"dhn must have shape \(num_layers\*num_directions, B, P\)"):
        fastrnn.backward(out.saved, p["dy"], np.zeros((4, 2, 5), np.float32))


@pytest.mark.parametrize("bad,err", [(-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_proj_size(bad, err):
    p = small()
    with pytest.raises(err, match="proj_size"):
        fastrnn.forward("lstm", p["x"], p["weights"], bidirectional=True, proj_size=bad)


def test_proj_size_is_lstm_only():
    w = fastrnn.init_weights("gru", 3, 4)
    with pytest.raises(ValueError, match="proj_size is an LSTM option"):
        fastrnn.forward("gru", np.zeros((2, 1, 3), np.float32), w, proj_size=2)
    with pytest.raises(ValueError, match="proj_size is an LSTM option"):
        fastrnn.init_weights("gru", 3, 4, proj_size=2)


@pytest.mark.parametrize("modifier", [dict(recurrent_dropout=0.5), dict(dilation=2), dict(zoneout=0.1),
                                      dict(zoneout_cell=0.1)])
def test_masked_modifiers_refused(modifier):
    p = small()
    with pytest.raises(NotImplementedError, match="proj_size"):
        fastrnn.forward("lstm", p["x"], p["weights"], bidirectional=True, proj_size=3, training=True, **modifier)


def test_identity_init_refused():
    with pytest.raises(ValueError, match="identity"):
        fastrnn.init_weights("lstm", 3, 5, proj_size=2, init="identity")


def test_init_weights_layout():
    w = fastrnn.init_weights("lstm", 3, 5, 2, bidirectional=True, proj_size=2, peephole=True)
    assert [a.shape for a in w[0]] == [(20, 3), (20, 2), (20,), (20,), (3, 5), (2, 5)]
    assert [a.shape for a in w[2]] == [(20, 4), (20, 2), (20,), (20,), (3, 5), (2, 5)]
    k = 1 / np.sqrt(5)
    assert all(np.abs(a).max() <= k for e in w for a in e)




def test_layer_norm_refused():
    p = small()
    with pytest.raises(ValueError, match="layer_norm=True does not combine with proj_size"):
        fastrnn.forward("lstm", p["x"], p["weights"], bidirectional=True, proj_size=3, layer_norm=True)
