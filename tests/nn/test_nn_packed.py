"""fastrnn.nn on PackedSequence input against torch.nn's packed path: values and gradients (input,
initial states, every parameter) for enforce_sorted True and False, one and two directions, one to
three layers, every module, float32 and float64 (torch.nn in float64 on the same rounded weights);
and that a ragged packed batch gives what each sequence alone gives. The kernels run each step on
its batch_sizes[t] live rows (tests/kernels/test_ragged.py checks that path itself).
"""
import pytest

torch = pytest.importorskip("torch")

from helpers import LAYER_PAIRS, to_numpy  # noqa: E402
from helpers import assert_torch_close as _assert_torch_close  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence  # noqa: E402

CELLS = ("rnn_tanh", "lstm", "gru")
T, B, I, H = 9, 6, 5, 7
LENGTHS = [4, 9, 1, 6, 6, 2]  # unsorted, distinct row counts per step, one sequence of one step


def assert_close(actual, expected, dtype, what):
    _assert_torch_close(to_numpy(actual), to_numpy(expected), dtype, what)


def run(module, packed, hx, weights):
    y, h = module(packed, hx)
    assert isinstance(y, PackedSequence)
    states = tuple(h) if isinstance(h, tuple) else (h,)
    loss = (y.data * weights[0].to(y.data)).sum() + sum((s * w.to(s)).sum() for s, w in zip(states, weights[1:]))
    return y, states, loss


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True), (3, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed_matches_torch(cell, dtype, num_layers, bidirectional, enforce_sorted):
    torch_cls, fast_cls, extra = LAYER_PAIRS[cell]
    torch.manual_seed(0)
    kwargs = dict(input_size=I, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional, **extra)
    fast = fast_cls(**kwargs, dtype=dtype)
    ref = torch_cls(**kwargs, dtype=dtype)
    ref.load_state_dict(fast.state_dict())
    ref = ref.double()
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(dtype)
    D = 2 if bidirectional else 1
    lstm = cell == "lstm"
    hx = [torch.randn(num_layers * D, B, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(1 + lstm)]
    weights = [torch.randn(sum(lengths), D * H, generator=g, dtype=torch.float64)] + \
        [torch.randn(num_layers * D, B, H, generator=g, dtype=torch.float64) for _ in range(1 + lstm)]
    results = {}
    for name, module, cast in (("fast", fast, lambda t: t), ("ref", ref, lambda t: t.double())):
        xi = cast(x).detach().requires_grad_()
        hi = [cast(h).detach().requires_grad_() for h in hx]
        packed = pack_padded_sequence(xi, torch.tensor(lengths), enforce_sorted=enforce_sorted)
        y, states, loss = run(module, packed, tuple(hi) if lstm else hi[0], weights)
        loss.backward()
        results[name] = dict(y=y, states=states, dx=xi.grad, dh=[h.grad for h in hi],
                             dparams={k: p.grad for k, p in module.named_parameters()})
    f, r = results["fast"], results["ref"]
    assert torch.equal(f["y"].batch_sizes, r["y"].batch_sizes)
    for attr in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(f["y"], attr), getattr(r["y"], attr)
        assert (a is None and b is None) or torch.equal(a, b), attr
    assert_close(f["y"].data, r["y"].data, dtype, "output")
    for k, (a, b) in enumerate(zip(f["states"], r["states"])):
        assert_close(a, b, dtype, f"state {k}")
    assert_close(f["dx"], r["dx"], dtype, "dx")
    for k, (a, b) in enumerate(zip(f["dh"], r["dh"])):
        assert_close(a, b, dtype, f"dstate {k}")
    for name, grad in f["dparams"].items():
        assert_close(grad, r["dparams"][name], dtype, "d" + name)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_batch_equals_each_sequence_alone(cell):
    torch_cls, fast_cls, extra = LAYER_PAIRS[cell]
    torch.manual_seed(3)
    fast = fast_cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, h = fast(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False))
    h = h[0] if isinstance(h, tuple) else h
    padded, _ = pad_packed_sequence(y)
    for b, n in enumerate(LENGTHS):
        y1, h1 = fast(x[:n, b:b + 1])
        h1 = h1[0] if isinstance(h1, tuple) else h1
        assert_close(padded[:n, b], y1[:, 0], torch.float64, f"output of sequence {b}")
        assert not padded[n:, b].any()
        assert_close(h[:, b], h1[:, 0], torch.float64, f"h_n of sequence {b}")
