"""The reference GRU cell (PyTorch's gate order r, z, n, the reset gate applied after the hidden
product) and the reset-before variant, forward and backward side by side (the interface:
:mod:`fastrnn.reference._common`)."""
from __future__ import annotations

import numpy as np

from ._common import _sigmoid


# GRU, gate blocks r, z, n (the reset gate multiplies the hidden projection, PyTorch style):
#   r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r * gh_n), h' = (1-z)*n + z*h
def _gru_forward(gi, gh, h, c):
    gi_r, gi_z, gi_n = np.split(gi, 3, axis=1)  # each [B, H]
    gh_r, gh_z, gh_n = np.split(gh, 3, axis=1)
    r = _sigmoid(gi_r + gh_r)
    z = _sigmoid(gi_z + gh_z)
    n = np.tanh(gi_n + r * gh_n)
    h_new = (1.0 - z) * n + z * h
    return h_new, None, (h, r, z, n, gh_n)


def _gru_backward(dh_new, dc_new, cache, clip=None):
    h, r, z, n, gh_n = cache
    da_n = dh_new * (1.0 - z) * (1.0 - n * n)  # [B, H] grad of n's pre-activation
    da_z = dh_new * (h - n) * z * (1.0 - z)
    da_r = da_n * gh_n * r * (1.0 - r)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)  # [B, 3H]
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)  # [B, 3H]
    return dgi, dgh, dh_new * z, None


# GRU with the reset gate applied before the hidden product (reset_after=False; Cho et al. 2014,
# Keras reset_after=False, ONNX linear_before_reset=0), gate blocks r, z, n:
#   r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + W_hn (r*h) + b_hn), h' = (1-z)*n + z*h
# The layer's gh_n (W_hn h + b_hn) is not used: the cell computes its own n product from r*h.
# With the recurrent-dropout mask m [B, H] h enters that product as m*h too:
# n = tanh(gi_n + W_hn (r*m*h) + b_hn) (Keras' reset_after=False), while z*h uses h itself.
def _gru_reset_before_forward(gi, gh, h, c, w_hn, b_hn, m=None):
    gi_r, gi_z, gi_n = np.split(gi, 3, axis=1)  # each [B, H]
    gh_r, gh_z, _ = np.split(gh, 3, axis=1)
    r = _sigmoid(gi_r + gh_r)
    z = _sigmoid(gi_z + gh_z)
    h_in = h if m is None else m * h  # [B, H] what the recurrent products read
    rh = r * h_in  # [B, H]
    n = np.tanh(gi_n + rh @ w_hn.T + b_hn)
    return (1.0 - z) * n + z * h, None, (h, h_in, m, r, z, n, rh, w_hn)


def _gru_reset_before_backward(dh_new, dc_new, cache, clip=None):
    """dgh's n block is zero: the n product's gradients come back as extra W_hh / b_hh rows.
    (No c: the grad_clip modifier's clamp of dh is the loop's.)"""
    h, h_in, m, r, z, n, rh, w_hn = cache
    H = h.shape[1]
    da_n = dh_new * (1.0 - z) * (1.0 - n * n)  # [B, H]
    da_z = dh_new * (h - n) * z * (1.0 - z)
    d_rh = da_n @ w_hn  # [B, H] gradient of r*h_in
    da_r = d_rh * h_in * r * (1.0 - r)
    dgi = np.concatenate([da_r, da_z, da_n], axis=1)  # [B, 3H]
    dgh = np.concatenate([da_r, da_z, np.zeros_like(da_n)], axis=1)
    dw_hh = np.zeros((3 * H, H))
    dw_hh[2 * H:] = da_n.T @ rh
    db_hh = np.zeros(3 * H)
    db_hh[2 * H:] = da_n.sum(axis=0)
    dh_n_product = d_rh * r if m is None else m * (d_rh * r)  # through h_in = m*h
    return dgi, dgh, dh_new * z + dh_n_product, None, {"w_hh": dw_hh, "b_hh": db_hh}
