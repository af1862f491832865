"""Names shared by the fast path and the reference: the cell kinds and their gate counts (read
from the cell table, fastrnn.cell_table), and the result types of ``forward`` and ``backward``.

Shapes use the PyTorch conventions (time-major unless ``batch_first``):
``output [T, B, D*H]``, ``h_n``/``c_n`` ``[L*D, B, H]`` ordered ``layer0_fwd, layer0_bwd, layer1_fwd, ...``.
"""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np

from .cell_table import CELLS, TABLE

# Number of gate blocks stacked in W_ih / W_hh (rows = GATES[cell] * hidden_size), from the cell table.
GATES = {name: info.gates for name, info in TABLE.items()}


class RNNResult(NamedTuple):
    """What ``forward`` returns.

    output: [T, B, D*H] ([B, T, D*H] if batch_first); zero past each sequence's length.
    h_n:    [L*D, B, H] final hidden state of every layer and direction.
    c_n:    [L*D, B, H] final cell state (LSTM only, else None).
    saved:  what ``backward`` needs (None when ``training=False``).
    """

    output: np.ndarray
    h_n: np.ndarray
    c_n: Optional[np.ndarray]
    saved: Any


class RNNGrads(NamedTuple):
    """What ``backward`` returns.

    dx:       gradient of the input, same shape and layout as ``x``.
    dh0:      [L*D, B, H].
    dc0:      [L*D, B, H] (LSTM only, else None).
    dweights: one tuple per layer and direction, in the order and with the length of the
              ``weights`` given to ``forward``: (dW_ih, dW_hh[, db_ih, db_hh]).
    """

    dx: np.ndarray
    dh0: np.ndarray
    dc0: Optional[np.ndarray]
    dweights: List[Tuple[np.ndarray, ...]]
