"""fastrnn.nn's layers, ``RNN``, ``LSTM`` and ``GRU`` (and ``_RNNBase``, what they share): torch.nn's
constructor checks, parameters and forward contract, the recurrence run by the fastrnn op; the
training modifiers' dilation folds the sequence here. See :mod:`fastrnn.nn` for the contract."""
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
from ..cell_table import BY_NONLINEARITY, BY_TORCH_MODE, GRU as _GRU, LSTM as _LSTM, cell_info, param_shapes
from ..functional import _check_options
from ._composed import _kernels_cannot_serve, _permute
from ._options import (_check_layer_norm, _check_reset_and_layer_norm, _identity_init, _layer_norm_init,
                       _variant_repr)
from ._recurrence import _run_op, _run_packed_op, packed_op_serves


def _torch_param_names(info, bias: bool, peephole: bool) -> List[str]:
    """torch.nn's names of a layer's parameters, in the cell table's order: w_ih -> weight_ih, b_ih ->
    bias_ih, ..., then the peepholes weight_ch."""
    names = [n for n, (_, is_bias) in zip(info.param_names, info.param_rules) if bias or not is_bias]
    names += ["w_ch"] if peephole else []
    return [("weight" if n.startswith("w_") else "bias") + n[1:] for n in names]


def _draw_mask_seed() -> Tensor:
    """One 64-bit seed [1] int64 from torch's default generator: the kernels draw a training call's
    recurrent-dropout and zoneout masks from it (so torch.manual_seed reproduces a run)."""
    return torch.randint(-2**63, 2**63 - 1, (1,), dtype=torch.int64)


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
        if mode in BY_TORCH_MODE:  # the cell options: LSTM-only ones refused elsewhere, clear errors for bad values
            _check_options(BY_TORCH_MODE[mode].name, peephole, coupled, cell_clip)
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
        if mode not in BY_TORCH_MODE:
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
        info = BY_TORCH_MODE[mode]
        self._cell = ops.variant_cell(info.name, peephole, coupled, cell_clip, proj_size=proj_size)
        self._set_modifiers(mode, zoneout, zoneout_cell, recurrent_dropout, weight_dropout, grad_clip, dilation)

        D = 2 if bidirectional else 1
        gate_size = info.gates_with(coupled) * hidden_size
        # (w_ih, w_hh[, b_ih, b_hh][, w_ch]) per layer and direction, by the cell table's rule
        shapes = param_shapes(info.name, input_size, hidden_size, num_layers, bidirectional, bias, peephole, coupled,
                              proj_size)
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            for direction in range(D):
                suffix = "_reverse" if direction == 1 else ""
                params = [(f"{name}_l{layer}{suffix}", shape)
                          for name, shape in zip(_torch_param_names(info, bias, peephole), shapes[layer * D + direction])]
                if proj_size > 0:
                    params += [(f"weight_hr_l{layer}{suffix}", (proj_size, hidden_size))]
                if layer_norm:  # gains of the two products' norms [G*H]; LSTM: the cell norm's gain and bias [H]
                    params += [(f"ln_weight_ih_l{layer}{suffix}", (gate_size,)),
                               (f"ln_weight_hh_l{layer}{suffix}", (gate_size,))]
                    if info.carries_cell_state:
                        params += [(f"ln_weight_c_l{layer}{suffix}", (hidden_size,)),
                                   (f"ln_bias_c_l{layer}{suffix}", (hidden_size,))]
                for name, shape in params:
                    setattr(self, name, Parameter(torch.empty(shape, **factory_kwargs)))
                names = [name for name, _ in params]
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def _set_modifiers(self, mode, zoneout, zoneout_cell, recurrent_dropout, weight_dropout, grad_clip, dilation):
        """The training modifiers, checked and kept under the option names."""
        for name, p in (("zoneout", zoneout), ("zoneout_cell", zoneout_cell), ("recurrent_dropout", recurrent_dropout),
                        ("weight_dropout", weight_dropout)):
            if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")
        if zoneout_cell and not BY_TORCH_MODE[mode].carries_cell_state:
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
        packed now (``weight_dtype="float16"``: stored as float16). Unidirectional (with proj_size = P, h
        is P wide); no autograd. After changing the weights call ``stepper.refresh()`` (in-place changes are
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
        info = BY_TORCH_MODE[self.mode]
        lstm, name = info.carries_cell_state, info.torch_module
        D = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            self._check_input(data, True)
            x, lengths = data, None  # [N, I], rows in the packed (length-sorted) order
            # (sorted_indices' size, where it has one, is a shape that torch.compile need not read from data)
            batch = sorted_indices.size(0) if sorted_indices is not None else int(batch_sizes[0])
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D "
                                 + ("tensor instead" if info.nonlinearity else "instead"))  # torch.nn.RNN's wording
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

        if packed:
            y, hn, cn = self._packed_recurrence(data, batch_sizes, batch, h0, c0)
            out = PackedSequence(y, batch_sizes, sorted_indices, unsorted_indices)
            hn = _permute(hn, unsorted_indices)
            cn = _permute(cn, unsorted_indices) if lstm else None
            return out, ((hn, cn) if lstm else hn)
        y, hn, cn = self._recurrence(x, h0, c0, lengths)
        if self.batch_first:
            y = y.transpose(0, 1)
        if not is_batched:
            y = y.squeeze(batch_dim)
            hn = hn.squeeze(1)
            cn = cn.squeeze(1) if lstm else None
        return y, ((hn, cn) if lstm else hn)

    def _packed_recurrence(self, data: Tensor, batch_sizes: Tensor, batch: int, h0, c0):
        """A PackedSequence's data [N, I] (batch_sizes [T], batch = batch_sizes[0]; h0, c0 in its sorted
        order) -> (y [N, D*H] packed alike, hn, cn or None): the kernels on the packed rows where they
        serve the call (packed_op_serves), else the padded recurrence between pad_packed_sequence and
        pack_padded_sequence (the training modifiers, the composed torch ops' calls, other devices)."""
        weights = self._weights()
        if not self._has_modifiers() and packed_op_serves(data, h0, c0, weights, not self.reset_after,
                                                          self.layer_norm, self._cell, self.proj_size):
            def packed_op(x, layer_weights, h0_rows, c0_rows, num_layers):
                return _run_packed_op(self.mode, x, batch_sizes, batch, layer_weights, h0_rows, c0_rows,
                                      self.hidden_size, num_layers, self.bidirectional, self._cell,
                                      not self.reset_after, self.layer_norm)
            return self._layers(packed_op, data, weights, h0, c0)
        x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))  # [T, B, I], the sorted order
        y, hn, cn = self._recurrence(x, h0, c0, lengths)
        return pack_padded_sequence(y, lengths).data, hn, cn

    def _recurrence(self, x: Tensor, h0, c0, lengths):
        """x [T, B, I] -> (y [T, B, D*H], hn, cn or None) by the fastrnn op: one call for the whole
        stack, or (dropout in training mode) one call per layer with dropout between them."""
        weights = self._weights()
        if lengths is not None:
            lengths = lengths.to(device=x.device, dtype=torch.int64)
        if self._has_modifiers():
            return self._modified_recurrence(x, weights, h0, c0, lengths)

        def op(x, layer_weights, h0_rows, c0_rows, num_layers):
            return _run_op(self.mode, x, layer_weights, h0_rows, c0_rows, lengths, self.hidden_size, num_layers,
                           self.bidirectional, self._cell, not self.reset_after, self.layer_norm,
                           proj_size=self.proj_size)
        return self._layers(op, x, weights, h0, c0)

    def _layers(self, op, x: Tensor, weights: List[Tensor], h0, c0):
        """op(x, weights, h0, c0, num_layers) -> (y, hn, cn) for the whole stack in one call, or (dropout
        in training mode) once per layer with dropout on the outputs between them."""
        L = self.num_layers
        if not (self.dropout > 0 and self.training and L > 1):
            return op(x, weights, h0, c0, L)
        D = 2 if self.bidirectional else 1
        per_layer = len(weights) // L
        hns, cns = [], []
        for layer in range(L):
            rows = slice(layer * D, (layer + 1) * D)
            x, hn, cn = op(x, weights[layer * per_layer:(layer + 1) * per_layer],
                           None if h0 is None else h0[rows], None if c0 is None else c0[rows], 1)
            hns.append(hn)
            cns.append(cn)
            if layer < L - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.cat(hns), (torch.cat(cns) if BY_TORCH_MODE[self.mode].carries_cell_state else None)

    def _kernels_draw_masks(self, x: Tensor, h0, c0, weights: List[Tensor]) -> bool:
        """Whether the CPU kernels draw this training call's recurrent-dropout and zoneout masks from
        a seed: there are such masks, the fused CPU kernels run every layer (not the composed ops of
        the reset-before GRU, layer_norm, proj_size) and no layer is dilated (its folded rows are
        not the caller's). Elsewhere (CUDA among them) the masks are drawn as tensors."""
        lstm = BY_TORCH_MODE[self.mode].carries_cell_state
        return (self.training and x.device.type == "cpu"
                and bool(self.recurrent_dropout or self.zoneout or (lstm and self.zoneout_cell))
                and self.reset_after and not self.layer_norm and self.proj_size == 0
                and all(d == 1 for d in self._dilations) and not _kernels_cannot_serve(x, h0, c0, weights))

    def _modified_recurrence(self, x: Tensor, weights: List[Tensor], h0, c0, lengths):
        """The recurrence with the training modifiers, one op call per layer: x [T, B, I] ->
        (y [T, B, D*H], hn, cn or None). Masks come from torch's default generator, in this order:
        the weight-dropout masks (layer by layer, direction by direction), then, where the CPU kernels
        run the call (_kernels_draw_masks), one 64-bit seed from which they draw the recurrent-dropout
        and zoneout masks themselves (Philox4x32-10, stream l*D + d; fastrnn.reference.philox), else
        the recurrent-dropout mask [L*D, B, H] and the zoneout masks [L*D, T, B, H] of h, then of c,
        as tensors; in eval mode none is drawn.
        (With proj_size = P, h is P wide: the recurrent and h's zoneout masks are [.., P], c's [.., H].)
        Every cell variant runs with them: the fused op where the kernels serve it (the LSTM's
        peephole / coupled / cell_clip; proj_size with grad_clip and weight dropout only), else the
        composed torch ops (_composed_recurrence: the reset-before GRU, layer_norm, proj_size with
        recurrent dropout or zoneout), which apply the same masks in the same places."""
        T, B, H, L = x.size(0), x.size(1), self.hidden_size, self.num_layers
        P = self.proj_size if self.proj_size > 0 else H  # the width of h
        D = 2 if self.bidirectional else 1
        lstm = BY_TORCH_MODE[self.mode].carries_cell_state
        per_entry = len(weights) // (L * D)
        if self.training and self.weight_dropout > 0:  # DropConnect: gradients reach W_hh through the mask
            weights = list(weights)
            for k in range(L * D):
                weights[k * per_entry + 1] = F.dropout(weights[k * per_entry + 1], self.weight_dropout, True)
        recurrent_mask = None
        seeded = None  # (seed, stream, zoneout, zoneout_cell, recurrent_dropout) of layer 0
        if self._kernels_draw_masks(x, h0, c0, weights):
            seeded = (_draw_mask_seed(), 0, self.zoneout, self.zoneout_cell if lstm else 0.0, self.recurrent_dropout)
        elif self.training and self.recurrent_dropout > 0:
            keep = 1.0 - self.recurrent_dropout
            recurrent_mask = x.new_empty((L * D, B, P)).bernoulli_(keep).div_(keep)
        zone = []
        for p, width in ((self.zoneout, P), (self.zoneout_cell if lstm else 0.0, H)):
            # training: d ~ Bernoulli(p) per element and step; eval: d = p (h = p h_prev + (1 - p) h~)
            zone.append(None if not p or seeded is not None else
                        x.new_empty((L * D, T, B, width)).bernoulli_(p) if self.training else p)
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
                                self.bidirectional, self._cell, not self.reset_after, self.layer_norm,
                                recurrent_mask=fold_rows(recurrent_mask), grad_clip=grad_clip, zoneout=zoneout,
                                proj_size=self.proj_size,
                                seeded=None if seeded is None else (seeded[0], layer * D) + seeded[2:])
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


class RNN(_RNNBase):
    """Elman RNN, ``h_t = tanh|relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``; torch.nn.RNN's API."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, init: str = "uniform", zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, weight_dropout: float = 0.0, grad_clip: Optional[float] = None,
                 dilation=1) -> None:
        self.nonlinearity = nonlinearity
        if not isinstance(nonlinearity, str) or nonlinearity not in BY_NONLINEARITY:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(BY_NONLINEARITY[nonlinearity].torch_mode, input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, device=device, dtype=dtype, init=init, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout,
                         weight_dropout=weight_dropout, grad_clip=grad_clip, dilation=dilation)


class LSTM(_RNNBase):
    """LSTM (gates i, f, g, o); torch.nn.LSTM's API, ``hx = (h_0, c_0)``. proj_size = P > 0: torch's
    projection h_t = W_hr (o * tanh(c_t)) (``weight_hr_l{k}{suffix}`` [P, H]), fused in the CPU kernels
    (16-bit types and grad_clip / weight_dropout included) and the CUDA kernels (every storage type;
    with zoneout / recurrent_dropout, grad_clip on CUDA, and other devices: composed torch ops), also with
    the options below. Keyword-only cell options (README "Cell variants"):
    ``peephole`` (parameters ``weight_ch_l{k}{suffix}`` [3, H], rows i, f, o), ``coupled`` (CIFG: gate
    blocks f, g, o; i = 1 - f; peepholes [2, H], rows f, o), ``cell_clip`` (c_t clamped to
    [-C, C]), ``init="identity"`` (W_hh blocks = I); ``layer_norm`` (a = LN(W_ih x) γ_ih + LN(W_hh h) γ_hh
    + b_ih + b_hh, h_t = o tanh(LN(c_t) γ_c + β_c); parameters ``ln_weight_ih/hh_l{k}{suffix}`` [4H],
    ``ln_weight_c/ln_bias_c_l{k}{suffix}`` [H]; fused on the CPU, composed torch ops elsewhere)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, peephole: bool = False, coupled: bool = False,
                 cell_clip: Optional[float] = None, layer_norm: bool = False, init: str = "uniform",
                 zoneout: float = 0.0, zoneout_cell: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0, grad_clip: Optional[float] = None, dilation=1) -> None:
        super().__init__(cell_info(_LSTM).torch_mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device=device, dtype=dtype, peephole=peephole, coupled=coupled,
                         cell_clip=cell_clip, layer_norm=layer_norm, init=init, zoneout=zoneout,
                         zoneout_cell=zoneout_cell, recurrent_dropout=recurrent_dropout,
                         weight_dropout=weight_dropout, grad_clip=grad_clip, dilation=dilation)


class GRU(_RNNBase):
    """GRU (gates r, z, n, reset applied after the hidden product); torch.nn.GRU's API. Keyword-only
    ``init="identity"`` (W_hh blocks = I); ``reset_after=False``: the reset gate multiplies h before
    the hidden product (Cho et al. 2014; same parameters); ``layer_norm``: a_ih = LN(W_ih x) γ_ih + b_ih,
    a_hh = LN(W_hh h) γ_hh + b_hh as the cell's two products (parameters ``ln_weight_ih/hh_l{k}{suffix}``
    [3H]; not with reset_after=False). Both run fused on the CPU, reset_after=False on CUDA too, and
    otherwise as composed torch ops."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, reset_after: bool = True, layer_norm: bool = False,
                 init: str = "uniform", zoneout: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0, grad_clip: Optional[float] = None, dilation=1) -> None:
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
        _check_reset_and_layer_norm(reset_after, layer_norm)
        super().__init__(cell_info(_GRU).torch_mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, layer_norm=layer_norm, init=init, zoneout=zoneout,
                         recurrent_dropout=recurrent_dropout, weight_dropout=weight_dropout, grad_clip=grad_clip,
                         dilation=dilation)
        self.reset_after = reset_after
