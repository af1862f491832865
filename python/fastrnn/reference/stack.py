"""The reference's layer and stack driver: ``forward`` / ``backward`` over layers, directions and
variable lengths, running any cell's pointwise step (the cells: rnn.py, lstm.py, gru.py,
layer_norm.py; the training modifiers are explicit here). See :mod:`fastrnn.reference`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..cell_table import CELLS, GRU, LSTM, RNN_RELU, RNN_TANH, TABLE, cell_info, param_shapes
from ..types import RNNGrads, RNNResult
from ._common import _clip
from .gru import _gru_backward, _gru_forward, _gru_reset_before_backward, _gru_reset_before_forward
from .layer_norm import _layer_norm_backward, _layer_norm_forward
from .lstm import _lstm_backward, _lstm_forward, _lstm_variant_backward, _lstm_variant_forward
from .rnn import _rnn_relu_backward, _rnn_relu_forward, _rnn_tanh_backward, _rnn_tanh_forward

__all__ = ["forward", "backward"]


_CELL_FNS = {
    RNN_TANH: (_rnn_tanh_forward, _rnn_tanh_backward),
    RNN_RELU: (_rnn_relu_forward, _rnn_relu_backward),
    LSTM: (_lstm_forward, _lstm_backward),
    GRU: (_gru_forward, _gru_backward),
}


assert set(_CELL_FNS) == set(CELLS)


# ---------------------------------------------------------------------------------------------
# One layer, one direction, variable lengths. Knows nothing about which cell it runs.
# Sequence b is live at step t iff t < lengths[b]; a row that is not live keeps its state and
# outputs zero, so the forward direction ends on the state after t = len-1 and the reverse
# direction (t = T-1 .. 0) starts from h0 at t = len-1 and ends on the state after t = 0.
#
# The training modifiers, all explicit here (``mods``, see ``_Modifiers``):
#   dilation d: step t reads the state of step t - d (reverse: t + d), the initial state where
#     that step does not exist in its sequence; d = 1 is the plain recurrence.
#   recurrent_mask m [B, H]: gh = (m * h_prev) W_hh^T + b_hh; the carried state, the outputs and
#     the GRU's z * h_prev use h_prev itself.
#   weight_mask M [G*H, H]: the step uses W_hh * M; dW_hh = M * dL/d(W_hh * M).
#   zoneout d_h [T, B, H] (d_c for the LSTM's c): h_t = d_h * h_prev + (1 - d_h) * h~_t, h~_t the
#     cell's new state (1 = keep the previous one; the eval formula is d_h = p everywhere). The cell
#     runs whole first: with a variant, o's peephole, cell_clip and tanh (layer norm: LN) see the
#     cell's own c~_t; the state carried to step t+1 (its i, f peepholes) is the zoned-out c_t
#     (Krueger et al. 2017: h_t = d_h h_{t-1} + (1 - d_h) o_t tanh(c~_t)).
#   grad_clip C: the total gradient reaching h_t (from y_t and from the later steps) and, for the
#     LSTM, the total reaching c_t is clamped to [-C, C] before it flows into step t.
# Every modifier composes with every cell and variant here, in these two loops: the cells only see
# (gi, gh, h, c) and take the grad_clip bound on dL/dc' (the reset-before GRU, whose n product is its
# own, also takes the recurrent mask and the masked W_hh).
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Low-precision mode (``storage="bfloat16" | "float16"``): the float64 maths with the values rounded
# (to nearest even) to the 16-bit type exactly where the 16-bit kernels store or round them:
#   - the inputs: x, h0, c0, every weight, bias and mask (a 16-bit call passes 16-bit arrays);
#   - each layer's output (what the next layer reads, and the output), h_n and c_n;
#   - what backward reads from forward's storage: h_{t-1} (the saved outputs) and the cell's saved
#     values (every array of its cache: the gates, c);
#   - bfloat16 only, the products' left operands, as the AVX512_BF16 dot-product kernels round them:
#     h_{t-1} before W_hh in forward; dG_i and dG_h before dX, dW_ih, dW_hh and dL/dh_{t-1} in
#     backward (x and the layer inputs are 16-bit already); the projected LSTM's m = o*tanh(c_t)
#     before W_hr in forward and dL/dh_t before W_hr (dL/dm) in backward. float16 (and bfloat16 without that
#     instruction) keep these float32 in the kernels: the reference then rounds more than they do;
#   - backward's results dx, dh0, dc0 and every weight gradient, once, at the end.
# Everything else stays float64: the recurrent h and c inside a layer (float32 in the kernels),
# the products' sums, the cells' maths, the gradients flowing between steps and layers.
# ---------------------------------------------------------------------------------------------
STORAGE_DTYPES = ("bfloat16", "float16")


def _rounding(storage: Optional[str]):
    """x -> x rounded to ``storage`` (float64 in, float64 out), or None for float64 (no rounding)."""
    if storage is None:
        return None
    assert storage in STORAGE_DTYPES, f"storage must be None, 'bfloat16' or 'float16', got {storage!r}"
    if storage == "float16":
        dtype = np.float16
    else:
        try:
            import ml_dtypes
            dtype = ml_dtypes.bfloat16
        except ImportError:  # round to nearest even on float32's bits: the upper half
            def to_bf16(a):
                u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
                r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32).view(np.float32)
                return np.where(np.isnan(a), a, r).astype(np.float64)
            return lambda a: None if a is None else to_bf16(a)
    return lambda a: None if a is None else np.asarray(a, dtype=np.float64).astype(dtype).astype(np.float64)


def _round_cache(q, cache):
    """The cell's saved values rounded (float arrays in a tuple, nested tuples, dicts); the rest as is."""
    if isinstance(cache, np.ndarray):
        return q(cache) if cache.dtype.kind == "f" else cache
    if isinstance(cache, tuple):
        return tuple(_round_cache(q, c) for c in cache)
    if isinstance(cache, list):
        return [_round_cache(q, c) for c in cache]
    if isinstance(cache, dict):
        return {k: _round_cache(q, v) for k, v in cache.items()}
    return cache


def _keep(a):
    return a


class _Modifiers:
    """One layer and direction's modifiers (all off by default: the plain cell)."""

    def __init__(self, dilation=1, recurrent_mask=None, weight_mask=None, zoneout=None, zoneout_cell=None,
                 grad_clip=None):
        self.dilation = int(dilation)
        self.recurrent_mask = recurrent_mask  # [B, H] or None
        self.weight_mask = weight_mask  # [G*H, H] or None
        self.zoneout = zoneout  # [T, B, H] or None
        self.zoneout_cell = zoneout_cell  # [T, B, H] or None (LSTM)
        self.grad_clip = grad_clip  # float > 0 or None


def _prev_step(t, d, reverse, lengths):
    """The step whose state step t reads, per row ([B] ints; -1 where it is the initial state)."""
    if reverse:
        return np.where(t + d < lengths, t + d, -1)
    return np.full(lengths.shape, t - d if t - d >= 0 else -1)


def _cell_forward_fn(cell, options, w, recurrent_mask=None):
    """The cell's pointwise forward for these options (the cell variants) and the layer's weights w
    (W_hh already multiplied by the weight-dropout mask); recurrent_mask: the cells that run a
    recurrent product of their own (the reset-before GRU's n) apply it there too."""
    if options["layer_norm"]:
        return lambda gi, gh, h, c: _layer_norm_forward(cell, gi, gh, h, c, w[2], w[3], w[5])
    if _is_variant(options):  # the LSTM variants (forward checked the cell takes them)
        return lambda gi, gh, h, c: _lstm_variant_forward(gi, gh, h, c, w[4], options["coupled"], options["cell_clip"])
    if not options["reset_after"]:  # the reset-before GRU (forward checked the cell takes it)
        H = w[1].shape[1]
        return lambda gi, gh, h, c: _gru_reset_before_forward(gi, gh, h, c, w[1][2 * H:], w[3][2 * H:],
                                                              recurrent_mask)
    return _CELL_FNS[cell][0]


def _cell_backward_fn(cell, options):
    """The cell's pointwise backward (dh, dc, cache, clip=None) -> (dgi, dgh, dh_direct, dc,
    {parameter name: gradient to add}); clip: the grad_clip modifier's bound on dL/dc'."""
    if options["layer_norm"]:
        return _layer_norm_backward
    if _is_variant(options):  # the LSTM variants (forward checked the cell takes them)
        return _lstm_variant_backward
    if not options["reset_after"]:  # the reset-before GRU (forward checked the cell takes it)
        return _gru_reset_before_backward
    return lambda dh, dc, cache, clip=None: _CELL_FNS[cell][1](dh, dc, cache, clip=clip) + ({},)


def _is_variant(options):
    return options["peephole"] or options["coupled"] or options["cell_clip"] is not None


def _direction_forward(cell, x, lengths, w, h0, c0, reverse, options, mods=None, q=None, qp=None):
    """x [T, B, I]; lengths [B]; w = (w_ih [G*H, I], w_hh [G*H, H], b_ih [G*H], b_hh [G*H], w_ch [U, H]
    or None, ln: the layer norm's (γ_ih [G*H], γ_hh [G*H][, γ_c [H], β_c [H]]) or None, w_hr [P, H]
    or None); h0, c0 [B, H] (c0 None unless LSTM); mods: ``_Modifiers`` or None.
    The projected LSTM (w_hr given; torch.nn.LSTM's proj_size): the cell's h_new is m = o*tanh(c),
    h_t = m W_hrᵀ [B, P], so h (h0, h_n, out, w_hh's columns) is P wide and c H wide; the cache
    becomes (cell cache, m).
    Returns out [T, B, H], h_n [B, H], c_n [B, H] or None, steps (per time step, in time order:
    (h_prev [B, H], prev [B] (the step read, -1: initial), cell cache)). q, qp: the low-precision
    mode's roundings of what is stored and of the products' operands (None: none)."""
    mods = mods or _Modifiers()
    q, qp = q or _keep, qp or _keep
    if mods.weight_mask is not None:  # DropConnect: every use of W_hh, the cells' own included, reads W_hh * M
        w = (w[0], w[1] * mods.weight_mask) + tuple(w[2:])
    w_ih, w_hh, b_ih, b_hh, w_ch, _, w_hr = w
    cell_forward = _cell_forward_fn(cell, options, w, mods.recurrent_mask)
    if options["layer_norm"]:  # the biases come after the norm, added by the cell
        b_ih, b_hh = 0.0, 0.0
    T, B, _ = x.shape
    H = w_hh.shape[1]  # the width of h (P when projected)
    HC = H if c0 is None else c0.shape[1]  # the width of c
    rows = np.arange(B)
    hs, cs = np.zeros((T, B, H)), np.zeros((T, B, HC))  # each step's state
    out = np.zeros((T, B, H))
    steps: List[Any] = [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        live = (t < lengths)[:, None]  # [B, 1]
        prev = _prev_step(t, mods.dilation, reverse, lengths)
        h = np.where((prev >= 0)[:, None], hs[np.maximum(prev, 0), rows], h0)
        c = None if c0 is None else np.where((prev >= 0)[:, None], cs[np.maximum(prev, 0), rows], c0)
        gi = x[t] @ w_ih.T + b_ih  # [B, G*H]
        h_in = h if mods.recurrent_mask is None else mods.recurrent_mask * h
        gh = qp(h_in) @ w_hh.T + b_hh  # [B, G*H]
        h_new, c_new, cache = cell_forward(gi, gh, h, c)
        if w_hr is not None:  # the projection: h_t = m W_hrᵀ, m = the cell's o*tanh(c_t)
            cache = (cache, h_new)
            h_new = qp(h_new) @ w_hr.T  # [B, P]
        if mods.zoneout is not None:
            h_new = mods.zoneout[t] * h + (1.0 - mods.zoneout[t]) * h_new
        if c is not None and mods.zoneout_cell is not None:
            c_new = mods.zoneout_cell[t] * c + (1.0 - mods.zoneout_cell[t]) * c_new
        steps[t] = (q(h), prev, cache if q is _keep else _round_cache(q, cache))
        out[t] = np.where(live, h_new, 0.0)
        hs[t] = h_new
        if c is not None:
            cs[t] = c_new
    last = np.zeros(B, dtype=np.int64) if reverse else lengths - 1  # each sequence's last step
    return out, hs[last, rows], (None if c0 is None else cs[last, rows]), steps


def _direction_backward(cell, x, lengths, w, steps, dout, dh_n, dc_n, reverse, options, mods=None, qp=None):
    """Inverse of ``_direction_forward``: walks the steps in the opposite order.
    x [T, B, I]; dout [T, B, H]; dh_n, dc_n [B, H] (dc_n None unless LSTM).
    Projected (w_hr given): dL/dW_hr += dh_tᵀ m_t, and the cell's backward gets dL/dm = dh_t W_hr.
    Returns dx [T, B, I], dh0 [B, H], dc0 [B, H] or None, (dW_ih, dW_hh, db_ih, db_hh, dW_ch or None,
    the layer norm's gradients (as ln) or None, dW_hr or None). qp: the low-precision mode's rounding
    of the products' left operands (None: none)."""
    mods = mods or _Modifiers()
    qp = qp or _keep
    cell_backward = _cell_backward_fn(cell, options)
    w_ih, w_hh, b_ih, b_hh, w_ch, ln, w_hr = w
    dw_ch = None if w_ch is None else np.zeros_like(w_ch)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    d_ln = None if ln is None else [np.zeros_like(v) for v in ln]
    w_hh_used = w_hh if mods.weight_mask is None else w_hh * mods.weight_mask
    T, B, _ = x.shape
    H = w_hh.shape[1]  # the width of h (P when projected)
    HC = H if dc_n is None else dc_n.shape[1]  # the width of c
    rows = np.arange(B)
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros_like(b_ih), np.zeros_like(b_hh)
    lstm = dc_n is not None
    # dL/d(state of step t) from the later steps (and from h_n, c_n at each sequence's last step)
    dhs, dcs = np.zeros((T, B, H)), np.zeros((T, B, HC))
    last = np.zeros(B, dtype=np.int64) if reverse else lengths - 1
    dhs[last, rows] += dh_n
    if lstm:
        dcs[last, rows] += dc_n
    dh0, dc0 = np.zeros((B, H)), (np.zeros((B, HC)) if lstm else None)
    for t in range(T) if reverse else reversed(range(T)):
        live = (t < lengths)[:, None]  # [B, 1]
        h_prev, prev, cache = steps[t]
        dh_new = np.where(live, _clip(dhs[t] + dout[t], mods.grad_clip), 0.0)  # [B, H (P)]
        dc_new = None if not lstm else np.where(live, dcs[t], 0.0)
        dh_keep = dc_keep = 0.0  # the zoneout paths straight to the previous state
        if mods.zoneout is not None:  # h_t = d_h h_{t-1} + (1 - d_h) h~_t, h~_t the projected one
            dh_keep, dh_new = mods.zoneout[t] * dh_new, (1.0 - mods.zoneout[t]) * dh_new
        if w_hr is not None:  # through h~_t = m W_hrᵀ to m (dead rows: dh_new is 0)
            cache, m = cache
            dw_hr += dh_new.T @ m
            dh_new = qp(dh_new) @ w_hr  # [B, H]: dL/dm
        cell_clip = mods.grad_clip
        if lstm and mods.zoneout_cell is not None:
            # c_t = d_c c_{t-1} + (1 - d_c) c~_t: what reaches c_t comes from the later steps only (h~_t
            # reads c~_t), so that total is the one clamped, and c~_t's is not
            dc_new = _clip(dc_new, mods.grad_clip)
            dc_keep, dc_new = mods.zoneout_cell[t] * dc_new, (1.0 - mods.zoneout_cell[t]) * dc_new
            cell_clip = None
        dgi, dgh, dh_direct, dc_prev, extra = cell_backward(dh_new, dc_new, cache, clip=cell_clip)
        # parameters a cell uses itself (peepholes, the reset-before GRU's n product); dead rows have
        # zero gate gradients, so they add nothing
        if "w_ch" in extra:
            dw_ch += extra["w_ch"]
        if "w_hh" in extra:
            dw_hh += extra["w_hh"]
            db_hh += extra["b_hh"]
        dgi_p, dgh_p = qp(dgi), qp(dgh)  # as the products read them
        dx[t] = dgi_p @ w_ih  # [B, I]
        dw_ih += dgi_p.T @ x[t]
        h_in = h_prev if mods.recurrent_mask is None else mods.recurrent_mask * h_prev
        dw_hh += dgh_p.T @ h_in
        if ln is not None:  # layer norm: dgi, dgh are the products' gradients, the biases' come as extras
            db_ih += extra["b_ih"]
            db_hh += extra["b_hh"]
            for j, name in enumerate(("ln_ih", "ln_hh", "ln_c_w", "ln_c_b")[:len(ln)]):
                d_ln[j] += extra[name]
        else:
            db_ih += dgi.sum(axis=0)
            db_hh += dgh.sum(axis=0)
        dh_in = dgh_p @ w_hh_used
        if mods.recurrent_mask is not None:
            dh_in = mods.recurrent_mask * dh_in
        if w_hr is not None:  # the LSTM's h_{t-1} enters through W_hh only (its dh_direct is zero, H wide)
            dh_direct = 0.0
        dh_p = np.where(live, dh_direct + dh_in + dh_keep, 0.0)
        has_prev = (prev >= 0)[:, None]
        np.add.at(dhs, (np.maximum(prev, 0), rows), np.where(has_prev, dh_p, 0.0))
        dh0 += np.where(has_prev, 0.0, dh_p)
        if lstm:
            dc_p = np.where(live, dc_prev + dc_keep, 0.0)
            np.add.at(dcs, (np.maximum(prev, 0), rows), np.where(has_prev, dc_p, 0.0))
            dc0 += np.where(has_prev, 0.0, dc_p)
    if mods.weight_mask is not None:
        dw_hh = dw_hh * mods.weight_mask
    return dx, dh0, dc0, (dw_ih, dw_hh, db_ih, db_hh, dw_ch, d_ln, dw_hr)


# ---------------------------------------------------------------------------------------------
# The stack: layers x directions. Layer l > 0 reads [fwd, bwd] outputs of layer l-1.
# ---------------------------------------------------------------------------------------------


def forward(
    cell: str,
    x: np.ndarray,
    weights: Sequence[Tuple[np.ndarray, ...]],
    h0: Optional[np.ndarray] = None,
    c0: Optional[np.ndarray] = None,
    *,
    lengths: Optional[np.ndarray] = None,
    bidirectional: bool = False,
    batch_first: bool = False,
    training: bool = True,
    peephole: bool = False,
    coupled: bool = False,
    cell_clip: Optional[float] = None,
    reset_after: bool = True,
    layer_norm: bool = False,
    dilation=1,
    recurrent_mask: Optional[np.ndarray] = None,
    weight_mask: Optional[Sequence[np.ndarray]] = None,
    zoneout_mask: Optional[np.ndarray] = None,
    zoneout_cell_mask: Optional[np.ndarray] = None,
    grad_clip: Optional[float] = None,
    proj_size: int = 0,
    storage: Optional[str] = None,
) -> RNNResult:
    """Run an L-layer, D-direction recurrent stack.

    cell:     one of ``CELLS``.
    x:        [T, B, I] ([B, T, I] if batch_first).
    weights:  L*D tuples, index l*D + d (d = 0 forward, 1 reverse): (w_ih [G*H, I_l],
              w_hh [G*H, H], b_ih [G*H], b_hh [G*H]) or (w_ih, w_hh); I_0 = I, I_l = D*H.
    h0, c0:   [L*D, B, H] or None (zeros); c0 only for LSTM.
    lengths:  [B] ints in [1, T], or None (all T).
    The training modifiers, with explicit masks (see ``_Modifiers``; all None / 1: the plain cells):
    dilation:           an int, or one per layer: layer l's step t reads the state of step t - d_l.
    recurrent_mask:     [L*D, B, H] m multiplying h_{t-1} where it enters W_hh.
    weight_mask:        L*D arrays [G*H, H] multiplying W_hh.
    zoneout_mask:       [L*D, T, B, H] d_h: h_t = d_h h_{t-1} + (1 - d_h) h~_t.
    zoneout_cell_mask:  [L*D, T, B, H] d_c, the same for the LSTM's c.
    grad_clip:          C: backward clamps the total gradient reaching each h_t (and c_t) to [-C, C].
    Returns ``RNNResult(output [T, B, D*H] (batch-first if batch_first), h_n [L*D, B, H],
    c_n [L*D, B, H] or None, saved)``; saved is None unless training.
    peephole, coupled, cell_clip: the LSTM variants (see ``_lstm_variant_forward``); with
              peephole every weights entry ends with w_ch [U, H] (U = 3: rows i, f, o; coupled: 2, f, o),
              coupled has G = 3 gate blocks (f, g, o).
    reset_after:  GRU: False applies r to h before the hidden product (``_gru_reset_before_forward``).
    layer_norm:   LSTM and GRU (``_layer_norm_forward``): every weights entry ends with γ_ih [G*H],
              γ_hh [G*H] and, for the LSTM, γ_c [H], β_c [H] (after the biases: fastrnn.nn's
              parameter order). Not with peephole, coupled, cell_clip or reset_after=False.
    proj_size:    P > 0, the LSTM only (torch.nn.LSTM's): h_t = W_hr (o*tanh(c_t)) is P wide
              (h0, h_n [L*D, B, P], output [T, B, D*P], w_hh [G*H, P], I_l = D*P above the first
              layer), c stays H wide; every weights entry ends with w_hr [P, H] (after w_ch). With
              peephole, coupled, cell_clip and every training modifier (recurrent_mask [L*D, B, P],
              weight_mask [G*H, P], zoneout_mask [L*D, T, B, P], zoneout_cell_mask [.., H]: h's are
              P wide); not with layer_norm.
    storage:  None (float64 throughout), or "bfloat16" / "float16": the low-precision mode, float64
              maths rounded to that type where the 16-bit kernels store or round (listed above
              ``_rounding``); results are float64 arrays holding 16-bit values. backward follows.
    """
    assert cell in TABLE, f"cell must be one of {CELLS}, got {cell!r}"
    info = cell_info(cell)
    options = dict(peephole=bool(peephole), coupled=bool(coupled), cell_clip=cell_clip, reset_after=bool(reset_after),
                   layer_norm=bool(layer_norm))
    assert not layer_norm or (info.layer_norm_option and not _is_variant(options) and reset_after), \
        "layer_norm is an LSTM/GRU option, not combined with peephole, coupled, cell_clip or reset_after=False"
    assert info.lstm_variants or not _is_variant(options), "peephole, coupled and cell_clip are LSTM options"
    assert info.reset_after_option or reset_after, "reset_after is a GRU option"
    assert proj_size == 0 or (info.lstm_variants and not layer_norm), "proj_size is an LSTM option, not with layer_norm"
    has_c = info.carries_cell_state
    q = _rounding(storage)
    qp = q if storage == "bfloat16" else None
    if q is not None:  # the 16-bit inputs
        x, h0, c0 = q(x), q(h0), q(c0)
        weights = [tuple(q(a) for a in w) for w in weights]
        recurrent_mask, zoneout_mask, zoneout_cell_mask = q(recurrent_mask), q(zoneout_mask), q(zoneout_cell_mask)
        weight_mask = None if weight_mask is None else [q(m) for m in weight_mask]
    x = np.asarray(x, dtype=np.float64)
    assert x.ndim == 3, f"x must be 3-D, got shape {x.shape}"
    if batch_first:
        x = x.transpose(1, 0, 2)  # -> [T, B, I]
    T, B, I = x.shape
    D = 2 if bidirectional else 1
    assert len(weights) > 0 and len(weights) % D == 0, "len(weights) must be a multiple of D"
    L = len(weights) // D
    G = info.gates_with(coupled)
    n_ln = (4 if has_c else 2) if layer_norm else 0  # the layer norm's vectors at the end of an entry
    extra = (1 if peephole else 0) + n_ln + (1 if proj_size else 0)
    has_bias = len(weights[0]) == 4 + extra
    H = np.shape(weights[0][1])[0] // G if proj_size else np.shape(weights[0][1])[1]
    HW = proj_size or H  # the width of h
    # (w_ih, w_hh[, b_ih, b_hh][, w_ch]) of every entry, by the C++ rule (the cell table); then w_hr
    shapes = param_shapes(cell, I, H, L, bool(bidirectional), has_bias, bool(peephole), bool(coupled), proj_size)

    ws = []  # L*D tuples of float64 (w_ih, w_hh, b_ih, b_hh, w_ch or None, ln or None, w_hr or None); zero biases when none
    for k, w in enumerate(weights):
        assert len(w) == (4 if has_bias else 2) + extra, "every weights entry must have the same length"
        ln = None
        if layer_norm:
            ln = tuple(np.asarray(v, dtype=np.float64) for v in w[len(w) - n_ln:])
            sizes = (G * H, G * H, H, H)[:n_ln]
            assert all(v.shape == (n,) for v, n in zip(ln, sizes)), f"weights[{k}] layer norm shapes"
            w = w[:len(w) - n_ln]
        w_hr = None
        if proj_size:
            w_hr = np.asarray(w[-1], dtype=np.float64)
            assert w_hr.shape == (proj_size, H), f"weights[{k}][-1] (w_hr) shape {w_hr.shape}"
            w = w[:-1]
        got = tuple(np.shape(a) for a in w)
        assert got == shapes[k], f"weights[{k}] shapes {got}, expected {shapes[k]}"
        w_ch = np.asarray(w[-1], dtype=np.float64) if peephole else None
        w_ih = np.asarray(w[0], dtype=np.float64)
        w_hh = np.asarray(w[1], dtype=np.float64)
        if has_bias:
            b_ih = np.asarray(w[2], dtype=np.float64)
            b_hh = np.asarray(w[3], dtype=np.float64)
        else:
            b_ih, b_hh = np.zeros(G * H), np.zeros(G * H)
        ws.append((w_ih, w_hh, b_ih, b_hh, w_ch, ln, w_hr))

    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    assert lengths.shape == (B,), f"lengths must have shape ({B},), got {lengths.shape}"
    assert np.all((lengths >= 1) & (lengths <= T)), "lengths must lie in [1, T]"

    h0 = np.zeros((L * D, B, HW)) if h0 is None else np.asarray(h0, dtype=np.float64)
    assert h0.shape == (L * D, B, HW), f"h0 must have shape {(L * D, B, HW)}, got {h0.shape}"
    if has_c:
        c0 = np.zeros((L * D, B, H)) if c0 is None else np.asarray(c0, dtype=np.float64)
        assert c0.shape == (L * D, B, H), f"c0 must have shape {(L * D, B, H)}, got {c0.shape}"
    else:
        assert c0 is None, "c0 is only for LSTM"

    dilations = [int(dilation)] * L if np.ndim(dilation) == 0 else [int(d) for d in dilation]
    assert len(dilations) == L and min(dilations) >= 1, f"dilation must be >= 1, one per layer, got {dilation}"
    mods = [_Modifiers(dilations[k // D],
                       None if recurrent_mask is None else np.asarray(recurrent_mask, dtype=np.float64)[k],
                       None if weight_mask is None else np.asarray(weight_mask[k], dtype=np.float64),
                       None if zoneout_mask is None else np.asarray(zoneout_mask, dtype=np.float64)[k],
                       None if zoneout_cell_mask is None else np.asarray(zoneout_cell_mask, dtype=np.float64)[k],
                       grad_clip) for k in range(L * D)]

    h_n = np.zeros((L * D, B, HW))
    c_n = np.zeros((L * D, B, H)) if has_c else None
    layer_inputs = []  # L arrays [T, B, I_l]
    all_steps = []  # L*D lists of per-step caches
    layer_in = x
    for l in range(L):
        outs = []
        for d in range(D):
            k = l * D + d
            out, h_n[k], ck, steps = _direction_forward(
                cell, layer_in, lengths, ws[k], h0[k], c0[k] if has_c else None, d == 1, options, mods[k], q, qp
            )
            if has_c:
                c_n[k] = ck
            outs.append(out)
            all_steps.append(steps)
        layer_inputs.append(layer_in)
        layer_in = np.concatenate(outs, axis=2)  # [T, B, D*H]
        if q is not None:  # the layer's output as stored
            layer_in = q(layer_in)
    output = layer_in
    if q is not None:
        h_n, c_n = q(h_n), q(c_n)
    if batch_first:
        output = np.ascontiguousarray(output.transpose(1, 0, 2))

    saved = None
    if training:
        saved = dict(
            cell=cell, D=D, L=L, H=H, HW=HW, has_bias=has_bias, batch_first=batch_first,
            lengths=lengths, weights=ws, layer_inputs=layer_inputs, steps=all_steps, options=options, mods=mods,
            storage=storage,
        )
    return RNNResult(output, h_n, c_n, saved)


def backward(
    saved: Dict[str, Any],
    dy: np.ndarray,
    dhn: Optional[np.ndarray] = None,
    dcn: Optional[np.ndarray] = None,
) -> RNNGrads:
    """Backpropagation through time for a ``forward(..., training=True)`` call.

    dy:       same layout as output: [T, B, D*H] ([B, T, D*H] if batch_first).
    dhn, dcn: [L*D, B, H] or None (zeros); dcn only for LSTM (proj_size: dy, dhn and dh0 P wide).
    Returns ``RNNGrads(dx (layout of x), dh0 [L*D, B, H], dc0 [L*D, B, H] or None, dweights)``;
    dweights mirrors the weights (dW_hr last when projected).
    """
    assert saved is not None, "backward needs the saved state of forward(..., training=True)"
    cell, D, L, H = saved["cell"], saved["D"], saved["L"], saved["H"]
    HW = saved["HW"]  # the width of h
    has_c = cell_info(cell).carries_cell_state
    lengths, ws = saved["lengths"], saved["weights"]
    T, B, _ = saved["layer_inputs"][0].shape

    q = _rounding(saved.get("storage"))
    qp = q if saved.get("storage") == "bfloat16" else None
    if q is not None:  # the 16-bit incoming gradients
        dy, dhn, dcn = q(dy), q(dhn), q(dcn)
    dy = np.asarray(dy, dtype=np.float64)
    if saved["batch_first"]:
        dy = dy.transpose(1, 0, 2)  # -> [T, B, D*H]
    assert dy.shape == (T, B, D * HW), f"dy must have shape {(T, B, D * HW)} (time-major), got {dy.shape}"
    dhn = np.zeros((L * D, B, HW)) if dhn is None else np.asarray(dhn, dtype=np.float64)
    assert dhn.shape == (L * D, B, HW), f"dhn must have shape {(L * D, B, HW)}, got {dhn.shape}"
    if has_c:
        dcn = np.zeros((L * D, B, H)) if dcn is None else np.asarray(dcn, dtype=np.float64)
        assert dcn.shape == (L * D, B, H), f"dcn must have shape {(L * D, B, H)}, got {dcn.shape}"

    dh0 = np.zeros((L * D, B, HW))
    dc0 = np.zeros((L * D, B, H)) if has_c else None
    dweights: List[Tuple[np.ndarray, ...]] = [()] * (L * D)
    d_layer_out = dy  # [T, B, D*H] gradient of the current layer's output
    for l in reversed(range(L)):
        x_l = saved["layer_inputs"][l]  # [T, B, I_l]
        d_layer_in = np.zeros_like(x_l)
        for d in range(D):
            k = l * D + d
            dx_d, dh0[k], dck, dw = _direction_backward(
                cell, x_l, lengths, ws[k], saved["steps"][k],
                d_layer_out[:, :, d * HW:(d + 1) * HW],
                dhn[k], dcn[k] if has_c else None, d == 1, saved["options"], saved["mods"][k], qp,
            )
            if has_c:
                dc0[k] = dck
            d_layer_in += dx_d
            dw_ch = (dw[4],) if dw[4] is not None else ()  # the peepholes' gradient, then the layer norm's
            d_ln = tuple(dw[5]) if dw[5] is not None else ()
            dw_hr = (dw[6],) if dw[6] is not None else ()  # the projection's, last
            dweights[k] = (dw[:4] if saved["has_bias"] else dw[:2]) + dw_ch + dw_hr + d_ln
        d_layer_out = d_layer_in
    dx = d_layer_out
    if q is not None:  # the results as stored
        dx, dh0, dc0 = q(dx), q(dh0), q(dc0)
        dweights = [tuple(q(g) for g in entry) for entry in dweights]
    if saved["batch_first"]:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    return RNNGrads(dx, dh0, dc0, dweights)
