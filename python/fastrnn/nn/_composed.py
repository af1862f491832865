"""The recurrence in composed torch ops (a Python loop over time; autograd does the backward):
for the calls the fused kernels do not serve (meta tensors, an empty batch, forward-mode AD,
torch.func's transforms), GRU(reset_after=False) and layer_norm=True on devices other than the CPU
and CUDA (whose kernels run them fused; layer norm in 16-bit too) or with the training modifiers, and LSTM(proj_size > 0)
on those devices, in 16-bit types on the CPU or with the training modifiers, each with the training modifiers (the same masks, applied where the kernels and the reference apply them). Correct
rather than fast."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..cell_table import BY_TORCH_MODE, GRU, LSTM, RNN_RELU, RNN_TANH


def _kernels_cannot_serve(x: Tensor, h0, c0, weights: List[Tensor]) -> bool:
    """Calls the fused kernels do not serve, run by composed torch ops instead (_composed_recurrence):
    meta tensors (shapes only), an empty batch, forward-mode AD (torch.autograd.forward_ad, and
    torch.func.jvp / jacfwd) and torch.func's transforms (grad, jacrev, vmap, ...), for which the
    kernels have no rule. Under torch.compile the op is traced (its fake implementation serves)."""
    if torch.compiler.is_compiling():
        return False
    return (x.device.type == "meta" or x.size(1) == 0 or torch._C._are_functorch_transforms_active()
            or (torch.autograd.forward_ad._current_level >= 0 and ops.has_tangent(x, h0, c0, *weights)))


def _layer_norm(v: Tensor, gain: Tensor, bias: Optional[Tensor]) -> Tensor:
    """LN(v) * gain (+ bias) over the last axis: (v - mean) / sqrt(var + 1e-5), biased variance.
    v [..., N], gain [N]; the bias is added after the norm (haste's LayerNormLSTM)."""
    y = F.layer_norm(v, (v.size(-1),), gain, None, 1e-5)
    return y if bias is None else y + bias


def _composed_step(mode: str, gi: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor], cell: Optional[str] = None,
                   w_ch: Optional[Tensor] = None):
    """One step of the cell in torch ops: gi = W_ih x + b_ih, gh = W_hh h + b_hh [B, G*H] -> (h', c').
    ``cell``/``w_ch``: the LSTM variants (ops.variant_cell's string, the peepholes [U, H])."""
    opts = dict(ops.split_cell(cell)[1]) if cell else {}
    if opts and (opts["peephole"] or opts["coupled"] or opts["cell_clip"]):  # the LSTM variants (split_cell: LSTM only)
        a = gi + gh
        if opts["coupled"]:
            a_f, a_g, a_o = a.chunk(3, 1)
            f = torch.sigmoid(a_f + w_ch[0] * c if w_ch is not None else a_f)
            i = 1 - f
        else:
            a_i, a_f, a_g, a_o = a.chunk(4, 1)
            i = torch.sigmoid(a_i + w_ch[0] * c if w_ch is not None else a_i)
            f = torch.sigmoid(a_f + w_ch[1] * c if w_ch is not None else a_f)
        c_new = f * c + i * torch.tanh(a_g)
        if opts["cell_clip"]:
            c_new = c_new.clamp(-opts["cell_clip"], opts["cell_clip"])
        o = torch.sigmoid(a_o + w_ch[-1] * c_new if w_ch is not None else a_o)
        return o * torch.tanh(c_new), c_new
    return _STEPS[BY_TORCH_MODE[mode].name](gi, gh, h, c)


# The base cells' steps in torch ops, (gi, gh [B, G*H], h, c [B, H]) -> (h', c' or None), by cell name.
def _rnn_tanh_step(gi: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    return torch.tanh(gi + gh), None


def _rnn_relu_step(gi: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    return torch.relu(gi + gh), None


def _lstm_step(gi: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    i, f, g, o = (gi + gh).chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def _gru_step(gi: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    r_i, z_i, n_i = gi.chunk(3, 1)
    r_h, z_h, n_h = gh.chunk(3, 1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = torch.tanh(n_i + r * n_h)
    return (1 - z) * n + z * h, None


_STEPS = {RNN_TANH: _rnn_tanh_step, RNN_RELU: _rnn_relu_step, LSTM: _lstm_step, GRU: _gru_step}


def _gru_reset_before_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
                           h_in: Optional[Tensor] = None) -> Tensor:
    """One step of the GRU with reset_after=False (Cho et al. 2014): r, z as torch.nn.GRU's, then
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), h' = (1-z)*n + z*h. gi = W_ih x + b_ih [B, 3H].
    h_in: what the recurrent products read (recurrent dropout: m*h, so n's is W_hn (r*m*h)); h."""
    H = h.size(1)
    h_in = h if h_in is None else h_in
    w_rz, w_n = w_hh[:2 * H], w_hh[2 * H:]
    b_rz, b_n = (b_hh[:2 * H], b_hh[2 * H:]) if b_hh is not None else (None, None)
    r_i, z_i, n_i = gi.chunk(3, 1)
    r_h, z_h = F.linear(h_in, w_rz, b_rz).chunk(2, 1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = torch.tanh(n_i + F.linear(r * h_in, w_n, b_n))
    return (1 - z) * n + z * h


def _layer_norm_lstm_step(a: Tensor, c: Tensor, gain_c: Tensor, bias_c: Tensor):
    """One step of the layer-normalised LSTM from a = LN(W_ih x) γ_ih + LN(W_hh h) γ_hh + b_ih + b_hh
    [B, 4H]: c' = f*c + i*g is carried, h' = o * tanh(LN(c') γ_c + β_c)."""
    i, f, g, o = a.chunk(4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(_layer_norm(c_new, gain_c, bias_c)), c_new


def _composed_recurrence(mode: str, x: Tensor, weights: List[Tensor], h0, c0, lengths, hidden_size: int,
                         num_layers: int, bidirectional: bool, cell: Optional[str] = None, reset_before: bool = False,
                         layer_norm: bool = False, recurrent_mask: Optional[Tensor] = None, grad_clip: float = 0.0,
                         zoneout=None, proj_size: int = 0):
    """The op's forward (x [T, B, I] -> (y [T, B, D*H], hn [L*D, B, H], cn or None)) in composed torch
    ops, for the calls the kernels cannot serve (_kernels_cannot_serve): autograd, forward-mode AD and
    torch.func differentiate it like any torch code. Correct rather than fast (a Python loop over T).
    A projected LSTM (``proj_size`` or ``cell`` with proj_size = P, torch.nn.LSTM's): each weights entry ends with
    w_hr [P, H], h_t = W_hr (o * tanh(c_t)) is P wide (y [T, B, D*P], hn [L*D, B, P]), c H wide.
    ``layer_norm`` (Ba et al. 2016, haste's LayerNormLSTM): each weights entry ends with γ_ih, γ_hh
    [G*H] (LSTM: and γ_c, β_c [H]); the products are normalised without their biases, which follow
    the gains; the GRU's reset gate multiplies LN(W_hn h) γ_hh,n + b_hn, its base cell's gh_n.
    Modifiers, for every cell and variant (the same equations as the kernels' and the reference's):
    recurrent_mask [L*D, B, H (P)] multiplies h_{t-1} wherever it enters a recurrent product (the
    reset-before GRU's W_hn (r*m*h) too), not z*h_{t-1}; grad_clip > 0 clamps the gradient
    reaching each h_t and c_t (tensor hooks); zoneout = (d_h, d_c), each None, a float p (eval) or
    a tensor [L*D, T, B, H (P for h)]: h_t = d_h h_{t-1} + (1 - d_h) h~_t (and c likewise), where
    the cell's step (o's peephole, cell_clip, the projection) produced h~_t and c~_t from the
    carried, zoned-out states."""
    T, B = x.size(0), x.size(1)
    D = 2 if bidirectional else 1
    per_entry = len(weights) // (num_layers * D)
    lstm = BY_TORCH_MODE[mode].carries_cell_state
    opts = dict(ops.split_cell(cell)[1]) if cell else {}
    peephole = not layer_norm and opts.get("peephole", False)  # LN: no peepholes
    P = proj_size or opts.get("proj_size", 0)  # the projected LSTM's h width (the argument or the cell string)
    state = (num_layers * D, B, hidden_size)
    h0 = x.new_zeros(state[:2] + (P or hidden_size,)) if h0 is None else h0
    c0 = (x.new_zeros(state) if c0 is None else c0) if lstm else None
    live = None if lengths is None else torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device)  # [T, B]
    hns, cns = [], []
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            k = layer * D + d
            entry = weights[k * per_entry:(k + 1) * per_entry]
            ln = None
            if layer_norm:  # (γ_ih, γ_hh[, γ_c, β_c]) end the entry
                n_ln = 4 if lstm else 2
                ln, entry = entry[-n_ln:], entry[:-n_ln]
            w_hr = entry.pop() if P else None  # after the peepholes (fastrnn.nn's parameter order)
            w_ch = entry.pop() if peephole else None
            w_ih, w_hh = entry[0], entry[1]
            b_ih, b_hh = (entry[2], entry[3]) if len(entry) == 4 else (None, None)
            if layer_norm:  # [T, B, G*H]: LN(W_ih x) γ_ih + b_ih, all steps at once
                xw = _layer_norm(F.linear(x, w_ih), ln[0], b_ih)
            else:
                xw = F.linear(x, w_ih, b_ih)  # [T, B, G*H], all steps at once
            h, c = h0[k], (c0[k] if lstm else None)
            ys: List[Optional[Tensor]] = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                h_in = h if recurrent_mask is None else recurrent_mask[k] * h  # what W_hh reads
                if reset_before:
                    h_new, c_new = _gru_reset_before_step(xw[t], h, w_hh, b_hh, h_in), None
                elif layer_norm:
                    gh = _layer_norm(F.linear(h_in, w_hh), ln[1], b_hh)  # [B, G*H]
                    if lstm:
                        h_new, c_new = _layer_norm_lstm_step(xw[t] + gh, c, ln[2], ln[3])
                    else:
                        h_new, c_new = _composed_step(mode, xw[t], gh, h, None)
                else:
                    h_new, c_new = _composed_step(mode, xw[t], F.linear(h_in, w_hh, b_hh), h, c, cell, w_ch)
                if w_hr is not None:  # the projection: h' = W_hr (o * tanh(c'))
                    h_new = F.linear(h_new, w_hr)
                if zoneout is not None:
                    h_new = _zoned(zoneout[0], k, t, h, h_new)
                    c_new = _zoned(zoneout[1], k, t, c, c_new) if lstm else None
                if grad_clip > 0 and h_new.requires_grad:  # the total reaching h_t (and c_t), clamped
                    h_new.register_hook(lambda g: g.clamp(-grad_clip, grad_clip))
                    if lstm:
                        c_new.register_hook(lambda g: g.clamp(-grad_clip, grad_clip))
                if live is None:
                    h, c, ys[t] = h_new, c_new, h_new
                else:  # a finished sequence keeps its state and outputs zeros
                    alive = live[t].unsqueeze(1)
                    h = torch.where(alive, h_new, h)
                    c = torch.where(alive, c_new, c) if lstm else None
                    ys[t] = torch.where(alive, h_new, torch.zeros_like(h_new))
            outputs.append(torch.stack(ys))
            hns.append(h)
            cns.append(c)
        x = torch.cat(outputs, 2) if D == 2 else outputs[0]
    return x, torch.stack(hns), (torch.stack(cns) if lstm else None)


def _zoned(d, k: int, t: int, prev: Tensor, new: Tensor) -> Tensor:
    """Zoneout of one state: d None (off), a float p (eval) or masks [L*D, T, B, H]."""
    if d is None:
        return new
    if isinstance(d, float):
        return d * prev + (1.0 - d) * new
    return d[k, t] * prev + (1.0 - d[k, t]) * new


def _permute(t: Tensor, permutation: Optional[Tensor]) -> Tensor:
    return t if permutation is None else t.index_select(1, permutation)
