"""fastrnn.nn on the CPU draws one 64-bit seed from torch's default generator per training call,
and the kernels draw the recurrent-dropout and zoneout masks from it (csrc/philox.h). Here: the op
with a seed equals the op given the masks the seed materialises (fastrnn.reference.philox), bit for
bit, values and gradients; torch.manual_seed reproduces a run and calls differ; eval draws
nothing; a stacked module gives each layer and direction its own masks; torch.compile(fullgraph=True)
traces the seeded op and matches eager. (The modules against plain-torch loops given the same masks:
tests/kernels/test_modifiers.py and tests/nn/test_nn_modifier_variants.py, helpers.nn_drawn_masks.)
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import fastrnn.nn as fnn  # noqa: E402
from fastrnn import ops  # noqa: E402
from fastrnn.reference.philox import seeded_masks  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield


@pytest.mark.parametrize("cell", ["lstm", "gru", "lstm+peephole"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seeded_op_equals_the_op_given_the_materialised_masks(cell, dtype):
    torch.manual_seed(0)
    T, B, I, H, L, D = 5, 4, 3, 6, 2, 2
    lstm = cell.startswith("lstm")
    G = 4 if lstm else 3
    weights = []
    for layer in range(L):
        for _ in range(D):
            weights += [torch.randn(G * H, I if layer == 0 else D * H, dtype=dtype) * 0.5,
                        torch.randn(G * H, H, dtype=dtype) * 0.5, torch.randn(G * H, dtype=dtype),
                        torch.randn(G * H, dtype=dtype)]
            if cell == "lstm+peephole":
                weights.append(torch.randn(3, H, dtype=dtype))
    weights = [w.requires_grad_() for w in weights]
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([5, 2, 4, 1])
    op_cell = ops.variant_cell("lstm", peephole=True) if cell == "lstm+peephole" else cell
    seed, stream, pz, pzc, pr = 2**62 + 7, 3, 0.3, 0.25 if lstm else 0.0, 0.4
    r, zh, zc = (None if m is None else torch.from_numpy(m).to(dtype)
                 for m in seeded_masks(seed, L * D, T, B, H, zoneout=pz, zoneout_cell=pzc, recurrent_dropout=pr,
                                       stream=stream))
    seeded = ops.run_forward(x, weights, None, None, lengths, op_cell, H, L, True, True, grad_clip=0.5,
                             seeded=(torch.tensor([seed]), stream, pz, pzc, pr))
    given = ops.run_forward(x, weights, None, None, lengths, op_cell, H, L, True, True, r, 0.5, zh, zc)
    for a, b in zip(seeded[:3], given[:3]):
        assert torch.equal(a, b)
    dy = torch.randn_like(seeded[0])
    ga = torch.autograd.grad((seeded[0] * dy).sum() + seeded[1].sum(), [x] + weights)
    gb = torch.autograd.grad((given[0] * dy).sum() + given[1].sum(), [x] + weights)
    for a, b in zip(ga, gb):
        assert torch.equal(a, b)
    # the op itself (the path torch.compile traces)
    ys = torch.ops.fastrnn.rnn_forward_seeded(x, weights, None, None, lengths, op_cell, H, L, True, True, None, 0.5,
                                              None, None, torch.tensor([seed]), stream, pz, pzc, pr)
    assert torch.equal(ys[0], seeded[0])


def test_seeded_op_errors():
    x = torch.randn(3, 2, 4)
    w = [torch.randn(12, 4), torch.randn(12, 4)]
    with pytest.raises(ValueError, match="int64 tensor"):
        ops.run_forward(x, w, None, None, None, "gru", 4, 1, False, False, seeded=(torch.tensor([1.0]), 0, 0.1, 0, 0))
    with pytest.raises(ValueError, match="zoneout_cell"):
        ops.run_forward(x, w, None, None, None, "gru", 4, 1, False, False,
                        seeded=(torch.tensor([1]), 0, 0.1, 0.2, 0.0))


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_manual_seed_reproduces_and_calls_differ(cls):
    torch.manual_seed(0)
    extra = dict(zoneout_cell=0.2) if cls == "LSTM" else {}
    m = getattr(fnn, cls)(3, 5, 2, bidirectional=True, zoneout=0.3, recurrent_dropout=0.3, **extra)
    x = torch.randn(6, 4, 3)
    torch.manual_seed(7)
    a, b = m(x)[0], m(x)[0]
    torch.manual_seed(7)
    assert torch.equal(m(x)[0], a)
    assert not torch.equal(a, b)
    state = torch.get_rng_state()
    m.eval()
    m(x)
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing


def test_stacked_layers_draw_their_own_masks():
    """Layer l runs on stream l*D: the per-layer calls of a two-layer module equal one call of the
    whole stack given the [L*D, ...] masks the seed materialises."""
    torch.manual_seed(0)
    m = fnn.GRU(3, 4, 2, bidirectional=True, zoneout=0.4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(3)
    y = m(x)[0]
    torch.manual_seed(3)
    seed = int(torch.randint(-2**63, 2**63 - 1, (1,), dtype=torch.int64))
    _, zh, _ = seeded_masks(seed, 4, 5, 2, 4, zoneout=0.4)
    ref = ops.run_forward(x, list(m._weights()), None, None, None, "gru", 4, 2, True, False,
                          zoneout_h=torch.from_numpy(zh))
    assert torch.equal(y, ref[0])
    assert not torch.equal(torch.from_numpy(zh[0]), torch.from_numpy(zh[2]))


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_compile_fullgraph_traces_the_seeded_op(cls):
    torch.manual_seed(0)
    extra = dict(zoneout_cell=0.2) if cls == "LSTM" else {}
    m = getattr(fnn, cls)(3, 5, 2, bidirectional=True, zoneout=0.3, recurrent_dropout=0.3, dtype=torch.float64,
                          **extra)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, fullgraph=True, backend=counter)
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    params = [x] + list(m.parameters())
    torch.manual_seed(5)
    y1 = m(x)[0]
    g1 = torch.autograd.grad(y1.pow(2).sum(), params)
    torch.manual_seed(5)
    y2 = compiled(x)[0]
    g2 = torch.autograd.grad(y2.pow(2).sum(), params)
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert counter.frame_count == 1
    assert any("rnn_forward_seeded" in g.code for g in counter.graphs)
    torch.manual_seed(6)
    assert not torch.equal(compiled(x)[0], y2)  # a new seed per call, also compiled
