"""Drop-in replacements for torch.nn's recurrent modules, running fastrnn's fused kernels through the
custom ops in :mod:`fastrnn.ops`: ``RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell``, ``GRUCell``.

They take torch.nn's constructor arguments (same order and defaults), hold the same parameters
(names, shapes, order, initialisation), so ``state_dict()`` loads both ways, and follow torch.nn's
forward contract: batched 3-D and unbatched 2-D input, ``batch_first`` (not applied to the states),
optional ``hx``, PackedSequence in -> PackedSequence out, dropout between layers in training mode,
the same output shapes and the same exception types for bad input. They subclass plain
``torch.nn.Module`` (not ``torch.nn.RNNBase``, on which ``torch.compile`` deliberately breaks the
graph). ``convert(model)`` swaps the torch.nn modules inside a model for these ones.

Differences from torch.nn: float32 and float64 only (other dtypes raise TypeError), and no double
backward. ``LSTM(proj_size > 0)`` is not covered by the kernels: it runs a pure-torch fallback
(composed torch ops, autograd does the backward) that matches torch.nn.LSTM but is not fast. So do
``GRU(reset_after=False)`` and ``LSTM/GRU(layer_norm=True)`` off the CPU (the CPU kernels run them
fused), and the calls the kernels have no rule for: meta tensors (shapes only), an empty batch (B = 0),
forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp`` / ``jacfwd``) and torch.func's
transforms (``grad``, ``jacrev``, ``vmap``, ...): ``_composed_recurrence``.

Where things are: ``layers.py`` (RNN, LSTM, GRU), ``cells.py`` (the *Cell modules),
``_recurrence.py`` (the fused op or the composed path), ``_composed.py`` (the composed torch ops),
``_options.py`` (the cell options shared by both), ``conversion.py`` (``convert``); this file
re-exports the public names.
"""
from .cells import GRUCell, LSTMCell, RNNCell
from .conversion import convert
from .layers import GRU, LSTM, RNN

# ---- training over long streams: truncated BPTT (python/fastrnn/_tbptt.py) -------------------------------
from .._tbptt import TBPTTWindow, tbptt

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "tbptt", "TBPTTWindow"]
