"""The lean single-step path of fastrnn.nn's cells (fastrnn.ops.cell_step, _core.cell_forward /
cell_backward): bit-for-bit the op's outputs and gradients (the same kernels at T = 1), gradcheck
in float64, torch.nn's values, version-counter safety, double backward refused, the calls it must
leave to the op, and its C++ entry points' argument errors. Also the float64 exp the cells' maths
now use (vectorised; libm's exp was a call): tanh and sigmoid against torch's to a few ulp,
over- and underflow, NaN and Inf.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import fastrnn.nn as fnn  # noqa: E402
from fastrnn import ops  # noqa: E402
from fastrnn._loader import _core  # noqa: E402
from fastrnn.cell_table import TABLE  # noqa: E402
from helpers import CELL_PAIRS, assert_torch_close, pair  # noqa: E402

CELLS = tuple(TABLE)


def _pair(cell, I, H, dtype, bias=True):
    """(torch.nn's cell in float64, fastrnn.nn's in dtype) with the same (dtype-rounded) weights"""
    torch_cls, fast_cls, extra = CELL_PAIRS[cell]
    return pair(torch_cls, fast_cls, dtype, input_size=I, hidden_size=H, bias=bias, **extra)


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


def _run(m, x, hx, lstm):
    """outputs of a training step and of an inference step, and every gradient, as a flat list"""
    m.zero_grad()
    xg = x.clone().requires_grad_()
    sg = None if hx is None else [s.clone().requires_grad_() for s in hx]
    out = _flat(m(xg, None if sg is None else (tuple(sg) if lstm else sg[0])))
    sum(t.sin().sum() for t in out).backward()
    with torch.no_grad():
        out_eval = _flat(m(x, None if hx is None else (tuple(hx) if lstm else hx[0])))
    return out + out_eval + [xg.grad] + ([] if sg is None else [s.grad for s in sg]) + \
        [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# 20: a one-step call below 32 rows keeps the few-rows products (csrc/cpu/layer.h); 97: packed panels
@pytest.mark.parametrize("B", [1, 5, 20, 97])
@pytest.mark.parametrize("with_hx,bias", [(True, True), (False, True), (True, False)])
def test_lean_path_is_bitwise_the_op(cell, dtype, B, with_hx, bias, monkeypatch):
    ref, m = _pair(cell, 7, 9, dtype, bias)
    lstm = TABLE[cell].carries_cell_state
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 7, dtype=dtype, generator=g)
    hx = [torch.randn(B, 9, dtype=dtype, generator=g) for _ in range(2 if lstm else 1)] if with_hx else None
    calls = []
    real = ops._cell_step_apply
    monkeypatch.setattr(ops, "_cell_step_apply", lambda *a: calls.append(1) or real(*a))
    lean = _run(m, x, hx, lstm)
    assert calls, "the lean path did not run"
    monkeypatch.setattr(ops, "_EAGER_PATH", False)  # the op, as under torch.compile
    op = _run(m, x, hx, lstm)
    assert len(lean) == len(op)
    for a, b in zip(lean, op):
        assert torch.equal(a, b)
    # and torch.nn's values, in float64 on the same numbers
    want = _run(ref, x.double(), None if hx is None else [s.double() for s in hx], lstm)
    n_out = 2 if lstm else 1
    names = [f"out{k}" for k in range(2 * n_out)] + [f"d{k}" for k in range(len(want) - 2 * n_out)]
    for a, b, what in zip(lean, want, names):
        assert_torch_close(a.detach(), b.detach(), dtype, what)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64(cell):
    _, m = _pair(cell, 3, 4, torch.float64)
    lstm = TABLE[cell].carries_cell_state
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    ws = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def g(x, h, c, *ws):
        out = torch.func.functional_call(m, dict(zip(names, ws)), (x, (h, c) if lstm else h))
        return out

    if lstm:
        assert torch.autograd.gradcheck(g, (x, h, c, *ws), eps=1e-6, atol=1e-7, rtol=1e-5)
    else:
        assert torch.autograd.gradcheck(lambda x, h, *w: g(x, h, None, *w), (x, h, *ws), eps=1e-6, atol=1e-7,
                                        rtol=1e-5)


@pytest.mark.parametrize("what", ["input", "hidden", "weight"])
def test_in_place_change_before_backward_raises_like_torch(what):
    for impl in (torch.nn, fnn):
        torch.manual_seed(0)
        m = impl.LSTMCell(4, 6).double()
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True) * 1
        h = torch.randn(3, 6, dtype=torch.float64, requires_grad=True) * 1
        c = torch.randn(3, 6, dtype=torch.float64)
        out = m(x, (h, c))
        loss = out[0].sum() + out[1].sum()
        with torch.no_grad():
            {"input": x, "hidden": h, "weight": m.weight_ih}[what].add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_outputs_changed_in_place_leave_backward_right():
    """h' and c' are fresh tensors apart from the saved reserve: changing them after the step (a
    dropout in place, say) must not disturb the step's own backward."""
    grads = []
    for impl in (torch.nn, fnn):
        torch.manual_seed(0)
        m = impl.GRUCell(4, 6).double()
        x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        h = m(x)
        h2 = m(x, h.detach())
        h2.sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_double_backward_raises():
    m = fnn.LSTMCell(3, 4).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h, c = m(x)
    (dx,) = torch.autograd.grad(h.pow(2).sum() + c.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(dx.sum(), m.weight_ih)


def test_the_clients_loop_matches_torch():
    """pytorch/examples' time_sequence_prediction pattern: a non-contiguous [B, 1] column per step
    (input.split(1, dim=1)), two stacked cells, gradients through 30 steps."""
    data = torch.sin(torch.arange(5 * 31, dtype=torch.float64).view(5, 31) / 4.0)
    results = []
    for impl in (torch.nn, fnn):
        torch.manual_seed(0)
        c1, c2, lin = impl.LSTMCell(1, 8).double(), impl.LSTMCell(8, 8).double(), torch.nn.Linear(8, 1).double()
        h = c = h2 = c2_ = torch.zeros(5, 8, dtype=torch.float64)
        outs = []
        for x in data[:, :-1].split(1, dim=1):
            assert not x.is_contiguous()
            h, c = c1(x, (h, c))
            h2, c2_ = c2(h, (h2, c2_))
            outs.append(lin(h2))
        loss = torch.nn.functional.mse_loss(torch.cat(outs, 1), data[:, 1:])
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in (*c1.parameters(), *c2.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_calls_left_to_the_op(monkeypatch):
    """Where the lean path does not serve (here: a weight that is not contiguous), the op runs with
    its results; mixed dtypes get torch.nn's error."""
    m = fnn.LSTMCell(3, 4).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        want = m(x)
    calls = []
    real = ops._rnn_forward_kernel
    monkeypatch.setattr(ops, "_rnn_forward_kernel", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        assert not calls and m(x) is not None and not calls  # the lean path: no op call
        m.weight_hh.data = m.weight_hh.data.t().contiguous().t()  # the same values, column-major
        assert not m.weight_hh.is_contiguous()
        got = m(x)
    assert calls
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="dtype"):
        m(x.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_and_sigmoid_to_a_few_ulp(dtype):
    """RNNCell(tanh) with w_ih = 1 computes tanh(x) itself, and an LSTMCell's output gate with c = 0
    and the others saturated isolates sigmoid. Against torch's own functions over 1e-300 .. 800,
    with 0, NaN and +-Inf for tanh (NaN positions kept, saturation exact)."""
    info = torch.finfo(dtype)
    mag = torch.logspace(-30 if dtype == torch.float32 else -300, 2.9, 2000, dtype=torch.float64).to(dtype)
    v = torch.cat([mag, -mag, torch.tensor([0.0, -0.0, float("nan"), float("inf"), float("-inf")], dtype=dtype)])
    m = fnn.RNNCell(1, 1, bias=False).to(dtype)
    with torch.no_grad():
        m.weight_ih.fill_(1.0)
        m.weight_hh.fill_(0.0)
        got = m(v[:, None])[:, 0]
    want = torch.tanh(v)
    finite = want.isfinite()
    assert torch.equal(got.isnan(), want.isnan())
    err = ((got - want).abs() / want.abs().clamp_min(info.tiny))[finite & (want != 0)]
    assert err.max() <= 4 * info.eps, err.max()
    assert torch.equal(got[want == 0], want[want == 0])
    # sigmoid: an LSTM whose weights are 0 but the output gate's w_ih (1) and the biases of i and g
    # (800: i = sigmoid(800) = 1 and g = tanh(800) = 1 exactly), from c0 = 0: c = 1 and
    # h = sigmoid(x) * tanh(1). float32's exp clamps its argument at -87, so below x = -87 its
    # sigmoid stays at ~1e-38 where torch's reaches denormals and 0: compared up to |x| = 80 there.
    # (Non-finite x reach the zero weights of i, f, g too, 0 * inf = NaN: finite x only here; the
    # tanh part above covers NaN and +-Inf.)
    v = v[v.isfinite()]
    if dtype == torch.float32:
        v = v[v.abs() <= 80]
    lstm = fnn.LSTMCell(1, 1).to(dtype)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        lstm.weight_ih[3, 0] = 1.0   # o
        lstm.bias_ih[0] = 800.0      # i = 1
        lstm.bias_ih[2] = 800.0      # g = tanh(800) = 1
        h, c = lstm(v[:, None])
    assert torch.equal(c[:, 0], torch.ones_like(v))
    want = torch.sigmoid(v) * torch.tanh(torch.ones((), dtype=dtype))
    got = h[:, 0]
    assert torch.equal(got.isnan(), want.isnan())
    ok = want.isfinite() & (want != 0)
    err = ((got - want).abs() / want.abs())[ok]
    assert err.max() <= 8 * info.eps, err.max()
    assert torch.equal(got[want == 0], want[want == 0])


def test_entry_point_argument_errors():
    x = torch.randn(2, 3)
    w_ih, w_hh = torch.randn(16, 3), torch.randn(16, 4)
    h_out, c_out = torch.empty(2, 4), torch.empty(2, 4)
    args = dict(x=x.data_ptr(), w_ih=w_ih.data_ptr(), w_hh=w_hh.data_ptr())
    with pytest.raises(ValueError, match="non-null"):
        _core.cell_forward(2, False, 2, 3, 4, 0, 0, 0, args["w_ih"], args["w_hh"], 0, 0, h_out.data_ptr(),
                           c_out.data_ptr(), 0)
    with pytest.raises(ValueError, match="both b_ih and b_hh"):
        _core.cell_forward(2, False, 2, 3, 4, args["x"], 0, 0, args["w_ih"], args["w_hh"], w_ih.data_ptr(), 0,
                           h_out.data_ptr(), c_out.data_ptr(), 0)
    with pytest.raises(ValueError, match="c_out"):
        _core.cell_forward(2, False, 2, 3, 4, args["x"], 0, 0, args["w_ih"], args["w_hh"], 0, 0, h_out.data_ptr(),
                           0, 0)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        _core.cell_forward(2, False, 0, 3, 4, args["x"], 0, 0, args["w_ih"], args["w_hh"], 0, 0, h_out.data_ptr(),
                           c_out.data_ptr(), 0)
    with pytest.raises(ValueError, match="cell must be"):
        _core.cell_forward(9, False, 2, 3, 4, args["x"], 0, 0, args["w_ih"], args["w_hh"], 0, 0, h_out.data_ptr(),
                           0, 0)
    with pytest.raises(ValueError, match="reserve and dh"):
        _core.cell_backward(2, False, 2, 3, 4, args["x"], 0, 0, args["w_ih"], args["w_hh"], 0, 0, 0, 0, 0, 0, 0, 0,
                            0, 0, 0, 0)
    with pytest.raises(ValueError, match="LSTM only"):
        _core.cell_forward(3, False, 2, 3, 4, args["x"], 0, h_out.data_ptr(), torch.randn(12, 3).data_ptr(),
                           torch.randn(12, 4).data_ptr(), 0, 0, h_out.data_ptr(), 0, 0)
