"""A short training run: a tiny language model (embedding + 2-layer LSTM/GRU + linear, SGD) trained
for 50 steps with torch.nn and with fastrnn.nn from the same initial weights on the same batches
follows the same loss curve (float64: to ~1e-10, float32: to a relative 1e-3, which allows for
float32 rounding growing over the steps), and the loss goes down.
"""
import pytest

torch = pytest.importorskip("torch")

import fastrnn.nn as fnn  # noqa: E402

V, E, H, T, B, STEPS = 13, 8, 16, 12, 6, 50


class LM(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.rnn = rnn
        self.out = torch.nn.Linear(H, V)

    def forward(self, tokens):  # [T, B] -> logits [T, B, V]
        y, _ = self.rnn(self.emb(tokens))
        return self.out(y)


def corpus():
    """A learnable token stream: a noisy repeating pattern."""
    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, V, (7,), generator=g)
    stream = pattern.repeat(200)
    noise = torch.rand(stream.shape, generator=g) < 0.1
    return torch.where(noise, torch.randint(0, V, stream.shape, generator=g), stream)


def train(model, data, dtype):
    model.to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        starts = torch.randint(0, len(data) - T - 1, (B,), generator=g)
        batch = torch.stack([data[s:s + T + 1] for s in starts.tolist()], 1)  # [T+1, B]
        logits = model(batch[:-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), batch[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("cell", ("LSTM", "GRU"))
def test_training_tracks_torch_nn(cell, dtype):
    torch.manual_seed(0)
    ref = LM(getattr(torch.nn, cell)(E, H, 2))
    fast = LM(getattr(fnn, cell)(E, H, 2))
    fast.load_state_dict(ref.state_dict())
    data = corpus()
    loss_ref, loss_fast = train(ref, data, dtype), train(fast, data, dtype)
    assert loss_ref[-10:].mean() < 0.8 * loss_ref[:5].mean()  # it learns
    if dtype == torch.float64:
        torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-10, atol=0)
    else:
        torch.testing.assert_close(loss_fast, loss_ref, rtol=1e-3, atol=0)
