"""Drop-in replacements for torch.nn's recurrent modules, running fastrnn's fused kernels through the
custom ops in :mod:`fastrnn.ops`: ``RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell``, ``GRUCell``.

They take torch.nn's constructor arguments (same order and defaults), hold the same parameters
(names, shapes, order, initialisation), so ``state_dict()`` loads both ways, and follow torch.nn's
forward contract: batched 3-D and unbatched 2-D input, ``batch_first`` (not applied to the states),
optional ``hx``, PackedSequence in -> PackedSequence out, dropout between layers in training mode,
the same output shapes and the same exception types for bad input. They subclass plain
``torch.nn.Module`` (not ``torch.nn.RNNBase``, on which ``torch.compile`` deliberately breaks the
graph). ``convert(model)`` swaps the torch.nn modules inside a model for these ones.

Differences from torch.nn: float32 and float64 only (other dtypes raise TypeError), and no double
backward. ``LSTM(proj_size > 0)`` is not covered by the kernels: it runs a pure-torch fallback
(composed torch ops, autograd does the backward) that matches torch.nn.LSTM but is not fast. So do
``GRU(reset_after=False)`` and ``LSTM/GRU(layer_norm=True)`` (issue 14, not fused yet), and the calls the kernels have no rule for: meta tensors (shapes only), an empty batch (B = 0),
forward-mode AD (``torch.autograd.forward_ad``, ``torch.func.jvp`` / ``jacfwd``) and torch.func's
transforms (``grad``, ``jacrev``, ``vmap``, ...): ``_composed_recurrence``.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter, init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import ops
from ..functional import _check_options

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_CELL = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


def _needs_grad(*tensors) -> bool:
    """Whether the op must keep its reserve: some input takes part in autograd."""
    if torch.is_grad_enabled():
        for t in tensors:  # a loop, not any(<generator>): this runs on every cell step
            if t is not None and t.requires_grad:
                return True
    return False


def _kernels_cannot_serve(x: Tensor, h0, c0, weights: List[Tensor]) -> bool:
    """Calls the fused kernels do not serve, run by composed torch ops instead (_composed_recurrence):
    meta tensors (shapes only), an empty batch, forward-mode AD (torch.autograd.forward_ad, and
    torch.func.jvp / jacfwd) and torch.func's transforms (grad, jacrev, vmap, ...), for which the
    kernels have no rule. Under torch.compile the op is traced (its fake implementation serves)."""
    if torch.compiler.is_compiling():
        return False
    return (x.device.type == "meta" or x.size(1) == 0 or torch._C._are_functorch_transforms_active()
            or (torch.autograd.forward_ad._current_level >= 0 and ops.has_tangent(x, h0, c0, *weights)))


def _run_op(mode: str, x: Tensor, weights: List[Tensor], h0, c0, lengths, hidden_size: int, num_layers: int,
            bidirectional: bool, cell: Optional[str] = None, reset_before: bool = False, layer_norm: bool = False,
            recurrent_mask: Optional[Tensor] = None, grad_clip: float = 0.0, zoneout=None):
    """One fused call over num_layers layers: x [T, B, I] time-major -> (y, hn, cn or None). ``cell``:
    the op's cell string with issue 14's options (ops.variant_cell), default the mode's base cell.
    ``reset_before``: the GRU with reset_after=False, and ``layer_norm``: the layer-normalised
    LSTM/GRU (weights entries end with the norm's vectors), which the kernels do not implement:
    composed torch ops (correct, not fast).
    recurrent_mask [L*D, B, H], grad_clip (0: off) and zoneout ((d_h, d_c), see _composed_recurrence)
    are the training modifiers (_RNNBase._modified_recurrence; the base cells only)."""
    if reset_before or layer_norm or _kernels_cannot_serve(x, h0, c0, weights):
        return _composed_recurrence(mode, x, weights, h0, c0, lengths, hidden_size, num_layers, bidirectional, cell,
                                    reset_before, layer_norm, recurrent_mask, grad_clip, zoneout)
    zoneout_h = zoneout_c = None
    if zoneout is not None:  # the kernels take d as a tensor [L*D, T, B, H]: eval's p filled in
        D = 2 if bidirectional else 1
        shape = (num_layers * D, x.size(0), x.size(1), hidden_size)
        zoneout_h, zoneout_c = (x.new_full(shape, z) if isinstance(z, float) else z for z in zoneout)
    # A traced graph keeps what the trace saw as a constant, and the trace is checked by running it
    # again without grad: it always keeps the reserve, so that the graph is the same and can train.
    training = _needs_grad(x, h0, c0, *weights) or torch._C._get_tracing_state() is not None
    y, hn, cn, _ = ops.run_forward(x, weights, h0, c0, lengths, cell or _CELL[mode], hidden_size, num_layers,
                                   bidirectional, training, recurrent_mask, grad_clip, zoneout_h, zoneout_c)
    return y, hn, (cn if mode == "LSTM" else None)


class _RNNBase(torch.nn.Module):
    """What RNN, LSTM and GRU share: torch.nn.RNNBase's constructor checks, parameters and
    forward contract, with the recurrence run by the fastrnn op."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, peephole: bool = False, coupled: bool = False,
                 cell_clip: Optional[float] = None, layer_norm: bool = False, init: str = "uniform",
                 zoneout: float = 0.0, zoneout_cell: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0, grad_clip: Optional[float] = None, dilation=1) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if mode in _CELL:  # issue 14's options: LSTM-only ones refused elsewhere, clear errors for bad values
            _check_options(_CELL[mode], peephole, coupled, cell_clip)
        _check_layer_norm(layer_norm, peephole, coupled, cell_clip)
        if layer_norm and proj_size > 0:
            raise ValueError(f"layer_norm=True does not combine with proj_size (got proj_size={proj_size})")
        if init not in ("uniform", "identity"):
            raise ValueError(f"init must be 'uniform' or 'identity', got {init!r}")
        # The same checks, in the same order and with the same exception types, as torch.nn.RNNBase.
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if mode not in _GATES:
            raise ValueError("Unrecognized RNN mode: " + mode)
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.peephole, self.coupled, self.cell_clip, self.init = bool(peephole), bool(coupled), cell_clip, init
        self.layer_norm = layer_norm
        self.reset_after = True  # GRU sets it after
        # the op's cell string (ops.variant_cell): the base cell's name unless an option is set
        self._cell = ops.variant_cell(_CELL[mode], peephole, coupled, cell_clip)
        self._set_modifiers(mode, zoneout, zoneout_cell, recurrent_dropout, weight_dropout, grad_clip, dilation)
        if self._has_modifiers() and (self.peephole or self.coupled or cell_clip is not None or layer_norm):
            raise NotImplementedError("the training modifiers (zoneout, zoneout_cell, recurrent_dropout, weight_dropout, "
                                      "grad_clip, dilation) run the base cells only, not with peephole, coupled, "
                                      "cell_clip or layer_norm")

        D = 2 if bidirectional else 1
        gate_size = (3 if coupled else _GATES[mode]) * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            for direction in range(D):
                layer_input_size = input_size if layer == 0 else real_hidden_size * D
                suffix = "_reverse" if direction == 1 else ""
                params = [(f"weight_ih_l{layer}{suffix}", (gate_size, layer_input_size)),
                          (f"weight_hh_l{layer}{suffix}", (gate_size, real_hidden_size))]
                if bias:
                    params += [(f"bias_ih_l{layer}{suffix}", (gate_size,)), (f"bias_hh_l{layer}{suffix}", (gate_size,))]
                if peephole:  # rows (i, f, o), coupled (f, o)
                    params += [(f"weight_ch_l{layer}{suffix}", (2 if coupled else 3, hidden_size))]
                if proj_size > 0:
                    params += [(f"weight_hr_l{layer}{suffix}", (proj_size, hidden_size))]
                if layer_norm:  # gains of the two products' norms [G*H]; LSTM: the cell norm's gain and bias [H]
                    params += [(f"ln_weight_ih_l{layer}{suffix}", (gate_size,)),
                               (f"ln_weight_hh_l{layer}{suffix}", (gate_size,))]
                    if mode == "LSTM":
                        params += [(f"ln_weight_c_l{layer}{suffix}", (hidden_size,)),
                                   (f"ln_bias_c_l{layer}{suffix}", (hidden_size,))]
                for name, shape in params:
                    setattr(self, name, Parameter(torch.empty(shape, **factory_kwargs)))
                names = [name for name, _ in params]
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def _set_modifiers(self, mode, zoneout, zoneout_cell, recurrent_dropout, weight_dropout, grad_clip, dilation):
        """The training modifiers (issue 15), checked and kept under the option names."""
        for name, p in (("zoneout", zoneout), ("zoneout_cell", zoneout_cell), ("recurrent_dropout", recurrent_dropout),
                        ("weight_dropout", weight_dropout)):
            if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
        if zoneout_cell and mode != "LSTM":
            raise ValueError(f"zoneout_cell is the LSTM's (its cell state c), got zoneout_cell={zoneout_cell} for {mode}")
        if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, numbers.Real)
                                      or not grad_clip > 0):
            raise ValueError(f"grad_clip must be a number > 0 (or None for off), got {grad_clip!r}")
        dilations = [dilation] * self.num_layers if isinstance(dilation, int) else \
            list(dilation) if isinstance(dilation, (list, tuple)) else None
        if dilations is None or len(dilations) != self.num_layers or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
            raise ValueError(f"dilation must be an int >= 1 or a list of num_layers = {self.num_layers} of them, "
                             f"got {dilation!r}")
        self.zoneout, self.zoneout_cell = float(zoneout), float(zoneout_cell)
        self.recurrent_dropout, self.weight_dropout = float(recurrent_dropout), float(weight_dropout)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.dilation = dilation if isinstance(dilation, int) else list(dilation)
        self._dilations = dilations
        if self.proj_size > 0 and self._has_modifiers():
            raise NotImplementedError("the training modifiers (zoneout, recurrent_dropout, weight_dropout, grad_clip, "
                                      "dilation) are not implemented for LSTM(proj_size > 0)")

    def _has_modifiers(self) -> bool:
        return bool(self.zoneout or self.zoneout_cell or self.recurrent_dropout or self.weight_dropout
                    or self.grad_clip is not None or any(d != 1 for d in self._dilations))

    @property
    def _flat_weights(self) -> List[Tensor]:
        return self._weights()

    def _weights(self) -> List[Tensor]:
        # Looked up on every call (not cached as torch.nn does), so reassigned or .to()-moved
        # parameters and torch.func.functional_call are always seen. A method, not only the property
        # above: an AttributeError raised inside a property makes Python retry through
        # Module.__getattr__, whose message would name '_flat_weights' instead of the parameter.
        weights = []
        for name in self._flat_weights_names:
            try:
                weights.append(getattr(self, name))
            except AttributeError:
                raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}' (a parameter of "
                                     "this module was deleted; assign a Parameter to it again)") from None
        return weights

    @property
    def all_weights(self) -> List[List[Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def stepper(self, weight_dtype: Optional[str] = None, auto_refresh: bool = False):
        """A :class:`fastrnn._stepper.Stepper` for step-by-step generation: ``y, state =
        stepper(x [B, I], state)`` advances every layer one time step in one fused call, on weights
        packed now (``weight_dtype="float16"``: stored as float16). Unidirectional, no projections;
        no autograd. After changing the weights call ``stepper.refresh()`` (in-place changes are
        detected, writes through ``param.data`` are not: see the Stepper's docstring)."""
        from .._stepper import Stepper
        return Stepper(self, weight_dtype=weight_dtype, auto_refresh=auto_refresh)

    def flatten_parameters(self) -> None:
        """A no-op: the kernels read the parameters where they are (kept for torch.nn compatibility)."""

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)
        if getattr(self, "init", "uniform") == "identity":
            for names in self._all_weights:
                _identity_init(*(getattr(self, n) for n in names[:2]),
                               *(getattr(self, n) for n in names if n.startswith("bias_")))
        _layer_norm_init(self)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        for name in ("zoneout", "zoneout_cell", "recurrent_dropout", "weight_dropout"):
            if getattr(self, name, 0):
                s += f", {name}={{{name}}}"
        if getattr(self, "grad_clip", None) is not None:
            s += ", grad_clip={grad_clip}"
        if getattr(self, "dilation", 1) != 1:
            s += ", dilation={dilation}"
        return s.format(**self.__dict__) + _variant_repr(self)

    # ---- torch.nn's input checks (same exception types and messages) ------------------------------
    def _check_input(self, input: Tensor, packed: bool) -> None:
        dtype = self._weights()[0].dtype
        if input.dtype != dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match weight dtype ({dtype}). "
                             f"Convert input: input.to({dtype}), or convert model: model.to({input.dtype})")
        expected_input_dim = 2 if packed else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {input.size(-1)}")

    @staticmethod
    def _check_hidden_size(hx: Tensor, expected: Tuple[int, int, int], msg: str = "Expected hidden size {}, got {}"):
        if hx.size() != expected:
            raise RuntimeError(msg.format(expected, list(hx.size())))

    # ---- forward --------------------------------------------------------------------------------------
    def forward(self, input, hx=None):
        lstm = self.mode == "LSTM"
        name = {"LSTM": "LSTM", "GRU": "GRU"}.get(self.mode, "RNN")
        D = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data, True)
            # Padded [T, B, I] in the packed (length-sorted) order, with the lengths.
            x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
            batch = int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D "
                                 + ("tensor instead" if name == "RNN" else "instead"))
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if lstm and hx is not None and len(hx) != 2:  # torch.nn's own hx[1] raises IndexError
                raise IndexError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {len(hx)}")
            if hx is not None:
                states = hx if lstm else (hx,)
                dims = tuple(h.dim() for h in states)
                want = 3 if is_batched else 2
                if any(d != want for d in dims):
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    if lstm:
                        raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                           f"({dims[0]}-D, {dims[1]}-D) tensors")
                    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {dims[0]}-D tensor")
                if not is_batched:
                    hx = tuple(h.unsqueeze(1) for h in hx) if lstm else hx.unsqueeze(1)
            self._check_input(input, False)
            x = input.transpose(0, 1) if self.batch_first else input  # [T, B, I]
            if x.size(0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            lengths = None
            batch = x.size(1)

        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        h0 = c0 = None
        if hx is not None:
            h0, c0 = hx if lstm else (hx, None)
            if packed:  # each state row follows its sequence into the sorted order
                h0 = _permute(h0, sorted_indices)
                c0 = _permute(c0, sorted_indices) if lstm else None
            if lstm:
                self._check_hidden_size(h0, (self.num_layers * D, batch, real_hidden),
                                        "Expected hidden[0] size {}, got {}")
                self._check_hidden_size(c0, (self.num_layers * D, batch, self.hidden_size),
                                        "Expected hidden[1] size {}, got {}")
            else:
                self._check_hidden_size(h0, (self.num_layers * D, batch, self.hidden_size))
            for i, state in enumerate((h0, c0) if lstm else (h0,)):  # torch.nn raises RuntimeError
                if state.dtype != x.dtype:
                    raise RuntimeError(f"{name}: hx{f'[{i}]' if lstm else ''} dtype ({state.dtype}) does not match "
                                       f"input dtype ({x.dtype})")

        if self.proj_size > 0:
            y, hn, cn = _lstm_projected(self, x, h0, c0, lengths)
        else:
            y, hn, cn = self._recurrence(x, h0, c0, lengths)

        if packed:
            out = PackedSequence(pack_padded_sequence(y, lengths).data, batch_sizes, sorted_indices, unsorted_indices)
            hn = _permute(hn, unsorted_indices)
            cn = _permute(cn, unsorted_indices) if lstm else None
            return out, ((hn, cn) if lstm else hn)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(batch_dim)
            hn = hn.squeeze(1)
            cn = cn.squeeze(1) if lstm else None
        return y, ((hn, cn) if lstm else hn)

    def _recurrence(self, x: Tensor, h0, c0, lengths):
        """x [T, B, I] -> (y [T, B, D*H], hn, cn or None) by the fastrnn op: one call for the whole
        stack, or (dropout in training mode) one call per layer with dropout between them."""
        weights = self._weights()
        L, H = self.num_layers, self.hidden_size
        if lengths is not None:
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        reset_before, layer_norm = not self.reset_after, self.layer_norm
        if self._has_modifiers():
            return self._modified_recurrence(x, weights, h0, c0, lengths)
        if not (self.dropout > 0 and self.training and L > 1):
            return _run_op(self.mode, x, weights, h0, c0, lengths, H, L, self.bidirectional, self._cell, reset_before,
                           layer_norm)
        D = 2 if self.bidirectional else 1
        per_layer = len(weights) // L
        hns, cns = [], []
        for layer in range(L):
            rows = slice(layer * D, (layer + 1) * D)
            x, hn, cn = _run_op(self.mode, x, weights[layer * per_layer:(layer + 1) * per_layer],
                                None if h0 is None else h0[rows], None if c0 is None else c0[rows], lengths, H, 1,
                                self.bidirectional, self._cell, reset_before, layer_norm)
            hns.append(hn)
            cns.append(cn)
            if layer < L - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.cat(hns), (torch.cat(cns) if self.mode == "LSTM" else None)

    def _modified_recurrence(self, x: Tensor, weights: List[Tensor], h0, c0, lengths):
        """The recurrence with the training modifiers, one op call per layer: x [T, B, I] ->
        (y [T, B, D*H], hn, cn or None). Masks come from torch's default generator, in this order:
        the weight-dropout masks (layer by layer, direction by direction), the recurrent-dropout mask
        [L*D, B, H], the zoneout masks [L*D, T, B, H] of h, then of c; in eval mode none is drawn."""
        T, B, H, L = x.size(0), x.size(1), self.hidden_size, self.num_layers
        D = 2 if self.bidirectional else 1
        lstm = self.mode == "LSTM"
        per_entry = len(weights) // (L * D)
        if self.training and self.weight_dropout > 0:  # DropConnect: gradients reach W_hh through the mask
            weights = list(weights)
            for k in range(L * D):
                weights[k * per_entry + 1] = F.dropout(weights[k * per_entry + 1], self.weight_dropout, True)
        recurrent_mask = None
        if self.training and self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            recurrent_mask = x.new_empty((L * D, B, H)).bernoulli_(keep).div_(keep)
        zone = []
        for p in (self.zoneout, self.zoneout_cell if lstm else 0.0):
            # training: d ~ Bernoulli(p) per element and step; eval: d = p (h = p h_prev + (1 - p) h~)
            zone.append(None if not p else x.new_empty((L * D, T, B, H)).bernoulli_(p) if self.training else p)
        grad_clip = 0.0 if self.grad_clip is None else self.grad_clip
        hns, cns = [], []
        for layer, d in enumerate(self._dilations):
            rows = slice(layer * D, (layer + 1) * D)
            w = weights[layer * per_entry * D:(layer + 1) * per_entry * D]
            zoneout = None if all(z is None for z in zone) else tuple(
                z if z is None or isinstance(z, float) else torch.stack([_fold(z[k], d) for k in range(rows.start,
                                                                                                        rows.stop)])
                for z in zone)
            fold_rows = (lambda s: None if s is None else s[rows].repeat(1, d, 1))  # [D, d*B, H], row r*B + b
            lengths_f = lengths if d == 1 else _fold_lengths(lengths, T, B, d, x.device) \
                if lengths is not None or T % d else None
            y, hn, cn = _run_op(self.mode, _fold(x, d), w, fold_rows(h0), fold_rows(c0), lengths_f, H, 1,
                                self.bidirectional, recurrent_mask=fold_rows(recurrent_mask), grad_clip=grad_clip,
                                zoneout=zoneout)
            x = _unfold(y, d, T)
            if d > 1:
                if lengths is not None:  # a folded sequence with no live step output its padding step
                    x = x * (torch.arange(T, device=x.device).unsqueeze(1) < lengths).unsqueeze(2).to(x.dtype)
                final = _final_rows(lengths, T, B, d, D, x.device)
                hn = torch.stack([hn[i].index_select(0, final[i]) for i in range(D)])
                cn = torch.stack([cn[i].index_select(0, final[i]) for i in range(D)]) if lstm else None
            hns.append(hn)
            cns.append(cn)
            if self.dropout > 0 and self.training and layer < L - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.cat(hns), (torch.cat(cns) if lstm else None)


# ---- dilation: layer l's step t reads step t - d -----------------------------------------------------------
# Step t = k*d + r is step k of the folded sequence (r, b): [T, B] folds into [ceil(T/d), d*B] (row
# r*B + b), zero-padded past T, and the ordinary op runs on it (fastrnn.functional does the same in NumPy).
# Each folded sequence starts from its sequence's initial state; sequence b's final state is that of its
# last step len_b - 1 (residue (len_b - 1) % d) forward, and that of step 0 (residue 0) in reverse.
def _fold(a: Tensor, d: int) -> Tensor:
    """[T, B, F] -> [ceil(T/d), d*B, F]."""
    if d == 1:
        return a
    T, B, F_ = a.shape
    K = -(-T // d)
    if K * d != T:
        a = torch.cat([a, a.new_zeros((K * d - T, B, F_))])
    return a.reshape(K, d * B, F_)


def _unfold(a: Tensor, d: int, T: int) -> Tensor:
    """Inverse of _fold: [K, d*B, F] -> [T, B, F]."""
    if d == 1:
        return a
    K, dB, F_ = a.shape
    return a.reshape(K * d, dB // d, F_)[:T]


def _fold_lengths(lengths: Optional[Tensor], T: int, B: int, d: int, device) -> Tensor:
    """Each folded sequence's length ceil((len_b - r) / d), at least 1 (a sequence no longer than r has
    no step there: its one step is padding, zeroed in the output and never a final state)."""
    full = torch.full((B,), T, dtype=torch.int64, device=device) if lengths is None else lengths
    r = torch.arange(d, device=full.device).unsqueeze(1)
    return torch.clamp(torch.div(full.unsqueeze(0) - r + d - 1, d, rounding_mode="floor"), min=1).reshape(d * B)


def _final_rows(lengths: Optional[Tensor], T: int, B: int, d: int, D: int, device) -> List[Tensor]:
    """Per direction, the folded row [B] that holds each sequence's final state."""
    full = torch.full((B,), T, dtype=torch.int64, device=device) if lengths is None else lengths
    b = torch.arange(B, device=full.device)
    return [((full - 1) % d) * B + b, b][:D]


def _identity_init(w_ih: Tensor, w_hh: Tensor, *biases: Tensor) -> None:
    """init="identity" (IRNN; Le, Jaitly & Hinton 2015): every H x H gate block of W_hh the identity,
    biases zero, W_ih ~ N(0, 0.001^2). Other parameters (peepholes) keep their uniform draw."""
    with torch.no_grad():
        H = w_hh.size(1)
        w_hh.copy_(torch.eye(H, dtype=w_hh.dtype, device=w_hh.device).repeat(w_hh.size(0) // H, 1))
        init.normal_(w_ih, 0.0, 0.001)
        for b in biases:
            b.zero_()


def _check_layer_norm(layer_norm, peephole=False, coupled=False, cell_clip=None) -> None:
    """layer_norm is a bool and (for now) not combined with the pointwise LSTM variants."""
    if not isinstance(layer_norm, bool):
        raise TypeError(f"layer_norm must be a bool, got {type(layer_norm).__name__}")
    if layer_norm and (peephole or coupled or cell_clip is not None):
        raise ValueError("layer_norm=True does not combine with peephole, coupled or cell_clip (got "
                         f"peephole={peephole!r}, coupled={coupled!r}, cell_clip={cell_clip!r})")


def _layer_norm_init(m: torch.nn.Module) -> None:
    """The layer norm's gains ones and the cell norm's bias zeros (the parameters named ln_*)."""
    with torch.no_grad():
        for name, p in m.named_parameters(recurse=False):
            if name.startswith("ln_weight"):
                p.fill_(1.0)
            elif name.startswith("ln_bias"):
                p.zero_()


def _layer_norm(v: Tensor, gain: Tensor, bias: Optional[Tensor]) -> Tensor:
    """LN(v) * gain (+ bias) over the last axis: (v - mean) / sqrt(var + 1e-5), biased variance.
    v [..., N], gain [N]; the bias is added after the norm (haste's LayerNormLSTM)."""
    y = F.layer_norm(v, (v.size(-1),), gain, None, 1e-5)
    return y if bias is None else y + bias


def _variant_repr(m) -> str:
    """The issue-14 options that differ from the defaults, for extra_repr."""
    s = ""
    for name, default in (("peephole", False), ("coupled", False), ("cell_clip", None), ("reset_after", True),
                          ("layer_norm", False), ("init", "uniform")):
        value = getattr(m, name, default)
        if value != default:
            s += f", {name}={value!r}"
    return s


def _composed_step(mode: str, gi: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor], cell: Optional[str] = None,
                   w_ch: Optional[Tensor] = None):
    """One step of the cell in torch ops: gi = W_ih x + b_ih, gh = W_hh h + b_hh [B, G*H] -> (h', c').
    ``cell``/``w_ch``: issue 14's LSTM variants (ops.variant_cell's string, the peepholes [U, H])."""
    opts = dict(ops.split_cell(cell)[1]) if cell else {}
    if mode == "LSTM" and opts and (opts["peephole"] or opts["coupled"] or opts["cell_clip"]):
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
    if mode == "RNN_TANH":
        return torch.tanh(gi + gh), None
    if mode == "RNN_RELU":
        return torch.relu(gi + gh), None
    if mode == "LSTM":
        i, f, g, o = (gi + gh).chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    r_i, z_i, n_i = gi.chunk(3, 1)
    r_h, z_h, n_h = gh.chunk(3, 1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = torch.tanh(n_i + r * n_h)
    return (1 - z) * n + z * h, None


def _gru_reset_before_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor]) -> Tensor:
    """One step of the GRU with reset_after=False (Cho et al. 2014): r, z as torch.nn.GRU's, then
    n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), h' = (1-z)*n + z*h. gi = W_ih x + b_ih [B, 3H]."""
    H = h.size(1)
    w_rz, w_n = w_hh[:2 * H], w_hh[2 * H:]
    b_rz, b_n = (b_hh[:2 * H], b_hh[2 * H:]) if b_hh is not None else (None, None)
    r_i, z_i, n_i = gi.chunk(3, 1)
    r_h, z_h = F.linear(h, w_rz, b_rz).chunk(2, 1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = torch.tanh(n_i + F.linear(r * h, w_n, b_n))
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
                         zoneout=None):
    """The op's forward (x [T, B, I] -> (y [T, B, D*H], hn [L*D, B, H], cn or None)) in composed torch
    ops, for the calls the kernels cannot serve (_kernels_cannot_serve): autograd, forward-mode AD and
    torch.func differentiate it like any torch code. Correct rather than fast (a Python loop over T).
    ``layer_norm`` (Ba et al. 2016, haste's LayerNormLSTM): each weights entry ends with γ_ih, γ_hh
    [G*H] (LSTM: and γ_c, β_c [H]); the products are normalised without their biases, which follow
    the gains; the GRU's reset gate multiplies LN(W_hn h) γ_hh,n + b_hn, its base cell's gh_n.
    Modifiers (the base cells only: the modules refuse them with the variants and layer_norm):
    recurrent_mask [L*D, B, H] multiplies h_{t-1} into W_hh; grad_clip > 0 clamps the
    gradient reaching each h_t and c_t (tensor hooks); zoneout = (d_h, d_c), each None, a float p
    (eval) or a tensor [L*D, T, B, H]: h_t = d_h h_{t-1} + (1 - d_h) h~_t (and c likewise)."""
    T, B = x.size(0), x.size(1)
    D = 2 if bidirectional else 1
    per_entry = len(weights) // (num_layers * D)
    lstm = mode == "LSTM"
    peephole = not layer_norm and bool(cell) and dict(ops.split_cell(cell)[1])["peephole"]  # LN: no peepholes
    state = (num_layers * D, B, hidden_size)
    h0 = x.new_zeros(state) if h0 is None else h0
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
                if reset_before:
                    h_new, c_new = _gru_reset_before_step(xw[t], h, w_hh, b_hh), None
                elif layer_norm:
                    gh = _layer_norm(F.linear(h, w_hh), ln[1], b_hh)  # [B, G*H]
                    if lstm:
                        h_new, c_new = _layer_norm_lstm_step(xw[t] + gh, c, ln[2], ln[3])
                    else:
                        h_new, c_new = _composed_step(mode, xw[t], gh, h, None)
                else:
                    h_in = h if recurrent_mask is None else recurrent_mask[k] * h
                    h_new, c_new = _composed_step(mode, xw[t], F.linear(h_in, w_hh, b_hh), h, c, cell, w_ch)
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


def _lstm_projected(m: "LSTM", x: Tensor, h0, c0, lengths):
    """LSTM with projections (proj_size > 0), which the kernels do not implement: a pure-torch
    fallback written with composed torch ops, so autograd does the backward. It follows
    torch.nn.LSTM exactly (h_t = W_hr (o * tanh(c_t)); outputs past a sequence's length are zero,
    its final state is the one at its own last step) and is correct rather than fast.
    x [T, B, I] -> (y [T, B, D*P], hn [L*D, B, P], cn [L*D, B, H])."""
    T, B = x.size(0), x.size(1)
    D = 2 if m.bidirectional else 1
    P, H = m.proj_size, m.hidden_size
    if h0 is None:
        h0 = x.new_zeros((m.num_layers * D, B, P))
        c0 = x.new_zeros((m.num_layers * D, B, H))
    live = None if lengths is None else torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device)  # [T, B]
    hns, cns = [], []
    for layer in range(m.num_layers):
        outputs = []
        for d in range(D):
            k = layer * D + d
            names = m._all_weights[k]
            w_ih, w_hh, w_hr = getattr(m, names[0]), getattr(m, names[1]), getattr(m, names[-1])
            b_ih, b_hh = (getattr(m, names[2]), getattr(m, names[3])) if m.bias else (None, None)
            w_ch = getattr(m, names[-2]) if m.peephole else None
            xw = F.linear(x, w_ih, b_ih)  # [T, B, G*H], all steps at once
            h, c = h0[k], c0[k]
            ys: List[Optional[Tensor]] = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                # m = o * tanh(c') of the cell (with issue 14's options), then h' = W_hr m
                m_t, c_new = _composed_step("LSTM", xw[t], F.linear(h, w_hh, b_hh), None, c, m._cell, w_ch)
                h_new = F.linear(m_t, w_hr)
                if live is None:
                    h, c, ys[t] = h_new, c_new, h_new
                else:  # a finished sequence keeps its state and outputs zeros
                    alive = live[t].unsqueeze(1)
                    h, c = torch.where(alive, h_new, h), torch.where(alive, c_new, c)
                    ys[t] = h_new * alive
            outputs.append(torch.stack(ys))
            hns.append(h)
            cns.append(c)
        x = torch.cat(outputs, 2) if D == 2 else outputs[0]
        if m.dropout > 0 and m.training and layer < m.num_layers - 1:
            x = F.dropout(x, m.dropout, True)
    return x, torch.stack(hns), torch.stack(cns)


class RNN(_RNNBase):
    """Elman RNN, ``h_t = tanh|relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``; torch.nn.RNN's API."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, init: str = "uniform", zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, weight_dropout: float = 0.0, grad_clip: Optional[float] = None,
                 dilation=1) -> None:
        self.nonlinearity = nonlinearity
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, init=init, zoneout=zoneout, recurrent_dropout=recurrent_dropout,
                         weight_dropout=weight_dropout, grad_clip=grad_clip, dilation=dilation)


class LSTM(_RNNBase):
    """LSTM (gates i, f, g, o); torch.nn.LSTM's API, ``hx = (h_0, c_0)``. proj_size > 0 runs the
    pure-torch fallback ``_lstm_projected``. Keyword-only cell options (issue 14; README "Cell
    variants"): ``peephole`` (parameters ``weight_ch_l{k}{suffix}`` [3, H], rows i, f, o), ``coupled``
    (CIFG: gate blocks f, g, o; i = 1 - f; peepholes [2, H], rows f, o), ``cell_clip`` (c_t clamped to
    [-C, C]), ``init="identity"`` (W_hh blocks = I); ``layer_norm`` (a = LN(W_ih x) γ_ih + LN(W_hh h) γ_hh
    + b_ih + b_hh, h_t = o tanh(LN(c_t) γ_c + β_c); parameters ``ln_weight_ih/hh_l{k}{suffix}`` [4H],
    ``ln_weight_c/ln_bias_c_l{k}{suffix}`` [H]; composed torch ops, not fused)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, peephole: bool = False, coupled: bool = False,
                 cell_clip: Optional[float] = None, layer_norm: bool = False, init: str = "uniform",
                 zoneout: float = 0.0, zoneout_cell: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0, grad_clip: Optional[float] = None, dilation=1) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device=device, dtype=dtype, peephole=peephole, coupled=coupled,
                         cell_clip=cell_clip, layer_norm=layer_norm, init=init, zoneout=zoneout,
                         zoneout_cell=zoneout_cell, recurrent_dropout=recurrent_dropout,
                         weight_dropout=weight_dropout, grad_clip=grad_clip, dilation=dilation)


class GRU(_RNNBase):
    """GRU (gates r, z, n, reset applied after the hidden product); torch.nn.GRU's API. Keyword-only
    ``init="identity"`` (W_hh blocks = I); ``reset_after=False``: the reset gate multiplies h before
    the hidden product (Cho et al. 2014; same parameters), run by composed torch ops (not fused
    yet: correct, not fast); ``layer_norm``: a_ih = LN(W_ih x) γ_ih + b_ih, a_hh = LN(W_hh h) γ_hh + b_hh
    as the cell's two products (parameters ``ln_weight_ih/hh_l{k}{suffix}`` [3H]; composed torch ops,
    not fused; not with reset_after=False)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True, layer_norm: bool = False,
                 init: str = "uniform", zoneout: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0, grad_clip: Optional[float] = None, dilation=1) -> None:
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
        _check_reset_and_layer_norm(reset_after, layer_norm)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, layer_norm=layer_norm, init=init, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout, weight_dropout=weight_dropout, grad_clip=grad_clip,
                         dilation=dilation)
        if not reset_after and self._has_modifiers():
            raise NotImplementedError("the training modifiers (zoneout, recurrent_dropout, weight_dropout, grad_clip, "
                                      "dilation) run the base cells only, not with reset_after=False")
        self.reset_after = reset_after


def _check_reset_and_layer_norm(reset_after: bool, layer_norm) -> None:
    if layer_norm is True and not reset_after:
        raise ValueError("layer_norm=True does not combine with reset_after=False (the layer-normalised GRU "
                         "applies the reset gate after the normalised hidden product)")


# ---- cells: one step, the same op with T = 1 -----------------------------------------------------------
class _CellBase(torch.nn.Module):
    """What RNNCell, LSTMCell and GRUCell share (torch.nn.RNNCellBase's parameters and checks)."""

    _mode = ""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None,
                 dtype=None, *, peephole: bool = False, coupled: bool = False, cell_clip: Optional[float] = None,
                 layer_norm: bool = False, init: str = "uniform") -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if init not in ("uniform", "identity"):
            raise ValueError(f"init must be 'uniform' or 'identity', got {init!r}")
        _check_layer_norm(layer_norm, peephole, coupled, cell_clip)
        self.layer_norm = layer_norm
        lstm = num_chunks == 4
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        # issue 14's options (LSTMCell: peephole, coupled, cell_clip; all: init)
        self.peephole, self.coupled, self.cell_clip, self.init = bool(peephole), bool(coupled), cell_clip, init
        self.reset_after = True  # GRUCell sets it after
        num_chunks = 3 if coupled else num_chunks
        self.weight_ih = Parameter(torch.empty((num_chunks * hidden_size, input_size), **factory_kwargs))
        self.weight_hh = Parameter(torch.empty((num_chunks * hidden_size, hidden_size), **factory_kwargs))
        if bias:
            self.bias_ih = Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
            self.bias_hh = Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if peephole:  # rows (i, f, o), coupled (f, o)
            self.weight_ch = Parameter(torch.empty((2 if coupled else 3, hidden_size), **factory_kwargs))
        if layer_norm:  # as the layers' ln_* parameters, without the _l{k} suffix
            self.ln_weight_ih = Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
            self.ln_weight_hh = Parameter(torch.empty(num_chunks * hidden_size, **factory_kwargs))
            if lstm:
                self.ln_weight_c = Parameter(torch.empty(hidden_size, **factory_kwargs))
                self.ln_bias_c = Parameter(torch.empty(hidden_size, **factory_kwargs))
        self.reset_parameters()

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__) + _variant_repr(self)

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)
        if getattr(self, "init", "uniform") == "identity":
            _identity_init(self.weight_ih, self.weight_hh, *((self.bias_ih, self.bias_hh) if self.bias else ()))
        _layer_norm_init(self)

    def _step(self, mode: str, input: Tensor, states: Optional[Tuple[Tensor, ...]], name: str):
        """Checks (torch.nn's types) and one step: input [B, I] or [I]; states None or a tuple of
        [B, H] or [H] tensors (h, or (h, c) for the LSTM). Returns the new state tuple."""
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if states is not None:
            for idx, s in enumerate(states):
                if s.dim() not in (1, 2):
                    what = f"hx[{idx}]" if mode == "LSTM" else "hidden"
                    raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            if states is not None:
                states = tuple(s.unsqueeze(0) for s in states)
        # torch.nn's cells raise RuntimeError for sizes and dtypes that do not fit
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        # Each parameter read goes through Module.__getattr__ (~0.6 us): once per step.
        w_ih, w_hh = self.weight_ih, self.weight_hh
        if input.dtype != w_ih.dtype:
            raise RuntimeError(f"{name}: input dtype ({input.dtype}) does not match weight dtype ({w_ih.dtype})")
        if states is not None:
            for idx, s in enumerate(states):
                if s.size(0) != input.size(0):
                    raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{idx} batch size "
                                       f"{s.size(0)}")
                if s.size(1) != self.hidden_size:
                    raise RuntimeError(f"hidden{idx} has inconsistent hidden_size: got {s.size(1)}, expected "
                                       f"{self.hidden_size}")
                if s.dtype != input.dtype:
                    raise RuntimeError(f"{name}: hidden{idx} dtype ({s.dtype}) does not match input dtype "
                                       f"({input.dtype})")
        weights = [w_ih, w_hh, self.bias_ih, self.bias_hh] if self.bias else [w_ih, w_hh]
        cell = None
        if self.peephole or self.coupled or self.cell_clip is not None:  # issue 14's LSTM variants
            weights += [self.weight_ch] if self.peephole else []
            cell = ops.variant_cell("lstm", self.peephole, self.coupled, self.cell_clip)
        if self.layer_norm:
            weights += [self.ln_weight_ih, self.ln_weight_hh]
            weights += [self.ln_weight_c, self.ln_bias_c] if mode == "LSTM" else []
        h0 = c0 = None
        if states is not None:
            h0 = states[0].unsqueeze(0)
            c0 = states[1].unsqueeze(0) if mode == "LSTM" else None
        _, hn, cn = _run_op(mode, input.unsqueeze(0), weights, h0, c0, None, self.hidden_size, 1, False, cell,
                            not self.reset_after, self.layer_norm)
        out = (hn[0], cn[0]) if mode == "LSTM" else (hn[0],)
        return out if is_batched else tuple(s.squeeze(0) for s in out)


class RNNCell(_CellBase):
    """One Elman RNN step; torch.nn.RNNCell's API."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, init: str = "uniform") -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype, init=init)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        return self._step(mode, input, None if hx is None else (hx,), "RNNCell")[0]


class LSTMCell(_CellBase):
    """One LSTM step; torch.nn.LSTMCell's API, returns (h', c'). Keyword-only options as LSTM's
    (``peephole`` -> parameter ``weight_ch`` [3, H] / coupled [2, H], ``coupled``, ``cell_clip``, ``init``,
    ``layer_norm`` -> ``ln_weight_ih``, ``ln_weight_hh`` [4H], ``ln_weight_c``, ``ln_bias_c`` [H])."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 peephole: bool = False, coupled: bool = False, cell_clip: Optional[float] = None,
                 layer_norm: bool = False, init: str = "uniform") -> None:
        _check_options("lstm", peephole, coupled, cell_clip)
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype, peephole=peephole,
                         coupled=coupled, cell_clip=cell_clip, layer_norm=layer_norm, init=init)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        return self._step("LSTM", input, None if hx is None else tuple(hx), "LSTMCell")


class GRUCell(_CellBase):
    """One GRU step; torch.nn.GRUCell's API. Keyword-only ``reset_after``, ``layer_norm`` (parameters
    ``ln_weight_ih``, ``ln_weight_hh`` [3H]) and ``init``, as GRU's."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 reset_after: bool = True, layer_norm: bool = False, init: str = "uniform") -> None:
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
        _check_reset_and_layer_norm(reset_after, layer_norm)
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype,
                         layer_norm=layer_norm, init=init)
        self.reset_after = reset_after

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._step("GRU", input, None if hx is None else (hx,), "GRUCell")[0]


# ---- convert ------------------------------------------------------------------------------------------
def _converted(module: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The fastrnn equivalent of a torch.nn recurrent module (sharing its Parameter objects, so an
    optimizer built before keeps working), or None for any other module. Exact types only: a
    subclass may have changed forward."""
    t = type(module)
    nn = torch.nn
    if t in (nn.RNN, nn.LSTM, nn.GRU):
        args = (module.input_size, module.hidden_size, module.num_layers)
        kwargs = dict(bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                      bidirectional=module.bidirectional, device="meta")
        if t is nn.RNN:
            new = RNN(*args, nonlinearity=module.nonlinearity, **kwargs)
        elif t is nn.LSTM:
            new = LSTM(*args, proj_size=module.proj_size, **kwargs)
        else:
            new = GRU(*args, **kwargs)
    elif t in (nn.RNNCell, nn.LSTMCell, nn.GRUCell):
        args = (module.input_size, module.hidden_size, module.bias)
        if t is nn.RNNCell:
            new = RNNCell(*args, nonlinearity=module.nonlinearity, device="meta")
        else:
            new = (LSTMCell if t is nn.LSTMCell else GRUCell)(*args, device="meta")
    else:
        return None
    # Built on the meta device (no memory, no initialisation cost), then given the very parameters.
    names = [name for name, _ in new.named_parameters()]
    old = dict(module.named_parameters())
    if sorted(names) != sorted(old):
        raise ValueError(f"cannot convert {module!r}: parameters {sorted(old)} differ from the expected "
                         f"{sorted(names)}")
    for name in names:
        setattr(new, name, old[name])
    new.train(module.training)
    return new


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every torch.nn.RNN / LSTM / GRU / RNNCell / LSTMCell / GRUCell inside
    ``model`` (at any depth) with the fastrnn.nn equivalent, which uses the very same Parameter
    objects (same values, device, dtype; optimizers keep working) and the same training flag.
    Returns ``model``, or its replacement when ``model`` itself is one of those modules."""
    top = _converted(model)
    if top is not None:
        return top
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _converted(child)
            if new is not None:
                setattr(parent, name, new)
    return model


# ---- training over long streams: truncated BPTT (python/fastrnn/_tbptt.py) -------------------------------
from .._tbptt import TBPTTWindow, tbptt  # noqa: E402

__all__ += ["tbptt", "TBPTTWindow"]
