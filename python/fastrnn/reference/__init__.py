"""The reference implementation of fastrnn: slow, obvious NumPy float64 forward and hand-written
backpropagation through time for the Elman RNN (tanh / ReLU), LSTM and GRU, with multiple layers,
both directions and variable lengths, using PyTorch's weight layout, gate order and packed-sequence
semantics. It exists to be the truth that the fast C++/CUDA kernels are tested against, so it is
written for being read, not for speed: a plain ``for t in range(T)`` loop per layer and direction,
every cell's forward and backward pointwise maths side by side in small functions, and nothing
shared with the fast path except the names in ``types.py``. It has the same signature as
``functional.forward`` / ``functional.backward`` and is itself checked against finite differences
(``tests/reference/test_reference.py``).

Notation: T time steps, B batch, I input features, H hidden size, G gate blocks (``GATES[cell]``),
L layers, D directions (2 if bidirectional). Everything is computed and returned in float64.

Where things are: ``stack.py`` (forward / backward: layers, directions, lengths, the modifiers),
one file per cell family with its forward and backward side by side (``rnn.py``, ``lstm.py``,
``gru.py``, ``layer_norm.py``), ``_common.py`` (the cell interface, the sigmoid). This file
re-exports the public names.
"""
from .stack import backward, forward

__all__ = ["forward", "backward"]
