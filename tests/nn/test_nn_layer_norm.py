"""fastrnn.nn's layer-normalised LSTM and GRU (``layer_norm=True``; Ba et al. 2016 in
haste's LayerNormLSTM form), which run as composed torch ops: against a plain-torch implementation of
the issue's equations written here (LN with its mean and biased variance spelt out; outputs, final
states, every gradient) over cells x layers x directions x packed lengths x bias x dtypes, with
h0/c0; against fastrnn.reference (values and its hand-written BPTT); gradcheck in float64;
torch.compile(fullgraph=True); dropout between layers; parameter names, shapes, initial values,
state_dict round trip, repr; the cells step by step against the sequence; the refused combinations.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.nn as fnn  # noqa: E402
from fastrnn import reference  # noqa: E402
from tolerances import assert_close  # noqa: E402


def ln(v, gain, bias=None):
    """(v - mean) / sqrt(var + 1e-5) * gain (+ bias) over the last axis, biased variance."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    y = (v - mean) / torch.sqrt(var + 1e-5) * gain
    return y if bias is None else y + bias


def torch_layer_norm_rnn(m, x, h0, c0=None, lengths=None, between=lambda t: t):
    """The issue's equations in plain torch ops, reading m's parameters by name:
    a_ih = LN(W_ih x) γ_ih + b_ih, a_hh = LN(W_hh h) γ_hh + b_hh; LSTM: a = a_ih + a_hh, c' = f c + i g,
    h' = o tanh(LN(c') γ_c + β_c); GRU: r, z = σ(a_ih + a_hh), n = tanh(a_ih,n + r a_hh,n).
    ``between`` is applied to a layer's output before the next layer (dropout). x [T, B, I]."""
    lstm = m.mode == "LSTM"
    T, H = x.size(0), m.hidden_size
    D = 2 if m.bidirectional else 1
    hs, cs, inp = [], [], x
    for layer in range(m.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
            b_ih, b_hh = (getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)) if m.bias else (0.0, 0.0)
            g_ih, g_hh = getattr(m, "ln_weight_ih" + sfx), getattr(m, "ln_weight_hh" + sfx)
            h, c = h0[layer * D + d], (c0[layer * D + d] if lstm else None)
            ys = [None] * T
            for t in (reversed(range(T)) if d else range(T)):
                a_ih = ln(inp[t] @ w_ih.T, g_ih) + b_ih  # [B, G*H]
                a_hh = ln(h @ w_hh.T, g_hh) + b_hh
                if lstm:
                    a = a_ih + a_hh
                    i, f, o = torch.sigmoid(a[:, :H]), torch.sigmoid(a[:, H:2 * H]), torch.sigmoid(a[:, 3 * H:])
                    c_new = f * c + i * torch.tanh(a[:, 2 * H:3 * H])
                    h_new = o * torch.tanh(ln(c_new, getattr(m, "ln_weight_c" + sfx), getattr(m, "ln_bias_c" + sfx)))
                else:
                    r = torch.sigmoid(a_ih[:, :H] + a_hh[:, :H])
                    z = torch.sigmoid(a_ih[:, H:2 * H] + a_hh[:, H:2 * H])
                    n = torch.tanh(a_ih[:, 2 * H:] + r * a_hh[:, 2 * H:])
                    h_new, c_new = (1 - z) * n + z * h, None
                live = torch.ones(h.size(0), 1, dtype=torch.bool) if lengths is None else (t < lengths).unsqueeze(1)
                h = torch.where(live, h_new, h)
                c = torch.where(live, c_new, c) if lstm else None
                ys[t] = torch.where(live, h_new, torch.zeros_like(h_new))
            outs.append(torch.stack(ys))
            hs.append(h)
            cs.append(c)
        inp = torch.cat(outs, 2)
        if layer < m.num_layers - 1:
            inp = between(inp)
    return inp, torch.stack(hs), (torch.stack(cs) if lstm else None)


def _perturb_layer_norm(m, seed=0):
    """Move the gains off ones and the cell norm's bias off zeros, so that their gradients and the
    norm's effect are tested in general position."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _make(mode, layers, bidirectional, dtype, bias=True, seed=0):
    torch.manual_seed(seed)
    cls = fnn.LSTM if mode == "LSTM" else fnn.GRU
    m = cls(3, 5, layers, bias=bias, bidirectional=bidirectional, dtype=dtype, layer_norm=True)
    _perturb_layer_norm(m, seed)
    return m


def _run(m, x, h0, c0, lengths):
    """m on x (packed when lengths is given) -> (y [T, B, D*H] padded, h_n, c_n or None)."""
    lstm = m.mode == "LSTM"
    hx = (h0, c0) if lstm else h0
    if lengths is None:
        y, s = m(x, hx)
    else:
        out, s = m(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        y = pad_packed_sequence(out, total_length=x.size(0))[0]
    return (y, *s) if lstm else (y, s, None)


def _grads(run, tensors, weights):
    for p in tensors:
        p.grad = None
    y, hn, cn = run()
    loss = (y * weights[0]).sum() + (hn * weights[1]).sum() + ((cn * weights[2]).sum() if cn is not None else 0)
    loss.backward()
    out = {"y": y.detach(), "h_n": hn.detach()}
    if cn is not None:
        out["c_n"] = cn.detach()
    out.update({"d" + str(i): t.grad.clone() for i, t in enumerate(tensors) if t.grad is not None})
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layers,bidirectional,packed,bias", [(1, False, False, True), (2, True, True, True),
                                                              (2, False, True, False)],
                         ids=["L1", "L2-bi-packed", "L2-packed-nobias"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_matches_plain_torch(mode, layers, bidirectional, packed, bias, dtype):
    m = _make(mode, layers, bidirectional, dtype, bias)
    T, B, D = 5, 4, 2 if bidirectional else 1
    x = torch.randn(T, B, 3, dtype=dtype, requires_grad=True)
    h0 = (0.5 * torch.randn(layers * D, B, 5, dtype=dtype)).requires_grad_()
    c0 = (0.5 * torch.randn(layers * D, B, 5, dtype=dtype)).requires_grad_() if mode == "LSTM" else None
    lengths = torch.tensor([5, 2, 4, 1]) if packed else None
    w = (torch.randn(T, B, D * 5, dtype=dtype), torch.randn(layers * D, B, 5, dtype=dtype),
         torch.randn(layers * D, B, 5, dtype=dtype))
    tensors = [x, h0] + ([c0] if c0 is not None else []) + list(m.parameters())
    got = _grads(lambda: _run(m, x, h0, c0, lengths), tensors, w)
    want = _grads(lambda: torch_layer_norm_rnn(m, x, h0, c0, lengths), tensors, w)
    assert got.keys() == want.keys() and len(got) == len(tensors) + (3 if mode == "LSTM" else 2)
    np_dtype = "float32" if dtype == torch.float32 else "float64"
    names = {"d" + str(i): n for i, n in enumerate(["x", "h0"] + (["c0"] if c0 is not None else [])
                                                   + [n for n, _ in m.named_parameters()])}
    for k in got:
        assert_close(got[k].numpy(), want[k].numpy(), np_dtype, "d" + names[k] if k in names else k)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_matches_the_reference(mode):
    """Values and every gradient against fastrnn.reference's forward and hand-written BPTT."""
    m = _make(mode, 2, True, torch.float64, seed=3)
    lstm = mode == "LSTM"
    T, B = 4, 3
    x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, B, 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, B, 5, dtype=torch.float64, requires_grad=True) if lstm else None
    lengths = torch.tensor([4, 1, 3])
    y, hn, cn = _run(m, x, h0, c0, lengths)
    dy, dhn = torch.randn_like(y), torch.randn_like(hn)
    dcn = torch.randn_like(cn) if lstm else None
    torch.autograd.backward([y, hn] + ([cn] if lstm else []), [dy, dhn] + ([dcn] if lstm else []))

    weights = [tuple(p.detach().numpy() for p in ps) for ps in m.all_weights]
    res = reference.forward(mode.lower(), x.detach().numpy(), weights, h0.detach().numpy(),
                            None if c0 is None else c0.detach().numpy(), lengths=lengths.numpy(),
                            bidirectional=True, layer_norm=True)
    assert_close(y.detach().numpy(), res.output, "float64", "y")
    assert_close(hn.detach().numpy(), res.h_n, "float64", "h_n")
    if lstm:
        assert_close(cn.detach().numpy(), res.c_n, "float64", "c_n")
    grads = reference.backward(res.saved, dy.numpy(), dhn.numpy(), None if dcn is None else dcn.numpy())
    assert_close(x.grad.numpy(), grads.dx, "float64", "dx")
    assert_close(h0.grad.numpy(), grads.dh0, "float64", "dh0")
    if lstm:
        assert_close(c0.grad.numpy(), grads.dc0, "float64", "dc0")
    for ps, names, dws in zip(m.all_weights, m._all_weights, grads.dweights):
        assert len(ps) == len(dws)
        for p, name, dw in zip(ps, names, dws):
            assert_close(p.grad.numpy(), dw, "float64", "d" + name)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradcheck(mode):
    torch.manual_seed(4)  # small sizes: gradcheck differentiates every parameter element numerically
    m = (fnn.LSTM if mode == "LSTM" else fnn.GRU)(2, 3, 2, bidirectional=True, dtype=torch.float64, layer_norm=True)
    _perturb_layer_norm(m, 4)
    x = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *ps):
        y, s = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return (y, *s) if mode == "LSTM" else (y, s)

    # fast_mode: one random direction per output instead of every input element (the full check took
    # 10-20 s per cell on the shared 2-core machine); test_matches_plain_torch checks every gradient
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, fast_mode=True)


def test_compile_fullgraph():
    m = _make("LSTM", 2, True, torch.float32, seed=5)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, fullgraph=True, backend=counter)
    x = torch.randn(3, 2, 3, requires_grad=True)
    y1, (h1, c1) = compiled(x)
    (y1.sum() + c1.sum()).backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y2, (h2, c2) = m(x)
    (y2.sum() + c2.sum()).backward()
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    for a, b in zip(g1, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(a, b)
    assert counter.frame_count == 1


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_dropout_between_layers(mode):
    """dropout=1 in training mode zeroes the first layer's output: the second layer sees zeros."""
    torch.manual_seed(6)
    cls = fnn.LSTM if mode == "LSTM" else fnn.GRU
    m = cls(3, 5, 2, dropout=1.0, dtype=torch.float64, layer_norm=True)
    _perturb_layer_norm(m, 6)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 2, 5, dtype=torch.float64)
    c0 = torch.randn(2, 2, 5, dtype=torch.float64) if mode == "LSTM" else None
    m.train()
    got = _run(m, x, h0, c0, None)
    want = torch_layer_norm_rnn(m, x, h0, c0, between=torch.zeros_like)
    for a, b in zip(got, want):
        if b is not None:
            torch.testing.assert_close(a, b)
    m.eval()  # no dropout: differs
    assert not torch.allclose(_run(m, x, h0, c0, None)[0], got[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_parameters_init_state_dict_and_repr(mode):
    cls = fnn.LSTM if mode == "LSTM" else fnn.GRU
    m = cls(3, 4, 2, bidirectional=True, layer_norm=True)
    G = 4 if mode == "LSTM" else 3
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    for k in range(2):
        for sfx in ("", "_reverse"):
            assert shapes[f"ln_weight_ih_l{k}{sfx}"] == (G * 4,)
            assert shapes[f"ln_weight_hh_l{k}{sfx}"] == (G * 4,)
            torch.testing.assert_close(getattr(m, f"ln_weight_ih_l{k}{sfx}"), torch.ones(G * 4), rtol=0, atol=0)
            if mode == "LSTM":
                assert shapes[f"ln_weight_c_l{k}{sfx}"] == shapes[f"ln_bias_c_l{k}{sfx}"] == (4,)
                torch.testing.assert_close(getattr(m, f"ln_weight_c_l{k}{sfx}"), torch.ones(4), rtol=0, atol=0)
                torch.testing.assert_close(getattr(m, f"ln_bias_c_l{k}{sfx}"), torch.zeros(4), rtol=0, atol=0)
    assert len(shapes) == 4 * (4 + (4 if mode == "LSTM" else 2))
    assert "layer_norm=True" in repr(m)
    _perturb_layer_norm(m, 7)
    other = cls(3, 4, 2, bidirectional=True, layer_norm=True)
    other.load_state_dict(m.state_dict())
    x = torch.randn(3, 2, 3)
    torch.testing.assert_close(other(x)[0], m(x)[0], rtol=0, atol=0)
    m.reset_parameters()  # the gains back to ones
    torch.testing.assert_close(m.ln_weight_hh_l1_reverse, torch.ones(G * 4), rtol=0, atol=0)
    with pytest.raises(RuntimeError):  # a plain module lacks the norm's parameters
        cls(3, 4, 2, bidirectional=True).load_state_dict(other.state_dict())


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_cell_step_by_step_equals_the_sequence(mode):
    lstm = mode == "LSTM"
    seq = _make(mode, 1, False, torch.float64, seed=8)
    cell = (fnn.LSTMCell if lstm else fnn.GRUCell)(3, 5, dtype=torch.float64, layer_norm=True)
    assert sorted(n for n, _ in cell.named_parameters()) == sorted(
        ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_weight_ih", "ln_weight_hh"]
        + (["ln_weight_c", "ln_bias_c"] if lstm else []))
    assert "layer_norm=True" in repr(cell)
    cell.load_state_dict({k[:-3]: v for k, v in seq.state_dict().items()})
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y, _ = seq(x)
    h = torch.zeros(2, 5, dtype=torch.float64)
    c = torch.zeros(2, 5, dtype=torch.float64)
    for t in range(5):
        if lstm:
            h, c = cell(x[t], (h, c))
        else:
            h = cell(x[t], h)
        torch.testing.assert_close(h, y[t])
    # unbatched
    if lstm:
        torch.testing.assert_close(cell(x[0, 0])[0], y[0, 0])
    else:
        torch.testing.assert_close(cell(x[0, 0]), y[0, 0])


def test_refused_combinations():
    with pytest.raises(ValueError, match="reset_after=False"):
        fnn.GRU(3, 4, layer_norm=True, reset_after=False)
    with pytest.raises(ValueError, match="reset_after=False"):
        fnn.GRUCell(3, 4, layer_norm=True, reset_after=False)
    with pytest.raises(ValueError, match="proj_size"):
        fnn.LSTM(3, 4, proj_size=2, layer_norm=True)
    with pytest.raises(ValueError, match="peephole"):
        fnn.LSTM(3, 4, peephole=True, layer_norm=True)
    with pytest.raises(ValueError, match="cell_clip"):
        fnn.LSTMCell(3, 4, cell_clip=1.0, layer_norm=True)
    with pytest.raises(TypeError, match="layer_norm must be a bool"):
        fnn.LSTM(3, 4, layer_norm=1)
    with pytest.raises(TypeError):
        fnn.RNN(3, 4, layer_norm=True)  # not an Elman RNN option
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="layer_norm=True"):  # the weights lack the norm's vectors
        fastrnn.forward("lstm", x, fastrnn.init_weights("lstm", 3, 4), layer_norm=True)
    with pytest.raises(ValueError, match="layer_norm is an LSTM/GRU option"):
        fastrnn.forward("rnn_tanh", x, fastrnn.init_weights("rnn_tanh", 3, 4), layer_norm=True)
