"""The multi-layer step: fastrnn.PreparedStack (NumPy) against the float64 reference's one-step
forward, and fastrnn.nn's ``module.stepper()`` against the module called with T = 1, for every
cell, 1-3 layers, float32 and float64, with and without bias, float16 weight storage within its
tolerance; a loop of steps equals the module over the sequence; stale weights detected (and what
cannot be); generation through a stepper equals generation through the module; bad input errors.
"""
import numpy as np
import pytest
import torch

import fastrnn
import fastrnn.nn
from fastrnn import reference
from fastrnn.generate import beam_search, greedy, sample
from fastrnn.types import CELLS
from tolerances import assert_close

MODULES = {"lstm": (fastrnn.nn.LSTM, {}), "gru": (fastrnn.nn.GRU, {}),
           "rnn_tanh": (fastrnn.nn.RNN, {"nonlinearity": "tanh"}),
           "rnn_relu": (fastrnn.nn.RNN, {"nonlinearity": "relu"})}
DTYPES = {np.float32: torch.float32, np.float64: torch.float64}


def make_module(cell, I, H, L, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    cls, kw = MODULES[cell]
    return cls(I, H, num_layers=L, bias=bias, dtype=dtype, **kw)


def random_state(cell, L, B, H, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(L, B, H, generator=g, dtype=dtype)
    return (h, torch.randn(L, B, H, generator=g, dtype=dtype)) if cell == "lstm" else h


def as_np(t):
    return t.detach().numpy()


# ---- NumPy: PreparedStack -----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,I,H,B,bias", [(1, 4, 5, 1, True), (2, 7, 33, 3, True), (3, 33, 17, 7, False)])
def test_prepared_stack_matches_reference(cell, dtype, L, I, H, B, bias):
    rng = np.random.default_rng(0)
    w = fastrnn.init_weights(cell, I, H, num_layers=L, bias=bias, dtype=dtype, seed=0)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((L, B, H)).astype(dtype)
    c = rng.standard_normal((L, B, H)).astype(dtype) if cell == "lstm" else None
    y, hn, cn = fastrnn.PreparedStack(cell, w)(x, h, c)
    w64 = [tuple(a.astype(np.float64) for a in e) for e in w]
    r = reference.forward(cell, x[None].astype(np.float64), w64, h.astype(np.float64),
                          None if c is None else c.astype(np.float64))
    assert y.dtype == dtype and y.shape == (B, H) and hn.shape == (L, B, H)
    assert np.shares_memory(y, hn) and np.array_equal(y, hn[-1])
    assert_close(y, r.output[0], dtype, "y")
    assert_close(hn, r.h_n, dtype, "h_n")
    assert_close(cn, r.c_n, dtype, "c_n")


@pytest.mark.parametrize("cell", CELLS)
def test_prepared_stack_float16_weights_and_defaults(cell):
    L, I, H, B = 2, 96, 160, 3
    rng = np.random.default_rng(1)
    w = fastrnn.init_weights(cell, I, H, num_layers=L, seed=1)
    x = rng.standard_normal((B, I)).astype(np.float32)
    stack = fastrnn.PreparedStack(cell, w, weight_dtype="float16")
    y, hn, cn = stack(x)  # zero states
    r = reference.forward(cell, x[None].astype(np.float64), [tuple(a.astype(np.float64) for a in e) for e in w])
    assert_close(hn, r.h_n, "float16-weights", "h_n")
    assert_close(cn, r.c_n, "float16-weights", "c_n")
    # out= writes into the given arrays
    outs = tuple(np.empty((L, B, H), np.float32) for _ in range(2 if cell == "lstm" else 1))
    y2, hn2, _ = stack(x, out=outs)
    assert hn2 is outs[0] and np.array_equal(hn2, hn)
    assert "PreparedStack('%s'" % cell in repr(stack)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_prepared_stack_refuses_overlapping_outputs(cell):
    """Layers' threads read every input while writing the outputs: any overlap of out with x, h, c
    or of the two outputs is refused (as PreparedCell's), not only the very arrays h and c."""
    L, B, I, H = 2, 3, 5, 5
    n = L * B * H
    s = fastrnn.PreparedStack(cell, fastrnn.init_weights(cell, I, H, num_layers=L, seed=0))
    lstm = cell == "lstm"
    states = np.zeros(4 * n, np.float32)  # h, c and two more state blocks, back to back
    block = lambda k, shift=0: states[k * n + shift:(k + 1) * n + shift].reshape(L, B, H)
    x_and_more = np.zeros(B * I + n, np.float32)
    x = x_and_more[:B * I].reshape(B, I)
    h, c = block(0), (block(1) if lstm else None)
    free = lambda: np.zeros((L, B, H), np.float32)
    spare = (free(),) if lstm else ()
    cases = {"h_out overlaps h by a row": (block(0, H),) + spare,
             "h_out overlaps x by one value": (x_and_more[B * I - 1:B * I - 1 + n].reshape(L, B, H),) + spare}
    if lstm:
        cases.update({"ping-pong swapped": (c, h), "c_out overlaps c by a row": (free(), block(1, -H)),
                      "h_out overlaps c_out": (block(2), block(2, H))})
    for what, out in cases.items():
        with pytest.raises(ValueError, match="overlaps"):
            s(x, h, c, out=out)
    y, hn, _ = s(x, h, c, out=(free(), free()) if lstm else (free(),))  # disjoint outputs run
    assert hn.shape == (L, B, H) and y.shape == (B, H)


def test_prepared_stack_bad_input():
    w = fastrnn.init_weights("lstm", 4, 5, num_layers=2, seed=0)
    s = fastrnn.PreparedStack("lstm", w)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"x must have shape \(B, I=4\)"):
        s(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"x must have dtype float32 \(the dtype of the prepared weights\), got float64"):
        s(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"h must have shape \(L, B, H\) = \(2, 2, 5\)"):
        s(x, np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match="out must hold"):
        s(x, out=(np.zeros((2, 2, 5), np.float32),))
    with pytest.raises(ValueError, match="c is only for the LSTM"):
        gru = fastrnn.PreparedStack("gru", fastrnn.init_weights("gru", 4, 5, seed=0))
        gru(x, None, np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match="cell must be one of"):
        fastrnn.PreparedStack("lstn", w)
    with pytest.raises(TypeError, match="weights must be a non-empty list"):
        fastrnn.PreparedStack("lstm", [])
    with pytest.raises(ValueError, match=r"weights\[1\]\[0\] \(w_ih, layer 1, forward\) must have shape"):
        fastrnn.PreparedStack("lstm", [w[0], (np.zeros((20, 4), np.float32),) + w[1][1:]])
    with pytest.raises(TypeError, match="float16' needs float32"):
        fastrnn.PreparedStack("lstm", fastrnn.init_weights("lstm", 4, 5, dtype=np.float64, seed=0),
                              weight_dtype="float16")
    with pytest.raises(ValueError, match="weight_dtype must be"):
        fastrnn.PreparedStack("lstm", w, weight_dtype="int8")
    big = [tuple(a * 1e6 for a in w[0]), w[1]]
    with pytest.raises(ValueError, match="outside float16's range"):
        fastrnn.PreparedStack("lstm", big, weight_dtype="float16")


# ---- torch: module.stepper() ----------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,I,H,B,bias", [(1, 3, 4, 1, True), (2, 16, 33, 5, True), (3, 9, 20, 2, False)])
def test_stepper_equals_module_with_one_step(cell, dtype, L, I, H, B, bias):
    m = make_module(cell, I, H, L, DTYPES[dtype], bias)
    stepper = m.stepper()
    x = torch.randn(B, I, dtype=DTYPES[dtype])
    for state in (random_state(cell, L, B, H, DTYPES[dtype]), None):
        y, new = stepper(x, state)
        with torch.no_grad():
            ey, enew = m(x.unsqueeze(0), state)
        assert not y.requires_grad and y.shape == (B, H) and y.dtype == DTYPES[dtype]
        assert_close(as_np(y), as_np(ey[0]).astype(np.float64), dtype, "y")
        for s, e, what in zip(new if cell == "lstm" else (new,), enew if cell == "lstm" else (enew,), ("h_n", "c_n")):
            assert s.shape == (L, B, H)
            assert_close(as_np(s), as_np(e).astype(np.float64), dtype, what)


@pytest.mark.parametrize("cell", CELLS)
def test_stepper_loop_equals_module_over_the_sequence(cell):
    T, B, I, H, L = 6, 3, 8, 12, 2
    m = make_module(cell, I, H, L, torch.float64)
    stepper = m.stepper()
    xs = torch.randn(T, B, I, dtype=torch.float64)
    state, ys = random_state(cell, L, B, H, torch.float64), []
    with torch.no_grad():
        ey, estate = m(xs, state)
    for t in range(T):
        y, state = stepper(xs[t], state)
        ys.append(y)
    assert_close(as_np(torch.stack(ys)), as_np(ey), np.float64, "y")
    assert_close(as_np(state[0] if cell == "lstm" else state), as_np(estate[0] if cell == "lstm" else estate),
                 np.float64, "h_n")


@pytest.mark.parametrize("cell", CELLS)
def test_stepper_float16_weights(cell):
    m = make_module(cell, 64, 96, 2)
    stepper = m.stepper(weight_dtype="float16")
    x = torch.randn(4, 64)
    state = random_state(cell, 2, 4, 96, torch.float32)
    y, _ = stepper(x, state)
    with torch.no_grad():
        ey, _ = m(x.unsqueeze(0), state)
    assert_close(as_np(y), as_np(ey[0]).astype(np.float64), "float16-weights", "y")
    assert not torch.equal(y, ey[0])  # it did use the float16-rounded weights
    with pytest.raises(TypeError, match="float16' needs float32"):
        make_module(cell, 4, 5, 1, torch.float64).stepper(weight_dtype="float16")


def test_stale_weights_are_detected():
    m = make_module("lstm", 6, 7, 2)
    stepper = m.stepper()
    x = torch.randn(2, 6)
    stepper(x)
    with torch.no_grad():  # in place: bumps the parameter's _version
        m.weight_hh_l1.mul_(2)
    with pytest.raises(RuntimeError, match=r"'weight_hh_l1' changed.*call stepper.refresh\(\)"):
        stepper(x)
    stepper.refresh()
    with torch.no_grad():
        ey, _ = m(x.unsqueeze(0))
    torch.testing.assert_close(stepper(x)[0], ey[0], rtol=0, atol=3e-6)
    # an optimizer step
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(x.unsqueeze(0))[0].sum().backward()
    opt.step()
    with pytest.raises(RuntimeError, match="changed"):
        stepper(x)
    # a replaced parameter, then auto_refresh repacking instead of raising
    auto = m.stepper(auto_refresh=True)
    stepper.refresh()
    m.bias_ih_l0 = torch.nn.Parameter(torch.randn(28))
    with pytest.raises(RuntimeError, match="'bias_ih_l0' changed"):
        stepper(x)
    with torch.no_grad():
        ey, _ = m(x.unsqueeze(0))
    torch.testing.assert_close(auto(x)[0], ey[0], rtol=0, atol=3e-6)
    # load_state_dict copies in place: detected as well
    m.load_state_dict(make_module("lstm", 6, 7, 2, seed=5).state_dict())
    with pytest.raises(RuntimeError, match="changed"):
        stepper(x)
    with torch.no_grad():
        ey, _ = m(x.unsqueeze(0))
    torch.testing.assert_close(auto(x)[0], ey[0], rtol=0, atol=3e-6)


def test_writes_through_data_are_not_detected_until_refresh():
    """The documented limit: .data bypasses autograd's version counter."""
    m = make_module("gru", 5, 6, 1)
    stepper = m.stepper()
    x = torch.randn(1, 5)
    before = stepper(x)[0]
    m.weight_ih_l0.data.mul_(3)
    assert torch.equal(stepper(x)[0], before)  # stale, and nothing can tell
    stepper.refresh()
    with torch.no_grad():
        ey, _ = m(x.unsqueeze(0))
    torch.testing.assert_close(stepper(x)[0], ey[0], rtol=0, atol=3e-6)


def test_stepper_bad_input():
    with pytest.raises(ValueError, match="unidirectional stacks only"):
        fastrnn.nn.LSTM(4, 5, bidirectional=True).stepper()
    projected = fastrnn.nn.LSTM(4, 5, num_layers=2, proj_size=3).stepper()
    with pytest.raises(ValueError, match=r"state\[0\] \(h\) must have shape \[L, B, P\] = \[2, 2, 3\], got \[2, 2, 5\]"):
        projected(torch.zeros(2, 4), (torch.zeros(2, 2, 5), torch.zeros(2, 2, 5)))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \[L, B, H\] = \[2, 2, 5\], got \[2, 2, 3\]"):
        projected(torch.zeros(2, 4), (torch.zeros(2, 2, 3), torch.zeros(2, 2, 3)))
    stepper = make_module("lstm", 4, 5, 2).stepper()
    with pytest.raises(ValueError, match=r"x must have shape \[B, I=4\]"):
        stepper(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"x must have shape"):
        stepper(torch.zeros(4))
    with pytest.raises(TypeError, match="x must be torch.float32"):
        stepper(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"state must be a tuple \(h, c\)"):
        stepper(torch.zeros(2, 4), torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \[L, B, H\] = \[2, 2, 5\]"):
        stepper(torch.zeros(2, 4), (torch.zeros(2, 2, 5), torch.zeros(2, 3, 5)))
    with pytest.raises(TypeError, match="state \\(h\\) must be a tensor"):
        make_module("gru", 4, 5, 2).stepper()(torch.zeros(2, 4), [torch.zeros(2, 2, 5)])
    with pytest.raises(TypeError, match="float32 and float64"):
        fastrnn.nn.GRU(4, 5, dtype=torch.float16).stepper()


class LanguageModel(torch.nn.Module):
    def __init__(self, cell="lstm", V=13, E=8, H=16, L=2, **options):
        super().__init__()
        torch.manual_seed(3)
        self.emb = torch.nn.Embedding(V, E)
        cls, kw = MODULES[cell]
        self.rnn = cls(E, H, num_layers=L, **kw, **options)
        with torch.no_grad():  # the layer norm's gains and biases away from their init (ones, zeros)
            for name, p in self.rnn.named_parameters():
                if name.startswith("ln_"):
                    p.add_(0.3 * torch.randn_like(p))
        self.head = torch.nn.Linear(options.get("proj_size") or H, V)  # reads h: P wide when projected

    def step_module(self, tokens, state):  # the plain way: the module with T = 1
        y, state = self.rnn(self.emb(tokens).unsqueeze(0), state)
        return self.head(y[0]), state


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generation_through_a_stepper_equals_through_the_module(cell):
    lm = LanguageModel(cell)
    stepper = lm.rnn.stepper()

    def step(tokens, state):
        y, state = stepper(lm.emb(tokens), state)
        return lm.head(y), state

    bos = torch.arange(4)
    a, b = greedy(step, None, bos, 10, eos=12), greedy(lm.step_module, None, bos, 10, eos=12)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.scores, b.scores)
    a = beam_search(step, None, bos, 8, 12, beam_size=4, nbest=2)
    b = beam_search(lm.step_module, None, bos, 8, 12, beam_size=4, nbest=2)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.scores, b.scores)


VARIANTS = [("gru", dict(reset_after=False)), ("lstm", dict(layer_norm=True)), ("gru", dict(layer_norm=True)),
            ("lstm", dict(peephole=True, coupled=True, cell_clip=0.5)), ("lstm", dict(proj_size=5)),
            ("lstm", dict(proj_size=7, peephole=True, cell_clip=0.5))]


@pytest.mark.parametrize("cell,options", VARIANTS, ids=["gru-reset-before", "lstm-ln", "gru-ln", "lstm-peep-cifg-clip",
                                                        "lstm-proj", "lstm-proj-peep-clip"])
def test_stepper_and_generation_with_the_cell_options(cell, options):
    """A variant module's stepper steps that variant (== the module with T = 1), and greedy search,
    sampling and beam search through it equal the same decoding through the module."""
    lm = LanguageModel(cell, **options)
    stepper = lm.rnn.stepper()
    x, state = torch.randn(5, 8), random_state(cell, 2, 5, 16, torch.float32)
    if options.get("proj_size"):  # h [L, B, P]
        state = (state[0][..., :options["proj_size"]].contiguous(), state[1])
    y, new = stepper(x, state)
    with torch.no_grad():
        y_ref, new_ref = lm.rnn(x[None], state)
    torch.testing.assert_close(y, y_ref[0])
    for a, b in zip(new if cell == "lstm" else (new,), new_ref if cell == "lstm" else (new_ref,)):
        torch.testing.assert_close(a, b)

    def step(tokens, state):
        y, state = stepper(lm.emb(tokens), state)
        return lm.head(y), state

    bos = torch.arange(4)
    with torch.no_grad():
        a, b = greedy(step, None, bos, 10, eos=12), greedy(lm.step_module, None, bos, 10, eos=12)
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.scores, b.scores)
        a = sample(step, None, bos, 10, 12, top_p=0.9, generator=torch.Generator().manual_seed(5))
        b = sample(lm.step_module, None, bos, 10, 12, top_p=0.9, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.scores, b.scores)
        a = beam_search(step, None, bos, 8, 12, beam_size=4, nbest=2)
        b = beam_search(lm.step_module, None, bos, 8, 12, beam_size=4, nbest=2)
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.scores, b.scores)


# ---- the projected LSTM (proj_size = P): h [L, B, P], c [L, B, H] ----------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,I,H,P,B,bias", [(1, 4, 5, 2, 1, True), (2, 7, 33, 17, 3, True), (3, 33, 20, 19, 2, False)])
@pytest.mark.parametrize("peephole", [False, True])
def test_prepared_stack_projected_matches_reference(dtype, L, I, H, P, B, bias, peephole):
    rng = np.random.default_rng(0)
    w = fastrnn.init_weights("lstm", I, H, num_layers=L, bias=bias, dtype=dtype, seed=0, proj_size=P, peephole=peephole)
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((L, B, P)).astype(dtype)
    c = rng.standard_normal((L, B, H)).astype(dtype)
    stack = fastrnn.PreparedStack("lstm", w, proj_size=P, peephole=peephole)
    y, hn, cn = stack(x, h, c)
    w64 = [tuple(a.astype(np.float64) for a in e) for e in w]
    r = reference.forward("lstm", x[None].astype(np.float64), w64, h.astype(np.float64), c.astype(np.float64),
                          proj_size=P, peephole=peephole)
    assert y.shape == (B, P) and hn.shape == (L, B, P) and cn.shape == (L, B, H)
    assert np.shares_memory(y, hn) and np.array_equal(y, hn[-1])
    assert_close(y, r.output[0], dtype, "y")
    assert_close(hn, r.h_n, dtype, "h_n")
    assert_close(cn, r.c_n, dtype, "c_n")
    if dtype == np.float32:
        half = fastrnn.PreparedStack("lstm", w, "float16", proj_size=P, peephole=peephole)
        assert_close(half(x, h, c)[1], r.h_n, "float16-weights", "h_n")
    assert "proj_size=%d" % P in repr(stack)
    with pytest.raises(ValueError, match=r"h must have shape \(L, B, P\)"):
        stack(x, c, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,I,H,P,B,bias", [(1, 3, 4, 2, 1, True), (2, 16, 33, 10, 5, True), (3, 9, 20, 19, 2, False)])
def test_projected_stepper_equals_module_with_one_step(dtype, L, I, H, P, B, bias):
    torch.manual_seed(0)
    m = fastrnn.nn.LSTM(I, H, num_layers=L, bias=bias, proj_size=P, dtype=DTYPES[dtype])
    stepper = m.stepper()
    x = torch.randn(B, I, dtype=DTYPES[dtype])
    g = torch.Generator().manual_seed(1)
    state = (torch.randn(L, B, P, generator=g, dtype=DTYPES[dtype]), torch.randn(L, B, H, generator=g, dtype=DTYPES[dtype]))
    for s0 in (state, None):
        y, (hn, cn) = stepper(x, s0)
        with torch.no_grad():
            ey, (ehn, ecn) = m(x.unsqueeze(0), s0)
        assert not y.requires_grad and y.shape == (B, P) and hn.shape == (L, B, P) and cn.shape == (L, B, H)
        assert_close(as_np(y), as_np(ey[0]).astype(np.float64), dtype, "y")
        assert_close(as_np(hn), as_np(ehn).astype(np.float64), dtype, "h_n")
        assert_close(as_np(cn), as_np(ecn).astype(np.float64), dtype, "c_n")


def test_projected_stepper_loop_equals_module_over_the_sequence():
    T, B, I, H, P, L = 6, 3, 8, 12, 5, 2
    torch.manual_seed(0)
    m = fastrnn.nn.LSTM(I, H, num_layers=L, proj_size=P, dtype=torch.float64)
    stepper = m.stepper()
    xs = torch.randn(T, B, I, dtype=torch.float64)
    state = (torch.randn(L, B, P, dtype=torch.float64), torch.randn(L, B, H, dtype=torch.float64))
    with torch.no_grad():
        ey, (ehn, ecn) = m(xs, state)
    ys = []
    for t in range(T):
        y, state = stepper(xs[t], state)
        ys.append(y)
    assert_close(as_np(torch.stack(ys)), as_np(ey), np.float64, "y")
    assert_close(as_np(state[0]), as_np(ehn), np.float64, "h_n")
    assert_close(as_np(state[1]), as_np(ecn), np.float64, "c_n")
