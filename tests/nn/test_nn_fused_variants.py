"""fastrnn.nn's GRU(reset_after=False) and LSTM/GRU(layer_norm=True) (and their cells) on the CPU run
the fused kernels (op cell strings "gru+reset_before", "lstm+layer_norm", ...), and the composed torch
ops (fastrnn.nn._composed._composed_recurrence, autograd backward) where the kernels do not serve:
here the two paths against each other (outputs, final states, every parameter's and the input's
gradient) over layers x directions x packed lengths x bias x dtypes, that the fused path is really
taken (the composed one patched to fail), that forward-mode AD still takes the composed one,
torch.compile(fullgraph=True) against eager, and that the parameter names and state_dict are
unchanged. The equations themselves: tests/nn/test_nn_layer_norm.py, tests/nn/test_nn_variants.py
(plain-torch implementations) and tests/kernels/test_fused_variants.py (the reference).
"""
import pytest

torch = pytest.importorskip("torch")

from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn.nn as fnn  # noqa: E402
from fastrnn.nn import _recurrence  # noqa: E402
from fastrnn.nn._composed import _composed_recurrence  # noqa: E402
from tolerances import assert_close  # noqa: E402

# (module, options): every variant these paths route
VARIANTS = [("GRU", dict(reset_after=False)), ("LSTM", dict(layer_norm=True)), ("GRU", dict(layer_norm=True))]
IDS = ["gru-reset_before", "lstm-layer_norm", "gru-layer_norm"]
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def tolerance_row(dtype, opts):
    return DTYPE_NAMES[dtype] + ("-layer-norm" if opts.get("layer_norm") else "")


def make_module(mode, opts, dtype, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = getattr(fnn, mode)(5, 7, dtype=dtype, **opts, **kwargs)
    with torch.no_grad():  # the norm's vectors away from their init (ones, zeros): general position
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    return m


def composed(m, x, h0, c0, lengths):
    """The same call through the composed torch ops (what fastrnn.nn ran before the fused kernels)."""
    out = _composed_recurrence(m.mode, x, m._weights(), h0, c0, lengths, m.hidden_size, m.num_layers,
                               m.bidirectional, None, not m.reset_after, m.layer_norm)
    return out


def grads_of(outputs, inputs):
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)], ids=["1-uni", "2-bi"])
@pytest.mark.parametrize("mode,opts", VARIANTS, ids=IDS)
def test_fused_equals_composed(mode, opts, num_layers, bidirectional, bias, ragged, dtype):
    m = make_module(mode, opts, dtype, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    T, B, D = 6, 4, 2 if bidirectional else 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, 5, dtype=dtype, generator=g, requires_grad=True)
    h0 = (0.5 * torch.randn(num_layers * D, B, 7, dtype=dtype, generator=g)).requires_grad_()
    c0 = torch.randn(num_layers * D, B, 7, dtype=dtype, generator=g).requires_grad_() if mode == "LSTM" else None
    lengths = torch.tensor([6, 3, 1, 5]) if ragged else None
    params = list(m.parameters())
    inputs = [x, h0] + ([c0] if c0 is not None else []) + params
    ref_y, ref_hn, ref_cn = composed(m, x, h0, c0, lengths)
    if lengths is not None:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, state = m(packed, (h0, c0) if c0 is not None else h0)
        y = pad_packed_sequence(y, total_length=T)[0]
        ref_y = ref_y * (torch.arange(T)[:, None] < lengths[None, :])[:, :, None].to(dtype)
    else:
        y, state = m(x, (h0, c0) if c0 is not None else h0)
    hn, cn = state if c0 is not None else (state, None)
    fused_vals = [y, hn] + ([cn] if cn is not None else [])
    ref_vals = [ref_y, ref_hn] + ([ref_cn] if cn is not None else [])
    row = tolerance_row(dtype, opts)
    for name, a, e in zip(("output", "h_n", "c_n"), fused_vals, ref_vals):
        assert_close(a.detach().numpy(), e.detach().numpy(), row, name)
    names = ["dx", "dh0"] + (["dc0"] if c0 is not None else []) + [f"d{n}" for n, _ in m.named_parameters()]
    for name, a, e in zip(names, grads_of(fused_vals, inputs), grads_of(ref_vals, inputs)):
        assert_close(a.numpy(), e.numpy(), row, name)


@pytest.mark.parametrize("mode,opts", VARIANTS, ids=IDS)
def test_cpu_takes_the_fused_kernels(mode, opts, monkeypatch):
    """With the composed path patched to fail, the module still runs (forward and backward), its
    cell too: the call went to the fused op. Forward-mode AD still takes the composed path."""
    m = make_module(mode, opts, torch.float64)
    cell = getattr(fnn, mode + "Cell")(5, 7, dtype=torch.float64, **opts)
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the composed path ran")
    monkeypatch.setattr(_recurrence, "_composed_recurrence", refuse)
    y, _ = m(x)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
    out = cell(x[0])
    (out[0] if isinstance(out, tuple) else out).sum().backward()
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x.detach(), torch.ones_like(x))
        with pytest.raises(AssertionError, match="the composed path ran"):
            m(dual)


@pytest.mark.parametrize("mode,opts", VARIANTS, ids=IDS)
def test_cells_equal_the_sequence(mode, opts):
    """The cell, stepped T times with the layer's parameters, gives the layer's outputs."""
    m = make_module(mode, opts, torch.float64)
    cell = getattr(fnn, mode + "Cell")(5, 7, dtype=torch.float64, **opts)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(getattr(m, name + "_l0"))
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    y, _ = m(x)
    state = None
    for t in range(5):
        state = cell(x[t], state)
        h = state[0] if isinstance(state, tuple) else state
        assert_close(h.detach().numpy(), y[t].detach().numpy(), tolerance_row(torch.float64, opts), "h")


@pytest.mark.parametrize("mode,opts", VARIANTS, ids=IDS)
def test_compile_fullgraph_matches_eager(mode, opts):
    m = make_module(mode, opts, torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 5, requires_grad=True)
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(m, fullgraph=True, backend=counter)
    y, _ = compiled(x)
    y.sum().backward()
    gx, gp = x.grad.clone(), [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    y_eager, _ = m(x)
    y_eager.sum().backward()
    assert counter.frame_count == 1
    row = tolerance_row(torch.float32, opts)
    assert_close(y.detach().numpy(), y_eager.detach().numpy(), row, "output")
    assert_close(gx.numpy(), x.grad.numpy(), row, "dx")
    for (name, p), g in zip(m.named_parameters(), gp):
        assert_close(g.numpy(), p.grad.numpy(), row, "d" + name)


def test_parameter_names_and_state_dict_unchanged():
    m = fnn.LSTM(3, 4, 2, layer_norm=True, bidirectional=True)
    assert [n for n, _ in m.named_parameters()][:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                                         "ln_weight_ih_l0", "ln_weight_hh_l0"]
    other = fnn.LSTM(3, 4, 2, layer_norm=True, bidirectional=True)
    other.load_state_dict(m.state_dict())
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(other(x)[0], m(x)[0], rtol=0, atol=0)
    g = fnn.GRU(3, 4, reset_after=False)
    assert [n for n, _ in g.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
