"""The reference layer-normalised LSTM and GRU: the row norm with its hand-written
backward, the LSTM's normalised-cell step, and the two products' normalisation around either
cell's step."""
from __future__ import annotations

import numpy as np

from ._common import _clip, _sigmoid
from ..cell_table import cell_info
from .gru import _gru_backward, _gru_forward


# Layer norm (Ba et al. 2016, in haste's LayerNormLSTM form). LN(v) = (v - mean) /
# sqrt(var + 1e-5) over a whole row (biased variance), no bias inside the norm. The input and
# recurrent products are normalised separately over all G*H gate values, then gains, then biases:
#   a_ih = LN(x W_ihᵀ) ⊙ γ_ih + b_ih,   a_hh = LN(h W_hhᵀ) ⊙ γ_hh + b_hh            [B, G*H]
# and these are the cell's gi and gh: LSTM a = a_ih + a_hh; GRU r, z = σ(a_ih + a_hh) in their blocks and
# n = tanh(a_ih,n + r ⊙ a_hh,n) (the reset gate multiplies the normalised, gained part plus b_hn).
# The LSTM also normalises its cell for the output: h' = o ⊙ tanh(LN(c') ⊙ γ_c + β_c), carrying c'.
LN_EPS = 1e-5


def _ln_forward(v, gamma):
    """v [B, N], gamma [N] -> LN(v) * gamma [B, N] and the cache for _ln_backward."""
    mean = v.mean(axis=1, keepdims=True)  # [B, 1]
    var = ((v - mean) ** 2).mean(axis=1, keepdims=True)  # biased
    inv_std = 1.0 / np.sqrt(var + LN_EPS)
    v_hat = (v - mean) * inv_std  # [B, N]
    return v_hat * gamma, (v_hat, inv_std, gamma)


def _ln_backward(dy, cache):
    """dy [B, N] -> (dv [B, N], dgamma [N])."""
    v_hat, inv_std, gamma = cache
    dv_hat = dy * gamma
    dv = inv_std * (dv_hat - dv_hat.mean(axis=1, keepdims=True)
                    - v_hat * (dv_hat * v_hat).mean(axis=1, keepdims=True))
    return dv, (dy * v_hat).sum(axis=0)


# The LSTM cell of the layer-normalised LSTM: as _lstm_forward, but h' = o*tanh(LN(c')*γ_c + β_c).
def _lstm_ln_cell_forward(gi, gh, h, c, gamma_c, beta_c):
    a_i, a_f, a_g, a_o = np.split(gi + gh, 4, axis=1)  # each [B, H]
    i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), np.tanh(a_g), _sigmoid(a_o)
    c_new = f * c + i * g  # carried un-normalised
    c_norm, ln_cache = _ln_forward(c_new, gamma_c)
    tanh_c = np.tanh(c_norm + beta_c)
    return o * tanh_c, c_new, (c, i, f, g, o, tanh_c, ln_cache)


def _lstm_ln_cell_backward(dh_new, dc_new, cache, clip=None):
    """-> (dgi, dgh, dh_direct, dc, dgamma_c, dbeta_c); clip: the grad_clip modifier's bound on dL/dc'."""
    c, i, f, g, o, tanh_c, ln_cache = cache
    d_pre = dh_new * o * (1.0 - tanh_c * tanh_c)  # [B, H] gradient of LN(c')*γ_c + β_c
    dc_ln, dgamma_c = _ln_backward(d_pre, ln_cache)
    dc_total = _clip(dc_new + dc_ln, clip)  # [B, H] all paths into c'
    da_i = dc_total * g * i * (1.0 - i)
    da_f = dc_total * c * f * (1.0 - f)
    da_g = dc_total * i * (1.0 - g * g)
    da_o = dh_new * tanh_c * o * (1.0 - o)
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # [B, 4H]
    return da, da, np.zeros_like(dh_new), dc_total * f, dgamma_c, d_pre.sum(axis=0)


def _layer_norm_forward(cell, gi, gh, h, c, b_ih, b_hh, ln):
    """gi = x W_ihᵀ, gh = h W_hhᵀ [B, G*H] without biases; ln = (γ_ih, γ_hh[, γ_c, β_c])."""
    a_ih, cache_ih = _ln_forward(gi, ln[0])
    a_hh, cache_hh = _ln_forward(gh, ln[1])
    a_ih, a_hh = a_ih + b_ih, a_hh + b_hh
    if cell_info(cell).carries_cell_state:  # the LSTM: its cell norm on c
        h_new, c_new, cell_cache = _lstm_ln_cell_forward(a_ih, a_hh, h, c, ln[2], ln[3])
    else:
        h_new, c_new, cell_cache = _gru_forward(a_ih, a_hh, h, c)
    return h_new, c_new, (cell, cache_ih, cache_hh, cell_cache)


def _layer_norm_backward(dh_new, dc_new, cache, clip=None):
    """dgi, dgh are the gradients of the un-normalised products x W_ihᵀ, h W_hhᵀ; the biases' and
    gains' gradients come back as extras."""
    cell, cache_ih, cache_hh, cell_cache = cache
    extra = {}
    if cell_info(cell).carries_cell_state:  # the LSTM: its cell norm on c
        da_ih, da_hh, dh_direct, dc, extra["ln_c_w"], extra["ln_c_b"] = _lstm_ln_cell_backward(dh_new, dc_new,
                                                                                              cell_cache, clip)
    else:
        da_ih, da_hh, dh_direct, dc = _gru_backward(dh_new, dc_new, cell_cache)
    extra["b_ih"], extra["b_hh"] = da_ih.sum(axis=0), da_hh.sum(axis=0)
    dgi, extra["ln_ih"] = _ln_backward(da_ih, cache_ih)
    dgh, extra["ln_hh"] = _ln_backward(da_hh, cache_hh)
    return dgi, dgh, dh_direct, dc, extra
