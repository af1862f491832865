"""One recurrence over num_layers layers for fastrnn.nn's modules and cells: the fused op
(fastrnn.ops) where the kernels serve the call, else the composed torch ops of
:mod:`fastrnn.nn._composed`. The modules speak torch.nn's mode names (``RNN_TANH``, ``LSTM``, ...);
``fastrnn.cell_table.BY_TORCH_MODE`` gives each one's cell."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import ops
from ..cell_table import BY_TORCH_MODE
from ._composed import _composed_recurrence, _kernels_cannot_serve


def _needs_grad(*tensors) -> bool:
    """Whether the op must keep its reserve: some input takes part in autograd."""
    if torch.is_grad_enabled():
        for t in tensors:  # a loop, not any(<generator>): this runs on every cell step
            if t is not None and t.requires_grad:
                return True
    return False


def _projected(cell: Optional[str]) -> bool:
    """Whether the op's cell string is a projected LSTM's (proj_size > 0)."""
    return bool(cell) and dict(ops.split_cell(cell)[1])["proj_size"] > 0


def _run_op(mode: str, x: Tensor, weights: List[Tensor], h0, c0, lengths, hidden_size: int, num_layers: int,
            bidirectional: bool, cell: Optional[str] = None, reset_before: bool = False, layer_norm: bool = False,
            recurrent_mask: Optional[Tensor] = None, grad_clip: float = 0.0, zoneout=None, proj_size: int = 0,
            seeded: Optional[tuple] = None):
    """One fused call over num_layers layers: x [T, B, I] time-major -> (y, hn, cn or None). ``cell``:
    the op's cell string with the cell options (ops.variant_cell), default the mode's base cell.
    ``reset_before``: the GRU with reset_after=False (fused on the CPU and on CUDA), and
    ``layer_norm``: the layer-normalised LSTM/GRU (weights entries end with the norm's vectors; fused
    on the CPU and on CUDA, float32/float64): op cell strings "gru+reset_before", "lstm+layer_norm", ...; on devices without such
    kernels, with the training modifiers, and for the calls the kernels do not serve, composed torch
    ops (correct, not fast). ``proj_size`` (the LSTM's projection, weight_hr [P, H] ending each entry;
    ``cell`` carries it too) runs fused in the CPU kernels (float32/float64 and the 16-bit types, grad_clip
    included) and in the CUDA kernels (every storage type, without the training modifiers), as composed
    torch ops on other devices and with recurrent_mask or zoneout (and grad_clip on CUDA), which the
    kernels refuse with a projection (weight dropout and dilation act on the op's inputs, so they keep
    the fused op).
    recurrent_mask [L*D, B, H], grad_clip (0: off) and zoneout ((d_h, d_c), see _composed_recurrence)
    are the training modifiers (_RNNBase._modified_recurrence), for every cell and variant. seeded:
    (seed [1] int64, stream, zoneout, zoneout_cell, recurrent_dropout), the masks the CPU kernels draw
    (ops.run_forward); the caller passes it only where the fused CPU kernels run the call."""
    masked = recurrent_mask is not None or zoneout is not None or seeded is not None
    modified = masked or bool(grad_clip)
    if _composed_needed(x, h0, c0, weights, reset_before, layer_norm, modified, cell, proj_size, masked):
        return _composed_recurrence(mode, x, weights, h0, c0, lengths, hidden_size, num_layers, bidirectional, cell,
                                    reset_before, layer_norm, recurrent_mask, grad_clip, zoneout, proj_size)
    cell = _op_cell(mode, cell, reset_before, layer_norm)
    zoneout_h = zoneout_c = None
    if zoneout is not None:  # the kernels take d as a tensor [L*D, T, B, H]: eval's p filled in
        D = 2 if bidirectional else 1
        shape = (num_layers * D, x.size(0), x.size(1), hidden_size)
        zoneout_h, zoneout_c = (x.new_full(shape, z) if isinstance(z, float) else z for z in zoneout)
    # A traced graph keeps what the trace saw as a constant, and the trace is checked by running it
    # again without grad: it always keeps the reserve, so that the graph is the same and can train.
    training = _needs_grad(x, h0, c0, *weights) or torch._C._get_tracing_state() is not None
    y, hn, cn, _ = ops.run_forward(x, weights, h0, c0, lengths, cell, hidden_size, num_layers,
                                   bidirectional, training, recurrent_mask, grad_clip, zoneout_h, zoneout_c, seeded)
    return y, hn, (cn if BY_TORCH_MODE[mode].carries_cell_state else None)


def _composed_needed(x: Tensor, h0, c0, weights: List[Tensor], reset_before: bool, layer_norm: bool, modified: bool,
                     cell: Optional[str], proj_size: int, masked: Optional[bool] = None) -> bool:
    """Whether _run_op runs the call as composed torch ops (its docstring says which calls). masked:
    whether the modifiers include a mask (recurrent dropout, zoneout; default: ``modified``), which
    the projected LSTM's kernels do not run (grad_clip they do)."""
    masked = modified if masked is None else masked
    # the 16-bit CUDA kernels have no layer norm
    half = x.dtype in (torch.bfloat16, torch.float16)
    fused_devices = ("cpu", "cuda")
    projected = proj_size > 0 or _projected(cell)
    return (((reset_before or layer_norm) and (x.device.type not in fused_devices or modified))
            or (layer_norm and half and x.device.type != "cpu")
            or (projected and (x.device.type not in fused_devices or masked or (modified and x.device.type != "cpu")))
            or _kernels_cannot_serve(x, h0, c0, weights))


def _op_cell(mode: str, cell: Optional[str], reset_before: bool, layer_norm: bool) -> str:
    """The op's cell string: the reset-before GRU's and layer norm's (not combined with the LSTM
    variants: the modules refuse that), else ``cell``, else the mode's base cell."""
    if reset_before or layer_norm:
        return ops.variant_cell(BY_TORCH_MODE[mode].name, reset_after=not reset_before, layer_norm=layer_norm)
    return cell or BY_TORCH_MODE[mode].name


def packed_op_serves(x: Tensor, h0, c0, weights: List[Tensor], reset_before: bool = False, layer_norm: bool = False,
                     cell: Optional[str] = None, proj_size: int = 0) -> bool:
    """Whether _run_packed_op serves a PackedSequence's data x [N, I]: the CPU calls that _run_op runs
    fused (the caller pads the others and runs _run_op)."""
    return x.device.type == "cpu" and not _composed_needed(x, h0, c0, weights, reset_before, layer_norm, False,
                                                           cell, proj_size)


def _run_packed_op(mode: str, x: Tensor, batch_sizes: Tensor, batch: int, weights: List[Tensor], h0, c0,
                   hidden_size: int, num_layers: int, bidirectional: bool, cell: Optional[str] = None,
                   reset_before: bool = False, layer_norm: bool = False):
    """_run_op on a PackedSequence: x [N, I] its data, batch_sizes [T] its, batch = batch_sizes[0];
    h0, c0 [L*D, B, H] in its sorted order -> (y [N, D*H] packed, hn, cn or None) in that order, the
    kernels running each step on its live rows (ops.run_forward_packed). Only where packed_op_serves."""
    training = _needs_grad(x, h0, c0, *weights) or torch._C._get_tracing_state() is not None
    y, hn, cn, _ = ops.run_forward_packed(x, weights, h0, c0, batch_sizes, _op_cell(mode, cell, reset_before, layer_norm),
                                          hidden_size, num_layers, bidirectional, training, batch)
    return y, hn, (cn if BY_TORCH_MODE[mode].carries_cell_state else None)
