"""fastrnn.nn on PackedSequence input against torch.nn's packed path: values and gradients (input,
initial states, every parameter) for enforce_sorted True and False, one and two directions, one to
three layers, every module, float32 and float64 (torch.nn in float64 on the same rounded weights);
batch_first modules, no initial state, equal lengths, a lone one-step sequence, dropout between
layers; that a ragged packed batch gives what each sequence alone gives; that the fused calls take
the packed data as it is (no pad_packed_sequence), and what the packed op refuses. The kernels run
each step on its batch_sizes[t] live rows (tests/kernels/test_ragged.py checks that path itself).
"""
import pytest

torch = pytest.importorskip("torch")

import fastrnn.nn.layers as fnn_layers  # noqa: E402
from fastrnn import ops  # noqa: E402

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
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    _compare_with_torch(cell, dtype, lengths, enforce_sorted, num_layers, bidirectional)


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


def _compare_with_torch(cell, dtype, lengths, enforce_sorted=False, num_layers=1, bidirectional=False,
                        with_state=True, module_kwargs=None, seed=0):
    """fastrnn.nn against torch.nn (float64, same weights) on pack_padded_sequence(x, lengths): the
    packed output with its indices, the final states, and the gradients of x, the states and every
    parameter."""
    torch_cls, fast_cls, extra = LAYER_PAIRS[cell]
    torch.manual_seed(seed)
    kwargs = dict(input_size=I, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional, **extra,
                  **(module_kwargs or {}))
    fast = fast_cls(**kwargs, dtype=dtype)
    ref = torch_cls(**kwargs, dtype=dtype)
    ref.load_state_dict(fast.state_dict())
    ref = ref.double()
    g = torch.Generator().manual_seed(seed + 1)
    steps, batch = max(lengths), len(lengths)
    x = torch.randn(steps, batch, I, generator=g, dtype=torch.float64).to(dtype)
    D, lstm = 2 if bidirectional else 1, cell == "lstm"
    hx = [torch.randn(num_layers * D, batch, H, generator=g, dtype=torch.float64).to(dtype)
          for _ in range(1 + lstm)] if with_state else []
    weights = [torch.randn(sum(lengths), D * H, generator=g, dtype=torch.float64)] + \
        [torch.randn(num_layers * D, batch, H, generator=g, dtype=torch.float64) for _ in range(1 + lstm)]
    results = {}
    for name, module, cast in (("fast", fast, lambda t: t), ("ref", ref, lambda t: t.double())):
        xi = cast(x).detach().requires_grad_()
        hi = [cast(h).detach().requires_grad_() for h in hx]
        packed = pack_padded_sequence(xi, torch.tensor(lengths), enforce_sorted=enforce_sorted)
        state = (tuple(hi) if lstm else hi[0]) if with_state else None
        y, states, loss = run(module, packed, state, weights)
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


@pytest.fixture
def no_padding(monkeypatch):
    """Makes fastrnn.nn's padding of a PackedSequence an error: the fused path must not pad."""
    def refuse(*args, **kwargs):
        raise AssertionError("fastrnn.nn padded a PackedSequence that the packed op serves")
    monkeypatch.setattr(fnn_layers, "pad_packed_sequence", refuse)
    monkeypatch.setattr(fnn_layers, "pack_padded_sequence", refuse)


CASES = {  # name -> (lengths, enforce_sorted, num_layers, bidirectional, with_state, module kwargs)
    "sorted_2layers_bidirectional": ([9, 6, 6, 4, 2, 1], True, 2, True, True, {}),
    "unsorted_batch_first": (LENGTHS, False, 1, False, True, {"batch_first": True}),
    "unsorted_bidirectional_no_state": (LENGTHS, False, 1, True, False, {}),
    "equal_lengths": ([5, 5, 5, 5], False, 2, True, True, {}),
    "one_sequence_of_one_step": ([1], True, 2, True, True, {}),
    "one_step_lengths": ([1, 1, 1], False, 1, True, True, {}),
    "a_lone_one_step_sequence": ([7, 1], False, 2, False, True, {}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_packed_cases_match_torch_without_padding(cell, dtype, case, no_padding):
    lengths, enforce_sorted, num_layers, bidirectional, with_state, kwargs = CASES[case]
    _compare_with_torch(cell, dtype, lengths, enforce_sorted, num_layers, bidirectional, with_state, kwargs)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_dropout_between_layers(cell, no_padding):
    """Dropout between layers in training: one packed call per layer with dropout on the packed output
    between them; the output with p = 1 after the first layer is the second layer's on zero input."""
    torch_cls, fast_cls, extra = LAYER_PAIRS[cell]
    torch.manual_seed(5)
    fast = fast_cls(I, H, num_layers=2, dropout=1.0, dtype=torch.float64, **extra).train()
    ref = torch_cls(H, H, num_layers=1, dtype=torch.float64, **extra)  # the second layer alone
    ref.load_state_dict({k.replace("_l1", "_l0"): v for k, v in fast.state_dict().items() if "_l1" in k})
    x = pack_padded_sequence(torch.randn(T, B, I, dtype=torch.float64), torch.tensor(LENGTHS), enforce_sorted=False)
    y, _ = fast(x)
    zero_input = PackedSequence(torch.zeros(x.data.shape[0], H, dtype=torch.float64), x.batch_sizes,
                                x.sorted_indices, x.unsorted_indices)
    expected, _ = ref(zero_input)
    assert_close(y.data, expected.data, torch.float64, "output after full dropout")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_modifiers_still_pad(cell):
    """The training modifiers take the padded path (pad, run, pack); with eval-mode zoneout a packed
    batch still gives what each sequence alone gives."""
    _, fast_cls, extra = LAYER_PAIRS[cell]
    torch.manual_seed(6)
    fast = fast_cls(I, H, zoneout=0.3, dtype=torch.float64, **extra).eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, _ = fast(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False))
    padded, _ = pad_packed_sequence(y)
    for b, n in enumerate(LENGTHS):
        alone, _ = fast(x[:n, b:b + 1])
        assert_close(padded[:n, b], alone[:, 0], torch.float64, f"output of sequence {b}")


def test_packed_op_matches_the_padded_op():
    """rnn_forward_packed / its backward against rnn_forward with the same sorted lengths: the same
    states, the packed rows of the padded output, the same gradients."""
    lengths = [8, 5, 5, 3, 1]
    Tn, Bn, L = max(lengths), len(lengths), 2
    torch.manual_seed(7)
    weights = [w.detach().requires_grad_() for w in fnn_layers.LSTM(I, H, L, bidirectional=True,
                                                                   dtype=torch.float64)._weights()]
    x = torch.randn(Tn, Bn, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * L, Bn, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * L, Bn, H, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor(lengths))
    y, hn, cn, _ = ops.rnn_forward_packed(packed.data, weights, h0, c0, packed.batch_sizes, "lstm", H, L, True, True,
                                          Bn)
    y_ref, hn_ref, cn_ref, _ = ops.rnn_forward(x, weights, h0, c0, torch.tensor(lengths), "lstm", H, L, True, True)
    assert_close(y, pack_padded_sequence(y_ref, torch.tensor(lengths)).data, torch.float64, "y")
    assert_close(hn, hn_ref, torch.float64, "hn")
    assert_close(cn, cn_ref, torch.float64, "cn")
    g = torch.Generator().manual_seed(8)
    wy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((y * wy).sum() + hn.sum() + cn.pow(2).sum(), [x, h0, c0, *weights])
    wy_padded, _ = pad_packed_sequence(PackedSequence(wy, packed.batch_sizes))
    grads_ref = torch.autograd.grad((y_ref * wy_padded).sum() + hn_ref.sum() + cn_ref.pow(2).sum(), [x, h0, c0, *weights])
    for k, (a, b) in enumerate(zip(grads, grads_ref)):
        assert_close(a, b, torch.float64, f"gradient {k}")


@pytest.mark.parametrize("batch_sizes,batch,rows,message", [
    ([2, 3], 2, 5, "non-increasing"),
    ([3, 0], 3, 3, "non-increasing and >= 1"),
    ([3, 2], 2, 5, "batch_sizes\\[0\\] must be the batch size"),
    ([3, 2], 3, 4, "sum\\(batch_sizes\\) = 5 rows, got 4"),
])
def test_packed_op_refuses_inconsistent_batch_sizes(batch_sizes, batch, rows, message):
    weights = list(fnn_layers.GRU(I, H)._weights())
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        ops.rnn_forward_packed(torch.randn(rows, I), weights, None, None, torch.tensor(batch_sizes), "gru", H, 1, False,
                               False, batch)


def test_packed_op_checks_its_arguments():
    weights = list(fnn_layers.GRU(I, H)._weights())
    bs = torch.tensor([2, 1])
    with torch.no_grad():
        with pytest.raises(ValueError, match="must be 2-D"):
            ops.rnn_forward_packed(torch.randn(3, 1, I), weights, None, None, bs, "gru", H, 1, False, False, 2)
        with pytest.raises(TypeError, match="batch_sizes must be a 1-D int64"):
            ops.rnn_forward_packed(torch.randn(3, I), weights, None, None, bs.int(), "gru", H, 1, False, False, 2)
        with pytest.raises(ValueError, match="h0 must have shape"):
            ops.rnn_forward_packed(torch.randn(3, I), weights, torch.zeros(1, 3, H), None, bs, "gru", H, 1, False,
                                   False, 2)
