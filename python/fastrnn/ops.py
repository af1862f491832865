"""fastrnn's kernels as PyTorch custom operators (namespace ``fastrnn``):
``torch.ops.fastrnn.rnn_forward`` and ``torch.ops.fastrnn.rnn_backward``, each with a fake (meta)
implementation so that ``torch.compile`` traces them without a graph break (also with a symbolic
sequence length), and ``register_autograd`` on the forward whose backward calls the backward op.
Outputs are allocated by torch; on the CPU the compiled kernels write into them through zero-copy
NumPy views (the extension is not linked against libtorch). This is the only module that calls
``fastrnn._core`` with torch tensors; :mod:`fastrnn.nn` builds the torch.nn-compatible modules on it.

The ops are declared with ``torch.library``'s define / impl / register_fake / register_autograd,
not the ``@torch.library.custom_op`` decorator: that one wraps every kernel so that its first call
imports ``torch._dynamo`` (1.3 s here, before the first forward returned), a cost torch.nn's own
modules never pay outside ``torch.compile``.

    y, hn, cn, reserve = torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lengths, cell, hidden_size,
                                                       num_layers, bidirectional, training)

x [T, B, I] time-major; weights a flat list of num_layers * D entries' tensors in PyTorch's
``_flat_weights`` order (w_ih, w_hh[, b_ih, b_hh] per layer and direction, D = 2 if bidirectional;
with or without biases, told apart by the list's length); h0, c0 [L*D, B, H] or None (zeros);
lengths int64 [B] in [1, T] or None. Returns y [T, B, D*H], hn [L*D, B, H], cn [L*D, B, H] (LSTM;
an empty tensor otherwise) and reserve [T, B, R] (what backward needs; empty unless ``training``).
The reserve's size is T*B*R with R independent of T and B, so its fake shape follows a dynamic T.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ._loader import _core
from .types import CELLS

_CELL_ID = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
_DTYPES = (torch.float32, torch.float64)

__all__ = ["rnn_forward", "rnn_backward", "run_forward"]

_LIB = torch.library.Library("fastrnn", "DEF")
_LIB.define("rnn_forward(Tensor x, Tensor[] weights, Tensor? h0, Tensor? c0, Tensor? lengths, str cell, "
            "SymInt hidden_size, SymInt num_layers, bool bidirectional, bool training) "
            "-> (Tensor, Tensor, Tensor, Tensor)")
_LIB.define("rnn_backward(Tensor x, Tensor[] weights, Tensor? h0, Tensor? c0, Tensor? lengths, Tensor reserve, "
            "Tensor dy, Tensor? dhn, Tensor? dcn, str cell, SymInt hidden_size, SymInt num_layers, "
            "bool bidirectional) -> (Tensor, Tensor, Tensor, Tensor[])")
# One kernel for every device, as custom_op registers it: it checks the device itself and names it
# in its error (the fake implementations below serve meta and fake tensors).
_KERNEL_KEY = "CompositeExplicitAutograd"


def _check(x: Tensor, weights: List[Tensor], cell: str, num_layers: int, bidirectional: bool) -> int:
    """Checks what the kernels cannot check on NumPy views (the cell, the dtype, the device, the
    weights' count); returns the number of tensors per layer and direction (2 or 4). Shapes are
    checked by the extension, with messages that name the argument."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"fastrnn supports float32 and float64 only, got input of dtype {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [T, B, I] (time-major), got shape {tuple(x.shape)}")
    entries = num_layers * (2 if bidirectional else 1)
    if len(weights) not in (2 * entries, 4 * entries):
        raise ValueError(f"weights must hold 2 or 4 tensors per layer and direction ({2 * entries} or "
                         f"{4 * entries}), got {len(weights)}")
    for i, w in enumerate(weights):
        if w.dtype != x.dtype:
            raise TypeError(f"weights[{i}] must have the input's dtype {x.dtype}, got {w.dtype}")
        if w.device != x.device:
            raise RuntimeError(f"weights[{i}] is on {w.device} but the input is on {x.device}")
    return len(weights) // entries


def _reserve_per_row(cell: str, hidden_size: int, num_layers: int, bidirectional: bool) -> int:
    # The reserve holds T*B rows of R values; R does not depend on I (it is 1 here), T or B.
    return _core.reserve_size(_CELL_ID[cell], 1, 1, 1, hidden_size, num_layers, bidirectional)


def _np(t: Optional[Tensor]):
    """A NumPy view of a CPU tensor (a copy only if it is not contiguous); None stays None.
    numpy(force=True) detaches in one call (a third cheaper than detach().contiguous().numpy(),
    which a small step pays ~30 times); it shares memory with every tensor the ops allocate."""
    if t is None:
        return None
    a = t.numpy(force=True)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _grouped(arrays: list, per_entry: int) -> list:
    # flat [w_ih, w_hh, (b_ih, b_hh), w_ih, ...] -> [(w_ih, w_hh[, b_ih, b_hh]), ...] as the extension takes
    return [tuple(arrays[k:k + per_entry]) for k in range(0, len(arrays), per_entry)]


# ---- CUDA ---------------------------------------------------------------------------------------
# fastrnn._core.cuda takes data pointers (cuda/bindings_cuda.cpp); _CudaEntryPoints puts it behind
# the CPU entry points' argument order so that the ops call both the same way. NOT YET RUN ON A
# GPU (no GPU was lent to the sessions that wrote it; issue 5): the CUDA tests in
# tests/test_cuda.py exercise the kernels through _core.cuda directly.
_CUDA_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                torch.bfloat16: "bfloat16"}


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _ptrs(grouped: list) -> list:
    return [tuple(_ptr(t) for t in entry) for entry in grouped]


class _CudaEntryPoints:
    def __init__(self, cuda, device):
        self._cuda, self._device = cuda, device

    def forward(self, cell, x, weights, h0, c0, lengths, y, hn, cn, reserve, H, L, bidirectional):
        T, B, I = x.shape
        with torch.cuda.device(self._device):  # the kernels run on the current device
            self._cuda.forward(cell, _CUDA_DTYPES[x.dtype], T, B, I, H, L, bidirectional, _ptr(x), _ptrs(weights),
                               _ptr(h0), _ptr(c0), _ptr(lengths), _ptr(y), _ptr(hn), _ptr(cn), _ptr(reserve),
                               torch.cuda.current_stream().cuda_stream)

    def backward(self, cell, x, weights, h0, c0, lengths, reserve, dy, dhn, dcn, dx, dh0, dc0, grads, H, L,
                 bidirectional):
        T, B, I = x.shape
        with torch.cuda.device(self._device):
            self._cuda.backward(cell, _CUDA_DTYPES[x.dtype], T, B, I, H, L, bidirectional, _ptr(x), _ptrs(weights),
                                _ptr(h0), _ptr(c0), _ptr(lengths), _ptr(reserve), _ptr(dy), _ptr(dhn), _ptr(dcn),
                                _ptr(dx), _ptr(dh0), _ptr(dc0), _ptrs(grads), torch.cuda.current_stream().cuda_stream)


def _kernels(x: Tensor):
    """(entry points, tensor converter) for x's device: NumPy views for the CPU kernels; for CUDA,
    contiguous tensors on x's device (lengths too: the kernels read them on the device)."""
    if x.device.type == "cpu":
        return _core, _np
    if x.device.type == "cuda":
        cuda = getattr(_core, "cuda", None)
        if cuda is None or not hasattr(cuda, "forward"):
            raise RuntimeError("fastrnn was built without CUDA kernels (no nvcc at install time): run the "
                               "module on the CPU, or reinstall with FASTRNN_WITH_CUDA=ON on a machine with nvcc")
        return _CudaEntryPoints(cuda, x.device), (
            lambda t: None if t is None else t.detach().to(x.device).contiguous())
    raise RuntimeError(f"fastrnn runs on CPU and CUDA tensors, got a tensor on {x.device}")


# ---- forward --------------------------------------------------------------------------------------
def _rnn_forward_kernel(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                        lengths: Optional[Tensor], cell: str, hidden_size: int, num_layers: int,
                        bidirectional: bool, training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    per_entry = _check(x, weights, cell, num_layers, bidirectional)
    if x.numel() == 0:
        raise ValueError(f"input must not be empty (every size >= 1), got shape {tuple(x.shape)}")
    y, hn, cn, reserve = _forward_outputs(x, cell, hidden_size, num_layers, bidirectional, training)
    core, arr = _kernels(x)
    lstm = cell == "lstm"
    core.forward(_CELL_ID[cell], arr(x), _grouped([arr(w) for w in weights], per_entry), arr(h0),
                 arr(c0) if lstm else None, arr(lengths), arr(y), arr(hn), arr(cn) if lstm else None,
                 arr(reserve.view(-1)) if training else None, hidden_size, num_layers, bidirectional)
    return y, hn, cn, reserve


def _forward_outputs(x, cell, hidden_size, num_layers, bidirectional, training):
    """The four outputs, allocated (also the fake implementation's shapes). The kernels write every
    element of each, dead (past-the-end) rows of the reserve included."""
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    state = (num_layers * D, B, hidden_size)
    y = x.new_empty((T, B, D * hidden_size))
    hn = x.new_empty(state)
    cn = x.new_empty(state) if cell == "lstm" else x.new_empty((0,))
    R = _reserve_per_row(cell, hidden_size, num_layers, bidirectional)
    reserve = x.new_empty((T, B, R)) if training else x.new_empty((0,))
    return y, hn, cn, reserve


torch.library.impl("fastrnn::rnn_forward", _KERNEL_KEY, _rnn_forward_kernel, lib=_LIB)


@torch.library.register_fake("fastrnn::rnn_forward", lib=_LIB)
def _(x, weights, h0, c0, lengths, cell, hidden_size, num_layers, bidirectional, training):
    _check(x, weights, cell, num_layers, bidirectional)
    return _forward_outputs(x, cell, hidden_size, num_layers, bidirectional, training)


# ---- backward -------------------------------------------------------------------------------------
def _rnn_backward_kernel(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                         lengths: Optional[Tensor], reserve: Tensor, dy: Tensor, dhn: Optional[Tensor],
                         dcn: Optional[Tensor], cell: str, hidden_size: int, num_layers: int,
                         bidirectional: bool) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    """Gradients (dx [T, B, I], dh0 [L*D, B, H], dc0 (LSTM; else empty), dweights like weights) of a
    training ``rnn_forward``: x, weights, h0, c0, lengths and reserve exactly as forward saw and
    returned them; dy [T, B, D*H]; dhn, dcn [L*D, B, H] or None (zero)."""
    per_entry = _check(x, weights, cell, num_layers, bidirectional)
    if reserve.numel() == 0:
        raise RuntimeError("fastrnn::rnn_backward needs the reserve of a forward run with training=True; "
                           "this forward ran with training=False and saved nothing")
    dx, dh0, dc0, dweights = _backward_outputs(x, weights, cell, hidden_size, num_layers, bidirectional)
    core, arr = _kernels(x)
    lstm = cell == "lstm"
    core.backward(_CELL_ID[cell], arr(x), _grouped([arr(w) for w in weights], per_entry), arr(h0),
                  arr(c0) if lstm else None, arr(lengths), arr(reserve.view(-1)), arr(dy), arr(dhn),
                  arr(dcn) if lstm else None, arr(dx), arr(dh0), arr(dc0) if lstm else None,
                  _grouped([arr(g) for g in dweights], per_entry), hidden_size, num_layers, bidirectional)
    return dx, dh0, dc0, dweights


def _backward_outputs(x, weights, cell, hidden_size, num_layers, bidirectional):
    B = x.shape[1]
    state = (num_layers * (2 if bidirectional else 1), B, hidden_size)
    dc0 = x.new_empty(state) if cell == "lstm" else x.new_empty((0,))
    # new_empty, not empty_like: empty_like keeps a transposed input's strides, and the kernels
    # write outputs in place, so every output must be contiguous.
    return x.new_empty(x.shape), x.new_empty(state), dc0, [w.new_empty(w.shape) for w in weights]


torch.library.impl("fastrnn::rnn_backward", _KERNEL_KEY, _rnn_backward_kernel, lib=_LIB)


@torch.library.register_fake("fastrnn::rnn_backward", lib=_LIB)
def _(x, weights, h0, c0, lengths, reserve, dy, dhn, dcn, cell, hidden_size, num_layers, bidirectional):
    _check(x, weights, cell, num_layers, bidirectional)
    return _backward_outputs(x, weights, cell, hidden_size, num_layers, bidirectional)


# ---- autograd -------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, weights, h0, c0, lengths, cell, hidden_size, num_layers, bidirectional, training = inputs
    ctx.mark_non_differentiable(output[3])  # the reserve
    ctx.save_for_backward(x, h0, c0, lengths, output[3], *weights)
    ctx.config = (cell, hidden_size, num_layers, bidirectional, training)


def _forward_backward(ctx, dy, dhn, dcn, _dreserve):
    cell, hidden_size, num_layers, bidirectional, training = ctx.config
    if not training:
        raise RuntimeError("fastrnn::rnn_forward ran with training=False, so it saved nothing for backward; "
                           "call it with training=True when gradients are needed")
    x, h0, c0, lengths, reserve, *weights = ctx.saved_tensors
    lstm = cell == "lstm"
    # With create_graph (grad mode on) through the op, whose own backward raises a clear error.
    backward = torch.ops.fastrnn.rnn_backward
    if not torch.is_grad_enabled() and _plain_eager(x, h0, c0, dy, dhn, dcn, *weights):
        backward = _rnn_backward_kernel
    dx, dh0, dc0, dweights = backward(x, weights, h0, c0, lengths, reserve, dy, dhn, dcn if lstm else None, cell,
                                      hidden_size, num_layers, bidirectional)
    return (dx, list(dweights), dh0 if h0 is not None else None, dc0 if (lstm and c0 is not None) else None,
            None, None, None, None, None, None)


torch.library.register_autograd("fastrnn::rnn_forward", _forward_backward, setup_context=_setup_context, lib=_LIB)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastrnn does not support double backward (differentiating fastrnn::rnn_backward, e.g. "
                       "torch.autograd.grad(..., create_graph=True) followed by another backward); use torch.nn "
                       "for higher-order gradients")


torch.library.register_autograd("fastrnn::rnn_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None, lib=_LIB)

rnn_forward = torch.ops.fastrnn.rnn_forward
rnn_backward = torch.ops.fastrnn.rnn_backward


# ---- the eager path -------------------------------------------------------------------------------
# A call through the dispatcher and torch.library's autograd wrapper (which flattens and refills
# every argument list in Python) cost more than the kernel for small calls: an LSTMCell step of
# B=8, H=64 took 74-78 us against torch.nn's 43-46, a training step 372 against 150. Plain eager
# calls on ordinary tensors therefore call the same kernels directly, with the op's own autograd
# functions (_setup_context, _forward_backward) in a torch.autograd.Function. Everything else
# (torch.compile, FakeTensor, dispatch modes, functorch transforms, tensor subclasses) takes the op.
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _plain_eager(*tensors) -> bool:
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._are_functorch_transforms_active()
            and all(t is None or type(t) in _PLAIN_TYPES for t in tensors))


class _EagerForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, lengths, config, *weights):
        outputs = _rnn_forward_kernel(x, list(weights), h0, c0, lengths, *config)
        _setup_context(ctx, (x, list(weights), h0, c0, lengths, *config), outputs)
        return outputs

    @staticmethod
    def backward(ctx, dy, dhn, dcn, dreserve):
        dx, dweights, dh0, dc0, *_ = _forward_backward(ctx, dy, dhn, dcn, dreserve)
        return (dx, dh0, dc0, None, None, *dweights)


def run_forward(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                lengths: Optional[Tensor], cell: str, hidden_size: int, num_layers: int, bidirectional: bool,
                training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``torch.ops.fastrnn.rnn_forward`` with the same arguments and results, the same gradients and
    errors, without the op's call overhead in plain eager mode (what :mod:`fastrnn.nn` calls)."""
    if not _EAGER_PATH or not _plain_eager(x, h0, c0, lengths, *weights):
        return torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lengths, cell, hidden_size, num_layers,
                                             bidirectional, training)
    if not training:  # nothing to differentiate (the caller's _needs_grad said so)
        return _rnn_forward_kernel(x, weights, h0, c0, lengths, cell, hidden_size, num_layers, bidirectional, False)
    return _EagerForward.apply(x, h0, c0, lengths, (cell, hidden_size, num_layers, bidirectional, training), *weights)


_EAGER_PATH = True  # tests turn it off to compare the two paths
