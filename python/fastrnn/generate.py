"""Generating with recurrent models one step at a time: greedy decoding, sampling (temperature,
top-k, nucleus), beam search (fixed or shrinking width, length penalty, variable-width pruning),
and scheduled sampling / teacher forcing for training decoders (Bengio et al. 2015).

Everything works with any step function

    logits, state = step(tokens, state)     # tokens [N] int64 -> logits [N, V], the next state

where ``state`` is None, a tensor or a (nested) tuple/list of tensors with the batch on dimension 1
(torch.nn's RNN layout, e.g. an LSTM's ``(h [L, N, H], c [L, N, H])``), so that beam search can
reorder it with ``index_select(1, index)``; other states need ``beam_search(..., reorder=f)``
with ``f(state, index) -> state``. A fastrnn.nn language model gives such a step with its
``stepper()`` (see README.md). Rows of the batch are independent inputs: nothing is ever mixed
between them.

Decoding runs under ``torch.no_grad()`` (not ``inference_mode``, so the results are ordinary
tensors that may be modified in place and used later) and keeps all its work on the tensors'
device. The only host synchronisation is the end-of-sequence check, once per step when ``eos``
is given (``bool(finished.all())``), which stops the loop as soon as every input has ended.

Lengths count the generated tokens including ``eos`` (fairseq's convention; the length used in
``score / length**length_penalty`` is the same number); a sequence that reaches ``max_len``
without ``eos`` has length ``max_len``. ``bos`` is never part of the output. Scores are sums of
the model's log-probabilities ``log_softmax(logits)`` of the tokens chosen, ``eos`` included.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Generated", "greedy", "sample", "beam_search", "scheduled_sampling", "reorder_state",
    "linear_schedule", "exponential_schedule", "inverse_sigmoid_schedule",
]


class Generated(NamedTuple):
    """What greedy / sample / beam_search return.

    greedy, sample: ``tokens [N, max_len]``, ``scores [N]``, ``lengths [N]``.
    beam_search:    ``tokens [N, nbest, max_len]``, ``scores [N, nbest]``, ``lengths [N, nbest]``,
    best first (ranked by ``scores / lengths**length_penalty``).

    ``tokens`` holds the generated tokens only (not ``bos``), filled with ``eos`` after each end;
    ``scores`` the sums of log-probabilities, ``eos`` included; ``lengths`` the number of generated
    tokens, ``eos`` included (``max_len`` for a sequence that did not end).
    """
    tokens: Tensor
    scores: Tensor
    lengths: Tensor


# ---- argument checks and state handling ---------------------------------------------------------------
def _check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _first_tensor(state) -> Optional[Tensor]:
    if isinstance(state, Tensor):
        return state
    if isinstance(state, (tuple, list)):
        for s in state:
            t = _first_tensor(s)
            if t is not None:
                return t
    return None


def reorder_state(state, index: Tensor):
    """The default ``reorder``: ``state`` with its batch (dimension 1 of every tensor, torch.nn's RNN
    layout) gathered at ``index [M]`` (rows may repeat). None stays None; tuples (namedtuples too)
    and lists are rebuilt with their entries reordered."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        if state.dim() < 2:
            raise ValueError(f"state tensors must have the batch on dimension 1 (torch.nn's RNN layout, "
                             f"e.g. [L, N, H]); got a {state.dim()}-D tensor: pass reorder=callable(state, index)")
        return state.index_select(1, index)
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(reorder_state(s, index) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(reorder_state(s, index) for s in state)
    raise TypeError(f"cannot reorder a state of type {type(state).__name__}: pass reorder=callable(state, index)")


def _bos_tokens(bos, state) -> Tensor:
    """bos (an int, or a [N] integer tensor) -> tokens [N] int64. With an int, N and the device come
    from the state (dimension 1 of its first tensor), else N = 1 on the CPU."""
    if isinstance(bos, Tensor):
        if bos.dim() != 1 or bos.numel() < 1:
            raise ValueError(f"bos must be an int or a 1-D [N] tensor with N >= 1, got shape {tuple(bos.shape)}")
        if bos.dtype.is_floating_point or bos.dtype.is_complex or bos.dtype == torch.bool:
            raise TypeError(f"bos must be an integer tensor, got dtype {bos.dtype}")
        return bos.to(torch.int64)
    bos = _check_int("bos", bos, 0)
    first = _first_tensor(state)
    if first is None:
        return torch.full((1,), bos, dtype=torch.int64)
    if first.dim() < 2:
        raise ValueError(f"state tensors must have the batch on dimension 1, got a {first.dim()}-D tensor")
    return torch.full((first.size(1),), bos, dtype=torch.int64, device=first.device)


def _call(step: Callable, tokens: Tensor, state, eos: Optional[int]):
    """One step: (log-probabilities [R, V], logits' V, state), with the step's output checked."""
    out = step(tokens, state)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"step must return (logits [N, V], state), got {type(out).__name__}")
    logits, state = out
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.size(0) != tokens.numel():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"step must return logits of shape [N, V] = [{tokens.numel()}, V], got {shape}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"step's logits must be floating point, got {logits.dtype}")
    V = logits.size(1)
    if eos is not None and eos >= V:
        raise ValueError(f"eos must be a token of the vocabulary [0, V={V}), got {eos}")
    return _log_softmax(logits), logits, state


def _log_softmax(logits: Tensor) -> Tensor:
    # 16-bit logits are normalised in float32, as a softmax over a vocabulary needs.
    low = logits.dtype in (torch.float16, torch.bfloat16)
    return F.log_softmax(logits, dim=-1, dtype=torch.float32 if low else None)


# ---- greedy and sampling: one loop, a different choice ---------------------------------------------------
def _decode(step, state, bos, max_len, eos, choose) -> Generated:
    """The loop greedy and sample share: choose(logp [N, V], logits [N, V]) -> tokens [N]."""
    max_len = _check_int("max_len", max_len, 1)
    if eos is not None:
        eos = _check_int("eos", eos, 0)
    with torch.no_grad():
        tokens = _bos_tokens(bos, state)  # [N]
        N, device = tokens.numel(), tokens.device
        out = torch.full((N, max_len), 0 if eos is None else eos, dtype=torch.int64, device=device)
        lengths = torch.full((N,), max_len, dtype=torch.int64, device=device)
        finished = torch.zeros(N, dtype=torch.bool, device=device)
        scores = None
        for t in range(max_len):
            logp, logits, state = _call(step, tokens, state, eos)
            chosen = choose(logp, logits)  # [N]
            if scores is None:
                scores = torch.zeros(N, dtype=logp.dtype, device=device)
            if eos is not None:  # an ended sequence goes on with eos, which adds nothing to its score
                chosen = torch.where(finished, torch.full_like(chosen, eos), chosen)
            gained = logp.gather(1, chosen.unsqueeze(1)).squeeze(1)
            scores += gained if eos is None else gained.masked_fill(finished, 0.0)
            out[:, t] = chosen
            if eos is not None:
                ended = (chosen == eos) & ~finished
                lengths = torch.where(ended, torch.full_like(lengths, t + 1), lengths)
                finished |= ended
                if t + 1 < max_len and bool(finished.all()):  # the one host sync per step
                    break
            tokens = chosen
    return Generated(out, scores, lengths)


def greedy(step: Callable, state, bos, max_len: int, eos: Optional[int] = None) -> Generated:
    """Greedy decoding: feed ``bos``, then at each step the most probable token (argmax of the
    logits), for ``max_len`` steps or until every input has produced ``eos``.

    step: ``step(tokens [N], state) -> (logits [N, V], state)``; state: its initial state (None, a
    tensor or nested tuples of tensors, batch on dimension 1); bos: an int or a [N] int tensor.
    Returns ``Generated(tokens [N, max_len], scores [N], lengths [N])`` (see :class:`Generated`).
    """
    return _decode(step, state, bos, max_len, eos, lambda logp, logits: logits.argmax(-1))


def sample(step: Callable, state, bos, max_len: int, eos: Optional[int] = None, temperature: float = 1.0,
           top_k: Optional[int] = None, top_p: Optional[float] = None,
           generator: Optional[torch.Generator] = None) -> Generated:
    """Ancestral sampling: at each step draw the next token from ``softmax(logits / temperature)``,
    restricted to the ``top_k`` most probable tokens and/or to the smallest set of most probable
    tokens whose probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020; the most
    probable token is always kept), renormalised. ``generator``: a torch.Generator on the tensors'
    device, for reproducible draws.

    Arguments and result as :func:`greedy`; ``scores`` are the model's own log-probabilities
    ``log_softmax(logits)`` of the drawn tokens (not those of the tempered or truncated
    distribution they were drawn from), so they compare with greedy's and beam search's.
    ``top_k=1`` is greedy decoding.
    """
    temperature = _check_float("temperature", temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use greedy for the argmax), got {temperature}")
    if top_k is not None:
        top_k = _check_int("top_k", top_k, 1)
    if top_p is not None:
        top_p = _check_float("top_p", top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")

    def choose(logp: Tensor, logits: Tensor) -> Tensor:
        z = (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits) / temperature  # [N, V]
        if top_k is not None and top_k < z.size(1):
            kth = z.topk(top_k, dim=1).values[:, -1:]
            z = z.masked_fill(z < kth, -math.inf)
        if top_p is not None and top_p < 1:
            sorted_z, order = z.sort(dim=1, descending=True)
            probs = sorted_z.softmax(dim=1)
            # drop a token when the more probable ones already reach top_p
            drop = probs.cumsum(dim=1) - probs >= top_p
            z = torch.empty_like(z).scatter_(1, order, sorted_z.masked_fill(drop, -math.inf))
        return torch.multinomial(z.softmax(dim=1), 1, generator=generator).squeeze(1)

    return _decode(step, state, bos, max_len, eos, choose)


# ---- beam search ----------------------------------------------------------------------------------------
def beam_search(step: Callable, state, bos, max_len: int, eos: int, beam_size: int, length_penalty: float = 1.0,
                min_len: int = 0, nbest: int = 1, prune_factor: Optional[float] = None, shrink_on_eos: bool = False,
                *, reorder: Optional[Callable] = None) -> Generated:
    """Beam search over ``N`` independent inputs, ``beam_size`` hypotheses each, batched into one
    ``step`` call of ``N * beam_size`` rows per step (the first step runs the ``N`` rows of ``bos``
    and the state given, then each row's state is copied to its beam).

    A hypothesis' score is the sum of its tokens' log-probabilities. At each step every alive
    hypothesis is extended by every token and the candidates are ranked by score:

    - ``shrink_on_eos=False`` (fairseq / OpenNMT): ``eos`` candidates among the best ``beam_size``
      finish, and the best ``beam_size`` candidates that are not ``eos`` stay alive; an input is
      done when ``beam_size`` of its hypotheses have finished.
    - ``shrink_on_eos=True`` (the width shrinks "every time a sequence is completed"): the best
      ``width`` candidates are taken, those ending in ``eos`` finish and the rest stay alive, so
      the width drops by one per finished hypothesis (starting at ``beam_size``); done at 0.

    ``prune_factor`` (>= 1; variable-width beam): on top of that cut, a candidate is kept only if
    its probability is within that factor of the step's best candidate for the same input, i.e.
    ``score >= best_score - log(prune_factor)``; the best one always stays. ``min_len``: ``eos`` is
    forbidden until ``min_len`` tokens have been generated. Hypotheses still alive after
    ``max_len`` tokens finish there without ``eos`` (length ``max_len``). Finished hypotheses are
    ranked by ``score / length**length_penalty`` (fairseq's convention; 0 ranks by raw score, 1
    by mean log-probability), ``length`` counting ``eos``.

    ``reorder(state, index [M]) -> state``: how to gather the state's batch rows (default
    :func:`reorder_state`, dimension 1 of every tensor). ``index`` only ever selects rows of the
    same input.

    Returns ``Generated(tokens [N, nbest, max_len], scores [N, nbest], lengths [N, nbest])``, best
    first; scores are the raw sums (``scores / lengths**length_penalty`` is the ranking key). An
    input with fewer than ``nbest`` finished hypotheses (a tiny vocabulary, or pruning) has
    ``-inf`` scores and length 0 in the remaining places.
    """
    max_len = _check_int("max_len", max_len, 1)
    eos = _check_int("eos", eos, 0)
    K = _check_int("beam_size", beam_size, 1)
    nbest = _check_int("nbest", nbest, 1, K)
    min_len = _check_int("min_len", min_len, 0, max_len)
    length_penalty = _check_float("length_penalty", length_penalty)
    if prune_factor is not None:
        prune_factor = _check_float("prune_factor", prune_factor)
        if prune_factor < 1:
            raise ValueError(f"prune_factor must be >= 1 (a ratio of probabilities to the best), got {prune_factor}")
    if not isinstance(shrink_on_eos, bool):
        raise TypeError(f"shrink_on_eos must be a bool, got {type(shrink_on_eos).__name__}")
    if reorder is None:
        reorder = reorder_state
    elif not callable(reorder):
        raise TypeError(f"reorder must be callable(state, index), got {type(reorder).__name__}")

    with torch.no_grad():
        tokens = _bos_tokens(bos, state)  # [N * beams]
        N, device = tokens.numel(), tokens.device
        inputs = torch.arange(N, device=device)
        beams = 1  # alive slots per input in the rows just fed: 1 for bos, K afterwards
        alive_scores = None  # [N, beams]
        alive_tokens = torch.full((N, 1, max_len), eos, dtype=torch.int64, device=device)
        # Finished hypotheses, K per input plus one slot K where rejected ones are scattered.
        pool_tokens = torch.full((N, K + 1, max_len), eos, dtype=torch.int64, device=device)
        pool_scores = None  # [N, K + 1]
        pool_lengths = torch.zeros((N, K + 1), dtype=torch.int64, device=device)
        pool_count = torch.zeros(N, dtype=torch.int64, device=device)
        for t in range(max_len):
            logp, _, state = _call(step, tokens, state, eos)
            V = logp.size(1)
            logp = logp.view(N, beams, V)
            if alive_scores is None:
                alive_scores = logp.new_zeros((N, 1))
                pool_scores = logp.new_full((N, K + 1), -math.inf)
            if t < min_len:
                logp[:, :, eos] = -math.inf
            candidates = (alive_scores.unsqueeze(2) + logp).view(N, beams * V)
            n_cand = min(2 * K, beams * V)
            top_scores, top_ids = candidates.topk(n_cand, dim=1)  # [N, n_cand], best first
            parent, token = top_ids // V, top_ids % V
            valid = top_scores > -math.inf
            if prune_factor is not None:
                valid &= top_scores >= top_scores[:, :1] - math.log(prune_factor)
            is_eos = token == eos
            rank = torch.arange(n_cand, device=device).unsqueeze(0)  # [1, n_cand]
            if shrink_on_eos:
                taken = rank < (K - pool_count).unsqueeze(1)
                finish, keep = taken & is_eos & valid, taken & ~is_eos & valid
            else:
                finish = (rank < K) & is_eos & valid
                keep = ~is_eos & valid
                keep &= keep.cumsum(dim=1) <= K
            last = t == max_len - 1
            if last:  # the survivors end here, without eos
                finish = finish | keep
            history = alive_tokens.gather(1, parent.unsqueeze(2).expand(N, n_cand, max_len))  # [N, n_cand, max_len]
            history[:, :, t] = token

            # Finished ones go to the pool in rank order while it has room (at most K per input).
            slot = pool_count.unsqueeze(1) + finish.cumsum(dim=1) - 1
            accept = finish & (slot < K)
            slot = torch.where(accept, slot, torch.full_like(slot, K))
            pool_scores.scatter_(1, slot, top_scores.masked_fill(~accept, -math.inf))
            pool_lengths.scatter_(1, slot, torch.full_like(slot, t + 1))
            pool_tokens.scatter_(1, slot.unsqueeze(2).expand(N, n_cand, max_len), history)
            pool_count += accept.sum(dim=1)
            if last:
                break

            # The next beam: the kept candidates, best first, in K slots (-inf where there are fewer).
            order = torch.where(keep, rank, rank + n_cand).argsort(dim=1)[:, :K]  # [N, min(K, n_cand)]
            alive = keep.gather(1, order)
            alive_scores = top_scores.gather(1, order).masked_fill(~alive, -math.inf)
            parent, token = parent.gather(1, order), token.gather(1, order)
            alive_tokens = history.gather(1, order.unsqueeze(2).expand(-1, -1, max_len))
            if order.size(1) < K:  # fewer candidates than slots (the first steps of a wide beam)
                pad = K - order.size(1)
                alive_scores = F.pad(alive_scores, (0, pad), value=-math.inf)
                parent, token = F.pad(parent, (0, pad)), F.pad(token, (0, pad), value=eos)
                alive_tokens = torch.cat([alive_tokens, alive_tokens.new_full((N, pad, max_len), eos)], dim=1)
            rows = (inputs.unsqueeze(1) * beams + parent).view(-1)  # each input's rows stay its own
            state = reorder(state, rows)
            tokens = token.reshape(-1)
            beams = K
            done = (pool_count >= K) | (alive_scores == -math.inf).all(dim=1)
            if bool(done.all()):  # the one host sync per step
                break

        pool_scores, pool_lengths, pool_tokens = pool_scores[:, :K], pool_lengths[:, :K], pool_tokens[:, :K]
        ranking = pool_scores / pool_lengths.clamp(min=1).to(pool_scores.dtype) ** length_penalty
        best = ranking.topk(nbest, dim=1).indices  # [N, nbest]
        return Generated(pool_tokens.gather(1, best.unsqueeze(2).expand(-1, -1, max_len)),
                         pool_scores.gather(1, best), pool_lengths.gather(1, best))


# ---- training decoders: teacher forcing and scheduled sampling -------------------------------------------
def scheduled_sampling(step: Callable, state, inputs: Tensor, ratio: float, generator: Optional[torch.Generator] = None,
                       sample: bool = False):
    """Run a decoder over ``T`` steps with gradients (Bengio et al. 2015, "Scheduled Sampling for
    Sequence Prediction with Recurrent Neural Networks"): step t feeds the gold token ``inputs[t]``
    with probability ``ratio`` and otherwise the model's own prediction from step t-1 (its argmax,
    or a draw from its softmax when ``sample=True``; predictions carry no gradient), independently
    for every token. Step 0 always feeds ``inputs[0]`` (typically bos). ``ratio=1`` is teacher
    forcing: the same as running the whole sequence through the model in one call. ``ratio`` is
    what the schedules below give for the current training step.

    inputs: ``[T, N]`` int tokens (time-major). Returns ``(logits [T, N, V], state)``: the logits of
    every step (for the loss against the next gold tokens) and the final state.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.size(0) < 1 or inputs.size(1) < 1:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a [T, N] tensor of tokens with T, N >= 1, got {shape}")
    if inputs.dtype.is_floating_point or inputs.dtype.is_complex or inputs.dtype == torch.bool:
        raise TypeError(f"inputs must be an integer tensor, got dtype {inputs.dtype}")
    ratio = _check_float("ratio", ratio)
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    inputs = inputs.to(torch.int64)
    T, N = inputs.shape
    tokens, outputs = inputs[0], []
    for t in range(T):
        out = step(tokens, state)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"step must return (logits [N, V], state), got {type(out).__name__}")
        logits, state = out
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.size(0) != N:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"step must return logits of shape [N, V] = [{N}, V], got {shape}")
        outputs.append(logits)
        if t + 1 == T:
            break
        if ratio == 1:  # teacher forcing: no predictions needed, no random numbers drawn
            tokens = inputs[t + 1]
            continue
        with torch.no_grad():
            z = logits.detach()
            own = torch.multinomial(z.float().softmax(-1), 1, generator=generator).squeeze(1) if sample \
                else z.argmax(-1)
            if ratio == 0:
                tokens = own
            else:
                gold = torch.rand(N, generator=generator, device=inputs.device) < ratio
                tokens = torch.where(gold, inputs[t + 1], own)
    return torch.stack(outputs), state


def linear_schedule(i: int, k: float = 1.0, c: float = 1e-4, eps: float = 0.0) -> float:
    """Bengio et al. 2015's linear decay of the teacher-forcing probability at training step ``i``:
    ``eps_i = max(eps, k - c * i)`` (``0 <= eps < 1`` the floor, ``k <= 1`` the start, ``c`` the slope)."""
    return max(float(eps), float(k) - float(c) * float(i))


def exponential_schedule(i: int, k: float) -> float:
    """Bengio et al. 2015's exponential decay: ``eps_i = k ** i`` with ``0 < k < 1``."""
    k = _check_float("k", k)
    if not 0 < k < 1:
        raise ValueError(f"k must be in (0, 1) for the exponential schedule, got {k}")
    return k ** float(i)


def inverse_sigmoid_schedule(i: int, k: float) -> float:
    """Bengio et al. 2015's inverse sigmoid decay: ``eps_i = k / (k + exp(i / k))`` with ``k >= 1``
    (larger k decays later)."""
    k = _check_float("k", k)
    if k < 1:
        raise ValueError(f"k must be >= 1 for the inverse sigmoid schedule, got {k}")
    x = float(i) / k
    return k / (k + math.exp(x)) if x < 700 else 0.0  # exp overflows past ~709
