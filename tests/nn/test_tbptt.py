"""fastrnn.nn.tbptt: k1 = k2 = T equals full BPTT's gradients; the states carried from window to
window equal one forward over the whole stream; TBPTT(k1, k2) gradients, window by window, equal a
plain-torch implementation of the same truncation (torch.nn.LSTM/GRU, each window rerun from the
state a no-grad forward reaches at its first step); each step is computed once plus the overlaps;
bad arguments raise.
"""
import pytest
import torch

import fastrnn.nn


class Model(torch.nn.Module):
    """A recurrent layer and a linear read-out: model(x [t, B, I], state) -> (y [t, B, 3], state)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(rnn.hidden_size, 3, dtype=torch.float64)
        self.steps = 0

    def forward(self, x, state):
        self.steps += x.size(0)
        y, state = self.rnn(x, state)
        return self.head(y), state


def pair(cell, I=4, H=6, L=2, seed=0):
    """The same model twice: on fastrnn.nn's layer and on torch.nn's."""
    torch.manual_seed(seed)
    ref = Model(getattr(torch.nn, cell)(I, H, L, dtype=torch.float64))
    fast = Model(getattr(fastrnn.nn, cell)(I, H, L, dtype=torch.float64))
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def loss_of(y, targets):
    return ((y - targets) ** 2).sum()


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def stream(T=23, B=3, I=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    return x, torch.randn(T, B, 3, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_one_window_is_full_bptt(cell):
    fast, ref = pair(cell)
    x, target = stream()
    windows = list(fastrnn.nn.tbptt(fast, x, k1=x.size(0), k2=x.size(0), targets=target))
    assert len(windows) == 1 and windows[0].start == 0 and windows[0].stop == x.size(0)
    loss_of(windows[0].outputs, windows[0].targets).backward()
    y, _ = ref(x, None)
    loss_of(y, target).backward()
    for g, e in zip(grads(fast), grads(ref)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k1,k2", [(5, 5), (4, 9), (3, 7), (6, 20)])
def test_carried_states_equal_one_forward(k1, k2):
    fast, _ = pair("LSTM")
    x, _ = stream()
    with torch.no_grad():
        y_all, _ = fast(x, None)
    stops = []
    for w in fastrnn.nn.tbptt(fast, x, k1, k2):
        with torch.no_grad():
            _, (h, c) = fast(x[:w.stop], None)
        torch.testing.assert_close(w.state[0], h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(w.state[1], c, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(w.outputs, y_all[w.start:w.stop], rtol=1e-12, atol=1e-12)
        stops.append(w.stop)
    assert stops == list(range(k1, x.size(0), k1)) + [x.size(0)]


def plain_tbptt_grads(model, x, targets, k1, k2, state):
    """TBPTT(k1, k2) written out: window [s, s + k1) backpropagates to max(0, s - (k2 - k1)); the
    state there comes from a no-grad forward from the stream's start."""
    out = []
    for start in range(0, x.size(0), k1):
        stop = min(start + k1, x.size(0))
        first = max(0, start - (k2 - k1))
        with torch.no_grad():
            s = state if first == 0 else model(x[:first], state)[1]
        model.zero_grad()
        y, _ = model(x[first:stop], s)
        loss_of(y[start - first:], targets[start:stop]).backward()
        out.append(grads(model))
    return out


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("k1,k2", [(4, 4), (4, 9), (5, 7), (3, 11)])
def test_truncated_gradients_equal_plain_torch(cell, k1, k2):
    fast, ref = pair(cell)
    x, target = stream()
    g = torch.Generator().manual_seed(2)
    h0 = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    state = (h0, torch.randn(2, 3, 6, generator=g, dtype=torch.float64)) if cell == "LSTM" else h0
    expected = plain_tbptt_grads(ref, x, target, k1, k2, state)
    windows = 0
    for w, want in zip(fastrnn.nn.tbptt(fast, x, k1, k2, state=state, targets=target), expected):
        fast.zero_grad()
        loss_of(w.outputs, w.targets).backward()
        for got, e in zip(grads(fast), want):
            torch.testing.assert_close(got, e, rtol=1e-10, atol=1e-12)
        windows += 1
    assert windows == len(expected)


def test_recomputes_only_the_overlap():
    fast, _ = pair("GRU")
    x, _ = stream(T=40)
    for k1, k2 in ((8, 8), (8, 13), (5, 12)):
        fast.steps = 0
        n = sum(1 for _ in fastrnn.nn.tbptt(fast, x, k1, k2))
        # each window reruns the k2 - k1 steps before it (fewer at the stream's start)
        assert fast.steps == 40 + sum(min(k2 - k1, w * k1) for w in range(n))


def test_updates_between_windows():
    """With an optimizer stepping after each window, training runs and the carried state stays
    detached (backward never reaches into an earlier window, which would raise)."""
    fast, _ = pair("LSTM")
    x, target = stream()
    opt = torch.optim.SGD(fast.parameters(), lr=0.01)
    losses = []
    for _ in range(3):
        for w in fastrnn.nn.tbptt(fast, x, 4, 7, targets=target):
            opt.zero_grad()
            loss = loss_of(w.outputs, w.targets)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_arguments():
    fast, _ = pair("GRU")
    x, target = stream()
    with pytest.raises(ValueError, match="k2 .* must be >= k1"):
        fastrnn.nn.tbptt(fast, x, 5, 3)
    with pytest.raises(ValueError, match="k1 must be an int >= 1"):
        fastrnn.nn.tbptt(fast, x, 0)
    with pytest.raises(ValueError, match="inputs must be a time-major"):
        fastrnn.nn.tbptt(fast, x[0, 0], 2)
    with pytest.raises(ValueError, match="targets must be a tensor with T=23"):
        fastrnn.nn.tbptt(fast, x, 2, targets=target[:5])
