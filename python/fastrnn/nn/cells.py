"""fastrnn.nn's single-step modules, ``RNNCell``, ``LSTMCell`` and ``GRUCell``: torch.nn's
constructor signatures, parameters and forward contract. A step of a base cell on plain CPU
tensors in eager mode runs the lean single-step path (fastrnn.ops.cell_step: a few checks and one
call into the kernels, bitwise the op's results); everything else (torch.compile, tracing,
transforms, the cell variants and layer norm, CUDA) takes the same op as the layers with T = 1."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Parameter, init

from .. import ops
from ..cell_table import BY_NONLINEARITY, GRU, LSTM, RNN_TANH, TABLE, cell_info, param_shapes
from ..functional import _check_options
from ._options import (_check_layer_norm, _check_reset_and_layer_norm, _identity_init, _layer_norm_init,
                       _variant_repr)
from ._recurrence import _run_op


# ---- cells: one step, the same op with T = 1 -----------------------------------------------------------
class _CellBase(torch.nn.Module):
    """What RNNCell, LSTMCell and GRUCell share (torch.nn.RNNCellBase's parameters and checks)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, cell: str, device=None,
                 dtype=None, *, peephole: bool = False, coupled: bool = False, cell_clip: Optional[float] = None,
                 layer_norm: bool = False, init: str = "uniform") -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if init not in ("uniform", "identity"):
            raise ValueError(f"init must be 'uniform' or 'identity', got {init!r}")
        _check_layer_norm(layer_norm, peephole, coupled, cell_clip)
        self.layer_norm = layer_norm
        info = cell_info(cell)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        # the cell options (LSTMCell: peephole, coupled, cell_clip; all: init)
        self.peephole, self.coupled, self.cell_clip, self.init = bool(peephole), bool(coupled), cell_clip, init
        self.reset_after = True  # GRUCell sets it after
        # (w_ih, w_hh, b_ih, b_hh[, w_ch]) by the cell table's rule; torch.nn's names weight_ih, ..., weight_ch
        shapes = param_shapes(cell, input_size, hidden_size, 1, False, True, peephole, coupled)[0]
        self.weight_ih = Parameter(torch.empty(shapes[0], **factory_kwargs))
        self.weight_hh = Parameter(torch.empty(shapes[1], **factory_kwargs))
        if bias:
            self.bias_ih = Parameter(torch.empty(shapes[2], **factory_kwargs))
            self.bias_hh = Parameter(torch.empty(shapes[3], **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if peephole:  # rows (i, f, o), coupled (f, o)
            self.weight_ch = Parameter(torch.empty(shapes[4], **factory_kwargs))
        if layer_norm:  # as the layers' ln_* parameters, without the _l{k} suffix
            gate_rows = info.gates_with(coupled) * hidden_size
            self.ln_weight_ih = Parameter(torch.empty(gate_rows, **factory_kwargs))
            self.ln_weight_hh = Parameter(torch.empty(gate_rows, **factory_kwargs))
            if info.carries_cell_state:
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

    def _param(self, name: str):
        """A parameter by name: from _parameters (a dict read) unless a parametrization or a hook
        (weight_norm) has replaced it by an attribute, which getattr then finds."""
        p = self._parameters.get(name)
        return p if p is not None else getattr(self, name)

    def _step(self, cell: str, input: Tensor, states: Optional[Tuple[Tensor, ...]], name: str):
        """Checks (torch.nn's types) and one step of ``cell`` (a cell table name): input [B, I] or [I];
        states None or a tuple of [B, H] or [H] tensors (h, or (h, c) for the LSTM). Returns the new
        state tuple."""
        if input.dim() == 2 and not (self.peephole or self.coupled or self.cell_clip is not None or self.layer_norm
                                     or not self.reset_after) and input.shape[1] == self.input_size:
            # The common call first: batched tensors, a base cell. ops.cell_step's own checks (the
            # states' [B, H] and every dtype against the weights) cover torch.nn's remaining ones
            # here; where it does not serve the call (or must raise), the checks below run.
            has_c = TABLE[cell].carries_cell_state
            h = c = None
            if states is not None:
                h = states[0]
                c = states[1] if has_c else None
            params = self._parameters  # a dict read; a parametrization or a hook: the attribute
            w_ih, w_hh = params.get("weight_ih"), params.get("weight_hh")
            b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
            if w_ih is None or w_hh is None or (self.bias and (b_ih is None or b_hh is None)):
                w_ih, w_hh = self._param("weight_ih"), self._param("weight_hh")
                b_ih, b_hh = (self._param("bias_ih"), self._param("bias_hh")) if self.bias else (None, None)
            out = ops.cell_step(cell, input, h, c, w_ih, w_hh, b_ih, b_hh)
            if out is not None:
                return out if has_c else (out,)
        info = TABLE[cell]
        has_c = info.carries_cell_state
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if states is not None:
            for idx, s in enumerate(states):
                if s.dim() not in (1, 2):
                    what = f"hx[{idx}]" if has_c else "hidden"
                    raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            if states is not None:
                states = tuple(s.unsqueeze(0) for s in states)
        # torch.nn's cells raise RuntimeError for sizes and dtypes that do not fit
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        # Each parameter read goes through Module.__getattr__ (~0.4 us): _param reads them once per step.
        w_ih, w_hh = self._param("weight_ih"), self._param("weight_hh")
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
        if not (self.peephole or self.coupled or self.cell_clip is not None or self.layer_norm or not self.reset_after):
            # the base cells: one lean step (ops.cell_step), unless it leaves the call to the op
            b_ih, b_hh = (self._param("bias_ih"), self._param("bias_hh")) if self.bias else (None, None)
            out = ops.cell_step(cell, input, None if states is None else states[0],
                                states[1] if states is not None and has_c else None, w_ih, w_hh, b_ih, b_hh)
            if out is not None:
                out = out if has_c else (out,)
                return out if is_batched else tuple(s.squeeze(0) for s in out)
        weights = [w_ih, w_hh, self.bias_ih, self.bias_hh] if self.bias else [w_ih, w_hh]
        variant = None
        if self.peephole or self.coupled or self.cell_clip is not None:  # the LSTM variants
            weights += [self.weight_ch] if self.peephole else []
            variant = ops.variant_cell(cell, self.peephole, self.coupled, self.cell_clip)
        if self.layer_norm:
            weights += [self.ln_weight_ih, self.ln_weight_hh]
            weights += [self.ln_weight_c, self.ln_bias_c] if has_c else []
        h0 = c0 = None
        if states is not None:
            h0 = states[0].unsqueeze(0)
            c0 = states[1].unsqueeze(0) if has_c else None
        _, hn, cn = _run_op(info.torch_mode, input.unsqueeze(0), weights, h0, c0, None, self.hidden_size, 1, False,
                            variant, not self.reset_after, self.layer_norm)
        out = (hn[0], cn[0]) if has_c else (hn[0],)
        return out if is_batched else tuple(s.squeeze(0) for s in out)


class RNNCell(_CellBase):
    """One Elman RNN step; torch.nn.RNNCell's API."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, init: str = "uniform") -> None:
        super().__init__(input_size, hidden_size, bias, RNN_TANH, device=device, dtype=dtype, init=init)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return self._step(BY_NONLINEARITY[self.nonlinearity].name, input, None if hx is None else (hx,), "RNNCell")[0]


class LSTMCell(_CellBase):
    """One LSTM step; torch.nn.LSTMCell's API, returns (h', c'). Keyword-only options as LSTM's
    (``peephole`` -> parameter ``weight_ch`` [3, H] / coupled [2, H], ``coupled``, ``cell_clip``, ``init``,
    ``layer_norm`` -> ``ln_weight_ih``, ``ln_weight_hh`` [4H], ``ln_weight_c``, ``ln_bias_c`` [H])."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 peephole: bool = False, coupled: bool = False, cell_clip: Optional[float] = None,
                 layer_norm: bool = False, init: str = "uniform") -> None:
        _check_options(LSTM, peephole, coupled, cell_clip)
        super().__init__(input_size, hidden_size, bias, LSTM, device=device, dtype=dtype, peephole=peephole,
                         coupled=coupled, cell_clip=cell_clip, layer_norm=layer_norm, init=init)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        return self._step(LSTM, input, None if hx is None else tuple(hx), "LSTMCell")


class GRUCell(_CellBase):
    """One GRU step; torch.nn.GRUCell's API. Keyword-only ``reset_after``, ``layer_norm`` (parameters
    ``ln_weight_ih``, ``ln_weight_hh`` [3H]) and ``init``, as GRU's."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 reset_after: bool = True, layer_norm: bool = False, init: str = "uniform") -> None:
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
        _check_reset_and_layer_norm(reset_after, layer_norm)
        super().__init__(input_size, hidden_size, bias, GRU, device=device, dtype=dtype,
                         layer_norm=layer_norm, init=init)
        self.reset_after = reset_after

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._step(GRU, input, None if hx is None else (hx,), "GRUCell")[0]
