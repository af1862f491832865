"""The reference Elman RNN cells, tanh and ReLU: h' = act(gi + gh), forward and backward side by side
(the interface: :mod:`fastrnn.reference._common`)."""
from __future__ import annotations

import numpy as np


# Elman RNN, tanh: h' = tanh(gi + gh)
def _rnn_tanh_forward(gi, gh, h, c):
    h_new = np.tanh(gi + gh)  # [B, H]
    return h_new, None, (h_new,)


def _rnn_tanh_backward(dh_new, dc_new, cache, clip=None):
    (h_new,) = cache
    da = dh_new * (1.0 - h_new * h_new)  # [B, H]
    return da, da, np.zeros_like(dh_new), None


# Elman RNN, ReLU: h' = max(gi + gh, 0)
def _rnn_relu_forward(gi, gh, h, c):
    a = gi + gh  # [B, H]
    return np.maximum(a, 0.0), None, (a,)


def _rnn_relu_backward(dh_new, dc_new, cache, clip=None):
    (a,) = cache
    # as torch's threshold_backward: a select, so that NaN in a passes dh and NaN in dh stays where a <= 0 is 0
    da = np.where(a <= 0.0, 0.0, dh_new)  # [B, H]
    return da, da, np.zeros_like(dh_new), None
