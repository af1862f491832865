"""fastrnn.nn under torch.nn.parallel.DistributedDataParallel: two CPU processes (gloo backend,
torch.multiprocessing.spawn), each running half of the batch through an LSTM (2 layers,
bidirectional, variable lengths; also with proj_size) and a linear head; after one backward, every
rank's gradients equal the single-process gradients on the full batch, and one SGD step leaves the
ranks' weights equal.
"""
import os
import socket

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.nn as fnn  # noqa: E402

WORLD = 2
T, B, I, H = 6, 4, 5, 7  # B splits evenly over the ranks


def make_model(proj_size=0):
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"rnn": fnn.LSTM(I, H, 2, bidirectional=True, proj_size=proj_size,
                                                dtype=torch.float64),
                                "head": torch.nn.Linear(2 * (proj_size or H), 1, dtype=torch.float64)})


def make_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 5, 2])
    target = torch.randn(T, B, 1, generator=g, dtype=torch.float64)
    return x, lengths, target


def loss_fn(model, x, lengths, target):
    """Mean over the sequences of the batch (so that DDP's average over equal shards is the
    full-batch loss)."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, _ = model["rnn"](packed)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])
    per_seq = ((model["head"](y) - target) ** 2).sum(dim=(0, 2))
    return per_seq.mean()


class _DDPModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, lengths, target):
        return loss_fn(self.inner, x, lengths, target)


def _worker(rank, port, out_dir, proj_size):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    fastrnn.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_DDPModel(make_model(proj_size)))
        x, lengths, target = make_data()
        shard = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        ddp(x[:, shard], lengths[shard], target[:, shard]).backward()
        grads = {n: p.grad.clone() for n, p in ddp.module.inner.named_parameters()}
        torch.optim.SGD(ddp.parameters(), lr=0.1).step()
        weights = {n: p.detach().clone() for n, p in ddp.module.inner.named_parameters()}
        torch.save({"grads": grads, "weights": weights}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("proj_size", [0, 3], ids=["plain", "proj"])
def test_ddp_gradients_equal_single_process(tmp_path, proj_size):
    model = make_model(proj_size)
    loss_fn(model, *make_data()).backward()
    expected = {n: p.grad for n, p in model.named_parameters()}

    mp.spawn(_worker, args=(_free_port(), str(tmp_path), proj_size), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(results):
        assert set(res["grads"]) == set(expected)
        for name, g in expected.items():
            torch.testing.assert_close(res["grads"][name], g, rtol=1e-10, atol=1e-12, msg=f"rank {r}: {name}")
    for name, w in results[0]["weights"].items():
        torch.testing.assert_close(results[1]["weights"][name], w, rtol=0, atol=0)
