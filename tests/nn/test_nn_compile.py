"""torch.compile on models using each fastrnn.nn module: fullgraph=True (any graph break is an
error), outputs and gradients equal to eager, and a dynamic sequence length (mark_dynamic on T)
compiles once for several lengths. The "aot_eager" backend (which traces forward and backward
through the ops' fake implementations, as inductor does) keeps this quick; one test runs the
default inductor backend end to end.
"""
import pytest

torch = pytest.importorskip("torch")

import fastrnn.nn as fnn  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Every test compiles Model.forward anew: without a reset, the shared code object's cache
    # reaches dynamo's recompile limit across tests.
    torch._dynamo.reset()
    yield


MODULES = {
    "RNN": lambda: fnn.RNN(4, 5, 2, "relu", bidirectional=True),
    "LSTM": lambda: fnn.LSTM(4, 5, 2, bidirectional=True),
    "LSTM_proj": lambda: fnn.LSTM(4, 5, proj_size=3),
    "GRU": lambda: fnn.GRU(4, 5, batch_first=True),
    "RNNCell": lambda: fnn.RNNCell(4, 5),
    "LSTMCell": lambda: fnn.LSTMCell(4, 5),
    "GRUCell": lambda: fnn.GRUCell(4, 5),
}


class Model(torch.nn.Module):
    """A linear layer, the recurrent module (as a cell: stepped over time), a loss-ready output."""

    def __init__(self, name):
        super().__init__()
        self.inp = torch.nn.Linear(4, 4)
        self.rnn = MODULES[name]()
        self.cell = "Cell" in name

    def forward(self, x):  # x [T, B, 4] (the GRU is batch_first: the same tensor read as [B, T, 4])
        x = self.inp(x)
        if not self.cell:
            y, h = self.rnn(x)
            return y.sum() + (h[0] if isinstance(h, tuple) else h).pow(2).sum()
        h, total = None, 0
        for t in range(x.shape[0]):
            h = self.rnn(x[t], h)
            total = total + (h[0] if isinstance(h, tuple) else h).sum()
        return total


def _loss_and_grads(model, x, dynamic_dim=None):
    model.zero_grad()
    x = x.detach().requires_grad_()
    if dynamic_dim is not None:  # on this very tensor: a detached copy does not carry the mark
        torch._dynamo.mark_dynamic(x, dynamic_dim)
    loss = model(x)
    loss.backward()
    return loss.detach(), x.grad, [p.grad.clone() for p in model.parameters()]


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
    for ga, gb in zip(a[2], b[2]):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", tuple(MODULES))
def test_compile_fullgraph(name):
    torch.manual_seed(0)
    model = Model(name)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.randn(3, 2, 4)
    _assert_same(_loss_and_grads(compiled, x), _loss_and_grads(model, x))
    assert counter.frame_count == 1


@pytest.mark.parametrize("name", ("RNN", "LSTM", "GRU"))
def test_compile_dynamic_sequence_length(name):
    torch.manual_seed(0)
    model = Model(name)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for T in (3, 5, 8):
        x = torch.randn(T, 2, 4) if name != "GRU" else torch.randn(2, T, 4)
        _assert_same(_loss_and_grads(compiled, x, dynamic_dim=0 if name != "GRU" else 1), _loss_and_grads(model, x))
    assert counter.frame_count == 1  # one graph for every length


def test_compile_dynamic_true():
    model = fnn.LSTM(4, 5)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    for T in (2, 6, 9):
        x = torch.randn(T, 3, 4)
        torch.testing.assert_close(compiled(x)[0], model(x)[0])
        frames.append(counter.frame_count)
    assert frames[0] == frames[-1]  # no recompilation for a new length
    assert any("fastrnn.rnn_forward" in g.code for g in counter.graphs)


def test_compile_inductor():
    """The default backend, forward and backward, on a small LSTM language-model-like stack."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), fnn.LSTM(4, 5, 2))
    compiled = torch.compile(model, fullgraph=True)

    def run(m, x):
        m.zero_grad()
        y, (h, c) = m(x)
        (y.pow(2).sum() + c.sum()).backward()
        return y.detach(), [p.grad.clone() for p in m.parameters()]

    x = torch.randn(4, 2, 4)
    (y1, g1), (y2, g2) = run(compiled, x), run(model, x)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("name", ("LSTM", "GRU"))
def test_compile_fullgraph_packed_sequence(name, enforce_sorted):
    """A PackedSequence input compiles without a graph break (the module runs the packed op on its
    data, no pad_packed_sequence), with the eager outputs and gradients, the op in the graph."""
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(0)
    rnn = fnn.LSTM(4, 5, 2, bidirectional=True) if name == "LSTM" else fnn.GRU(4, 5, bidirectional=True)
    lengths = torch.tensor([6, 4, 2] if enforce_sorted else [2, 6, 4])

    def loss_and_grads(f, x):
        rnn.zero_grad()
        x = x.detach().requires_grad_()
        y, h = f(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted))
        loss = (y.data * torch.arange(y.data.numel()).view_as(y.data)).sum() + \
            (h[0] if isinstance(h, tuple) else h).pow(2).sum()
        loss.backward()
        return loss.detach(), x.grad, [p.grad.clone() for p in rnn.parameters()]

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(rnn, fullgraph=True, backend=counter)
    x = torch.randn(6, 3, 4)
    _assert_same(loss_and_grads(compiled, x), loss_and_grads(rnn, x))
    assert counter.frame_count == 1
    assert any("fastrnn.rnn_forward_packed" in g.code for g in counter.graphs)
