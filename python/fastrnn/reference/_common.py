"""What every reference cell shares: the overflow-free sigmoid, and the one interface each cell's
pointwise step has (the comment below), which the layer driver (:mod:`fastrnn.reference.stack`)
calls without knowing the cell."""
from __future__ import annotations

import numpy as np


def _sigmoid(a: np.ndarray) -> np.ndarray:
    # = 1 / (1 + exp(-a)), written with tanh so that large |a| cannot overflow
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _clip(g, c):
    """The grad_clip modifier: g clamped to [-c, c]; c None: off."""
    return g if c is None else np.clip(g, -c, c)


# ---------------------------------------------------------------------------------------------
# Cells: only the pointwise step. Every cell has the same two functions:
#
#   forward(gi, gh, h, c) -> (h_new, c_new, cache)
#       gi = x_t W_ihᵀ + b_ih   [B, G*H]   (input projection)
#       gh = h   W_hhᵀ + b_hh   [B, G*H]   (hidden projection)
#       h, c                    [B, H]     (c is None except for LSTM; c_new likewise)
#   backward(dh_new, dc_new, cache, clip=None) -> (dgi, dgh, dh_direct, dc)
#       clip: the grad_clip modifier's bound on the total gradient of c' (LSTM), None = off
#       dgi, dgh   [B, G*H] gradients of gi and gh; the layer turns them into dx, dh, dW, db
#       dh_direct  [B, H]   the part of dh that does not go through gh (GRU's z*h term)
#       dc         [B, H]   gradient of the previous cell state (None except for LSTM)
# ---------------------------------------------------------------------------------------------
