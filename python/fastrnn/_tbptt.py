"""Truncated backpropagation through time over a long stream (exported as ``fastrnn.nn.tbptt``):
the stream is cut into windows, the recurrent state is carried from window to window detached,
and TBPTT(k1, k2) of Williams & Peng (1990) is supported: an update every k1 steps, each
backpropagating k2 >= k1 steps, where only the k2 - k1 steps shared with the previous window are
computed twice.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["tbptt", "TBPTTWindow"]


class TBPTTWindow(NamedTuple):
    """One update of :func:`tbptt`.

    outputs: the model's outputs at the window's steps ``[start, stop)`` (``[stop - start, B, ...]``),
        whose gradients reach back to step ``max(0, start - (k2 - k1))``.
    targets: ``targets[start:stop]`` when targets were given, else None.
    start, stop: the window's steps in the stream.
    state: the model's state after step ``stop - 1``, still attached to the window's graph
        (``detach`` it to carry it into another stream).
    """
    outputs: Tensor
    targets: Optional[Tensor]
    start: int
    stop: int
    state: Any


def _detach(state):
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*(_detach(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(_detach(s) for s in state)
    raise TypeError(f"cannot detach a state of type {type(state).__name__}: use tensors or (nested) tuples of them")


def tbptt(model: Callable, inputs: Tensor, k1: int, k2: Optional[int] = None, state=None,
          targets: Optional[Tensor] = None) -> Iterator[TBPTTWindow]:
    """Truncated BPTT over the stream ``inputs [T, B, ...]`` (time-major): yields one
    :class:`TBPTTWindow` every ``k1`` steps, on which the caller computes a loss, calls
    ``backward()`` and steps its optimizer before asking for the next window.

        for w in fastrnn.nn.tbptt(lm, tokens, k1=35, k2=70, targets=next_tokens):
            loss = F.cross_entropy(w.outputs.flatten(0, 1), w.targets.flatten())
            opt.zero_grad(); loss.backward(); opt.step()

    model: ``model(x [t, B, ...], state) -> (outputs [t, B, ...], state)`` (a fastrnn.nn /
        torch.nn RNN, LSTM or GRU, or a module around one); state: its initial state (None for
        zeros), a tensor or nested tuples of tensors; k1: steps per update; k2: steps each update
        backpropagates (default k1), ``k2 >= k1``.

    Window w covers the new steps ``[w*k1, (w+1)*k1)`` (the last one may be shorter). The model
    runs from the state at step ``w*k1 - (k2 - k1)``, carried detached from the previous window,
    so gradients of the window's outputs flow back at most k2 steps (through the k2 - k1 steps
    before the window, which are computed again, but no further). The forward is split where the
    next window will start, so the state it needs is kept from this one: each step is computed
    once plus once more for each overlap. With k1 = k2 the windows are disjoint: that is Keras'
    ``stateful=True`` over consecutive batches of k1 steps, and PyTorch Lightning's former
    ``truncated_bptt_steps=k1`` (split along time, hiddens carried detached). k1 = k2 = T is
    full BPTT. Without updates in between, each window's ``state`` equals one forward over the
    stream up to ``stop``.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.size(0) < 1:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a time-major [T, B, ...] tensor with T >= 1, got {shape}")
    for name, k in (("k1", k1), ("k2", k2)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    k1 = int(k1)
    k2 = k1 if k2 is None else int(k2)
    if k2 < k1:
        raise ValueError(f"k2 (steps backpropagated) must be >= k1 (steps per update), got k1={k1}, k2={k2}")
    T = inputs.size(0)
    if targets is not None and (not isinstance(targets, Tensor) or targets.dim() < 1 or targets.size(0) != T):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a tensor with T={T} steps on dimension 0, got {shape}")
    return _windows(model, inputs, k1, k2 - k1, _detach(state), targets)


def _windows(model, inputs, k1, overlap, carried, targets):
    T = inputs.size(0)
    for start in range(0, T, k1):
        stop = min(start + k1, T)
        first = max(0, start - overlap)  # where this window's forward starts (the carried state's step)
        carry_at = max(0, stop - overlap)  # where the next one's will
        outputs, state = [], carried
        if carry_at > first:
            y, state = model(inputs[first:carry_at], state)
            outputs.append(y)
            carried = _detach(state)
        if stop > carry_at:
            y, state = model(inputs[carry_at:stop], state)
            outputs.append(y)
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # steps [first, stop)
        yield TBPTTWindow(y[start - first:], None if targets is None else targets[start:stop], start, stop, state)
