"""fastrnn's kernels as PyTorch custom operators (namespace ``fastrnn``):
``torch.ops.fastrnn.rnn_forward`` and ``torch.ops.fastrnn.rnn_backward``, each with a fake (meta)
implementation so that ``torch.compile`` traces them without a graph break (also with a symbolic
sequence length), and ``register_autograd`` on the forward whose backward calls the backward op.
Outputs are allocated by torch; the compiled kernels (CPU and CUDA alike) take the tensors' data
pointers, after this module has checked every shape, dtype and device in Python (the extension is
not linked against libtorch). This is the only module that calls ``fastrnn._core`` with torch
tensors; :mod:`fastrnn.nn` builds the torch.nn-compatible modules on it. ``cell_step`` (at the
end) is the cells' lean single-step path beside the op.

The ops are declared with ``torch.library``'s define / impl / register_fake / register_autograd,
not the ``@torch.library.custom_op`` decorator: that one wraps every kernel so that its first call
imports ``torch._dynamo`` (1.3 s here, before the first forward returned), a cost torch.nn's own
modules never pay outside ``torch.compile``.

    y, hn, cn, reserve = torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lengths, cell, hidden_size,
                                                       num_layers, bidirectional, training)

``cell`` is a cell name or, for the variants, the name with its options:
``"lstm+peephole+coupled+cell_clip=0.5+proj_size=P"``, ``"gru+reset_before"`` (GRU(reset_after=False)),
``"lstm+layer_norm"`` / ``"gru+layer_norm"`` (``variant_cell`` builds it; order free). With
``peephole`` each layer and direction's tensors continue with w_ch [U, H] (U = 3, coupled 2); ``coupled``
has G = 3 gate blocks; with ``layer_norm`` they end with ln_weight_ih, ln_weight_hh [G*H] and, for
the LSTM, ln_weight_c, ln_bias_c [H]; ``proj_size=P`` (torch.nn.LSTM's projection) ends each with
w_hr [P, H], w_hh is [G*H, P], h (h0, hn, y's D*P columns, layer inputs above the first) P wide, c
H wide. The LSTM variants, the reset-before GRU, layer norm and proj_size run on the CPU and on
CUDA (layer norm on CUDA in float32/float64: 16-bit storage is a ValueError there; proj_size in
every storage type on both), proj_size without the training modifiers except grad_clip on the CPU
(NotImplementedError otherwise; fastrnn.nn runs composed torch ops for those calls).

x [T, B, I] time-major; weights a flat list of num_layers * D entries' tensors in PyTorch's
``_flat_weights`` order (w_ih, w_hh[, b_ih, b_hh] per layer and direction, D = 2 if bidirectional;
with or without biases, told apart by the list's length); h0, c0 [L*D, B, H] or None (zeros);
lengths int64 [B] in [1, T] or None. Returns y [T, B, D*H], hn [L*D, B, H], cn [L*D, B, H] (LSTM;
an empty tensor otherwise) and reserve [T, B, R] (what backward needs; empty unless ``training``).
The reserve's size is T*B*R with R independent of T and B, so its fake shape follows a dynamic T.

Training modifiers the kernels run (fastrnn.nn documents them): ``recurrent_mask``
[L*D, B, H] multiplies h_{t-1} where it enters W_hh (recurrent dropout; None: none), and
``grad_clip`` C > 0 clamps the total gradient reaching each h_t (and c_t) to [-C, C] in backward
(0: off), and ``zoneout_h``, ``zoneout_c`` [L*D, T, B, H] (d: h_t = d h_{t-1} + (1 - d) h~_t; None:
none), arguments of ``torch.ops.fastrnn.rnn_forward_modified`` (rnn_forward's arguments and these
four) and of rnn_backward. With zoneout the training reserve holds h~ (and c~) after the kernels'
own part: R grows by L*D*H per zoned state. Both back ends run them (CPU and CUDA kernels), with the
base cells and the LSTM variants' cell strings except proj_size; not with the reset-before GRU or
layer norm (NotImplementedError: fastrnn.nn runs those combinations as composed torch ops).

Seeded masks (CPU): ``torch.ops.fastrnn.rnn_forward_seeded`` takes rnn_forward_modified's arguments
and ``seed`` (an int64 tensor of one element), ``stream`` (the generator stream of layer 0,
direction 0; layer l, direction d uses stream + l*D + d), ``zoneout``, ``zoneout_cell`` and
``recurrent_dropout`` (p; 0: off): the kernels draw those masks themselves from Philox4x32-10
(csrc/philox.h; fastrnn.reference.philox.seeded_masks materialises them) in the fused step and
again in backward, and rnn_backward takes the same five. A mask tensor given as well wins.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ._loader import _core
from .cell_table import CELL_ID, TABLE, carries_cell_state, cell_info, param_shapes
from .types import CELLS

_CELL_ID = CELL_ID  # the entry points' cell ids (the cell table)
# float16 / bfloat16: 16-bit storage with float32 accumulation and state, on the CPU (README, "16-bit
# types") and on CUDA (cuda/dtypes.h).
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

__all__ = ["rnn_forward", "rnn_forward_packed", "rnn_backward", "run_forward", "run_forward_packed"]

_LIB = torch.library.Library("fastrnn", "DEF")
_FORWARD_ARGS = ("Tensor x, Tensor[] weights, Tensor? h0, Tensor? c0, Tensor? lengths, str cell, SymInt hidden_size, "
                 "SymInt num_layers, bool bidirectional, bool training")
_LIB.define(f"rnn_forward({_FORWARD_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)")
# The same with the training modifiers the kernels run, an op of its own: an op's autograd
# wrapper wants backward to return one gradient per argument the caller passed, and setup_context
# cannot tell defaulted arguments from given ones.
_LIB.define(f"rnn_forward_modified({_FORWARD_ARGS}, Tensor? recurrent_mask, float grad_clip, Tensor? zoneout_h, "
            "Tensor? zoneout_c) -> (Tensor, Tensor, Tensor, Tensor)")
# On a PackedSequence's layout (see rnn_forward_packed below): x [N, I] packed, batch_sizes [T] in the
# lengths' place, and the batch size, which the data does not give the fake implementation.
_LIB.define("rnn_forward_packed(Tensor x, Tensor[] weights, Tensor? h0, Tensor? c0, Tensor batch_sizes, str cell, "
            "SymInt hidden_size, SymInt num_layers, bool bidirectional, bool training, SymInt batch_size) "
            "-> (Tensor, Tensor, Tensor, Tensor)")
# ... and with masks the kernels draw from a seed (CPU): an op of its own for the same reason.
_LIB.define(f"rnn_forward_seeded({_FORWARD_ARGS}, Tensor? recurrent_mask, float grad_clip, Tensor? zoneout_h, "
            "Tensor? zoneout_c, Tensor seed, int stream, float zoneout, float zoneout_cell, float recurrent_dropout) "
            "-> (Tensor, Tensor, Tensor, Tensor)")
_LIB.define("rnn_backward(Tensor x, Tensor[] weights, Tensor? h0, Tensor? c0, Tensor? lengths, Tensor reserve, "
            "Tensor dy, Tensor? dhn, Tensor? dcn, str cell, SymInt hidden_size, SymInt num_layers, "
            "bool bidirectional, Tensor? recurrent_mask=None, float grad_clip=0.0, Tensor? zoneout_h=None, "
            "Tensor? zoneout_c=None, Tensor? batch_sizes=None, Tensor? seed=None, int stream=0, float zoneout=0.0, "
            "float zoneout_cell=0.0, float recurrent_dropout=0.0) -> (Tensor, Tensor, Tensor, Tensor[])")
_FORWARD_OPS = ("rnn_forward", "rnn_forward_modified", "rnn_forward_packed", "rnn_forward_seeded")
# One kernel for every device, as custom_op registers it: it checks the device itself and names it
# in its error (the fake implementations below serve meta and fake tensors).
_KERNEL_KEY = "CompositeExplicitAutograd"


_NO_OPTIONS = (("peephole", False), ("coupled", False), ("cell_clip", 0.0), ("reset_after", True),
               ("layer_norm", False), ("proj_size", 0))


def variant_cell(cell: str, peephole: bool = False, coupled: bool = False, cell_clip: Optional[float] = None,
                 reset_after: bool = True, layer_norm: bool = False, proj_size: int = 0) -> str:
    """The op's ``cell`` string of a cell with its variant options ("lstm+peephole+cell_clip=0.5",
    "gru+reset_before", "lstm+layer_norm", "lstm+proj_size=16")."""
    parts = [cell] + (["peephole"] if peephole else []) + (["coupled"] if coupled else [])
    if cell_clip is not None:
        parts.append(f"cell_clip={float(cell_clip)!r}")
    if not reset_after:
        parts.append("reset_before")
    if layer_norm:
        parts.append("layer_norm")
    if proj_size:
        parts.append(f"proj_size={int(proj_size)}")
    return "+".join(parts)


def split_cell(cell: str) -> Tuple[str, Tuple[Tuple[str, object], ...]]:
    """``cell`` string -> (base cell name, options as the kernels take them: (("peephole", bool),
    ("coupled", bool), ("cell_clip", float, 0.0 = none), ("reset_after", bool), ("layer_norm", bool),
    ("proj_size", int, 0 = none))). ValueError for anything else."""
    # Eager calls parse each string once; dynamo traces the parse itself (it would warn about, and
    # bypass, the cache wrapper anyway), so compiled graphs see plain constants.
    if torch.compiler.is_compiling():
        return _parse_cell(cell)
    return _parse_cell_cached(cell)


def _parse_cell(cell: str) -> Tuple[str, Tuple[Tuple[str, object], ...]]:
    base, *parts = cell.split("+") if isinstance(cell, str) else [cell]
    if base not in CELLS:
        raise ValueError(f"cell must be one of {CELLS} (with +peephole, +coupled, +cell_clip=C, +proj_size=P for the "
                         f"LSTM, +reset_before for the GRU, +layer_norm for both), got {cell!r}")
    opts = dict(_NO_OPTIONS)
    for part in parts:
        if part in ("peephole", "coupled"):
            opts[part] = True
        elif part.startswith("cell_clip="):
            try:
                opts["cell_clip"] = float(part[len("cell_clip="):])
            except ValueError:
                raise ValueError(f"cell {cell!r}: cell_clip must be a number") from None
            if not opts["cell_clip"] > 0:
                raise ValueError(f"cell {cell!r}: cell_clip must be > 0")
        elif part == "reset_before":
            opts["reset_after"] = False
        elif part == "layer_norm":
            opts["layer_norm"] = True
        elif part.startswith("proj_size="):
            value = part[len("proj_size="):]
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"cell {cell!r}: proj_size must be an int >= 1")
            opts["proj_size"] = int(value)
        else:
            raise ValueError(f"cell {cell!r}: unknown option {part!r} (peephole, coupled, cell_clip=C, proj_size=P, "
                             "reset_before, layer_norm)")
    lstm_parts = [p for p in parts if p not in ("reset_before", "layer_norm")]
    if lstm_parts and not cell_info(base).lstm_variants:
        only_proj = all(p.startswith("proj_size=") for p in lstm_parts)
        raise ValueError(f"cell {cell!r}: " + ("proj_size is an LSTM option" if only_proj
                                               else "peephole, coupled and cell_clip are LSTM options"))
    if not opts["reset_after"] and (not cell_info(base).reset_after_option or lstm_parts):
        raise ValueError(f"cell {cell!r}: reset_before is a GRU option")
    if opts["layer_norm"] and (not cell_info(base).layer_norm_option or lstm_parts or not opts["reset_after"]):
        raise ValueError(f"cell {cell!r}: layer_norm is an LSTM/GRU option, not combined with the others")
    return base, tuple(opts.items())


_parse_cell_cached = functools.lru_cache(maxsize=64)(_parse_cell)


def _peephole_rows(cell: str) -> int:
    """Rows U of w_ch (0 without peepholes)."""
    base, opts = split_cell(cell)
    opts = dict(opts)
    return cell_info(base).peephole_rows(opts["coupled"]) if opts["peephole"] else 0


def _proj_size(cell: str) -> int:
    """P of the projected LSTM's cell string (0: none)."""
    return dict(split_cell(cell)[1])["proj_size"]


def _h_size(cell: str, hidden_size: int) -> int:
    """The width of h (and of each direction's output): P for the projected LSTM, else H."""
    return _proj_size(cell) or hidden_size


def _norm_vectors(cell: str) -> int:
    """The layer norm's vectors per layer and direction: 4 (LSTM), 2 (GRU), 0 without layer_norm."""
    base, opts = split_cell(cell)
    return (4 if cell_info(base).carries_cell_state else 2) if dict(opts)["layer_norm"] else 0


def _check(x: Tensor, weights: List[Tensor], cell: str, num_layers: int, bidirectional: bool,
           packed: bool = False) -> int:
    """What the fake implementations check too (the cell, the dtypes, the devices, the weights'
    count); returns the number of tensors per layer and direction (2 or 4, one more with peepholes,
    one more with a projection). ``packed``: x is a PackedSequence's data [N, I]."""
    base, _ = split_cell(cell)
    extra = (1 if _peephole_rows(cell) else 0) + _norm_vectors(cell) + (1 if _proj_size(cell) else 0)
    if x.dtype not in _DTYPES:
        raise TypeError(f"fastrnn supports float32, float64, bfloat16 and float16, got input of dtype {x.dtype}")
    if packed and x.dim() != 2:
        raise ValueError(f"x must be 2-D [N, I] (a PackedSequence's data), got shape {tuple(x.shape)}")
    if not packed and x.dim() != 3:
        raise ValueError(f"x must be 3-D [T, B, I] (time-major), got shape {tuple(x.shape)}")
    if num_layers < 1:
        raise ValueError(f"num_layers must be greater than zero, got {num_layers}")
    entries = num_layers * (2 if bidirectional else 1)
    if len(weights) not in ((2 + extra) * entries, (4 + extra) * entries):
        raise ValueError(f"weights must hold {2 + extra} or {4 + extra} tensors per layer and direction "
                         f"({(2 + extra) * entries} or {(4 + extra) * entries}), got {len(weights)}")
    for i, w in enumerate(weights):
        if w.dtype != x.dtype:
            raise TypeError(f"weights[{i}] must have the input's dtype {x.dtype}, got {w.dtype}")
        if w.device != x.device:
            raise RuntimeError(f"weights[{i}] is on {w.device} but the input is on {x.device}")
    return len(weights) // entries


def _check_shapes(x: Tensor, weights: List[Tensor], per_entry: int, hidden_size: int, num_layers: int,
                  bidirectional: bool, cell: str, packed: Optional[Tuple[int, int]] = None,
                  **state: Optional[Tensor]) -> None:
    """The kernels take raw pointers, so every size they rely on is checked here, on real tensors:
    the weights' shapes ([G*H, I_l], [G*H, H], [G*H], [G*H]) and each named state tensor's
    ([L*D, B, H]; ``dy``: [T, B, D*H], packed [N, D*H]) with its dtype and device (None: absent).
    ``packed``: (T, B) of a PackedSequence, whose data x is [N, I]. Projected (P): h's tensors (h0,
    dhn, dh0, dy's columns, I_l above the first layer, w_hh's columns) are P wide, the c ones H
    wide, and w_hr [P, H] ends each entry."""
    T, B, I = x.shape if packed is None else (packed[0], packed[1], x.shape[1])
    if min(T, B, I) < 1:
        raise ValueError(f"input must not be empty (every size >= 1), got shape {tuple(x.shape)}")
    if hidden_size < 1 or num_layers < 1:
        raise ValueError(f"hidden_size and num_layers must be >= 1, got {hidden_size} and {num_layers}")
    D = 2 if bidirectional else 1
    base, opts = split_cell(cell)
    opts = dict(opts)
    P = opts["proj_size"]
    HW = P or hidden_size
    n_ln = _norm_vectors(cell)
    bias = per_entry - (1 if opts["peephole"] else 0) - n_ln - (1 if P else 0) == 4
    names = list(cell_info(base).param_names[:4 if bias else 2]) + (["w_ch"] if opts["peephole"] else []) + \
        ["ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"][:n_ln] + (["w_hr"] if P else [])
    GH = cell_info(base).gates_with(opts["coupled"]) * hidden_size
    # every entry's shapes by the cell table's rule (one copy: C++ rnn.h param_shape; w_hh [G*H, P] and
    # w_hr [P, H] last when projected), then the norm's
    all_shapes = param_shapes(base, I, hidden_size, num_layers, bidirectional, bias, opts["peephole"], opts["coupled"],
                              proj_size=P)
    for k in range(num_layers * D):
        shapes = all_shapes[k] + ((GH,), (GH,), (hidden_size,), (hidden_size,))[:n_ln] + (((P, hidden_size),) if P else ())
        for j in range(per_entry):
            w = weights[k * per_entry + j]
            if w.shape != shapes[j]:
                raise ValueError(f"weights[{k * per_entry + j}] ({names[j]} of layer "
                                 f"{k // D}{', reverse' if k % D else ''}) must have shape {shapes[j]}, got "
                                 f"{tuple(w.shape)}")
    hidden = (num_layers * D, B, hidden_size)
    for name, t in state.items():
        if t is None:
            continue
        expected = (T, B, D * HW) if name == "dy" and packed is None else \
            (x.shape[0], D * HW) if name == "dy" else \
            (num_layers * D, T, B, hidden_size) if name.startswith("zoneout") else \
            (num_layers * D, B, HW) if name in ("h0", "dhn") else hidden
        if t.shape != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have the input's dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise RuntimeError(f"{name} is on {t.device} but the input is on {x.device}")


def _checked_lengths(lengths: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """lengths as the kernels read them: int64 [B] in [1, T], contiguous, on x's device."""
    if lengths is None:
        return None
    T, B, _ = x.shape
    if lengths.dtype != torch.int64:
        raise TypeError(f"lengths must have dtype torch.int64, got {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
    lo, hi = torch.aminmax(lengths)
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must lie in [1, T={T}], got values from {int(lo)} to {int(hi)}")
    return lengths.to(x.device).contiguous()


def _reserve_per_row(cell: str, hidden_size: int, num_layers: int, bidirectional: bool, zoned: int = 0) -> int:
    # The reserve holds T*B rows of R values; R does not depend on I (it is 1 here), T or B. With
    # zoneout, `zoned` states (h~, c~) of [L*D, T, B, H] each follow the kernels' part.
    base, opts = split_cell(cell)
    return _core.reserve_size(_CELL_ID[base], 1, 1, 1, hidden_size, num_layers, bidirectional, **dict(opts)) + \
        zoned * num_layers * (2 if bidirectional else 1) * hidden_size


def _pre_state_ptrs(reserve: Tensor, T: int, B: int, R: int, size: int, zoned_h: bool, zoned_c: bool) -> tuple:
    """Where the zoned-out states h~, c~ ([L*D, T, B, H] each, `size` elements) lie in the reserve:
    zoned_h, zoned_c say which are kept (zoneout of h, of c: given masks or seeded)."""
    if reserve.numel() == 0 or not (zoned_h or zoned_c):
        return 0, 0
    base = reserve.data_ptr() + T * B * R * reserve.element_size()
    pre_h = base if zoned_h else 0
    pre_c = (base + (size * reserve.element_size() if zoned_h else 0)) if zoned_c else 0
    return pre_h, pre_c


def _mask_seed(x: Tensor, seed: Optional[Tensor], stream: int, zoneout: float, zoneout_cell: float,
               recurrent_dropout: float, lstm: bool):
    """The kernels' mask_seed tuple (seed, stream, zoneout, zoneout_cell, recurrent_dropout), or None."""
    if seed is None:
        return None
    if x.device.type != "cpu":
        raise NotImplementedError("seeded masks are drawn by the CPU kernels only; on CUDA pass the mask tensors")
    if seed.numel() != 1 or seed.dtype != torch.int64:
        raise ValueError(f"seed must be an int64 tensor of one element, got {seed.dtype} of shape {tuple(seed.shape)}")
    if zoneout_cell and not lstm:
        raise ValueError("zoneout_cell is for the LSTM (its cell state c)")
    return (int(seed.item()), int(stream), float(zoneout), float(zoneout_cell), float(recurrent_dropout))


def _zoned(zoneout_h, zoneout_c, mask_seed) -> Tuple[bool, bool]:
    """Whether the reserve keeps h~ and c~: zoneout of h / c by a given mask or a seeded one."""
    return (zoneout_h is not None or (mask_seed is not None and mask_seed[2] > 0),
            zoneout_c is not None or (mask_seed is not None and mask_seed[3] > 0))


# ---- the kernels' entry points ---------------------------------------------------------------------
# Both back ends take data pointers (csrc/pointer_args.h), checked above: a NumPy view per tensor cost
# about a microsecond, ~30 per small training step. CUDA: NOT YET RUN ON A GPU (no GPU was lent to
# the sessions that wrote it): the CUDA tests in tests/cuda/test_cuda.py exercise the kernels
# through _core.cuda directly.
_PTR_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
               torch.float16: "float16"}


def _ptr(t: Optional[Tensor]) -> int:
    """The data pointer of a contiguous tensor (0 for None); the caller keeps the tensor alive."""
    return 0 if t is None else t.data_ptr()


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _grouped_ptrs(tensors: list, per_entry: int) -> list:
    # flat [w_ih, w_hh, (b_ih, b_hh), w_ih, ...] -> [(w_ih, w_hh[, b_ih, b_hh]), ...] of pointers
    ptrs = [t.data_ptr() for t in tensors]
    return [tuple(ptrs[k:k + per_entry]) for k in range(0, len(ptrs), per_entry)]


def _entry_points(x: Tensor):
    """(forward, backward) of x's device, both taking the CPU pointer entry points' arguments, then
    the modifiers' and the cell's options as keywords (the CUDA ones add the stream)."""
    kind = x.device.type  # ~0.3 us a read, on every call
    if kind == "cpu":
        return _core.forward_ptrs, _core.backward_ptrs
    if kind == "cuda":
        return _cuda_entry_points(getattr(_core, "cuda", None), x.device)
    raise RuntimeError(f"fastrnn runs on CPU and CUDA tensors, got a tensor on {x.device}")


def _cuda_entry_points(cuda, device):
    """The CUDA back end's (forward, backward) (``cuda``: ``_core.cuda``, or None in a build without
    it) with the CPU ones' arguments: run on ``device`` and torch's current stream there. (The
    emulator tests pass the CPU emulation of ``_core.cuda``, tests/cuda/test_cuda_features.py.)"""
    if cuda is None or not hasattr(cuda, "forward"):
        raise RuntimeError("fastrnn was built without CUDA kernels (no nvcc at install time): run the "
                           "module on the CPU, or reinstall with FASTRNN_WITH_CUDA=ON on a machine with nvcc")

    def on_device(entry):
        def call(*args, **options):  # the modifiers' and the cell's keywords, as on the CPU
            with torch.cuda.device(device):  # the kernels run on the current device and stream
                # float32 products on cuBLAS may use TF32 exactly when torch's own matmuls may
                entry(*args, torch.cuda.current_stream().cuda_stream,
                      allow_tf32=torch.backends.cuda.matmul.allow_tf32, **options)
        return call
    return on_device(cuda.forward), on_device(cuda.backward)


# ---- forward --------------------------------------------------------------------------------------
_NO_JVP = ("fastrnn's kernels have no forward-mode derivative (jvp): fastrnn.nn's modules run composed torch "
           "ops under forward-mode AD and torch.func transforms; called directly, use torch.nn (same parameters "
           "and state_dict) or reverse mode (torch.autograd.grad, torch.func.vjp)")
_NO_TRANSFORMS = ("fastrnn's ops do not support torch.func transforms (grad, jacrev, jvp, vmap, ...): fastrnn.nn's "
                  "modules run composed torch ops under them; called directly, use torch.autograd.grad or torch.nn")


def has_tangent(*tensors) -> bool:
    """Whether any of the tensors (None allowed) is a forward-mode AD dual tensor."""
    for t in tensors:
        if t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
            return True
    return False


def _check_no_forward_ad(*tensors) -> None:
    """The op has no jvp rule, and torch would give its outputs zero tangents without a word."""
    if torch.autograd.forward_ad._current_level >= 0 and has_tangent(*tensors):
        raise NotImplementedError(_NO_JVP)


def _check_no_transform(*tensors) -> None:
    """Under torch.func's transforms the op would give zero tangents (jvp) or fail obscurely (grad)."""
    if torch._C._are_functorch_transforms_active():
        raise NotImplementedError(_NO_TRANSFORMS)
    _check_no_forward_ad(*tensors)

def _rnn_forward_kernel(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                        lengths: Optional[Tensor], cell: str, hidden_size: int, num_layers: int,
                        bidirectional: bool, training: bool, recurrent_mask: Optional[Tensor] = None,
                        grad_clip: float = 0.0, zoneout_h: Optional[Tensor] = None,
                        zoneout_c: Optional[Tensor] = None, seed: Optional[Tensor] = None, stream: int = 0,
                        zoneout: float = 0.0, zoneout_cell: float = 0.0,
                        recurrent_dropout: float = 0.0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_no_transform(x, h0, c0, *weights)
    per_entry = _check(x, weights, cell, num_layers, bidirectional)
    base, opts = split_cell(cell)
    lstm = carries_cell_state(base)
    c0 = c0 if lstm else None
    _check_shapes(x, weights, per_entry, hidden_size, num_layers, bidirectional, cell, h0=h0, c0=c0,
                  recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c if lstm else None)
    zoneout_c = zoneout_c if lstm else None
    _check_grad_clip(grad_clip)
    mask_seed = _mask_seed(x, seed, stream, zoneout, zoneout_cell, recurrent_dropout, lstm)
    _check_modifiers_cell(x, cell, recurrent_mask, grad_clip, zoneout_h, zoneout_c, mask_seed)
    lengths = _checked_lengths(lengths, x)
    x, h0, c0, recurrent_mask = x.contiguous(), _contiguous(h0), _contiguous(c0), _contiguous(recurrent_mask)
    zoneout_h, zoneout_c = _contiguous(zoneout_h), _contiguous(zoneout_c)
    weights = [w.contiguous() for w in weights]
    zoned = _zoned(zoneout_h, zoneout_c, mask_seed)
    y, hn, cn, reserve = _forward_outputs(x, cell, hidden_size, num_layers, bidirectional, training, sum(zoned),
                                          kept=True)
    forward, _ = _entry_points(x)
    T, B, I = x.shape
    R = _reserve_per_row(cell, hidden_size, num_layers, bidirectional)
    pre = _pre_state_ptrs(reserve, T, B, R, hn.numel() * T, *zoned)
    seeded = {} if mask_seed is None else {"mask_seed": mask_seed}
    forward(_CELL_ID[base], _PTR_DTYPES[x.dtype], T, B, I, hidden_size, num_layers, bidirectional, x.data_ptr(),
            _grouped_ptrs(weights, per_entry), _ptr(h0), _ptr(c0), _ptr(lengths), y.data_ptr(), hn.data_ptr(),
            cn.data_ptr() if lstm else 0, reserve.data_ptr() if training else 0,
            **_modifier_args(recurrent_mask, None, zoneout_h, zoneout_c, pre, mask_seed is not None), **dict(opts),
            **seeded)
    return y, hn, cn, reserve


def _check_modifiers_cell(x: Tensor, cell: str, recurrent_mask, grad_clip, zoneout_h, zoneout_c,
                          mask_seed=None) -> None:
    """What runs where: the reset-before GRU, layer norm and proj_size run without the kernels'
    modifiers (fastrnn.nn runs those combinations as composed torch ops; proj_size runs grad_clip on
    the CPU); the base cells and the LSTM variants run with every modifier on both back ends (seeded
    masks: the CPU's only, _mask_seed). Which storage types a back end runs a cell in, it checks
    itself (ValueError)."""
    opts = dict(split_cell(cell)[1])
    masked = recurrent_mask is not None or zoneout_h is not None or zoneout_c is not None or mask_seed is not None
    modified = masked or bool(grad_clip)
    if opts["proj_size"]:
        if masked:
            raise NotImplementedError(f"the kernels do not run recurrent_dropout or zoneout with proj_size (cell "
                                      f"{cell!r}; grad_clip the CPU kernels do); fastrnn.nn.LSTM(proj_size=P) runs "
                                      f"them as composed torch ops")
        if grad_clip and x.device.type != "cpu":
            raise NotImplementedError(f"the CUDA kernels do not run grad_clip with proj_size (cell {cell!r}); "
                                      f"fastrnn.nn.LSTM(proj_size=P) runs it as composed torch ops there")
    if modified and (not opts["reset_after"] or opts["layer_norm"]):
        raise NotImplementedError(f"the kernels run the training modifiers (recurrent_dropout, grad_clip, zoneout) "
                                  f"with the base cells and the LSTM variants, not with {cell!r} (fastrnn.nn runs "
                                  "that combination as composed torch ops)")


def _check_grad_clip(grad_clip: float) -> None:
    if not grad_clip >= 0:
        raise ValueError(f"grad_clip must be > 0 (or 0 for off), got {grad_clip}")


def _modifier_args(recurrent_mask: Optional[Tensor], grad_clip: Optional[float], zoneout_h, zoneout_c,
                   pre: tuple, seeded: bool = False) -> dict:
    """The modifier keywords of both back ends' entry points (recurrent_mask_ptr, [grad_clip,]
    zoneout_h_ptr, zoneout_c_ptr, pre_h_ptr, pre_c_ptr; grad_clip None: a forward call), none when
    all are off (and no mask is seeded)."""
    if recurrent_mask is None and not grad_clip and zoneout_h is None and zoneout_c is None and not seeded:
        return {}
    args = dict(recurrent_mask_ptr=_ptr(recurrent_mask), zoneout_h_ptr=_ptr(zoneout_h), zoneout_c_ptr=_ptr(zoneout_c),
                pre_h_ptr=pre[0], pre_c_ptr=pre[1])
    if grad_clip is not None:
        args["grad_clip"] = float(grad_clip)
    return args


def _new_reserve(x: Tensor, shape: tuple, kept: bool) -> Tensor:
    """An uninitialised reserve of `shape` and x's dtype. kept (the kernels' own calls on CPU
    tensors): in memory the kernels' scratch cache takes back when the tensor is freed and hands
    to a later call (fastrnn.empty_cache frees it), since a reserve above glibc's mmap threshold
    (32 MB at most) would be mapped afresh on every call, its page faults paid each time. Else
    (fake tensors, other devices): x.new_empty."""
    if not kept or x.device.type != "cpu":
        return x.new_empty(shape)
    count = 1
    for n in shape:
        count *= n
    return torch.from_numpy(_core.reserve_buffer(count * x.element_size())).view(x.dtype).view(shape)


def _forward_outputs(x, cell, hidden_size, num_layers, bidirectional, training, zoned=0, kept=False):
    """The four outputs, allocated (also the fake implementation's shapes; kept: _new_reserve's).
    The kernels write every element of each, dead (past-the-end) rows of the reserve included."""
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    state = (num_layers * D, B, hidden_size)
    HW = _h_size(cell, hidden_size)
    y = x.new_empty((T, B, D * HW))
    hn = x.new_empty((num_layers * D, B, HW))
    cn = x.new_empty(state) if carries_cell_state(split_cell(cell)[0]) else x.new_empty((0,))
    R = _reserve_per_row(cell, hidden_size, num_layers, bidirectional, zoned)
    reserve = _new_reserve(x, (T, B, R), kept) if training else x.new_empty((0,))
    return y, hn, cn, reserve


def _forward_fake(x, weights, h0, c0, lengths, cell, hidden_size, num_layers, bidirectional, training,
                  recurrent_mask=None, grad_clip=0.0, zoneout_h=None, zoneout_c=None, seed=None, stream=0,
                  zoneout=0.0, zoneout_cell=0.0, recurrent_dropout=0.0):
    _check(x, weights, cell, num_layers, bidirectional)
    lstm = carries_cell_state(split_cell(cell)[0])
    zoned = (zoneout_h is not None or (seed is not None and zoneout > 0)) + \
        (lstm and (zoneout_c is not None or (seed is not None and zoneout_cell > 0)))
    return _forward_outputs(x, cell, hidden_size, num_layers, bidirectional, training, zoned)


for _name in _FORWARD_OPS:
    torch.library.impl(f"fastrnn::{_name}", _KERNEL_KEY, _rnn_forward_kernel, lib=_LIB)
    torch.library.register_fake(f"fastrnn::{_name}", _forward_fake, lib=_LIB)


# ---- forward on the packed layout -----------------------------------------------------------------
# rnn_forward_packed(x, weights, h0, c0, batch_sizes, cell, hidden_size, num_layers, bidirectional,
# training, batch_size) -> (y, hn, cn, reserve): x [N, I] is a PackedSequence's data (time-major, the
# batch sorted by decreasing length: step t's batch_sizes[t] rows follow step t-1's) and y [N, D*H] is
# packed the same way, as torch.nn's packed path returns it; batch_sizes int64 [T] on the CPU (the
# PackedSequence's), batch_size = batch_sizes[0] = B. h0, c0, hn, cn [L*D, B, H] are in the sorted
# order (row b: the b-th longest sequence); reserve [T, B, R] as rnn_forward's with those lengths.
# The kernels run step t on its batch_sizes[t] rows only, and no padded copy of the batch is made
# outside them. CPU only, without the training modifiers (fastrnn.nn pads for those).
def _checked_batch_sizes(x: Tensor, batch_sizes: Tensor, batch_size: int) -> Tensor:
    """batch_sizes as the kernels read it (int64 [T], contiguous, on the CPU); its values (non-increasing,
    >= 1, summing to N, the first equal to batch_size) are checked by the kernels."""
    if not isinstance(batch_sizes, Tensor) or batch_sizes.dtype != torch.int64 or batch_sizes.dim() != 1:
        raise TypeError(f"batch_sizes must be a 1-D int64 tensor (a PackedSequence's), got "
                        f"{getattr(batch_sizes, 'dtype', type(batch_sizes).__name__)} of shape "
                        f"{tuple(getattr(batch_sizes, 'shape', ()))}")
    if batch_sizes.device.type != "cpu":
        raise ValueError(f"batch_sizes must be on the CPU (as a PackedSequence's), got {batch_sizes.device}")
    if batch_sizes.numel() < 1 or batch_size < 1 or x.shape[0] < 1:
        raise ValueError(f"a packed batch must not be empty, got {batch_sizes.numel()} steps, batch size {batch_size} "
                         f"and {x.shape[0]} rows")
    return batch_sizes.contiguous()


def _rnn_forward_packed_kernel(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                               batch_sizes: Tensor, cell: str, hidden_size: int, num_layers: int, bidirectional: bool,
                               training: bool, batch_size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_no_transform(x, h0, c0, *weights)
    per_entry = _check(x, weights, cell, num_layers, bidirectional, packed=True)
    if x.device.type != "cpu":
        raise NotImplementedError(f"fastrnn::rnn_forward_packed runs on the CPU, got a tensor on {x.device} "
                                  "(fastrnn.nn pads a PackedSequence there)")
    base, opts = split_cell(cell)
    lstm = carries_cell_state(base)
    c0 = c0 if lstm else None
    batch_sizes = _checked_batch_sizes(x, batch_sizes, batch_size)
    T, B = batch_sizes.numel(), batch_size
    _check_shapes(x, weights, per_entry, hidden_size, num_layers, bidirectional, cell, packed=(T, B), h0=h0, c0=c0)
    x, h0, c0 = x.contiguous(), _contiguous(h0), _contiguous(c0)
    weights = [w.contiguous() for w in weights]
    y, hn, cn, reserve = _forward_packed_outputs(x, T, B, cell, hidden_size, num_layers, bidirectional, training,
                                                 kept=True)
    N, I = x.shape
    _core.forward_ptrs(_CELL_ID[base], _PTR_DTYPES[x.dtype], T, B, I, hidden_size, num_layers, bidirectional,
                       x.data_ptr(), _grouped_ptrs(weights, per_entry), _ptr(h0), _ptr(c0), 0, y.data_ptr(),
                       hn.data_ptr(), cn.data_ptr() if lstm else 0, reserve.data_ptr() if training else 0,
                       batch_sizes_ptr=batch_sizes.data_ptr(), packed_rows=N, **dict(opts))
    return y, hn, cn, reserve


def _forward_packed_outputs(x, T, B, cell, hidden_size, num_layers, bidirectional, training, kept=False):
    """rnn_forward_packed's four outputs, allocated: y [N, D*H], hn, cn [L*D, B, H], reserve [T, B, R]
    (projected: y [N, D*P], hn [L*D, B, P]; kept: _new_reserve's)."""
    D = 2 if bidirectional else 1
    state = (num_layers * D, B, hidden_size)
    HW = _h_size(cell, hidden_size)
    y = x.new_empty((x.shape[0], D * HW))
    hn = x.new_empty((num_layers * D, B, HW))
    cn = x.new_empty(state) if carries_cell_state(split_cell(cell)[0]) else x.new_empty((0,))
    R = _reserve_per_row(cell, hidden_size, num_layers, bidirectional)
    reserve = _new_reserve(x, (T, B, R), kept) if training else x.new_empty((0,))
    return y, hn, cn, reserve


def _forward_packed_fake(x, weights, h0, c0, batch_sizes, cell, hidden_size, num_layers, bidirectional, training,
                         batch_size):
    _check(x, weights, cell, num_layers, bidirectional, packed=True)
    return _forward_packed_outputs(x, batch_sizes.shape[0], batch_size, cell, hidden_size, num_layers, bidirectional,
                                   training)


torch.library.impl("fastrnn::rnn_forward_packed", _KERNEL_KEY, _rnn_forward_packed_kernel, lib=_LIB)
torch.library.register_fake("fastrnn::rnn_forward_packed", _forward_packed_fake, lib=_LIB)


# ---- backward -------------------------------------------------------------------------------------
def _rnn_backward_kernel(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                         lengths: Optional[Tensor], reserve: Tensor, dy: Tensor, dhn: Optional[Tensor],
                         dcn: Optional[Tensor], cell: str, hidden_size: int, num_layers: int,
                         bidirectional: bool, recurrent_mask: Optional[Tensor] = None, grad_clip: float = 0.0,
                         zoneout_h: Optional[Tensor] = None, zoneout_c: Optional[Tensor] = None,
                         batch_sizes: Optional[Tensor] = None, seed: Optional[Tensor] = None, stream: int = 0,
                         zoneout: float = 0.0, zoneout_cell: float = 0.0,
                         recurrent_dropout: float = 0.0) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    """Gradients (dx [T, B, I], dh0 [L*D, B, H], dc0 (LSTM; else empty), dweights like weights) of a
    training ``rnn_forward``: x, weights, h0, c0, lengths and reserve exactly as forward saw and
    returned them; dy [T, B, D*H]; dhn, dcn [L*D, B, H] or None (zero). With ``batch_sizes``, of a
    training ``rnn_forward_packed`` (lengths None): x, dy and dx packed [N, .], B the reserve's."""
    packed = batch_sizes is not None
    per_entry = _check(x, weights, cell, num_layers, bidirectional, packed=packed)
    if reserve.numel() == 0:
        raise RuntimeError("fastrnn::rnn_backward needs the reserve of a forward run with training=True; "
                           "this forward ran with training=False and saved nothing")
    base, opts = split_cell(cell)
    lstm = carries_cell_state(base)
    c0, dcn = (c0, dcn) if lstm else (None, None)
    if packed:
        if lengths is not None or recurrent_mask is not None or grad_clip or zoneout_h is not None \
                or zoneout_c is not None or seed is not None:
            raise ValueError("a packed backward (batch_sizes given) takes no lengths and no training modifiers")
        if x.device.type != "cpu":
            raise NotImplementedError(f"a packed backward runs on the CPU, got a tensor on {x.device}")
        if reserve.dim() != 3:
            raise ValueError(f"reserve must be the training forward's [T, B, R], got shape {tuple(reserve.shape)}")
        batch_sizes = _checked_batch_sizes(x, batch_sizes, reserve.shape[1])
        T, B, I = batch_sizes.numel(), reserve.shape[1], x.shape[1]
    else:
        T, B, I = x.shape
    _check_shapes(x, weights, per_entry, hidden_size, num_layers, bidirectional, cell,
                  packed=(T, B) if packed else None, h0=h0, c0=c0, dy=dy, dhn=dhn,
                  dcn=dcn, recurrent_mask=recurrent_mask, zoneout_h=zoneout_h, zoneout_c=zoneout_c if lstm else None)
    zoneout_c = zoneout_c if lstm else None
    _check_grad_clip(grad_clip)
    mask_seed = _mask_seed(x, seed, stream, zoneout, zoneout_cell, recurrent_dropout, lstm)
    _check_modifiers_cell(x, cell, recurrent_mask, grad_clip, zoneout_h, zoneout_c, mask_seed)
    recurrent_mask, zoneout_h, zoneout_c = _contiguous(recurrent_mask), _contiguous(zoneout_h), _contiguous(zoneout_c)
    zoned = _zoned(zoneout_h, zoneout_c, mask_seed)
    R = _reserve_per_row(cell, hidden_size, num_layers, bidirectional, sum(zoned))
    if reserve.shape != (T, B, R) or reserve.dtype != x.dtype or reserve.device != x.device:
        raise ValueError(f"reserve must be the training forward's ({(T, B, R)}, {x.dtype}, on {x.device}), got "
                         f"{tuple(reserve.shape)}, {reserve.dtype}, on {reserve.device}")
    lengths = _checked_lengths(lengths, x)
    x, h0, c0, reserve, dy, dhn, dcn = (_contiguous(t) for t in (x, h0, c0, reserve, dy, dhn, dcn))
    weights = [w.contiguous() for w in weights]
    dx, dh0, dc0, dweights = _backward_outputs(x, weights, cell, hidden_size, num_layers, bidirectional, B)
    _, backward = _entry_points(x)
    packed_args = dict(batch_sizes_ptr=batch_sizes.data_ptr(), packed_rows=x.shape[0]) if packed else {}
    backward(_CELL_ID[base], _PTR_DTYPES[x.dtype], T, B, I, hidden_size, num_layers, bidirectional, x.data_ptr(),
             _grouped_ptrs(weights, per_entry), _ptr(h0), _ptr(c0), _ptr(lengths), reserve.data_ptr(), dy.data_ptr(),
             _ptr(dhn), _ptr(dcn), dx.data_ptr(), dh0.data_ptr(), dc0.data_ptr() if lstm else 0,
             _grouped_ptrs(dweights, per_entry),
             **_modifier_args(recurrent_mask, float(grad_clip), zoneout_h, zoneout_c,
                              _pre_state_ptrs(reserve, T, B, _reserve_per_row(cell, hidden_size, num_layers,
                                                                              bidirectional),
                                              dh0.numel() * T, *zoned), mask_seed is not None),
             **packed_args, **dict(opts), **({} if mask_seed is None else {"mask_seed": mask_seed}))
    return dx, dh0, dc0, dweights


def _backward_outputs(x, weights, cell, hidden_size, num_layers, bidirectional, B):
    state = (num_layers * (2 if bidirectional else 1), B, hidden_size)
    dc0 = x.new_empty(state) if carries_cell_state(split_cell(cell)[0]) else x.new_empty((0,))
    dh0 = x.new_empty(state[:2] + (_h_size(cell, hidden_size),))
    # new_empty, not empty_like: empty_like keeps a transposed input's strides, and the kernels
    # write outputs in place, so every output must be contiguous.
    return x.new_empty(x.shape), dh0, dc0, [w.new_empty(w.shape) for w in weights]


torch.library.impl("fastrnn::rnn_backward", _KERNEL_KEY, _rnn_backward_kernel, lib=_LIB)


@torch.library.register_fake("fastrnn::rnn_backward", lib=_LIB)
def _(x, weights, h0, c0, lengths, reserve, dy, dhn, dcn, cell, hidden_size, num_layers, bidirectional,
      recurrent_mask=None, grad_clip=0.0, zoneout_h=None, zoneout_c=None, batch_sizes=None, seed=None, stream=0,
      zoneout=0.0, zoneout_cell=0.0, recurrent_dropout=0.0):
    packed = batch_sizes is not None
    _check(x, weights, cell, num_layers, bidirectional, packed=packed)
    return _backward_outputs(x, weights, cell, hidden_size, num_layers, bidirectional,
                             reserve.shape[1] if packed else x.shape[1])


# ---- autograd -------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    x, weights, h0, c0, lengths, cell, hidden_size, num_layers, bidirectional, training, *mods = inputs
    # rnn_forward_modified's four modifiers, rnn_forward_seeded's five more (seed, stream, zoneout,
    # zoneout_cell, recurrent_dropout), rnn_forward_packed's batch_size (then `lengths` holds
    # batch_sizes), or rnn_forward's none
    ctx.packed = len(mods) == 1
    recurrent_mask, grad_clip, zoneout_h, zoneout_c, *seeded = mods if len(mods) >= 4 else (None, 0.0, None, None)
    seed = seeded[0] if seeded else None
    ctx.mark_non_differentiable(output[3])  # the reserve
    ctx.save_for_backward(x, h0, c0, lengths, recurrent_mask, zoneout_h, zoneout_c, seed, output[3], *weights)
    ctx.config = (cell, hidden_size, num_layers, bidirectional, training, float(grad_clip),
                  tuple(seeded[1:]) if seeded else (0, 0.0, 0.0, 0.0))
    ctx.num_inputs = len(inputs)  # 10 (rnn_forward), 11 (rnn_forward_packed), 14 (rnn_forward_modified) or 19 (rnn_forward_seeded)


def _forward_backward(ctx, dy, dhn, dcn, _dreserve):
    cell, hidden_size, num_layers, bidirectional, training, grad_clip, seeded = ctx.config
    if not training:
        raise RuntimeError("fastrnn::rnn_forward ran with training=False, so it saved nothing for backward; "
                           "call it with training=True when gradients are needed")
    x, h0, c0, lengths, recurrent_mask, zoneout_h, zoneout_c, seed, reserve, *weights = ctx.saved_tensors
    lstm = carries_cell_state(split_cell(cell)[0])
    # With create_graph (grad mode on) through the op, whose own backward raises a clear error.
    backward = torch.ops.fastrnn.rnn_backward
    if not torch.is_grad_enabled() and _plain_eager(x, h0, c0, dy, dhn, dcn, *weights):
        backward = _rnn_backward_kernel
    lengths, batch_sizes = (None, lengths) if ctx.packed else (lengths, None)
    dx, dh0, dc0, dweights = backward(x, weights, h0, c0, lengths, reserve, dy, dhn, dcn if lstm else None, cell,
                                      hidden_size, num_layers, bidirectional, recurrent_mask, grad_clip, zoneout_h,
                                      zoneout_c, batch_sizes, seed, *seeded)
    return (dx, list(dweights), dh0 if h0 is not None else None, dc0 if (lstm and c0 is not None) else None) + \
        (None,) * (ctx.num_inputs - 4)


for _name in _FORWARD_OPS:
    torch.library.register_autograd(f"fastrnn::{_name}", _forward_backward, setup_context=_setup_context, lib=_LIB)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastrnn does not support double backward (differentiating fastrnn::rnn_backward, e.g. "
                       "torch.autograd.grad(..., create_graph=True) followed by another backward); use torch.nn "
                       "for higher-order gradients")


torch.library.register_autograd("fastrnn::rnn_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None, lib=_LIB)



# torch.func's transforms (grad, jvp, vmap, ...) dispatch the ops here first. The ops have no rule
# for them: register_autograd's generated Function is not one torch.func accepts, so grad failed
# with an obscure setup_context error and jvp silently gave zero tangents. A clear error instead
# (fastrnn.nn's modules run composed torch ops under these transforms and never get here).
def _refuse_transform(*args, **kwargs):
    raise NotImplementedError(_NO_TRANSFORMS)


for _name in _FORWARD_OPS + ("rnn_backward",):
    _LIB.impl(_name, _refuse_transform, "FuncTorchDynamicLayerFrontMode")


# ---- autocast -------------------------------------------------------------------------------------
# Under torch.autocast("cpu", dtype=...) the forward ops run in the autocast dtype (bfloat16 or
# float16): their floating-point tensors are cast to it on entry, as torch's autocast does for its
# lower-precision ops (torch.nn.LSTM's oneDNN layer among them), and the op runs with the autocast
# key excluded. The casts are ordinary differentiable ops, so float32 parameters get float32
# gradients. A kernel at the AutocastCPU key (what torch.library.register_autocast installs, but
# with the autocast dtype read at the call instead of fixed), so torch.compile traces it too.
def _autocast_cpu(op):
    def kernel(x, weights, h0, c0, lengths, *rest):
        dtype = torch.get_autocast_dtype("cpu")

        def cast(t):
            return t.to(dtype) if t is not None and t.is_floating_point() and t.device.type == "cpu" else t
        rest = tuple(cast(r) if isinstance(r, Tensor) else r for r in rest)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)):
            return op(cast(x), [cast(w) for w in weights], cast(h0), cast(c0), lengths, *rest)
    return kernel


for _name in _FORWARD_OPS:
    _LIB.impl(_name, _autocast_cpu(getattr(torch.ops.fastrnn, _name)), "AutocastCPU")

rnn_forward = torch.ops.fastrnn.rnn_forward
rnn_forward_packed = torch.ops.fastrnn.rnn_forward_packed
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
    # torch.jit.trace records the op (serialisable, re-run by the trace check), never the Function.
    # Under CPU autocast the op's AutocastCPU kernel (above) casts the inputs.
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._are_functorch_transforms_active() or torch._C._get_tracing_state() is not None
            or torch.is_autocast_enabled("cpu")):
        return False
    for t in tensors:  # a loop, not all(<generator>): this runs on every cell step
        if t is not None and type(t) not in _PLAIN_TYPES:
            return False
    return True


class _EagerForward(torch.autograd.Function):
    # forward + setup_context (not forward(ctx, ...)): the form torch.func's transforms accept.
    @staticmethod
    # mods: (recurrent_mask, zoneout_h, zoneout_c[, seed]); config: (cell, hidden_size, num_layers,
    # bidirectional, training, grad_clip[, stream, zoneout, zoneout_cell, recurrent_dropout])
    def forward(x, h0, c0, lengths, mods, config, *weights):
        return _rnn_forward_kernel(*_EagerForward.op_args(x, h0, c0, lengths, mods, config, weights))

    @staticmethod
    def op_args(x, h0, c0, lengths, mods, config, weights) -> tuple:
        """The forward op's arguments (rnn_forward_modified's, or rnn_forward_seeded's with a seed)."""
        return (x, list(weights), h0, c0, lengths, *config[:5], mods[0], config[5], *mods[1:3], *mods[3:],
                *config[6:])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, lengths, mods, config, *weights = inputs
        _setup_context(ctx, _EagerForward.op_args(x, h0, c0, lengths, mods, config, weights), output)
        # The outputs no loss reached get None, not zeros: autograd would fill a zero gradient of the
        # reserve ([T, B, R], the largest output) on every backward, which nothing reads.
        ctx.set_materialize_grads(False)
        ctx.y_shape = output[0].shape

    @staticmethod
    def backward(ctx, dy, dhn, dcn, dreserve):
        if dy is None:  # the loss reached h_n / c_n only (dhn, dcn: None is zero to the backward op)
            dy = torch.zeros(ctx.y_shape, dtype=ctx.saved_tensors[0].dtype, device=ctx.saved_tensors[0].device)
        dx, dweights, dh0, dc0, *_ = _forward_backward(ctx, dy, dhn, dcn, dreserve)
        return (dx, dh0, dc0, None, None, None, *dweights)

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(_NO_JVP)




def run_forward(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                lengths: Optional[Tensor], cell: str, hidden_size: int, num_layers: int, bidirectional: bool,
                training: bool, recurrent_mask: Optional[Tensor] = None, grad_clip: float = 0.0,
                zoneout_h: Optional[Tensor] = None, zoneout_c: Optional[Tensor] = None,
                seeded: Optional[tuple] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``torch.ops.fastrnn.rnn_forward`` with the same arguments and results, the same gradients and
    errors, without the op's call overhead in plain eager mode (what :mod:`fastrnn.nn` calls).
    seeded: (seed [1] int64, stream, zoneout, zoneout_cell, recurrent_dropout) for the masks the CPU
    kernels draw (rnn_forward_seeded), or None."""
    _check_no_transform(x, h0, c0, *weights)  # seen here, before the dispatcher unwraps the tensors
    seed = seeded[0] if seeded is not None else None
    if not _EAGER_PATH or not _plain_eager(x, h0, c0, lengths, recurrent_mask, zoneout_h, zoneout_c, seed, *weights):
        if seeded is not None:
            return torch.ops.fastrnn.rnn_forward_seeded(x, weights, h0, c0, lengths, cell, hidden_size, num_layers,
                                                        bidirectional, training, recurrent_mask, float(grad_clip),
                                                        zoneout_h, zoneout_c, seed, int(seeded[1]),
                                                        *(float(p) for p in seeded[2:]))
        if recurrent_mask is None and not grad_clip and zoneout_h is None and zoneout_c is None:
            return torch.ops.fastrnn.rnn_forward(x, weights, h0, c0, lengths, cell, hidden_size, num_layers,
                                                 bidirectional, training)
        return torch.ops.fastrnn.rnn_forward_modified(x, weights, h0, c0, lengths, cell, hidden_size, num_layers,
                                                      bidirectional, training, recurrent_mask, float(grad_clip),
                                                      zoneout_h, zoneout_c)
    seed_args = () if seeded is None else (seed,)
    seed_config = () if seeded is None else (int(seeded[1]), *(float(p) for p in seeded[2:]))
    if not training:  # nothing to differentiate (the caller's _needs_grad said so)
        return _rnn_forward_kernel(x, weights, h0, c0, lengths, cell, hidden_size, num_layers, bidirectional, False,
                                   recurrent_mask, grad_clip, zoneout_h, zoneout_c, *seed_args, *seed_config)
    return _EagerForward.apply(x, h0, c0, lengths, (recurrent_mask, zoneout_h, zoneout_c, *seed_args),
                               (cell, hidden_size, num_layers, bidirectional, training, grad_clip, *seed_config),
                               *weights)


class _EagerForwardPacked(torch.autograd.Function):
    """_EagerForward for rnn_forward_packed."""

    @staticmethod
    def forward(x, h0, c0, batch_sizes, config, *weights):
        return _rnn_forward_packed_kernel(x, list(weights), h0, c0, batch_sizes, *config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, batch_sizes, config, *weights = inputs
        _setup_context(ctx, (x, list(weights), h0, c0, batch_sizes, *config), output)

    @staticmethod
    def backward(ctx, dy, dhn, dcn, dreserve):
        dx, dweights, dh0, dc0, *_ = _forward_backward(ctx, dy, dhn, dcn, dreserve)
        return (dx, dh0, dc0, None, None, *dweights)

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(_NO_JVP)


def run_forward_packed(x: Tensor, weights: List[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                       batch_sizes: Tensor, cell: str, hidden_size: int, num_layers: int, bidirectional: bool,
                       training: bool, batch_size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``torch.ops.fastrnn.rnn_forward_packed`` with the same arguments and results, without the op's call
    overhead in plain eager mode (as run_forward)."""
    _check_no_transform(x, h0, c0, *weights)
    config = (cell, hidden_size, num_layers, bidirectional, training, batch_size)
    if not _EAGER_PATH or not _plain_eager(x, h0, c0, batch_sizes, *weights):
        return torch.ops.fastrnn.rnn_forward_packed(x, weights, h0, c0, batch_sizes, *config)
    if not training:
        return _rnn_forward_packed_kernel(x, weights, h0, c0, batch_sizes, *config)
    return _EagerForwardPacked.apply(x, h0, c0, batch_sizes, config, *weights)


_EAGER_PATH = True  # tests turn it off to compare the two paths


# ---- one step of one cell -------------------------------------------------------------------------
# fastrnn.nn's RNNCell / LSTMCell / GRUCell call this on every step of a Python loop, where the op
# path's fixed costs (its argument checks, a dozen allocations and views, the Function's
# signature binding, the list of weight-pointer tuples; ~60 us per training step) were larger
# than torch.nn's few ATen calls. Here a step is a few cheap checks, three allocations, one
# autograd.Function in the classic ctx form and one call of _core.cell_forward (the same
# cpu::forward with the same configuration as the op at T = 1, so bitwise the op's results);
# backward is one call of _core.cell_backward on the saved reserve (the gates of the forward).
# Calls it does not serve return None, and the caller takes the op path.
_CELL_STEP_DTYPES = {torch.float32: False, torch.float64: True}  # dtype -> the entry points' `f64`
# by the entry points' cell id (the cell table): the name, whether it carries a cell state c
_CELL_BY_ID = {info.id: info for info in TABLE.values()}


@functools.lru_cache(maxsize=64)
def _cell_reserve_per_row(cell_id: int, hidden_size: int) -> int:
    return _core.reserve_size(cell_id, 1, 1, 1, hidden_size, 1, False)


def cell_step(cell: str, x: Tensor, h: Optional[Tensor], c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor]):
    """One step of a base cell (``cell`` a cell table name) on the lean path: x [B, I], h, c [B, H]
    or None (zeros; c for the cells that carry one, the LSTM), the cell's parameters in torch.nn's
    shapes. Returns (h', c') for a cell with a cell state, h' otherwise, with the op's values and
    gradients bit for bit; or None where this path
    does not serve the call (torch.compile, tracing, dispatch modes, transforms, forward-mode AD,
    subclasses, non-CPU or non-float32/64 tensors, mixed dtypes, non-contiguous weights, empty
    batches, shapes that do not fit) and the caller must take the op (which raises for bad input)."""
    # Every check is a tensor attribute read (~30-60 ns); their order puts the ones that decide
    # most often first, and nothing is computed twice (the Function gets B, I, H and the cell).
    if not _EAGER_PATH or _forward_ad._current_level >= 0 or not _plain_eager(x, h, c, w_ih, w_hh, b_ih, b_hh):
        return None
    dtype = x.dtype
    f64 = _CELL_STEP_DTYPES.get(dtype)
    info = TABLE.get(cell)
    if f64 is None or info is None or x.dim() != 2 or w_hh.dim() != 2 or not x.is_cpu:
        return None
    B, I = x.shape
    GH, H = w_hh.shape
    if B < 1 or GH != info.gates * H or w_ih.shape != (GH, I):
        return None
    bias = b_ih is not None
    if bias != (b_hh is not None) or (bias and (b_ih.shape != (GH,) or b_hh.shape != (GH,))):
        return None
    for t in (w_ih, w_hh, b_ih, b_hh):  # a loop, not all(<generator>): this runs on every step
        if t is not None and (t.dtype != dtype or not t.is_cpu or not t.is_contiguous()):
            return None
    lstm = info.carries_cell_state
    for t in (h, c):
        if t is not None and (t.dtype != dtype or not t.is_cpu or t.shape != (B, H)):
            return None
    if c is not None and not lstm:
        return None
    config = (info.id, f64, B, I, H, lstm, bias)
    if torch.is_grad_enabled() and (x.requires_grad or w_ih.requires_grad or w_hh.requires_grad
                                    or (h is not None and h.requires_grad) or (c is not None and c.requires_grad)
                                    or (bias and (b_ih.requires_grad or b_hh.requires_grad))):
        return _cell_step_apply(config, x, h, c, w_ih, w_hh, b_ih, b_hh)
    # inference: nothing to save
    out = _cell_forward(config, x.contiguous(), None if h is None else h.contiguous(),
                        None if c is None else c.contiguous(), w_ih, w_hh, b_ih, b_hh, None)
    return out if lstm else out[0]


def _cell_forward(config, x, h, c, w_ih, w_hh, b_ih, b_hh, reserve):
    """_core.cell_forward on contiguous x, h, c: returns (h', c') (c' None without a cell state). The
    callers hold x, h, c and reserve in names, so their memory outlives the call."""
    cell_id, f64, B, I, H, lstm, bias = config
    h_out = torch.empty(B, H, dtype=x.dtype)
    c_out = torch.empty(B, H, dtype=x.dtype) if lstm else None
    _core.cell_forward(cell_id, f64, B, I, H, x.data_ptr(), 0 if h is None else h.data_ptr(),
                       0 if c is None else c.data_ptr(), w_ih.data_ptr(), w_hh.data_ptr(),
                       b_ih.data_ptr() if bias else 0, b_hh.data_ptr() if bias else 0, h_out.data_ptr(),
                       c_out.data_ptr() if lstm else 0, 0 if reserve is None else reserve.data_ptr())
    return h_out, c_out


_forward_ad = torch.autograd.forward_ad


class _CellStep(torch.autograd.Function):
    """cell_step with autograd. The classic forward(ctx, ...) form: Function.apply binds the
    arguments to forward's signature with inspect on every call once setup_context is defined
    (~20 us); torch.func's transforms, which need that form, never reach this Function.
    ``config`` = (cell id, f64, B, I, H, carries c, bias), from cell_step's checks."""

    @staticmethod
    def forward(ctx, config, x, h, c, w_ih, w_hh, b_ih, b_hh):
        # x, h, c contiguous: made so once here and saved so, backward reads them as they are. A
        # copy (a non-contiguous x, such as the client's column of a [B, T] batch) holds the
        # forward's values; a contiguous tensor is itself, so its version counter still guards it.
        x = x.contiguous()
        h = None if h is None else h.contiguous()
        c = None if c is None else c.contiguous()
        reserve = torch.empty(config[2] * _cell_reserve_per_row(config[0], config[4]), dtype=x.dtype)
        h_out, c_out = _cell_forward(config, x, h, c, w_ih, w_hh, b_ih, b_hh, reserve)
        ctx.save_for_backward(x, h, c, w_ih, w_hh, b_ih, b_hh, reserve)
        ctx.config = config
        ctx.set_materialize_grads(False)
        return (h_out, c_out) if config[5] else h_out

    @staticmethod
    def backward(ctx, dh, dc=None):
        x, h, c, w_ih, w_hh, b_ih, b_hh, reserve = ctx.saved_tensors
        config = ctx.config
        cell_id, f64, B, I, H, lstm, bias = config
        if dh is None:
            dh = torch.zeros((B, H), dtype=x.dtype)
        if torch.is_grad_enabled() or not (w_ih.is_contiguous() and w_hh.is_contiguous()):
            # create_graph: through the op, whose own backward refuses double backward (and which
            # copies weights whose .data became non-contiguous since the forward)
            return (None,) + _cell_backward_through_op(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh, reserve, dh, dc)
        _, need_x, need_h, need_c, need_wi, need_wh, need_bi, need_bh = ctx.needs_input_grad
        dh = dh.contiguous()  # held in names: their memory must outlive the call
        dc = None if dc is None else dc.contiguous()
        # empty_like: the parameters' own layout (contiguous), so that AccumulateGrad takes them as .grad
        dx = torch.empty_like(x) if need_x else None
        dh0 = torch.empty_like(dh) if need_h else None
        dc0 = torch.empty_like(dh) if need_c else None
        dw_ih = torch.empty_like(w_ih) if need_wi else None
        dw_hh = torch.empty_like(w_hh) if need_wh else None
        db_ih = torch.empty_like(b_ih) if need_bi else None
        db_hh = torch.empty_like(b_hh) if need_bh else None
        _core.cell_backward(cell_id, f64, B, I, H, x.data_ptr(), 0 if h is None else h.data_ptr(),
                            0 if c is None else c.data_ptr(), w_ih.data_ptr(), w_hh.data_ptr(),
                            b_ih.data_ptr() if bias else 0, b_hh.data_ptr() if bias else 0, reserve.data_ptr(),
                            dh.data_ptr(), 0 if dc is None else dc.data_ptr(), 0 if dx is None else dx.data_ptr(),
                            0 if dh0 is None else dh0.data_ptr(), 0 if dc0 is None else dc0.data_ptr(),
                            0 if dw_ih is None else dw_ih.data_ptr(), 0 if dw_hh is None else dw_hh.data_ptr(),
                            0 if db_ih is None else db_ih.data_ptr(), 0 if db_hh is None else db_hh.data_ptr())
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


# _CellStep.apply without Function.apply's Python wrapper (its functorch checks and dead-wrapper
# unwrapping; ~2 us a step): cell_step runs only where _plain_eager saw no functorch transform.
# _FunctionBase.apply is torch's C entry point that the wrapper itself ends in.
_raw_apply = vars(getattr(torch._C, "_FunctionBase", object)).get("apply")
_cell_step_apply = _raw_apply.__get__(_CellStep, _CellStep) if _raw_apply is not None else _CellStep.apply


def _cell_backward_through_op(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh, reserve, dh, dc) -> tuple:
    """_CellStep's backward under create_graph: rnn_backward on the same saved values (the reserve
    of T = 1 has the op's layout), so that differentiating the gradients raises the op's clear error."""
    cell_id, _, B, _, H = ctx.config[:5]
    cell = _CELL_BY_ID[cell_id].name
    weights = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    dx, dh0, dc0, dweights = torch.ops.fastrnn.rnn_backward(
        x[None], weights, None if h is None else h[None], None if c is None else c[None], None,
        reserve.view(1, B, -1), dh[None], None, None if dc is None else dc[None], cell, H, 1, False)
    dweights = list(dweights) + [None] * (4 - len(dweights))
    return (dx[0], None if h is None else dh0[0], dc0[0] if c is not None else None, *dweights)
