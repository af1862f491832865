"""The multi-layer step of fastrnn.nn's RNN / LSTM / GRU for step-by-step generation:
``module.stepper()`` returns a :class:`Stepper`, which packs the module's weights once
(:class:`fastrnn.PreparedStack`) and then advances all layers one time step per call, as one call
into the extension on the tensors' data pointers (no autograd, no op dispatch, no per-call weight
checks). This is what a decoding loop (fastrnn.generate) calls hundreds of times per sequence,
where the whole op path of a T = 1 module call costs more than the step itself.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import ops
from .cell_table import BY_TORCH_MODE
from .functional import PreparedStack

__all__ = ["Stepper"]


class Stepper:
    """``y, state = stepper(x, state)``: one time step of every layer of a unidirectional fastrnn.nn
    RNN / LSTM / GRU, on weights packed when the stepper is made (and again on :meth:`refresh`).

    x: ``[B, I]``; state: torch.nn's layout, ``h [L, B, H]`` (GRU, RNN) or ``(h, c)`` (LSTM), None
    for zeros (``LSTM(proj_size=P)``: h ``[L, B, P]``, c ``[L, B, H]``). Returns ``y [B, H]`` (``[B,
    P]`` projected; the top layer's new h: ``y`` is ``h[-1]``, the same memory) and the new state, in
    new tensors; equals the module called on ``x[None]`` (T = 1), without
    dropout. No autograd: the results never require grad (use the module itself to train).
    float32 and float64; ``weight_dtype="float16"`` stores float32 weights as float16 (as
    :class:`fastrnn.PreparedCell`: half the bytes to read per step, float16's rounding of each
    weight). On CUDA tensors it calls the module's fused op with T = 1 (there is no CUDA step
    kernel yet), which is correct but not faster than the module.

    Stale weights: the packed weights are a copy. Each call checks, for every parameter, that the
    module still holds the same Parameter with the same ``_version`` (bumped by every in-place
    change through autograd's view: ``optimizer.step()``, ``p.add_()`` under no_grad,
    ``load_state_dict``) and the same ``data_ptr()`` (``.to()``, ``p.data = ...``); on a change it
    raises RuntimeError asking for :meth:`refresh`, or, with ``auto_refresh=True``, repacks. Raising
    is the default because repacking copies every weight (for large layers as long as many steps),
    which a decoding loop should not do unnoticed. **Writes through ``param.data`` (e.g.
    ``p.data.copy_(w)``, ``p.data[0] = 1``) bypass ``_version`` and cannot be detected: call
    ``refresh()`` after them.**
    """

    def __init__(self, module: torch.nn.Module, weight_dtype: Optional[str] = None, auto_refresh: bool = False):
        if getattr(module, "mode", None) not in BY_TORCH_MODE:
            raise TypeError(f"stepper() needs a fastrnn.nn RNN, LSTM or GRU, got {type(module).__name__}")
        if module.bidirectional:
            raise ValueError("stepper() steps unidirectional stacks only: a bidirectional layer needs the whole "
                             "sequence (its reverse direction starts at the end); got bidirectional=True")
        if not isinstance(auto_refresh, bool):
            raise TypeError(f"auto_refresh must be a bool, got {type(auto_refresh).__name__}")
        self.module, self.weight_dtype, self.auto_refresh = module, weight_dtype, auto_refresh
        self.cell = BY_TORCH_MODE[module.mode].name
        self.input_size, self.hidden_size, self.num_layers = module.input_size, module.hidden_size, module.num_layers
        self._has_c = BY_TORCH_MODE[module.mode].carries_cell_state  # (h, c) states
        # the module's cell options (README "Cell variants"), as PreparedStack takes them
        self._options = {name: getattr(module, name, default) for name, default in
                         (("peephole", False), ("coupled", False), ("cell_clip", None), ("reset_after", True),
                          ("layer_norm", False), ("proj_size", 0))}
        self.proj_size = self._options["proj_size"]
        self.refresh()

    def __repr__(self) -> str:
        wd = f", weight_dtype={self.weight_dtype!r}" if self.weight_dtype else ""
        return f"Stepper({self.cell!r}, input_size={self.input_size}, hidden_size={self.hidden_size}, " \
               f"num_layers={self.num_layers}, dtype={self.dtype}, device={self.device}{wd})"

    def refresh(self) -> None:
        """Pack the module's current weights (after changing them; see the class docstring)."""
        m = self.module
        names = m._flat_weights_names
        params = [m._parameters[name] for name in names]
        dtype, device = params[0].dtype, params[0].device
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"stepper() supports float32 and float64 modules, got {dtype}")
        self.dtype, self.device, self._on_cpu = dtype, device, device.type == "cpu"
        per_layer = len(params) // self.num_layers
        if device.type == "cpu":
            with torch.no_grad():  # zero-copy NumPy views; PreparedStack packs its own copy
                arrays = [p.detach().contiguous().numpy() for p in params]
            self._prepared = PreparedStack(self.cell, [tuple(arrays[l * per_layer:(l + 1) * per_layer])
                                                       for l in range(self.num_layers)], self.weight_dtype,
                                           **self._options)
            self._step_ptrs = self._prepared._stack.step_ptrs
        else:
            if self.weight_dtype is not None:
                raise ValueError(f"weight_dtype={self.weight_dtype!r} is for CPU steppers; the CUDA fallback runs "
                                 "the module's own op on its weights")
            self._prepared = self._step_ptrs = None
        # What the per-call staleness check compares: (name, Parameter, _version, data_ptr).
        self._record = [(name, p, p._version, p.data_ptr()) for name, p in zip(names, params)]

    def _check_fresh(self) -> None:
        held = self.module._parameters
        for name, p, version, ptr in self._record:
            if held.get(name) is not p or p._version != version or p.data_ptr() != ptr:
                if self.auto_refresh:
                    self.refresh()
                    return
                raise RuntimeError(f"the module's parameter {name!r} changed after its stepper packed the weights "
                                   "(in place, replaced or moved): call stepper.refresh() to use the new weights, "
                                   "or make the stepper with auto_refresh=True")

    def _state_tensor(self, name: str, s, B: int, projected: bool = False) -> Tensor:
        """A state tensor checked: [L, B, H], or [L, B, P] for the projected LSTM's h (projected=True)."""
        shape = (self.num_layers, B, self.proj_size if projected else self.hidden_size)
        letter = "P" if projected else "H"
        if not isinstance(s, Tensor):
            raise TypeError(f"{name} must be a tensor [L, B, {letter}] = {list(shape)}, got {type(s).__name__}")
        if s.shape != shape:
            raise ValueError(f"{name} must have shape [L, B, {letter}] = {list(shape)}, got {list(s.shape)}")
        if s.dtype is not self.dtype or not (s.is_cpu if self._on_cpu else s.device == self.device):
            raise TypeError(f"{name} must be {self.dtype} on {self.device} (the module's), got {s.dtype} on {s.device}")
        return s.contiguous()

    def __call__(self, x: Tensor, state=None):
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor [B, I], got {type(x).__name__}")
        if x.dim() != 2 or x.size(0) < 1 or x.size(1) != self.input_size:
            raise ValueError(f"x must have shape [B, I={self.input_size}] with B >= 1, got {list(x.shape)}")
        self._check_fresh()
        if x.dtype is not self.dtype or not (x.is_cpu if self._on_cpu else x.device == self.device):
            raise TypeError(f"x must be {self.dtype} on {self.device} (the module's), got {x.dtype} on {x.device}")
        B = x.size(0)
        if state is None:
            h = c = None
        elif self._has_c:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"an LSTM's state must be a tuple (h, c) of [L, B, H] tensors ([L, B, P], [L, B, H] "
                                f"with proj_size), got {type(state).__name__}")
            h = self._state_tensor("state[0] (h)", state[0], B, projected=self.proj_size > 0)
            c = self._state_tensor("state[1] (c)", state[1], B)
        else:
            h, c = self._state_tensor("state (h)", state, B), None
        if self._step_ptrs is None:  # CUDA: the module's fused op on a one-step sequence
            with torch.no_grad():
                _, h_out, c_out, _ = ops.run_forward(x.unsqueeze(0), [p for _, p, _, _ in self._record], h, c, None,
                                                     ops.variant_cell(self.cell, **self._options), self.hidden_size,
                                                     self.num_layers, False, False)
        else:
            shape = (self.num_layers, B, self.hidden_size)
            h_shape = (self.num_layers, B, self.proj_size or self.hidden_size)  # h's width: P when projected
            if h is None:
                h = torch.zeros(h_shape, dtype=self.dtype)
                c = torch.zeros(shape, dtype=self.dtype) if self._has_c else None
            h_out = torch.empty(h_shape, dtype=self.dtype)
            c_out = torch.empty(shape, dtype=self.dtype) if self._has_c else None
            x = x.contiguous()  # held in a name: its memory must outlive the call
            self._step_ptrs(B, x.data_ptr(), h.data_ptr(), c.data_ptr() if self._has_c else 0,
                            h_out.data_ptr(), c_out.data_ptr() if self._has_c else 0)
        return h_out[-1], ((h_out, c_out) if self._has_c else h_out)
