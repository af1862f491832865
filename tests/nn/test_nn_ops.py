"""The custom ops of fastrnn.ops: ``torch.library.opcheck`` on the forward and the backward op
(schema, fake implementation, autograd registration, AOT dispatch) for a few configurations;
``torch.autograd.gradcheck`` in float64 for every cell (tiny sizes, bidirectional, 2 layers,
lengths, h0/c0); double backward raises a clear error; the op's own argument errors; eager calls
leave torch._dynamo unimported.
gradcheck and opcheck call the op thousands of times on tiny sizes, so this module runs the kernels
on one thread (multi-threaded kernels are covered by test_kernels.py / test_threads.py; an OpenMP
team on an oversubscribed 2-core machine costs tens of ms per tiny call).
"""
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.ops  # noqa: E402,F401

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def problem(cell, T=3, B=2, I=3, H=2, L=1, bidirectional=False, bias=True, states=True, lengths=False,
            dtype=torch.float64, requires_grad=True, seed=0):
    """Arguments of torch.ops.fastrnn.rnn_forward, seeded (weights in torch.nn's init range)."""
    g = torch.Generator().manual_seed(seed)
    D = 2 if bidirectional else 1
    G = GATES[cell]

    def rand(*shape, scale=1.0):
        return ((torch.rand(shape, generator=g, dtype=dtype) * 2 - 1) * scale).requires_grad_(requires_grad)

    weights = []
    for layer in range(L):
        for _ in range(D):
            in_size = I if layer == 0 else D * H
            weights += [rand(G * H, in_size, scale=H ** -0.5), rand(G * H, H, scale=H ** -0.5)]
            if bias:
                weights += [rand(G * H, scale=H ** -0.5), rand(G * H, scale=H ** -0.5)]
    x = rand(T, B, I)
    h0 = rand(L * D, B, H) if states else None
    c0 = rand(L * D, B, H) if states and cell == "lstm" else None
    lens = torch.tensor([T] + [max(1, T - 1 - b) for b in range(1, B)], dtype=torch.int64) if lengths else None
    return x, weights, h0, c0, lens, H, L, bidirectional


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    yield
    fastrnn.set_num_threads(n)


CONFIGS = [dict(), dict(L=2, bidirectional=True, lengths=True), dict(bias=False, states=False, lengths=True)]


@pytest.mark.parametrize("config", range(len(CONFIGS)))
@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_forward_and_backward(cell, config):
    x, weights, h0, c0, lens, H, L, bidir = problem(cell, **CONFIGS[config])
    detached = [t.detach() if t is not None else None for t in (x, h0, c0)]
    dweights = [w.detach() for w in weights]
    torch.library.opcheck(torch.ops.fastrnn.rnn_forward.default, (x, weights, h0, c0, lens, cell, H, L, bidir, True))
    # inference (training=False saves nothing, so no input may require grad)
    torch.library.opcheck(torch.ops.fastrnn.rnn_forward.default,
                          (detached[0], dweights, detached[1], detached[2], lens, cell, H, L, bidir, False))
    with torch.no_grad():
        y, hn, cn, reserve = torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lens, cell, H, L, bidir, True)
    dy, dhn = torch.randn_like(y), torch.randn_like(hn)
    dcn = torch.randn_like(cn) if cell == "lstm" else None
    torch.library.opcheck(torch.ops.fastrnn.rnn_backward.default,
                          (detached[0], dweights, detached[1], detached[2], lens, reserve, dy,
                           dhn, dcn, cell, H, L, bidir))


@pytest.mark.parametrize("config", [dict(), dict(L=2, bidirectional=True, lengths=True, T=4, B=3),
                                    dict(bias=False, states=False, bidirectional=True)],
                         ids=("1uni", "2bi_len", "nobias"))
@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell, config):
    x, weights, h0, c0, lens, H, L, bidir = problem(cell, **config)

    def f(x, h0, c0, *weights):
        y, hn, cn, _ = torch.ops.fastrnn.rnn_forward(x, list(weights), h0, c0, lens, cell, H, L, bidir, True)
        return (y, hn, cn) if cell == "lstm" else (y, hn)

    # fast_mode (random directional derivatives) for the larger configurations keeps this quick
    assert torch.autograd.gradcheck(f, (x, h0, c0, *weights), eps=1e-6, atol=1e-7, rtol=1e-5,
                                    fast_mode=config.get("L", 1) > 1)


def test_double_backward_raises():
    x, weights, h0, c0, lens, H, L, bidir = problem("lstm")
    y, hn, cn, _ = torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lens, "lstm", H, L, bidir, True)
    (dx,) = torch.autograd.grad((y ** 2).sum() + hn.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        dx.sum().backward()


def test_double_backward_raises_through_module():
    import fastrnn.nn as fnn
    m = fnn.GRU(3, 2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(dx.sum(), m.weight_hh_l0)


def test_backward_without_training_raises():
    x, weights, h0, c0, lens, H, L, bidir = problem("gru")
    y, hn, _, reserve = torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lens, "gru", H, L, bidir, False)
    assert reserve.numel() == 0
    with pytest.raises(RuntimeError, match="training=False"):
        y.sum().backward()


def test_reserve_shape_is_linear_in_time_and_batch():
    """The reserve is [T, B, R] with R independent of T and B (what makes the fake impl work for a
    symbolic T)."""
    shapes = []
    for T, B in ((1, 1), (4, 3)):
        x, weights, h0, c0, lens, H, L, bidir = problem("lstm", T=T, B=B, L=2, bidirectional=True,
                                                        requires_grad=False)
        shapes.append(torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lens, "lstm", H, L, bidir, True)[3].shape)
    assert shapes[1][:2] == (4, 3) and shapes[0][2] == shapes[1][2]


def test_op_argument_errors():
    x, weights, h0, c0, lens, H, L, bidir = problem("lstm", requires_grad=False)
    op = torch.ops.fastrnn.rnn_forward
    with pytest.raises(TypeError, match=r"weights\[0\] must have the input's dtype torch.float16, got torch.float64"):
        op(x.half(), weights, None, None, None, "lstm", H, L, bidir, False)  # 16-bit x, float64 weights
    with pytest.raises(TypeError, match=r"weights\[1\]"):
        op(x, weights[:1] + [weights[1].float()] + weights[2:], None, None, None, "lstm", H, L, bidir, False)
    with pytest.raises(ValueError, match="3-D"):
        op(x[0], weights, None, None, None, "lstm", H, L, bidir, False)
    with pytest.raises(ValueError, match="cell"):
        op(x, weights, None, None, None, "tanh", H, L, bidir, False)
    with pytest.raises(ValueError, match="weights"):
        op(x, weights[:3], None, None, None, "lstm", H, L, bidir, False)
    # The kernels take data pointers: every shape, dtype and device is checked in Python first.
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 2\), got \(1, 1, 2\)"):
        op(x, weights, h0[:, :1], None, None, "lstm", H, L, bidir, False)
    with pytest.raises(ValueError, match=r"c0 must have shape"):
        op(x, weights, h0, c0[:, :, :1], None, "lstm", H, L, bidir, False)
    with pytest.raises(TypeError, match=r"h0 must have the input's dtype"):
        op(x, weights, h0.float(), c0, None, "lstm", H, L, bidir, False)
    bad = list(weights)
    bad[1] = weights[1][:, :1]  # w_hh [4H, 1] instead of [4H, H]
    with pytest.raises(ValueError, match=r"weights\[1\] \(w_hh of layer 0\) must have shape \(8, 2\), got \(8, 1\)"):
        op(x, bad, None, None, None, "lstm", H, L, bidir, False)
    bad[1], bad[2] = weights[1], weights[2][:7]
    with pytest.raises(ValueError, match=r"weights\[2\] \(b_ih"):
        op(x, bad, None, None, None, "lstm", H, L, bidir, False)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=3\], got values from 1 to 9"):
        op(x, weights, None, None, torch.tensor([9, 1]), "lstm", H, L, bidir, False)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=3\], got values from 0"):
        op(x, weights, None, None, torch.tensor([0, 1]), "lstm", H, L, bidir, False)
    with pytest.raises(TypeError, match="lengths must have dtype torch.int64"):
        op(x, weights, None, None, torch.tensor([3.0, 1.0]), "lstm", H, L, bidir, False)
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        op(x, weights, None, None, torch.tensor([3, 1, 1]), "lstm", H, L, bidir, False)
    with pytest.raises(ValueError, match="empty"):
        op(x[:, :0], weights, None, None, None, "lstm", H, L, bidir, False)


def test_backward_op_argument_errors():
    x, weights, h0, c0, lens, H, L, bidir = problem("gru", requires_grad=False)
    y, hn, _, reserve = torch.ops.fastrnn.rnn_forward(x, weights, h0, None, None, "gru", H, L, bidir, True)
    back = torch.ops.fastrnn.rnn_backward
    dy = torch.ones_like(y)
    dx, dh0, _, dweights = back(x, weights, h0, None, None, reserve, dy, None, None, "gru", H, L, bidir)
    assert dx.shape == x.shape and dh0.shape == h0.shape and [g.shape for g in dweights] == [w.shape for w in weights]
    with pytest.raises(ValueError, match=r"dy must have shape \(3, 2, 2\), got \(3, 2, 1\)"):
        back(x, weights, h0, None, None, reserve, dy[..., :1], None, None, "gru", H, L, bidir)
    with pytest.raises(ValueError, match=r"dhn must have shape"):
        back(x, weights, h0, None, None, reserve, dy, hn[:, :1], None, "gru", H, L, bidir)
    with pytest.raises(ValueError, match="reserve must be the training forward's"):
        back(x, weights, h0, None, None, reserve[:2], dy, None, None, "gru", H, L, bidir)
    with pytest.raises(ValueError, match="reserve must be the training forward's"):
        back(x, weights, h0, None, None, reserve.float(), dy, None, None, "gru", H, L, bidir)



def test_eager_calls_do_not_import_dynamo():
    """Outside torch.compile the ops must not pull in torch._dynamo: @torch.library.custom_op's
    kernels import it on their first call, which made fastrnn.nn's first forward take over a second
    (ops.py declares the ops without that decorator). Run in a fresh interpreter, where nothing else
    has imported it yet."""
    import subprocess
    import sys
    code = ("import sys, torch, fastrnn.nn as fnn\n"
            "m = fnn.LSTM(3, 4, 2, dropout=0.5)\n"
            "y, _ = m(torch.randn(5, 2, 3, requires_grad=True))\n"
            "y.sum().backward()\n"
            "assert m.weight_hh_l1.grad is not None\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("module", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell"])
def test_eager_path_equals_the_op(module, monkeypatch):
    """fastrnn.nn calls the kernels directly in plain eager mode (ops.run_forward) and through
    torch.ops.fastrnn.rnn_forward otherwise; both must give the same outputs and gradients, bit for
    bit (the same kernels on the same inputs), in training and in inference."""
    import fastrnn.nn as fnn
    torch.manual_seed(0)
    cells = module.endswith("Cell")
    m = getattr(fnn, module)(3, 4) if cells else getattr(fnn, module)(3, 4, num_layers=2, bidirectional=True)
    m = m.double()
    x = torch.randn(2, 3, dtype=torch.float64) if cells else torch.randn(5, 2, 3, dtype=torch.float64)
    state_shape = (2, 4) if cells else (4, 2, 4)
    states = [torch.randn(state_shape, dtype=torch.float64) for _ in range(2 if "LSTM" in module else 1)]

    def flat(out):
        return [u for t in (out if isinstance(out, tuple) else (out,)) for u in (t if isinstance(t, tuple) else (t,))]

    def run(eager):
        monkeypatch.setattr(fastrnn.ops, "_EAGER_PATH", eager)
        m.zero_grad()
        xg = x.clone().requires_grad_()
        sg = [s.clone().requires_grad_() for s in states]
        out = flat(m(xg, tuple(sg) if len(sg) == 2 else sg[0]))
        sum(t.sin().sum() for t in out).backward()
        with torch.no_grad():
            out_eval = flat(m(x))
        return out + out_eval + [xg.grad] + [s.grad for s in sg] + [p.grad.clone() for p in m.parameters()]

    eager, op = run(True), run(False)
    assert len(eager) == len(op)
    for a, b in zip(eager, op):
        assert torch.equal(a, b)


@pytest.mark.parametrize("module, reached", [("LSTM", "output"), ("LSTM", "h_n"), ("LSTM", "c_n"), ("GRU", "h_n"),
                                             ("GRU", "output")])
def test_eager_path_when_the_loss_reaches_some_outputs(module, reached, monkeypatch):
    """The eager path's backward gets None, not zeros, for the outputs the loss did not reach (no
    zero gradient of the reserve is filled): x's, the states' and every parameter's gradients equal
    the op's (which gets zeros), bit for bit, with layer norm too."""
    import fastrnn.nn as fnn
    torch.manual_seed(0)
    for layer_norm in (False, True):
        m = getattr(fnn, module)(3, 4, num_layers=2, bidirectional=True, layer_norm=layer_norm).double()
        x = torch.randn(5, 2, 3, dtype=torch.float64)
        states = [torch.randn(4, 2, 4, dtype=torch.float64) for _ in range(2 if module == "LSTM" else 1)]

        def run(eager):
            monkeypatch.setattr(fastrnn.ops, "_EAGER_PATH", eager)
            m.zero_grad()
            xg = x.clone().requires_grad_()
            sg = [s.clone().requires_grad_() for s in states]
            y, hn = m(xg, tuple(sg) if len(sg) == 2 else sg[0])
            out = {"output": y, "h_n": hn[0] if module == "LSTM" else hn, "c_n": hn[1] if module == "LSTM" else None}
            out[reached].sin().sum().backward()
            return [xg.grad] + [s.grad for s in sg] + [p.grad.clone() for p in m.parameters()]

        eager, op = run(True), run(False)
        assert len(eager) == len(op)
        for a, b in zip(eager, op):
            assert torch.equal(a, b)
