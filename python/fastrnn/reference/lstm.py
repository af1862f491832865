"""The reference LSTM cell (PyTorch's gate order i, f, g, o) and the cell variants (peepholes,
coupled input-forget gate, cell clipping), forward and backward side by side (the interface:
:mod:`fastrnn.reference._common`). The layer-normalised LSTM cell is in :mod:`.layer_norm`."""
from __future__ import annotations

import numpy as np

from ._common import _clip, _sigmoid


# LSTM, gate blocks i, f, g, o of a = gi + gh:
#   i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o); c' = f*c + i*g; h' = o*tanh(c')
def _lstm_forward(gi, gh, h, c):
    a_i, a_f, a_g, a_o = np.split(gi + gh, 4, axis=1)  # each [B, H]
    i, f, g, o = _sigmoid(a_i), _sigmoid(a_f), np.tanh(a_g), _sigmoid(a_o)
    c_new = f * c + i * g
    tanh_c = np.tanh(c_new)
    h_new = o * tanh_c
    return h_new, c_new, (c, i, f, g, o, tanh_c)


def _lstm_backward(dh_new, dc_new, cache, clip=None):
    c, i, f, g, o, tanh_c = cache
    # [B, H] all paths into c' (clamped to [-clip, clip] by the grad_clip modifier)
    dc_total = _clip(dc_new + dh_new * o * (1.0 - tanh_c * tanh_c), clip)
    da_i = dc_total * g * i * (1.0 - i)
    da_f = dc_total * c * f * (1.0 - f)
    da_g = dc_total * i * (1.0 - g * g)
    da_o = dh_new * tanh_c * o * (1.0 - o)
    da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # [B, 4H]
    return da, da, np.zeros_like(dh_new), dc_total * f


# LSTM variants, with a = gi + gh in blocks (i, f, g, o), coupled (f, g, o):
#   peephole (p = weight_ch [3, H] rows (i, f, o), coupled [2, H] rows (f, o); Gers & Schmidhuber 2000):
#     i = σ(a_i + p_i*c), f = σ(a_f + p_f*c) (c = c_{t-1}), g = tanh(a_g)
#   coupled (CIFG, Greff et al. 2017): i = 1 - f
#   cell_clip C: c' = clamp(f*c + i*g, -C, C), the clamped c' carried and used below
#   o = σ(a_o + p_o*c'), h' = o*tanh(c')
def _lstm_variant_forward(gi, gh, h, c, p, coupled, clip):
    a = gi + gh
    if coupled:
        a_f, a_g, a_o = np.split(a, 3, axis=1)  # each [B, H]
        p_f, p_o = (p[0], p[1]) if p is not None else (0.0, 0.0)
        f = _sigmoid(a_f + p_f * c)
        i = 1.0 - f
    else:
        a_i, a_f, a_g, a_o = np.split(a, 4, axis=1)
        p_i, p_f, p_o = (p[0], p[1], p[2]) if p is not None else (0.0, 0.0, 0.0)
        i, f = _sigmoid(a_i + p_i * c), _sigmoid(a_f + p_f * c)
    g = np.tanh(a_g)
    c_raw = f * c + i * g
    c_new = c_raw if clip is None else np.clip(c_raw, -clip, clip)
    # derivative of the clamp: 1 inside [-C, C], bounds included (torch.clamp's), 0 outside
    keep = np.ones_like(c_raw) if clip is None else ((c_raw >= -clip) & (c_raw <= clip)).astype(np.float64)
    o = _sigmoid(a_o + p_o * c_new)
    tanh_c = np.tanh(c_new)
    return o * tanh_c, c_new, (c, c_new, i, f, g, o, tanh_c, keep, p, coupled)


def _lstm_variant_backward(dh_new, dc_new, cache, clip=None):
    """As the cells' backward, plus dp: the gradient of the peepholes [U, H] (None without)."""
    c, c_new, i, f, g, o, tanh_c, keep, p, coupled = cache
    da_o = dh_new * tanh_c * o * (1.0 - o)
    dc_total = dc_new + dh_new * o * (1.0 - tanh_c * tanh_c)  # [B, H] paths into c' (next step, h)
    if p is not None:
        dc_total = dc_total + da_o * p[-1]  # o's peephole sees c'
    # the carried c' is the clamped one: the grad_clip modifier clamps the total reaching it
    dc_total = _clip(dc_total, clip)
    dc_raw = dc_total * keep  # through the clamp
    dc_prev = dc_raw * f
    if coupled:  # c' = f*c + (1-f)*g
        da_f = dc_raw * (c - g) * f * (1.0 - f)
        da_g = dc_raw * (1.0 - f) * (1.0 - g * g)
        da = np.concatenate([da_f, da_g, da_o], axis=1)  # [B, 3H]
        if p is not None:
            dc_prev = dc_prev + da_f * p[0]
            dp = np.stack([(da_f * c).sum(0), (da_o * c_new).sum(0)])
    else:
        da_i = dc_raw * g * i * (1.0 - i)
        da_f = dc_raw * c * f * (1.0 - f)
        da_g = dc_raw * i * (1.0 - g * g)
        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # [B, 4H]
        if p is not None:
            dc_prev = dc_prev + da_i * p[0] + da_f * p[1]
            dp = np.stack([(da_i * c).sum(0), (da_f * c).sum(0), (da_o * c_new).sum(0)])
    return da, da, np.zeros_like(dh_new), dc_prev, ({"w_ch": dp} if p is not None else {})
