"""fastrnn.nn's LSTM variants (peephole, coupled, cell_clip; init="identity") against a
plain-torch autograd implementation of the issue's equations written here (outputs, final states,
every gradient), over layers x directions x packed lengths x h0/c0; gradcheck in float64;
torch.compile(fullgraph=True); state_dict names and shapes, loading back, repr; the cells step by
step against the sequence; bad options raise (layer_norm: tests/nn/test_nn_layer_norm.py). The NumPy side:
tests/kernels/test_variants.py.
"""
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn.nn as fnn  # noqa: E402
from tolerances import assert_close  # noqa: E402

VARIANTS = [dict(peephole=True), dict(coupled=True), dict(cell_clip=0.3), dict(peephole=True, coupled=True),
            dict(peephole=True, cell_clip=0.3), dict(peephole=True, coupled=True, cell_clip=0.3)]
IDS = ["-".join(k for k in v) for v in VARIANTS]


def torch_lstm_variant(m, x, h0, c0, lengths=None):
    """The issue's equations in plain torch ops (autograd differentiates them), reading m's
    parameters by their names: a = W_ih x + b_ih + W_hh h + b_hh; i, f see c_{t-1} through weight_ch,
    o sees c_t; coupled: blocks (f, g, o), i = 1 - f; c_t = clamp(f c + i g, -C, C).
    x [T, B, I] -> (y [T, B, D*H], h_n, c_n)."""
    T = x.size(0)
    D = 2 if m.bidirectional else 1
    hs, cs = [], []
    inp = x
    for layer in range(m.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
            b_ih, b_hh = (getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)) if m.bias else (None, None)
            p = getattr(m, "weight_ch" + sfx) if m.peephole else None
            h, c = h0[layer * D + d], c0[layer * D + d]
            ys = [None] * T
            for t in (reversed(range(T)) if d else range(T)):
                a = F.linear(inp[t], w_ih, b_ih) + F.linear(h, w_hh, b_hh)
                if m.coupled:
                    a_f, a_g, a_o = a.chunk(3, 1)
                    f = torch.sigmoid(a_f + (p[0] * c if p is not None else 0))
                    i = 1 - f
                else:
                    a_i, a_f, a_g, a_o = a.chunk(4, 1)
                    i = torch.sigmoid(a_i + (p[0] * c if p is not None else 0))
                    f = torch.sigmoid(a_f + (p[1] * c if p is not None else 0))
                c_new = f * c + i * torch.tanh(a_g)
                if m.cell_clip is not None:
                    c_new = torch.clamp(c_new, -m.cell_clip, m.cell_clip)
                o = torch.sigmoid(a_o + (p[-1] * c_new if p is not None else 0))
                h_new = o * torch.tanh(c_new)
                if lengths is None:
                    h, c, ys[t] = h_new, c_new, h_new
                else:
                    live = (t < lengths).unsqueeze(1)
                    h, c = torch.where(live, h_new, h), torch.where(live, c_new, c)
                    ys[t] = torch.where(live, h_new, torch.zeros_like(h_new))
            outs.append(torch.stack(ys))
            hs.append(h)
            cs.append(c)
        inp = torch.cat(outs, 2)
    return inp, torch.stack(hs), torch.stack(cs)


def _widen(m, scale=2.0):
    """Wider weights, so that a clip of 0.3 is active somewhere."""
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)


def _loss_and_grads(run, m, x, h0, c0, wy, wh, wc):
    for p in [x, h0, c0, *m.parameters()]:
        p.grad = None
    y, hn, cn = run()
    loss = (y * wy).sum() + (hn * wh).sum() + (cn * wc).sum()
    loss.backward()
    return {"y": y.detach(), "h_n": hn.detach(), "c_n": cn.detach(), "dx": x.grad.clone(), "dh0": h0.grad.clone(),
            "dc0": c0.grad.clone(), **{"d" + n: p.grad.clone() for n, p in m.named_parameters()}}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["L1", "L2-bi"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_matches_plain_torch(variant, dtype, layers, bidirectional, packed):
    torch.manual_seed(0)
    T, B, I, H = 5, 4, 3, 6
    D = 2 if bidirectional else 1
    m = fnn.LSTM(I, H, layers, bidirectional=bidirectional, dtype=dtype, **variant)
    _widen(m)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    h0 = (0.5 * torch.randn(layers * D, B, H, dtype=dtype)).requires_grad_()
    c0 = (0.5 * torch.randn(layers * D, B, H, dtype=dtype)).requires_grad_()
    wy, wh, wc = torch.randn(T, B, D * H, dtype=dtype), torch.randn(layers * D, B, H, dtype=dtype), \
        torch.randn(layers * D, B, H, dtype=dtype)
    lengths = torch.tensor([5, 3, 4, 1]) if packed else None

    def fast():
        if not packed:
            y, (hn, cn) = m(x, (h0, c0))
            return y, hn, cn
        seq = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, (hn, cn) = m(seq, (h0, c0))
        return pad_packed_sequence(out, total_length=T)[0], hn, cn

    got = _loss_and_grads(fast, m, x, h0, c0, wy, wh, wc)
    want = _loss_and_grads(lambda: torch_lstm_variant(m, x, h0, c0, lengths), m, x, h0, c0, wy, wh, wc)
    assert got.keys() == want.keys()
    if m.peephole:
        assert any(k.startswith("dweight_ch") for k in got)
    np_dtype = "float32" if dtype == torch.float32 else "float64"
    for k in got:
        assert_close(got[k].numpy(), want[k].numpy(), np_dtype, k if k.startswith("d") else k)


@pytest.mark.parametrize("variant", [dict(peephole=True, coupled=True, cell_clip=0.5), dict(peephole=True)],
                         ids=["peep-cifg-clip", "peep"])
def test_gradcheck(variant):
    torch.manual_seed(1)
    m = fnn.LSTM(2, 3, 2, bidirectional=True, dtype=torch.float64, **variant)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x, *ps):
        y, (hn, cn) = torch.func.functional_call(m, dict(zip(names, ps)), (x,))
        return y, hn, cn

    # the kernels' backward (functional_call keeps the fused op; torch.func transforms are not used)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)


def test_compile_fullgraph():
    torch.manual_seed(2)
    m = fnn.LSTM(4, 5, 2, peephole=True, coupled=True, cell_clip=0.5)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, fullgraph=True, backend=counter)
    x = torch.randn(3, 2, 4, requires_grad=True)
    y1, (h1, c1) = compiled(x)
    (y1.sum() + c1.sum()).backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y2, (h2, c2) = m(x)
    (y2.sum() + c2.sum()).backward()
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(c1, c2)
    for a, b in zip(g1, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(a, b)
    assert counter.frame_count == 1


def test_state_dict_names_shapes_and_round_trip():
    m = fnn.LSTM(3, 4, 2, bidirectional=True, peephole=True, coupled=True)
    sd = m.state_dict()
    assert sd["weight_ch_l0"].shape == (2, 4) and sd["weight_ch_l1_reverse"].shape == (2, 4)
    assert sd["weight_ih_l0"].shape == (12, 3) and sd["weight_hh_l1"].shape == (12, 4)
    assert sd["bias_ih_l0_reverse"].shape == (12,)
    assert fnn.LSTM(3, 4, peephole=True).state_dict()["weight_ch_l0"].shape == (3, 4)
    other = fnn.LSTM(3, 4, 2, bidirectional=True, peephole=True, coupled=True)
    other.load_state_dict(sd)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(other(x)[0], m(x)[0], rtol=0, atol=0)
    with pytest.raises(RuntimeError):  # the plain LSTM has no weight_ch and 4 gate blocks
        fnn.LSTM(3, 4, 2, bidirectional=True).load_state_dict(sd)
    cell = fnn.LSTMCell(3, 4, peephole=True)
    assert cell.state_dict()["weight_ch"].shape == (3, 4)


def test_repr_lists_the_options():
    r = repr(fnn.LSTM(3, 4, peephole=True, coupled=True, cell_clip=2.5))
    assert "peephole=True" in r and "coupled=True" in r and "cell_clip=2.5" in r
    assert repr(fnn.LSTM(3, 4)) == repr(torch.nn.LSTM(3, 4))
    assert "init='identity'" in repr(fnn.RNN(3, 4, init="identity"))
    assert "cell_clip=1.0" in repr(fnn.LSTMCell(3, 4, cell_clip=1.0))


@pytest.mark.parametrize("variant", [dict(peephole=True), dict(peephole=True, coupled=True, cell_clip=0.3)],
                         ids=["peep", "peep-cifg-clip"])
def test_cell_step_by_step_equals_the_sequence(variant):
    torch.manual_seed(3)
    seq = fnn.LSTM(3, 5, **variant, dtype=torch.float64)
    _widen(seq)
    cell = fnn.LSTMCell(3, 5, **variant, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in seq.state_dict().items()})  # weight_ih_l0 -> weight_ih
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    y, (hn, cn) = seq(x)
    h = c = torch.zeros(2, 5, dtype=torch.float64)
    for t in range(6):
        h, c = cell(x[t], (h, c))
        torch.testing.assert_close(h, y[t], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(c, cn[0], rtol=1e-12, atol=1e-13)


def test_projection_with_peepholes_matches_plain_torch():
    """proj_size runs the torch fallback, now with the variants' step: h = W_hr (o * tanh(c))."""
    torch.manual_seed(4)
    m = fnn.LSTM(3, 6, proj_size=2, peephole=True, cell_clip=0.4, dtype=torch.float64)
    _widen(m)
    assert m.state_dict()["weight_ch_l0"].shape == (3, 6) and m.state_dict()["weight_hr_l0"].shape == (2, 6)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    y, (hn, cn) = m(x)
    h, c = torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 6, dtype=torch.float64)
    p = m.weight_ch_l0
    for t in range(4):
        a = F.linear(x[t], m.weight_ih_l0, m.bias_ih_l0) + F.linear(h, m.weight_hh_l0, m.bias_hh_l0)
        a_i, a_f, a_g, a_o = a.chunk(4, 1)
        i, f = torch.sigmoid(a_i + p[0] * c), torch.sigmoid(a_f + p[1] * c)
        c = torch.clamp(f * c + i * torch.tanh(a_g), -0.4, 0.4)
        h = F.linear(torch.sigmoid(a_o + p[2] * c) * torch.tanh(c), m.weight_hr_l0)
        torch.testing.assert_close(y[t], h)
    torch.testing.assert_close(cn[0], c)


def test_identity_init_and_reset_parameters():
    m = fnn.RNN(5, 40, 2, nonlinearity="relu", init="identity")
    for k in range(2):
        torch.testing.assert_close(getattr(m, f"weight_hh_l{k}"), torch.eye(40), rtol=0, atol=0)
        assert not getattr(m, f"bias_ih_l{k}").any() and not getattr(m, f"bias_hh_l{k}").any()
    assert 0.0007 < m.weight_ih_l0.std().item() < 0.0013
    with torch.no_grad():
        m.weight_hh_l0.fill_(3.0)
    m.reset_parameters()
    torch.testing.assert_close(m.weight_hh_l0, torch.eye(40), rtol=0, atol=0)
    g = fnn.GRU(3, 4, init="identity")
    torch.testing.assert_close(g.weight_hh_l0, torch.eye(4).repeat(3, 1), rtol=0, atol=0)
    c = fnn.RNNCell(3, 4, init="identity")
    torch.testing.assert_close(c.weight_hh, torch.eye(4), rtol=0, atol=0)
    with pytest.raises(ValueError, match="init must be"):
        fnn.RNN(3, 4, init="orthogonal")


def test_bad_options_raise():  # layer_norm: tests/nn/test_nn_layer_norm.py
    with pytest.raises(ValueError, match="cell_clip must be > 0"):
        fnn.LSTM(3, 4, cell_clip=-1.0)
    with pytest.raises(TypeError):
        fnn.LSTM(3, 4, 1, True, False, 0.0, False, 0, None, None, True)  # the options are keyword-only
    with pytest.raises(TypeError):
        fnn.GRU(3, 4, peephole=True)  # an LSTM option


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gru_reset_before_matches_plain_torch_and_the_reference(packed):
    """GRU(reset_after=False): n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), against the equations
    written here (values and gradients) and against fastrnn.reference."""
    import numpy as np
    from fastrnn import reference
    torch.manual_seed(5)
    T, B, I, H = 4, 3, 3, 5
    m = fnn.GRU(I, H, 2, bidirectional=True, reset_after=False, dtype=torch.float64)
    assert "reset_after=False" in repr(m)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in torch.nn.GRU(I, H, 2, bidirectional=True)
                                                    .named_parameters()]
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, B, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 3]) if packed else None
    if packed:
        out, hn = m(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
        y = pad_packed_sequence(out, total_length=T)[0]
    else:
        y, hn = m(x, h0)
    (y.sum() + (hn * hn).sum()).backward()
    got = [x.grad.clone(), h0.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    for p in [x, h0, *m.parameters()]:
        p.grad = None

    inp, hs = x, []
    for layer in range(2):
        outs = []
        for d in range(2):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
            b_ih, b_hh = getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)
            h, ys = h0[layer * 2 + d], [None] * T
            for t in (reversed(range(T)) if d else range(T)):
                gi = F.linear(inp[t], w_ih, b_ih)
                r = torch.sigmoid(gi[:, :H] + F.linear(h, w_hh[:H], b_hh[:H]))
                z = torch.sigmoid(gi[:, H:2 * H] + F.linear(h, w_hh[H:2 * H], b_hh[H:2 * H]))
                n = torch.tanh(gi[:, 2 * H:] + F.linear(r * h, w_hh[2 * H:], b_hh[2 * H:]))
                h_new = (1 - z) * n + z * h
                live = torch.ones(B, 1, dtype=torch.bool) if lengths is None else (t < lengths).unsqueeze(1)
                h = torch.where(live, h_new, h)
                ys[t] = torch.where(live, h_new, torch.zeros_like(h_new))
            outs.append(torch.stack(ys))
            hs.append(h)
        inp = torch.cat(outs, 2)
    want_hn = torch.stack(hs)
    torch.testing.assert_close(y, inp)
    torch.testing.assert_close(hn, want_hn)
    (inp.sum() + (want_hn * want_hn).sum()).backward()
    want = [x.grad, h0.grad] + [p.grad for p in m.parameters()]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)

    weights = [tuple(p.detach().numpy() for p in ps) for ps in m.all_weights]
    ref = reference.forward("gru", x.detach().numpy(), weights, h0.detach().numpy(), bidirectional=True,
                            lengths=None if lengths is None else lengths.numpy(), reset_after=False)
    np.testing.assert_allclose(ref.output, y.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_gru_cell_reset_before_step():
    torch.manual_seed(6)
    seq = fnn.GRU(3, 4, reset_after=False, dtype=torch.float64)
    cell = fnn.GRUCell(3, 4, reset_after=False, dtype=torch.float64)
    cell.load_state_dict({k[:-3]: v for k, v in seq.state_dict().items()})
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y, _ = seq(x)
    h = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(5):
        h = cell(x[t], h)
        torch.testing.assert_close(h, y[t])
