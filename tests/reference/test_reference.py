"""Tests of the reference implementation (python/fastrnn/reference/), the truth the fast path is
checked against, so it is checked itself: its hand-written BPTT against central finite differences
of its own forward, its forward against hand-written formulas and invariances (padding is ignored,
final states sit at each sequence's own last step, packed == one sequence at a time), and, where
torch is installed, against torch.nn.RNN / LSTM / GRU with the same weights.
"""
import itertools

import numpy as np
import pytest

from fastrnn import reference
from fastrnn.types import CELLS
from helpers import FD_ATOL, FD_RTOL, FD_SIZES, numeric_grad, reference_problem as make_problem

# The forward comparisons against torch in float64 differ only by summation order: ~1e-15.
TORCH_RTOL = 1e-10
TORCH_ATOL = 1e-12

T, B, I, H = FD_SIZES
RAGGED = np.array([2, 3, 1])  # unsorted, includes T and 1


def check_gradients(cell, num_layers, bidirectional, lengths, batch_first, bias=True, seed=0):
    x, weights, h0, c0 = make_problem(cell, num_layers, bidirectional, bias, seed)
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    kw = dict(lengths=lengths, bidirectional=bidirectional, batch_first=batch_first)
    res = reference.forward(cell, x, weights, h0, c0, **kw)
    rng = np.random.default_rng(seed + 1000)
    r_out = rng.standard_normal(res.output.shape)
    r_h = rng.standard_normal(res.h_n.shape)
    r_c = rng.standard_normal(res.c_n.shape) if cell == "lstm" else None

    def loss():
        o = reference.forward(cell, x, weights, h0, c0, training=False, **kw)
        val = np.sum(o.output * r_out) + np.sum(o.h_n * r_h)
        if cell == "lstm":
            val += np.sum(o.c_n * r_c)
        return val

    grads = reference.backward(res.saved, r_out, r_h, r_c)

    def close(name, analytic, arr):
        numeric = numeric_grad(loss, arr)
        assert analytic.shape == arr.shape, name
        np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_ATOL, err_msg=name)

    close("dx", grads.dx, x)
    close("dh0", grads.dh0, h0)
    if cell == "lstm":
        close("dc0", grads.dc0, c0)
    else:
        assert grads.dc0 is None
    assert len(grads.dweights) == len(weights)
    names = ["dW_ih", "dW_hh", "db_ih", "db_hh"]
    for k, (dw, w) in enumerate(zip(grads.dweights, weights)):
        assert len(dw) == len(w)
        for j in range(len(w)):
            close(f"weights[{k}] {names[j]}", dw[j], w[j])
    return grads


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", CELLS)
def test_backward_matches_finite_differences(cell, num_layers, bidirectional, ragged, batch_first):
    lengths = RAGGED if ragged else None
    check_gradients(cell, num_layers, bidirectional, lengths, batch_first)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_no_bias(cell):
    grads = check_gradients(cell, 2, True, RAGGED, False, bias=False, seed=3)
    assert all(len(dw) == 2 for dw in grads.dweights)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_zero_padding_gradients(cell):
    """dx past a sequence's length is exactly zero; dhn=None/dcn=None mean zeros."""
    x, weights, h0, c0 = make_problem(cell, 2, True, seed=5)
    res = reference.forward(cell, x, weights, h0, c0, lengths=RAGGED, bidirectional=True)
    dy = np.random.default_rng(6).standard_normal(res.output.shape)
    g_none = reference.backward(res.saved, dy)
    zeros = np.zeros_like(res.h_n)
    g_zero = reference.backward(res.saved, dy, zeros, zeros if cell == "lstm" else None)
    for b, n in enumerate(RAGGED):
        assert np.all(g_none.dx[n:, b] == 0.0)
    np.testing.assert_array_equal(g_none.dx, g_zero.dx)
    np.testing.assert_array_equal(g_none.dh0, g_zero.dh0)
    for a, z in zip(g_none.dweights, g_zero.dweights):
        for u, v in zip(a, z):
            np.testing.assert_array_equal(u, v)


# ----------------------------------------------------------------------------- forward sanity

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_outputs_past_lengths_are_zero(cell, batch_first):
    x, weights, h0, c0 = make_problem(cell, 2, True, seed=7)
    if batch_first:
        x = x.transpose(1, 0, 2)
    res = reference.forward(cell, x, weights, h0, c0, lengths=RAGGED, bidirectional=True,
                            batch_first=batch_first)
    out = res.output.transpose(1, 0, 2) if batch_first else res.output  # [T, B, D*H]
    assert out.shape == (T, B, 2 * H)
    for b, n in enumerate(RAGGED):
        assert np.all(out[n:, b] == 0.0)
        if cell != "rnn_relu":  # ReLU outputs may be exactly zero anywhere
            assert np.all(out[:n, b] != 0.0)  # the live part really was computed


@pytest.mark.parametrize("cell", CELLS)
def test_one_step_matches_hand_formula(cell):
    x, weights, h0, c0 = make_problem(cell, 1, False, seed=11, t=1)
    w_ih, w_hh, b_ih, b_hh = weights[0]
    xt, h = x[0], h0[0]
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))

    def blk(w, k):  # k-th gate block of rows
        return w[k * H:(k + 1) * H]

    def pre(k):  # W_i? x + b_i? + W_h? h + b_h? for gate block k
        return xt @ blk(w_ih, k).T + blk(b_ih, k) + h @ blk(w_hh, k).T + blk(b_hh, k)

    c_expected = None
    if cell == "rnn_tanh":
        h_expected = np.tanh(pre(0))
    elif cell == "rnn_relu":
        h_expected = np.maximum(pre(0), 0.0)
    elif cell == "lstm":
        i, f, g, o = sig(pre(0)), sig(pre(1)), np.tanh(pre(2)), sig(pre(3))
        c_expected = f * c0[0] + i * g
        h_expected = o * np.tanh(c_expected)
    else:
        r, z = sig(pre(0)), sig(pre(1))
        n = np.tanh(xt @ blk(w_ih, 2).T + blk(b_ih, 2) + r * (h @ blk(w_hh, 2).T + blk(b_hh, 2)))
        h_expected = (1 - z) * n + z * h
    res = reference.forward(cell, x, weights, h0, c0)
    np.testing.assert_allclose(res.output[0], h_expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(res.h_n[0], h_expected, rtol=1e-14, atol=1e-15)
    if cell == "lstm":
        np.testing.assert_allclose(res.c_n[0], c_expected, rtol=1e-14, atol=1e-15)
    else:
        assert res.c_n is None


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_final_states_sit_at_each_sequences_last_step(cell, num_layers):
    x, weights, h0, c0 = make_problem(cell, num_layers, True, seed=13)
    res = reference.forward(cell, x, weights, h0, c0, lengths=RAGGED, bidirectional=True)
    top = 2 * (num_layers - 1)  # h_n index of the last layer's forward direction
    for b, n in enumerate(RAGGED):
        np.testing.assert_array_equal(res.h_n[top, b], res.output[n - 1, b, :H])
        np.testing.assert_array_equal(res.h_n[top + 1, b], res.output[0, b, H:])


@pytest.mark.parametrize("cell", CELLS)
def test_packed_equals_one_sequence_at_a_time(cell):
    """Each sequence of a ragged batch gives what it gives alone, cut to its own length; the
    padding values of x do not matter."""
    x, weights, h0, c0 = make_problem(cell, 2, True, seed=17)
    res = reference.forward(cell, x, weights, h0, c0, lengths=RAGGED, bidirectional=True,
                            training=False)
    x_junk = x.copy()
    for b, n in enumerate(RAGGED):
        x_junk[n:, b] = 1e3
    junk = reference.forward(cell, x_junk, weights, h0, c0, lengths=RAGGED, bidirectional=True)
    np.testing.assert_array_equal(junk.output, res.output)
    np.testing.assert_array_equal(junk.h_n, res.h_n)
    for b, n in enumerate(RAGGED):
        one = reference.forward(cell, x[:n, b:b + 1], weights, h0[:, b:b + 1],
                                None if c0 is None else c0[:, b:b + 1], bidirectional=True)
        np.testing.assert_allclose(res.output[:n, b], one.output[:, 0], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(res.h_n[:, b], one.h_n[:, 0], rtol=1e-13, atol=1e-14)
        if cell == "lstm":
            np.testing.assert_allclose(res.c_n[:, b], one.c_n[:, 0], rtol=1e-13, atol=1e-14)


def test_training_false_saves_nothing_and_gives_same_result():
    x, weights, h0, c0 = make_problem("gru", 1, False)
    a = reference.forward("gru", x, weights, h0)
    b = reference.forward("gru", x, weights, h0, training=False)
    assert a.saved is not None and b.saved is None
    np.testing.assert_array_equal(a.output, b.output)
    assert a.output.dtype == np.float64


def test_batch_first_is_a_transpose():
    x, weights, h0, c0 = make_problem("lstm", 2, True, seed=19)
    a = reference.forward("lstm", x, weights, h0, c0, lengths=RAGGED, bidirectional=True)
    b = reference.forward("lstm", x.transpose(1, 0, 2), weights, h0, c0, lengths=RAGGED,
                          bidirectional=True, batch_first=True)
    np.testing.assert_array_equal(b.output, a.output.transpose(1, 0, 2))
    np.testing.assert_array_equal(b.h_n, a.h_n)
    np.testing.assert_array_equal(b.c_n, a.c_n)


# ----------------------------------------------------------------------------- against torch

def torch_module(torch, cell, weights, num_layers, bidirectional, batch_first):
    bias = len(weights[0]) == 4
    kw = dict(input_size=weights[0][0].shape[1], hidden_size=weights[0][1].shape[1],
              num_layers=num_layers, bias=bias, batch_first=batch_first,
              bidirectional=bidirectional)
    if cell.startswith("rnn_"):
        m = torch.nn.RNN(nonlinearity=cell[4:], **kw)
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](**kw)
    m = m.double()
    D = 2 if bidirectional else 1
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    with torch.no_grad():
        for l in range(num_layers):
            for d in range(D):
                suffix = f"_l{l}" + ("_reverse" if d == 1 else "")
                for j, w in enumerate(weights[l * D + d]):
                    getattr(m, names[j] + suffix).copy_(torch.from_numpy(w))
    return m


TORCH_CASES = [
    # cell, num_layers, bidirectional, ragged, batch_first, bias
    *[(c, 1, False, False, False, True) for c in CELLS],
    *[(c, 2, True, False, False, True) for c in CELLS],
    *[(c, 2, True, True, False, True) for c in CELLS],
    *[(c, 1, True, True, True, True) for c in CELLS],
    *[(c, 2, False, True, True, False) for c in CELLS],
]


@pytest.mark.parametrize("cell,num_layers,bidirectional,ragged,batch_first,bias", TORCH_CASES)
def test_forward_matches_torch(cell, num_layers, bidirectional, ragged, batch_first, bias):
    torch = pytest.importorskip("torch")
    x, weights, h0, c0 = make_problem(cell, num_layers, bidirectional, bias, seed=23, t=4, i=5,
                                      h=3)
    lengths = np.array([3, 4, 1]) if ragged else None
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    res = reference.forward(cell, x, weights, h0, c0, lengths=lengths,
                            bidirectional=bidirectional, batch_first=batch_first, training=False)
    m = torch_module(torch, cell, weights, num_layers, bidirectional, batch_first)
    xt = torch.from_numpy(x)
    state = (torch.from_numpy(h0), torch.from_numpy(c0)) if cell == "lstm" else torch.from_numpy(h0)
    with torch.no_grad():
        if ragged:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.from_numpy(lengths), batch_first=batch_first, enforce_sorted=False)
            out, hn = m(packed, state)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                            total_length=x.shape[1 if batch_first else 0])
        else:
            out, hn = m(xt, state)
    if cell == "lstm":
        hn, cn = hn
        np.testing.assert_allclose(res.c_n, cn.numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(res.output, out.numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(res.h_n, hn.numpy(), rtol=TORCH_RTOL, atol=TORCH_ATOL)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_matches_torch_autograd(cell):
    """One ragged bidirectional 2-layer case against torch autograd (a second opinion besides
    finite differences, cheap once torch is there)."""
    torch = pytest.importorskip("torch")
    num_layers, lengths = 2, np.array([3, 4, 1])
    x, weights, h0, c0 = make_problem(cell, num_layers, True, seed=29, t=4, i=5, h=3)
    res = reference.forward(cell, x, weights, h0, c0, lengths=lengths, bidirectional=True)
    rng = np.random.default_rng(31)
    dy, dhn = rng.standard_normal(res.output.shape), rng.standard_normal(res.h_n.shape)
    dcn = rng.standard_normal(res.h_n.shape) if cell == "lstm" else None
    g = reference.backward(res.saved, dy, dhn, dcn)

    m = torch_module(torch, cell, weights, num_layers, True, False)
    xt = torch.from_numpy(x).requires_grad_()
    h0t = torch.from_numpy(h0).requires_grad_()
    c0t = torch.from_numpy(c0).requires_grad_() if cell == "lstm" else None
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.from_numpy(lengths),
                                                     enforce_sorted=False)
    out, hn = m(packed, (h0t, c0t) if cell == "lstm" else h0t)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
    loss = (out * torch.from_numpy(dy)).sum()
    if cell == "lstm":
        hn, cn = hn
        loss = loss + (cn * torch.from_numpy(dcn)).sum()
    loss = loss + (hn * torch.from_numpy(dhn)).sum()
    loss.backward()
    tol = dict(rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(g.dh0, h0t.grad.numpy(), **tol)
    if cell == "lstm":
        np.testing.assert_allclose(g.dc0, c0t.grad.numpy(), **tol)
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    for l, d in itertools.product(range(num_layers), range(2)):
        suffix = f"_l{l}" + ("_reverse" if d == 1 else "")
        for j, name in enumerate(names):
            p = getattr(m, name + suffix)
            np.testing.assert_allclose(g.dweights[l * 2 + d][j], p.grad.numpy(), err_msg=name + suffix,
                                       **tol)
