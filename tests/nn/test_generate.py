"""fastrnn.generate on small random models: beam search against exhaustive search over every
sequence (V = 4, max_len = 4) for both finishing conventions, with length penalty and min_len;
beam_size = 1 and top_k = 1 sampling against greedy; sampling frequencies against
softmax(logits / T) (and top-k / top-p) by a chi-square test that also rejects the wrong
distribution; pruning that never drops the best; beams of different inputs never mixed;
scheduled sampling (ratio 1 = one fused call of the sequence, gradients included); the schedules;
bad input raising clear errors.
"""
import itertools
import math

import pytest
import torch

import fastrnn.nn
from fastrnn import generate
from fastrnn.generate import beam_search, greedy, sample, scheduled_sampling


class TinyModel:
    """An Elman RNN language model over V tokens in float64: h [1, N, H] (batch on dimension 1),
    step(tokens [N], h) -> (logits [N, V], h'). Logits scaled so that distributions are peaked but
    every token stays possible."""

    def __init__(self, V=4, H=5, seed=0, scale=2.0):
        g = torch.Generator().manual_seed(seed)
        self.V, self.H = V, H
        self.emb = torch.randn(V, H, generator=g, dtype=torch.float64)
        self.w = torch.randn(H, H, generator=g, dtype=torch.float64) / math.sqrt(H)
        self.out = torch.randn(H, V, generator=g, dtype=torch.float64) * scale
        self.calls = 0

    def initial(self, N, seed=1):
        return torch.randn(1, N, self.H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def __call__(self, tokens, h):
        self.calls += 1
        h = torch.tanh(self.emb[tokens] + h[0] @ self.w).unsqueeze(0)
        return h[0] @ self.out, h


def exhaustive(model, h0, bos, max_len, eos, min_len=0):
    """Every hypothesis of one input (h0 [1, 1, H]): sequences ending in eos after >= min_len other
    tokens, or max_len tokens without eos; as (normalisable score, tokens, length) by depth-first
    search, each prefix's log-probabilities from the model itself."""
    found = []

    def extend(prefix, score, token, h):
        logits, h = model(torch.tensor([token]), h)
        logp = torch.log_softmax(logits[0], -1)
        for v in range(model.V):
            if v == eos and len(prefix) < min_len:
                continue
            s, seq = score + float(logp[v]), prefix + [v]
            if v == eos or len(seq) == max_len:
                found.append((s, seq))
            else:
                extend(seq, s, v, h)

    extend([], 0.0, bos, h0)
    return found


def best_of(found, nbest, length_penalty):
    return sorted(found, key=lambda f: -f[0] / len(f[1]) ** length_penalty)[:nbest]


@pytest.mark.parametrize("shrink_on_eos", [False, True])
@pytest.mark.parametrize("length_penalty,min_len", [(1.0, 0), (0.0, 0), (2.0, 2)])
def test_beam_equals_exhaustive_search(shrink_on_eos, length_penalty, min_len):
    V, max_len, N, nbest, eos, bos = 4, 4, 3, 6, 3, 0
    model = TinyModel(V)
    h0 = model.initial(N)
    r = beam_search(model, h0, bos, max_len, eos, beam_size=V ** max_len, length_penalty=length_penalty,
                    min_len=min_len, nbest=nbest, shrink_on_eos=shrink_on_eos)
    assert r.tokens.shape == (N, nbest, max_len) and r.scores.shape == (N, nbest) and r.lengths.shape == (N, nbest)
    for n in range(N):
        expected = best_of(exhaustive(model, h0[:, n:n + 1], bos, max_len, eos, min_len), nbest, length_penalty)
        for j, (score, seq) in enumerate(expected):
            L = len(seq)
            assert r.lengths[n, j].item() == L, (n, j)
            assert r.tokens[n, j, :L].tolist() == seq, (n, j)
            assert (r.tokens[n, j, L:] == eos).all()
            assert r.scores[n, j].item() == pytest.approx(score, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("shrink_on_eos", [False, True])
def test_beam_size_one_equals_greedy(shrink_on_eos):
    model = TinyModel(V=7, H=6, seed=3, scale=1.0)
    h0 = model.initial(6)
    bos = torch.arange(6)
    g = greedy(model, h0, bos, 9, eos=5)
    b = beam_search(model, h0, bos, 9, 5, beam_size=1, shrink_on_eos=shrink_on_eos)
    assert (g.lengths < 9).any() and (g.lengths == 9).any()  # both endings occur
    assert torch.equal(b.tokens[:, 0], g.tokens) and torch.equal(b.lengths[:, 0], g.lengths)
    torch.testing.assert_close(b.scores[:, 0], g.scores, rtol=1e-12, atol=1e-12)


def test_greedy_result():
    model = TinyModel(V=7, H=6, seed=3, scale=1.0)
    h0 = model.initial(6)
    g = greedy(model, h0, torch.arange(6), 9, eos=5)
    assert (g.lengths < 9).any() and (g.lengths == 9).any()
    for n in range(6):  # step by step, one input at a time
        h, tok, score, seq = h0[:, n:n + 1], torch.tensor([n]), 0.0, []
        for _ in range(9):
            logits, h = model(tok, h)
            tok = logits.argmax(-1)
            score += float(torch.log_softmax(logits, -1)[0, tok])
            seq.append(int(tok))
            if seq[-1] == 5:
                break
        assert g.lengths[n].item() == len(seq)
        assert g.tokens[n].tolist() == seq + [5] * (9 - len(seq))
        assert g.scores[n].item() == pytest.approx(score, rel=1e-12)
    nolimit = greedy(model, h0, torch.arange(6), 9)  # no eos: max_len tokens each
    assert (nolimit.lengths == 9).all() and torch.equal(nolimit.tokens[g.lengths == 9], g.tokens[g.lengths == 9])


def test_top_k_one_sampling_equals_greedy():
    model = TinyModel(V=7, H=6, seed=3, scale=1.0)
    h0 = model.initial(6)
    g = greedy(model, h0, torch.arange(6), 8, eos=5)
    assert (g.lengths < 8).any()
    s = sample(model, h0, torch.arange(6), 8, eos=5, temperature=0.7, top_k=1,
               generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.tokens, g.tokens) and torch.equal(s.lengths, g.lengths)
    torch.testing.assert_close(s.scores, g.scores, rtol=1e-12, atol=1e-12)


# chi-square critical values at p = 1e-4 (so a correct sampler fails by luck once in 10^4 seeds;
# the seed is fixed anyway): df -> quantile 0.9999 of chi2(df)
CHI2_CRIT = {1: 15.14, 2: 18.42, 3: 21.11, 4: 23.51, 5: 25.74}


def chi2(counts, probs, draws):
    expected = probs * draws
    return float(((counts - expected) ** 2 / expected).sum())


def draw_first_tokens(logits, draws, **kw):
    """One token for each of `draws` rows that all see `logits` [V]: the batch is the sample."""
    step = lambda tokens, state: (logits.expand(tokens.numel(), -1), state)  # noqa: E731
    r = sample(step, None, torch.zeros(draws, dtype=torch.int64), 1, generator=torch.Generator().manual_seed(123), **kw)
    return torch.bincount(r.tokens[:, 0], minlength=logits.numel()).double()


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_sampling_frequencies_match_softmax(temperature):
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -1.0], dtype=torch.float64)
    draws = 40_000
    counts = draw_first_tokens(logits, draws, temperature=temperature)
    probs = torch.softmax(logits / temperature, 0)
    assert chi2(counts, probs, draws) < CHI2_CRIT[5]
    # the same draws reject a temperature off by 25 %: the test has the power to fail
    wrong = torch.softmax(logits / (temperature * 1.25), 0)
    assert chi2(counts, wrong, draws) > 10 * CHI2_CRIT[5]


@pytest.mark.parametrize("top_k,top_p,support", [(3, None, [3, 0, 1]), (None, 0.8, [3, 0, 1]),
                                                 (None, 0.75, [3, 0]), (2, 0.9, [3, 0])])
def test_top_k_top_p_frequencies(top_k, top_p, support):
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, -1.0], dtype=torch.float64)
    # softmax: 3 -> 0.555, 0 -> 0.204, 1 -> 0.092, 4 -> 0.075, 2 -> 0.046, 5 -> 0.028, so top_p = 0.8
    # needs {3, 0, 1} (0.851), 0.75 only {3, 0} (0.759); after top_k = 2, {3, 0} is all of it
    draws = 30_000
    counts = draw_first_tokens(logits, draws, top_k=top_k, top_p=top_p)
    assert counts[[v for v in range(6) if v not in support]].sum() == 0
    probs = torch.softmax(logits[support], 0)
    assert chi2(counts[support], probs, draws) < CHI2_CRIT[len(support) - 1]


def reference_beam(model, h0, bos, max_len, eos, K, nbest, length_penalty=1.0, min_len=0, prune_factor=None,
                   shrink_on_eos=False):
    """The beam search of fastrnn.generate's docstring written plainly for one input (lists of
    (score, tokens, state, last token)), to check the batched one on beams that do not hold every
    hypothesis."""
    alive, finished = [(0.0, [], h0, bos)], []
    for t in range(max_len):
        candidates = []
        for score, seq, h, token in alive:
            logits, h_next = model(torch.tensor([token]), h)
            logp = torch.log_softmax(logits[0], -1)
            for v in range(model.V):
                if not (v == eos and t < min_len):
                    candidates.append((score + float(logp[v]), seq + [v], h_next, v))
        candidates.sort(key=lambda c: -c[0])
        if prune_factor is not None:
            candidates = [c for c in candidates if c[0] >= candidates[0][0] - math.log(prune_factor)]
        if shrink_on_eos:
            taken = candidates[:K - len(finished)]
            ending = [c for c in taken if c[3] == eos]
            alive = [c for c in taken if c[3] != eos]
        else:
            ending = [c for c in candidates[:K] if c[3] == eos]
            alive = [c for c in candidates if c[3] != eos][:K]
        if t == max_len - 1:  # survivors end here, merged with the eos ones in rank order
            ending = sorted(ending + alive, key=lambda c: -c[0])
        finished += ending[:K - len(finished)]
        if len(finished) >= K or not alive:
            break
    return best_of([(score, seq) for score, seq, _, _ in finished], nbest, length_penalty)


@pytest.mark.parametrize("shrink_on_eos", [False, True])
def test_prune_factor_never_drops_the_best(shrink_on_eos):
    model = TinyModel(V=6, H=5, seed=5, scale=1.5)
    h0 = model.initial(4)
    g = greedy(model, h0, 0, 6, eos=5)
    # factor 1: only each step's best candidate survives, and that is greedy's choice
    b = beam_search(model, h0, 0, 6, 5, beam_size=5, prune_factor=1.0, shrink_on_eos=shrink_on_eos)
    assert torch.equal(b.tokens[:, 0], g.tokens) and torch.equal(b.lengths[:, 0], g.lengths)
    torch.testing.assert_close(b.scores[:, 0], g.scores, rtol=1e-12, atol=1e-12)
    # an enormous factor prunes nothing
    full = beam_search(model, h0, 0, 6, 5, beam_size=5, nbest=5, shrink_on_eos=shrink_on_eos)
    loose = beam_search(model, h0, 0, 6, 5, beam_size=5, nbest=5, prune_factor=1e300, shrink_on_eos=shrink_on_eos)
    assert torch.equal(full.tokens, loose.tokens) and torch.equal(full.scores, loose.scores)
    # in between, the variable-width beam equals the plain one (which keeps each step's best)
    for factor, min_len in ((2.0, 0), (8.0, 2), (None, 1)):
        r = beam_search(model, h0, 0, 6, 5, beam_size=3, nbest=2, prune_factor=factor, min_len=min_len,
                        shrink_on_eos=shrink_on_eos)
        for n in range(4):
            expected = reference_beam(model, h0[:, n:n + 1], 0, 6, 5, 3, 2, min_len=min_len, prune_factor=factor,
                                      shrink_on_eos=shrink_on_eos)
            for j, (score, seq) in enumerate(expected):
                assert r.tokens[n, j, :len(seq)].tolist() == seq and r.lengths[n, j].item() == len(seq), (factor, n, j)
                assert r.scores[n, j].item() == pytest.approx(score, rel=1e-12, abs=1e-12)
            assert (r.scores[n, len(expected):] == -math.inf).all()


def test_beams_of_different_inputs_never_mix():
    """The state carries each row's input id; the step checks that row r of the beam rows (after
    the first step, N * beam_size of them) always holds input r // beam_size."""
    model = TinyModel(V=5, H=4, seed=7)
    N, K = 4, 3

    def step(tokens, state):
        h, owner = state
        rows = tokens.numel()
        expected = torch.arange(rows) // (rows // N)
        assert torch.equal(owner[0], expected), "a beam row holds another input's state"
        logits, h = model(tokens, h)
        return logits, (h, owner)

    h0 = model.initial(N)
    owner = torch.arange(N).view(1, N)
    together = beam_search(step, (h0, owner), 0, 6, 4, beam_size=K, nbest=K)
    for n in range(N):  # the same as each input on its own
        alone = beam_search(model, h0[:, n:n + 1], 0, 6, 4, beam_size=K, nbest=K)
        assert torch.equal(together.tokens[n], alone.tokens[0]) and torch.equal(together.lengths[n], alone.lengths[0])
        torch.testing.assert_close(together.scores[n], alone.scores[0], rtol=1e-12, atol=1e-12)


def test_custom_reorder_and_nested_state():
    model = TinyModel(V=5, H=4, seed=8)
    N = 3
    h0 = model.initial(N)

    def step(tokens, state):  # batch-first state in a dict: needs its own reorder
        logits, h = model(tokens, state["h"].transpose(0, 1))
        return logits, {"h": h.transpose(0, 1)}

    a = beam_search(step, {"h": h0.transpose(0, 1)}, torch.zeros(N, dtype=torch.int64), 5, 4, beam_size=3,
                    reorder=lambda s, i: {"h": s["h"][i]})
    b = beam_search(model, h0, 0, 5, 4, beam_size=3)
    assert torch.equal(a.tokens, b.tokens)
    with pytest.raises(TypeError, match="reorder"):
        beam_search(step, {"h": h0.transpose(0, 1)}, torch.zeros(N, dtype=torch.int64), 5, 4, beam_size=3)


class LanguageModel(torch.nn.Module):
    """Embedding -> 2-layer fastrnn.nn.LSTM -> Linear, float64."""

    def __init__(self, V=11, E=6, H=8):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E, dtype=torch.float64)
        self.rnn = fastrnn.nn.LSTM(E, H, num_layers=2, dtype=torch.float64)
        self.head = torch.nn.Linear(H, V, dtype=torch.float64)

    def forward(self, tokens, state=None):  # tokens [T, N] -> logits [T, N, V]
        y, state = self.rnn(self.emb(tokens), state)
        return self.head(y), state

    def step(self, tokens, state):
        logits, state = self(tokens.unsqueeze(0), state)
        return logits[0], state


def test_teacher_forcing_equals_one_fused_call():
    torch.manual_seed(0)
    lm = LanguageModel()
    inputs = torch.randint(0, 11, (7, 3))
    logits, (h, c) = scheduled_sampling(lm.step, None, inputs, 1.0)
    full, (fh, fc) = lm(inputs)
    torch.testing.assert_close(logits, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, fh, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(logits.square().sum() + c.sum(), list(lm.parameters()))
    expected = torch.autograd.grad(full.square().sum() + fc.sum(), list(lm.parameters()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_scheduled_sampling_feeds_gold_or_own_prediction():
    torch.manual_seed(1)
    lm = LanguageModel()
    T, N = 12, 200
    inputs = torch.randint(0, 11, (T, N))
    fed = []
    step = lambda tok, s: (fed.append(tok.clone()), lm.step(tok, s))[1]  # noqa: E731
    logits, _ = scheduled_sampling(step, None, inputs, 0.3, generator=torch.Generator().manual_seed(0))
    assert logits.shape == (T, N, 11) and logits.requires_grad
    fed = torch.stack(fed)  # [T, N]
    own = logits.argmax(-1)
    assert torch.equal(fed[0], inputs[0])
    is_gold, is_own = fed[1:] == inputs[1:], fed[1:] == own[:-1]
    assert (is_gold | is_own).all()
    gold_only = (is_gold & ~is_own).float().mean().item()  # fed gold where the prediction differs
    # P(gold) = 0.3; the prediction equals the gold token ~1/11 of the time: binomial over 2200
    # tokens, 5 standard deviations
    expected = 0.3 * (is_gold != is_own).float().mean().item()
    assert abs(gold_only - expected) < 5 * math.sqrt(0.3 * 0.7 / is_gold.numel())
    # ratio 0: always the model's own argmax, i.e. greedy decoding from inputs[0]
    logits0, _ = scheduled_sampling(lm.step, None, inputs, 0.0)
    g = greedy(lm.step, None, inputs[0], T - 1)
    assert torch.equal(logits0.argmax(-1)[:-1].T, g.tokens)
    # sampling its own predictions: reproducible with a generator
    a, _ = scheduled_sampling(lm.step, None, inputs, 0.5, torch.Generator().manual_seed(2), sample=True)
    b, _ = scheduled_sampling(lm.step, None, inputs, 0.5, torch.Generator().manual_seed(2), sample=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_schedules():
    # Bengio et al. 2015: linear max(eps, k - c i), exponential k^i, inverse sigmoid k / (k + exp(i / k))
    assert generate.linear_schedule(0, 1.0, 0.1, 0.2) == 1.0
    assert generate.linear_schedule(5, 1.0, 0.1, 0.2) == pytest.approx(0.5)
    assert generate.linear_schedule(50, 1.0, 0.1, 0.2) == 0.2
    assert generate.exponential_schedule(3, 0.9) == pytest.approx(0.729)
    assert generate.inverse_sigmoid_schedule(0, 10.0) == pytest.approx(10 / 11)
    assert generate.inverse_sigmoid_schedule(20, 10.0) == pytest.approx(10 / (10 + math.exp(2)))
    assert generate.inverse_sigmoid_schedule(10 ** 6, 10.0) == 0.0
    with pytest.raises(ValueError, match="k must be in"):
        generate.exponential_schedule(1, 1.5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        generate.inverse_sigmoid_schedule(1, 0.5)


def test_bos_and_results_on_the_right_sizes():
    model = TinyModel(V=5, H=4)
    h0 = model.initial(3)
    # an int bos takes N from the state
    assert greedy(model, h0, 0, 4).tokens.shape == (3, 4)
    # early stop: every input ends at once when eos is the only token the model can pick
    always_eos = lambda tok, s: (torch.tensor([[0.0, 0.0, 9.0]]).expand(tok.numel(), 3), s)  # noqa: E731
    r = greedy(always_eos, None, torch.zeros(2, dtype=torch.int64), 50, eos=2)
    assert r.tokens.shape == (2, 50) and (r.tokens == 2).all() and (r.lengths == 1).all()
    b = beam_search(always_eos, None, 0, 50, 2, beam_size=2, nbest=2)
    assert b.lengths.tolist() == [[1, 2]] and b.tokens.shape == (1, 2, 50)


def test_bad_input():
    model = TinyModel(V=5, H=4)
    h0 = model.initial(2)
    with pytest.raises(ValueError, match="max_len"):
        greedy(model, h0, 0, 0)
    with pytest.raises(TypeError, match="max_len"):
        greedy(model, h0, 0, 2.5)
    with pytest.raises(ValueError, match="eos must be a token"):
        greedy(model, h0, 0, 3, eos=7)
    with pytest.raises(ValueError, match="bos"):
        greedy(model, h0, torch.zeros(2, 2, dtype=torch.int64), 3)
    with pytest.raises(TypeError, match="bos"):
        greedy(model, h0, torch.zeros(2), 3)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, h0, 0, 3, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample(model, h0, 0, 3, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        sample(model, h0, 0, 3, top_k=0)
    with pytest.raises(ValueError, match="nbest"):
        beam_search(model, h0, 0, 3, 4, beam_size=2, nbest=3)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, h0, 0, 3, 4, beam_size=0)
    with pytest.raises(ValueError, match="prune_factor"):
        beam_search(model, h0, 0, 3, 4, beam_size=2, prune_factor=0.5)
    with pytest.raises(ValueError, match="logits of shape"):
        greedy(lambda t, s: (torch.zeros(3, 5), s), h0, 0, 3)
    with pytest.raises(ValueError, match="ratio"):
        scheduled_sampling(model, h0, torch.zeros(3, 2, dtype=torch.int64), 1.5)
    with pytest.raises(ValueError, match="inputs"):
        scheduled_sampling(model, h0, torch.zeros(3, dtype=torch.int64), 1.0)


def test_generate_and_nn_load_on_first_access():
    import subprocess
    import sys
    code = ("import sys, fastrnn; assert 'torch' not in sys.modules\n"
            "g = fastrnn.generate; assert 'torch' in sys.modules and g.greedy and fastrnn.nn.LSTM\n"
            "import fastrnn.generate; from fastrnn import generate; assert generate is g\n"
            "try:\n    fastrnn.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
