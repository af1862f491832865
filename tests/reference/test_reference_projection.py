"""The NumPy reference of the projected LSTM (proj_size = P, torch.nn.LSTM's: h_t = W_hr (o *
tanh(c_t)), h P wide, c H wide), alone and with peephole / coupled / cell_clip: its hand-written
BPTT against central finite differences of its own forward (float64, every input and parameter,
dW_hr included), one step written out by hand, and torch.nn.LSTM(proj_size) on the same weights.
The kernels against this reference: tests/kernels/test_projection.py.
"""
import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from helpers import FD_ATOL, FD_RTOL, numeric_grad

VARIANTS = [dict(peephole=pe, coupled=co, cell_clip=cl) for pe, co, cl in
            itertools.product([False, True], [False, True], [None, 0.4])]
VARIANT_IDS = ["-".join(k for k, v in opts.items() if v) or "plain" for opts in VARIANTS]


def problem(variant, L, bidirectional, ragged, T=3, B=3, I=3, H=3, P=2, seed=0, scale=2.0):
    """Float64 weights from init_weights (scaled so that a clip of 0.4 is active), h0 [L*D, B, P],
    c0 [L*D, B, H], lengths (ragged: T and 1 among them), dy [T, B, D*P], dhn, dcn."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    weights = fastrnn.init_weights("lstm", I, H, L, bidirectional=bidirectional, dtype=np.float64, seed=seed,
                                   proj_size=P, peephole=variant["peephole"], coupled=variant["coupled"])
    weights = [tuple(scale * w for w in entry) for entry in weights]
    lengths = np.array([T, 1, 2][:B]) if ragged else None
    n = lambda *s: rng.standard_normal(s)
    return dict(x=n(T, B, I), weights=weights, h0=0.5 * n(L * D, B, P), c0=0.5 * n(L * D, B, H), lengths=lengths,
                dy=n(T, B, D * P), dhn=n(L * D, B, P), dcn=n(L * D, B, H), bidirectional=bidirectional, P=P,
                opts=variant)


def run(p, training=True):
    return reference.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], lengths=p["lengths"],
                             bidirectional=p["bidirectional"], training=training, proj_size=p["P"], **p["opts"])


@pytest.mark.parametrize("bidirectional,ragged,L", [(False, False, 1), (True, True, 2)], ids=["uni", "bi-ragged-L2"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_backward_matches_finite_differences(variant, bidirectional, ragged, L):
    p = problem(variant, L, bidirectional, ragged, seed=3)
    res = run(p)
    assert res.output.shape[2] == (2 if bidirectional else 1) * p["P"] and res.h_n.shape[2] == p["P"]
    if variant["cell_clip"] is not None:  # the clip is active somewhere, not everywhere
        unclipped = np.abs(reference.forward("lstm", p["x"], p["weights"], p["h0"], p["c0"], lengths=p["lengths"],
                                             bidirectional=bidirectional, proj_size=p["P"],
                                             peephole=variant["peephole"], coupled=variant["coupled"]).c_n)
        assert (unclipped > 0.4).any() and (unclipped < 0.4).any()
    grads = reference.backward(res.saved, p["dy"], p["dhn"], p["dcn"])

    def loss():
        o = run(p, training=False)
        return np.sum(o.output * p["dy"]) + np.sum(o.h_n * p["dhn"]) + np.sum(o.c_n * p["dcn"])

    for name, analytic, arr in [("dx", grads.dx, p["x"]), ("dh0", grads.dh0, p["h0"]), ("dc0", grads.dc0, p["c0"])]:
        np.testing.assert_allclose(analytic, numeric_grad(loss, arr), rtol=FD_RTOL, atol=FD_ATOL, err_msg=name)
    for k, (dw, w) in enumerate(zip(grads.dweights, p["weights"])):
        assert len(dw) == len(w)
        for j in range(len(w)):
            assert dw[j].shape == w[j].shape
            np.testing.assert_allclose(dw[j], numeric_grad(loss, w[j]), rtol=FD_RTOL, atol=FD_ATOL,
                                       err_msg=f"weights[{k}][{j}]")


def test_one_step_by_hand():
    rng = np.random.default_rng(1)
    H, P, I = 4, 2, 3
    w_ih, w_hh, b_ih, b_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, P)), \
        rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    w_hr = rng.standard_normal((P, H))
    x, h0, c0 = rng.standard_normal((1, 1, I)), rng.standard_normal((1, 1, P)), rng.standard_normal((1, 1, H))
    res = reference.forward("lstm", x, [(w_ih, w_hh, b_ih, b_hh, w_hr)], h0, c0, proj_size=P)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    a = w_ih @ x[0, 0] + b_ih + w_hh @ h0[0, 0] + b_hh
    i, f, g, o = sig(a[:H]), sig(a[H:2 * H]), np.tanh(a[2 * H:3 * H]), sig(a[3 * H:])
    c = f * c0[0, 0] + i * g
    np.testing.assert_allclose(res.c_n[0, 0], c, rtol=1e-12)
    np.testing.assert_allclose(res.h_n[0, 0], w_hr @ (o * np.tanh(c)), rtol=1e-12)
    np.testing.assert_allclose(res.output[0, 0], res.h_n[0, 0], rtol=0)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    p = problem(VARIANTS[0], 2, True, True, T=5, B=3, I=4, H=6, P=3, seed=5, scale=1.0)
    res = run(p)
    grads = reference.backward(res.saved, p["dy"], p["dhn"], p["dcn"])
    m = torch.nn.LSTM(4, 6, 2, bidirectional=True, proj_size=3, dtype=torch.float64)
    params = [getattr(m, name) for names in m._all_weights for name in names]
    with torch.no_grad():
        for param, w in zip(params, [w for entry in p["weights"] for w in entry]):
            param.copy_(torch.from_numpy(w))
    t = lambda a: torch.tensor(a, requires_grad=True)  # noqa: E731
    x, h0, c0 = t(p["x"]), t(p["h0"]), t(p["c0"])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.as_tensor(p["lengths"]), enforce_sorted=False)
    out, (hn, cn) = m(packed, (h0, c0))
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=5)
    ((y * torch.from_numpy(p["dy"])).sum() + (hn * torch.from_numpy(p["dhn"])).sum()
     + (cn * torch.from_numpy(p["dcn"])).sum()).backward()
    np.testing.assert_allclose(res.output, y.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(res.h_n, hn.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(res.c_n, cn.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grads.dx, x.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.dh0, h0.grad.numpy(), rtol=1e-10, atol=1e-12)
    ours = [g for entry in grads.dweights for g in entry]
    for param, g in zip(params, ours):
        np.testing.assert_allclose(g, param.grad.numpy(), rtol=1e-10, atol=1e-12)
