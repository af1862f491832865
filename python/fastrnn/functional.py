"""The NumPy API: validate arguments, lay them out time-major and contiguous, allocate, call the
compiled kernels. No PyTorch needed.

    out = fastrnn.forward("lstm", x, weights, h0, c0, lengths=None, bidirectional=False,
                          batch_first=False, training=True)
    grads = fastrnn.backward(out.saved, dy, dhn=None, dcn=None)

Shapes (PyTorch's conventions): x [T, B, I] ([B, T, I] if batch_first); weights is a list of
L*D entries, index l*D + d (d = 1 is the reverse direction), each (w_ih [G*H, I_l], w_hh [G*H, H])
or (w_ih, w_hh, b_ih [G*H], b_hh [G*H]) with I_0 = I, I_l = D*H, G = 4 (LSTM), 3 (GRU), 1 (RNN);
h0, c0 [L*D, B, H]; lengths [B] integers in [1, T]. One dtype throughout: float32, float64, float16,
or bfloat16 (``ml_dtypes.bfloat16``, when ml_dtypes is installed). 16-bit arrays run the 16-bit
kernels: float32 accumulation and state inside, results rounded to the 16-bit type (README, "16-bit
types").
The projected LSTM (``proj_size=P``, torch.nn.LSTM's): each entry is (w_ih, w_hh
[4*H, P][, b_ih, b_hh], w_hr [P, H]) in torch's order, I_l = D*P, h0/h_n [L*D, B, P], c0/c_n
[L*D, B, H], output [T, B, D*P].
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ._loader import _core
from .cell_table import (BY_NONLINEARITY, CELL_ID, GRU, LSTM, RNN_RELU, RNN_TANH, carries_cell_state,
                         cell_info, param_formulas, param_shapes)
from .types import CELLS, GATES, RNNGrads, RNNResult

_CELL_ID = CELL_ID  # the entry points' cell ids (the cell table)
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
try:  # bfloat16 arrays come from ml_dtypes (optional)
    import ml_dtypes as _ml_dtypes

    BFLOAT16: Optional[np.dtype] = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    BFLOAT16 = None
# The dtypes forward/backward take: float32, float64 and the 16-bit storage types.
_SEQUENCE_DTYPES = _DTYPES + (np.dtype(np.float16),) + ((BFLOAT16,) if BFLOAT16 is not None else ())
_SEQUENCE_DTYPE_NAMES = "float32, float64, float16" + (" or bfloat16" if BFLOAT16 is not None else
                                                       " (bfloat16 needs ml_dtypes)")
_BLAS_MAX = 2**31 - 1  # the BLAS's 32-bit dimension limit
_DIRECTION = ("forward", "reverse")


class Saved:
    """What a training forward keeps for backward: the inputs as the kernels saw them (time-major,
    contiguous) and the reserve (layer outputs and the cells' saved values). Treat as opaque."""

    __slots__ = ("cell", "x", "weights", "h0", "c0", "lengths", "reserve", "hidden_size", "num_layers",
                 "bidirectional", "batch_first", "recurrent_mask", "grad_clip", "weight_mask", "dilated", "zoneout",
                 "options", "mask_seed")

    def __init__(self, **kw):
        # the modifiers' fields are off unless given
        for k, v in {"recurrent_mask": None, "grad_clip": 0.0, "weight_mask": None, "dilated": None,
                     "zoneout": None, "options": {}, "mask_seed": None, **kw}.items():
            setattr(self, k, v)


def _check_dtype(name: str, a: np.ndarray, dtype: np.dtype) -> None:
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the dtype of x), got {a.dtype}")


def _array(name: str, value) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception as e:  # ragged lists, objects that are not arrays
            raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}") from e
    return value


def _check_shape(name: str, a: np.ndarray, expected: tuple, what: str = "") -> None:
    if a.shape != expected:
        raise ValueError(f"{name} must have shape {what}{expected}, got {a.shape}")


def _check_cell(cell) -> str:
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    return cell


def _check_x(x) -> np.ndarray:
    x = _array("x", x)
    if x.dtype not in _SEQUENCE_DTYPES:
        raise TypeError(f"x must have dtype {_SEQUENCE_DTYPE_NAMES}, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (T, B, I) or (B, T, I) with batch_first, got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"x must not be empty (every size >= 1), got shape {x.shape}")
    return x


def _check_options(cell: str, peephole, coupled, cell_clip, reset_after=True, layer_norm=False, proj_size=0) -> dict:
    """The cell variants' options: peephole, coupled (bools), cell_clip (None or a number > 0; inf
    allowed), proj_size (an int >= 0; 0: no projection), all LSTM; reset_after (a bool, GRU);
    layer_norm (a bool, LSTM and GRU, not with the others). Returns them as the kernels take them
    (cell_clip 0.0 = no clipping; proj_size only when set); ``_is_variant`` tells whether any differs
    from the base cell."""
    for name, v in (("peephole", peephole), ("coupled", coupled)):
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    if isinstance(proj_size, (bool, np.bool_)) or not isinstance(proj_size, (int, np.integer)):
        raise TypeError(f"proj_size must be an int >= 0 (0: no projection), got {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError(f"proj_size must be >= 0 (0: no projection), got {proj_size}")
    if not cell_info(cell).lstm_variants and proj_size:
        raise ValueError(f"proj_size is an LSTM option, got proj_size={proj_size} for cell {cell!r}")
    if cell_clip is not None:
        if isinstance(cell_clip, (bool, np.bool_)) or not isinstance(cell_clip, (int, float, np.integer, np.floating)):
            raise TypeError(f"cell_clip must be None or a number > 0, got {type(cell_clip).__name__}")
        if not cell_clip > 0:
            raise ValueError(f"cell_clip must be > 0 (None: no clipping), got {cell_clip}")
    if not cell_info(cell).lstm_variants and (peephole or coupled or cell_clip is not None):
        raise ValueError(f"peephole, coupled and cell_clip are LSTM options, got them for cell {cell!r}")
    if reset_after is not True and (not cell_info(cell).reset_after_option
                                    or not isinstance(reset_after, (bool, np.bool_))):
        raise ValueError(f"reset_after is a GRU option and a bool, got {reset_after!r} for cell {cell!r}")
    if layer_norm is not False:
        if not cell_info(cell).layer_norm_option or not isinstance(layer_norm, (bool, np.bool_)):
            raise ValueError(f"layer_norm is an LSTM/GRU option and a bool, got {layer_norm!r} for cell {cell!r}")
        if layer_norm and (peephole or coupled or cell_clip is not None or not reset_after):
            raise ValueError("layer_norm=True does not combine with peephole, coupled, cell_clip or reset_after=False")
        if layer_norm and proj_size:
            raise ValueError(f"layer_norm=True does not combine with proj_size (got proj_size={proj_size})")
    options = dict(peephole=bool(peephole), coupled=bool(coupled),
                   cell_clip=0.0 if cell_clip is None else float(cell_clip), reset_after=bool(reset_after),
                   layer_norm=bool(layer_norm))
    if proj_size:  # only when set: the other cells' calls pass exactly what they did before
        options["proj_size"] = int(proj_size)
    return options


def _is_variant(options: dict) -> bool:
    """Whether the options (``_check_options``) select a variant rather than the base cell."""
    return bool(options.get("peephole") or options.get("coupled") or options.get("cell_clip")
                or not options.get("reset_after", True) or options.get("layer_norm") or options.get("proj_size"))


def _gates(cell: str, options: dict) -> int:
    """Gate blocks of the cell with these options (the coupled LSTM has 3: f, g, o)."""
    return cell_info(cell).gates_with(bool(options.get("coupled")))


def _hidden_size_of(name: str, w_hh: np.ndarray, G: int, P: int) -> int:
    """H from the recurrent weights ``name`` of a G-gate cell: w_hh [G*H, H], or [G*H, P] for the
    projected LSTM (proj_size = P > 0: H from its rows). ValueError for any other shape."""
    if P:
        if w_hh.ndim != 2 or w_hh.shape[0] < G or w_hh.shape[0] % G:
            raise ValueError(f"{name} must be 2-D ({G}*H, P={P}) with H >= 1 (proj_size={P}), got shape {w_hh.shape}")
        return int(w_hh.shape[0]) // G
    if w_hh.ndim != 2 or w_hh.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D ({G}*H, H) with H >= 1, got shape {w_hh.shape}")
    return int(w_hh.shape[1])


def _check_weights(cell: str, weights, input_size: int, num_directions: int, dtype, options=None) -> tuple:
    """Returns (weights as tuples of arrays, hidden_size, num_layers, bias). Nothing is copied here:
    the caller checks the sizes first (a broadcast view may be far too large to copy). With
    peepholes every entry continues with w_ch [U, H] (U = 3, coupled 2); with layer_norm with
    ln_weight_ih, ln_weight_hh [G*H] and, for the LSTM, ln_weight_c, ln_bias_c [H]; with proj_size = P
    it ends with w_hr [P, H], w_hh is [G*H, P] and layers above the first read D*P inputs."""
    options = options or {}
    n_ln = (4 if carries_cell_state(cell) else 2) if options.get("layer_norm") else 0  # the layer norm's vectors
    P = options.get("proj_size", 0)
    peep = 1 if options.get("peephole") else 0
    extra = peep + n_ln + (1 if P else 0)  # arrays after w_ih, w_hh[, b_ih, b_hh]
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list of (w_ih, w_hh[, b_ih, b_hh]) tuples, got {type(weights).__name__}")
    if len(weights) == 0 or len(weights) % num_directions:
        raise ValueError(f"weights must hold num_layers * {num_directions} entries "
                         f"(bidirectional={num_directions == 2}), got {len(weights)}")
    G = _gates(cell, options)
    first = weights[0]
    if not isinstance(first, (list, tuple)) or len(first) not in (2 + extra, 4 + extra):
        if n_ln:
            ln_names = ", ln_weight_ih, ln_weight_hh" + (", ln_weight_c, ln_bias_c" if n_ln == 4 else "")
            raise ValueError(f"weights[0] must be a tuple (w_ih, w_hh{ln_names}) or (w_ih, w_hh, b_ih, b_hh{ln_names}) "
                             "(layer_norm=True)")
        if extra:
            tail = (", w_ch" if peep else "") + (", w_hr" if P else "")
            raise ValueError(f"weights[0] must be a tuple (w_ih, w_hh{tail}) or (w_ih, w_hh, b_ih, b_hh{tail}) "
                             f"({'peephole=True' if peep else ''}{', ' if peep and P else ''}"
                             f"{f'proj_size={P}' if P else ''})")
        raise ValueError("weights[0] must be a tuple (w_ih, w_hh) or (w_ih, w_hh, b_ih, b_hh)")
    w_hh0 = _array("weights[0][1] (w_hh)", first[1])
    H = _hidden_size_of("weights[0][1] (w_hh)", w_hh0, G, P)
    bias = len(first) == 4 + extra
    peephole, coupled = bool(peep), bool(options.get("coupled"))
    # every entry's shapes by the cell table's rule (one copy: C++ rnn.h param_shape); w_hr [P, H] last
    expected = param_shapes(cell, input_size, H, len(weights) // num_directions, num_directions == 2, bias, peephole,
                            coupled, P)
    names = list(cell_info(cell).param_names[:4 if bias else 2]) + (["w_ch"] if peep else [])
    names += ["ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c"][:n_ln] + (["w_hr"] if P else [])
    G = _gates(cell, options)
    ln_shapes = ((G * H,), (G * H,), (H,), (H,))[:n_ln]
    ln_formulas = (f"({G}*H,) = ", f"({G}*H,) = ", "(H,) = ", "(H,) = ")[:n_ln]
    out = []
    for k, entry in enumerate(weights):
        layer, d = divmod(k, num_directions)
        where = f"layer {layer}, {_DIRECTION[d]}"
        if not isinstance(entry, (list, tuple)) or len(entry) != len(first):
            raise ValueError(f"weights[{k}] ({where}) must be a tuple of {len(first)} arrays like weights[0]")
        shapes = expected[k] + ln_shapes + (((P, H),) if P else ())
        formulas = param_formulas(cell, layer, num_directions, bias, peephole, coupled, P) + ln_formulas
        arrays = []
        for i, a in enumerate(entry):
            name = f"weights[{k}][{i}] ({names[i]}, {where})"
            if a is None:
                raise TypeError(f"{name} must be a numpy array of shape {shapes[i]}, got None (for no biases, "
                                "give every entry as a 2-tuple (w_ih, w_hh))")
            a = _array(name, a)
            _check_dtype(name, a, dtype)
            _check_shape(name, a, shapes[i], formulas[i])
            arrays.append(a)
        out.append(tuple(arrays))
    return out, H, len(weights) // num_directions, bias


def _check_state(name: str, s, shape: tuple, dtype, width: str = "H") -> Optional[np.ndarray]:
    """A state [L*D, B, width] (width "P": the projected LSTM's h) as a contiguous array, or None."""
    if s is None:
        return None
    s = _array(name, s)
    _check_dtype(name, s, dtype)
    _check_shape(name, s, shape, f"(num_layers*num_directions, B, {width}) = ")
    return np.ascontiguousarray(s)


def _h_width(options: dict, H: int) -> tuple:
    """The width of h and its letter: (P, "P") for the projected LSTM, else (H, "H")."""
    P = options.get("proj_size", 0)
    return (P, "P") if P else (H, "H")


def _check_lengths(lengths, T: int, B: int) -> Optional[np.ndarray]:
    if lengths is None:
        return None
    lengths = _array("lengths", lengths)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    _check_shape("lengths", lengths, (B,), "(B,) = ")
    if lengths.min() < 1 or lengths.max() > T:
        bad = int(lengths[(lengths < 1) | (lengths > T)][0])
        raise ValueError(f"lengths must lie in [1, T={T}], got {bad}")
    return np.ascontiguousarray(lengths, dtype=np.int64)


def _check_sizes(T: int, B: int, I: int, H: int, G: int, D: int) -> None:
    if max(T * B, G * H, D * H, I) > _BLAS_MAX:
        raise ValueError(f"sizes too large: T*B = {T * B}, G*H = {G * H}, D*H = {D * H}, I = {I}; each must be "
                         "<= 2^31 - 1 (the BLAS's 32-bit index limit)")


def forward(cell: str, x, weights: Sequence, h0=None, c0=None, *, lengths=None, bidirectional: bool = False,
            batch_first: bool = False, training: bool = False, peephole: bool = False, coupled: bool = False,
            cell_clip: Optional[float] = None, proj_size: int = 0, reset_after: bool = True, layer_norm: bool = False,
            recurrent_dropout: float = 0.0, weight_dropout: float = 0.0, grad_clip: Optional[float] = None,
            dilation=1, zoneout: float = 0.0, zoneout_cell: float = 0.0, recurrent_mask=None, weight_mask=None,
            zoneout_mask=None, zoneout_cell_mask=None, rng=None, seed=None) -> RNNResult:
    """Run a stack of recurrent layers over a whole sequence.

    cell: "lstm", "gru", "rnn_tanh" or "rnn_relu".
    x: [T, B, I] ([B, T, I] if batch_first), float32, float64, float16 or bfloat16 (ml_dtypes); the
       weights and states in the same dtype.
    weights: list of num_layers * num_directions tuples (w_ih, w_hh[, b_ih, b_hh]) in PyTorch's
        layout and gate order (see the module docstring).
    h0, c0: [L*D, B, H] initial states (zeros when None); c0 for the LSTM only.
    lengths: [B] ints in [1, T]: outputs past a sequence's length are zero, its final state is
        the one at its own last step, and the reverse direction starts at that step.
    training: keep what ``backward`` needs (``result.saved``); False saves nothing.
    peephole, coupled, cell_clip: the LSTM variants (README "Cell variants"). peephole=True: each
        weights entry ends with w_ch [3, H] (rows i, f, o; coupled: [2, H], rows f, o), i and f see
        c_{t-1}, o sees c_t. coupled=True: gate blocks (f, g, o), G = 3, i = 1 - f. cell_clip=C > 0:
        c_t = clamp(f*c_{t-1} + i*g, -C, C) is carried and used for h.
    proj_size: P > 0, the projected LSTM exactly as torch.nn.LSTM(proj_size=P):
        h_t = W_hr (o * tanh(c_t)), h is P wide, c is H wide. Each weights entry is then
        (w_ih [4*H, I_l], w_hh [4*H, P][, b_ih, b_hh][, w_ch], w_hr [P, H]) (torch's order; layers
        above the first read I_l = D*P), h0 and h_n are [L*D, B, P], c0 and c_n [L*D, B, H], the
        output [T, B, D*P]. Combines with peephole, coupled and cell_clip, in every dtype, and with
        weight_dropout / weight_mask and grad_clip (the total reaching h_t, P wide, and c_t); not
        with layer_norm (ValueError) nor with the other training modifiers (NotImplementedError;
        fastrnn.reference and fastrnn.nn.LSTM compute them).
    reset_after: the GRU's reset gate after the hidden product (PyTorch's); False (Cho et al. 2014):
        n = tanh(W_in x + b_in + W_hn (r*h_{t-1}) + b_hn), same weights (README "Cell variants").
    layer_norm: the layer-normalised LSTM/GRU (haste's form; README "Cell variants"): each weights
        entry ends with ln_weight_ih, ln_weight_hh [G*H] and, for the LSTM, ln_weight_c, ln_bias_c
        [H] (after the biases, if any); not with peephole, coupled, cell_clip, reset_after=False or
        proj_size.

    ``saved`` keeps references to ``x`` (when already time-major and C-contiguous), the weights,
    h0, c0 and lengths, not copies: changing any of them in place before ``backward`` silently
    gives gradients of the changed values (NumPy has no version counter to detect it; torch.nn and
    fastrnn.nn raise). Keep them unchanged until ``backward``, or pass copies.

    Training modifiers (README "Training modifiers" has the equations). Masks are drawn
    only when ``training`` is True, from ``rng`` (a seed or a ``numpy.random.Generator``; None: fresh
    entropy), unless given; a given mask is used as it is, also with ``training=False``:
    recurrent_dropout: p; one mask m = Bernoulli(1-p)/(1-p) [L*D, B, H] (or ``recurrent_mask``)
        multiplies h_{t-1} where it enters W_hh, the same at every step.
    weight_dropout: p; one mask M = Bernoulli(1-p)/(1-p) per W_hh (or ``weight_mask``, L*D arrays
        [G*H, H]; [G*H, P] with proj_size) for the call; backward gives dL/dW_hh through the mask.
    grad_clip: C > 0; backward clamps the total gradient reaching each h_t (and the LSTM's c_t) to
        [-C, C] (a training heuristic, not the forward's gradient).
    dilation: an int or one per layer; layer l's step t reads the state of step t - d_l.
    zoneout, zoneout_cell: p (zoneout_cell: the LSTM's c); h_t = d h_{t-1} + (1 - d) h~_t with
        d ~ Bernoulli(p) per element and step when training (or ``zoneout_mask`` [L*D, T, B, H]; for
        c ``zoneout_cell_mask``), d = p when not (the eval formula).
    seed: instead of masks drawn here, the kernels draw the recurrent-dropout and zoneout masks
        themselves (inside the fused step, again in backward; nothing [T, B, H] is stored) from a
        Philox4x32-10 stream keyed on (seed, layer and direction, t, b, j); an int, or a
        ``numpy.random.Generator`` that one 64-bit seed is drawn from. The same seed gives the same
        masks: ``fastrnn.reference.philox.seeded_masks`` materialises them (README "Training
        modifiers"). With dilation the masks are materialised so and passed as arrays; the weight
        mask comes from ``numpy.random.default_rng(seed)``. Not with ``rng`` or any mask argument.
    The modifiers combine with peephole, coupled and cell_clip (the kernels run the variant's cell
    with each). Zoneout blends the cell's new state as a whole: within step t, h~_t and o's
    peephole see c~_t (the cell's new c, clipped by cell_clip); the state carried to step t + 1,
    whose i and f peepholes read it, is the zoned-out c_t = d_c c_{t-1} + (1 - d_c) c~_t (Krueger
    et al. 2017: h_t = d_h h_{t-1} + (1 - d_h) o_t tanh(c~_t)).

    Returns RNNResult(output [T, B, D*H] (or batch-first), h_n [L*D, B, H], c_n (LSTM) or None, saved)
    (with proj_size: output [T, B, D*P], h_n [L*D, B, P]).
    """
    cell = _check_cell(cell)
    options = _check_options(cell, peephole, coupled, cell_clip, reset_after, layer_norm, proj_size)
    x = _check_x(x)
    D = 2 if bidirectional else 1
    if batch_first:
        B, T, I = x.shape
    else:
        T, B, I = x.shape
    weights, H, L, _ = _check_weights(cell, weights, I, D, x.dtype, options)
    _check_sizes(T, B, I, H, _gates(cell, options), D)
    weights = [tuple(np.ascontiguousarray(a) for a in entry) for entry in weights]
    state_shape = (L * D, B, H)
    HW, hw = _h_width(options, H)
    h0 = _check_state("h0", h0, (L * D, B, HW), x.dtype, hw)
    if not carries_cell_state(cell) and c0 is not None:
        raise ValueError(f"c0 is only for the LSTM, got one for cell {cell!r}")
    c0 = _check_state("c0", c0, state_shape, x.dtype) if carries_cell_state(cell) else None
    lengths = _check_lengths(lengths, T, B)
    G = _gates(cell, options)  # the weight masks' [G*H, H]: 3 gate blocks for the coupled LSTM
    _check_probability("zoneout", zoneout)
    if (not options["reset_after"] or options["layer_norm"]) and (
            recurrent_dropout or weight_dropout or grad_clip is not None or dilation != 1 or zoneout or zoneout_cell
            or recurrent_mask is not None or weight_mask is not None or zoneout_mask is not None
            or zoneout_cell_mask is not None):
        raise NotImplementedError("the training modifiers (recurrent_dropout, weight_dropout, grad_clip, dilation, "
                                  "zoneout, zoneout_cell) run with the base cells and the LSTM variants (peephole, "
                                  "coupled, cell_clip), not yet with reset_after=False or layer_norm in the NumPy API "
                                  "(fastrnn.nn runs those combinations as composed torch ops)")
    _check_probability("zoneout_cell", zoneout_cell)
    if not carries_cell_state(cell) and (zoneout_cell > 0 or zoneout_cell_mask is not None):
        raise ValueError(f"zoneout_cell is the LSTM's (its cell state c), got one for cell {cell!r}")
    _check_probability("recurrent_dropout", recurrent_dropout)
    _check_probability("weight_dropout", weight_dropout)
    grad_clip = _check_grad_clip(grad_clip)
    dilations = _check_dilation(dilation, L)
    if options.get("proj_size") and (recurrent_dropout or any(d != 1 for d in dilations) or zoneout or zoneout_cell
                                     or recurrent_mask is not None or zoneout_mask is not None
                                     or zoneout_cell_mask is not None):
        raise NotImplementedError("the training modifiers recurrent_dropout, dilation, zoneout and zoneout_cell are "
                                  "not fused with proj_size yet (weight_dropout and grad_clip are): "
                                  "fastrnn.reference.forward(..., proj_size=P) and fastrnn.nn.LSTM(proj_size=P) "
                                  "(composed torch ops) run them")
    given_masks = [n for n, m in (("recurrent_mask", recurrent_mask), ("weight_mask", weight_mask),
                                  ("zoneout_mask", zoneout_mask), ("zoneout_cell_mask", zoneout_cell_mask))
                   if m is not None]
    seed = _check_seed(seed, rng, given_masks)
    mask_seed = None  # (seed, stream, zoneout, zoneout_cell, recurrent_dropout): the kernels draw the masks
    if seed is not None and training:
        rng = seed  # the weight masks' generator
        if any(d != 1 for d in dilations):  # the folded calls' rows are not the caller's: materialised here
            from .reference.philox import seeded_masks
            recurrent_mask, zoneout_mask, zoneout_cell_mask = seeded_masks(
                seed, L * D, T, B, H, zoneout=zoneout, zoneout_cell=zoneout_cell if carries_cell_state(cell) else 0.0,
                recurrent_dropout=recurrent_dropout, dtype=x.dtype)
        elif recurrent_dropout > 0 or zoneout > 0 or zoneout_cell > 0:
            mask_seed = (seed, 0, float(zoneout), float(zoneout_cell), float(recurrent_dropout))
    draws = training and (recurrent_dropout > 0 and recurrent_mask is None and mask_seed is None
                          or weight_dropout > 0 and weight_mask is None
                          or mask_seed is None and (zoneout > 0 and zoneout_mask is None
                                                    or zoneout_cell > 0 and zoneout_cell_mask is None))
    generator = np.random.default_rng(rng) if draws else None
    if recurrent_mask is not None:
        recurrent_mask = _check_state("recurrent_mask", recurrent_mask, state_shape, x.dtype)
    elif training and recurrent_dropout > 0 and mask_seed is None:
        recurrent_mask = _bernoulli_mask(generator, state_shape, recurrent_dropout, x.dtype)
    HW, width = _h_width(options, H)  # W_hh's columns: h's width (P projected)
    if weight_mask is not None:
        weight_mask = _check_weight_mask(weight_mask, L * D, (G * H, HW), x.dtype, width)
    elif training and weight_dropout > 0:
        weight_mask = [_bernoulli_mask(generator, (G * H, HW), weight_dropout, x.dtype) for _ in range(L * D)]
    steps_shape = (L * D, T, B, H)
    zone = []  # [d_h, d_c], each [L*D, T, B, H] or None
    for name, p, given in (("zoneout_mask", zoneout, zoneout_mask), ("zoneout_cell_mask", zoneout_cell,
                                                                       zoneout_cell_mask)):
        if given is not None:
            given = _array(name, given)
            _check_dtype(name, given, x.dtype)
            _check_shape(name, given, steps_shape, "(num_layers*num_directions, T, B, H) = ")
            zone.append(np.ascontiguousarray(given))
        elif p > 0 and training and mask_seed is not None:  # the kernels draw d
            zone.append(None)
        elif p > 0:  # training: keep the previous state where d = 1; eval: d = p
            zone.append((generator.random(steps_shape) < p).astype(x.dtype) if training
                        else np.full(steps_shape, p, x.dtype))
        else:
            zone.append(None)
    if weight_mask is not None:  # DropConnect: the kernels run on W_hh * M
        weights = [(e[0], np.ascontiguousarray(e[1] * m)) + tuple(e[2:]) for e, m in zip(weights, weight_mask)]

    xt = np.ascontiguousarray(x.transpose(1, 0, 2) if batch_first else x)  # [T, B, I]
    if any(d != 1 for d in dilations):
        y, hn, cn, saved = _dilated_forward(cell, xt, weights, h0, c0, lengths, H, L, bidirectional, training,
                                            recurrent_mask, grad_clip, dilations, zone, options)
    else:
        y, hn, cn, saved = _plain_forward(cell, xt, weights, h0, c0, lengths, H, L, bidirectional, training,
                                          recurrent_mask, grad_clip, zone, options, mask_seed)
    if saved is not None:
        saved.batch_first, saved.weight_mask = batch_first, weight_mask
    if batch_first:
        y = np.ascontiguousarray(y.transpose(1, 0, 2))
    return RNNResult(y, hn, cn, saved)


def _check_seed(seed, rng, given_masks: list) -> Optional[int]:
    """seed= as the kernels take it: None, or an int in [0, 2^64) (an int taken mod 2^64, or one
    drawn from a numpy.random.Generator). Not together with rng= or a mask argument."""
    if seed is None:
        return None
    if rng is not None:
        raise ValueError("give seed= (the kernels draw the masks) or rng= (the masks drawn in NumPy), not both")
    if given_masks:
        raise ValueError(f"give seed= or the masks, not both: got seed= and {', '.join(given_masks)}")
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**64, dtype=np.uint64))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy.random.Generator, got {type(seed).__name__}")
    return int(seed) % 2**64


def _check_probability(name: str, p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0 <= p < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}")


def _check_grad_clip(c) -> float:
    """grad_clip as the kernels take it: C > 0, or 0.0 for None (off)."""
    if c is None:
        return 0.0
    if isinstance(c, bool) or not isinstance(c, (int, float, np.floating, np.integer)) or not c > 0:
        raise ValueError(f"grad_clip must be a number > 0 (or None for off), got {c!r}")
    return float(c)


def _check_dilation(dilation, L: int) -> list:
    """One dilation per layer, each an int >= 1."""
    if isinstance(dilation, (int, np.integer)):
        values = [dilation] * L
    else:
        values = list(dilation) if isinstance(dilation, (list, tuple)) else None
    if values is None or len(values) != L or any(isinstance(d, bool) or not isinstance(d, (int, np.integer))
                                                 or d < 1 for d in values):
        raise ValueError(f"dilation must be an int >= 1 or a list of num_layers = {L} of them, got {dilation!r}")
    return [int(d) for d in values]


def _check_weight_mask(masks, count: int, shape: tuple, dtype, width: str = "H") -> list:
    if not isinstance(masks, (list, tuple)) or len(masks) != count:
        raise ValueError(f"weight_mask must be a list of num_layers*num_directions = {count} arrays {shape}, got "
                         f"{type(masks).__name__}" + (f" of {len(masks)}" if isinstance(masks, (list, tuple)) else ""))
    out = []
    for k, m in enumerate(masks):
        m = _array(f"weight_mask[{k}]", m)
        _check_dtype(f"weight_mask[{k}]", m, dtype)
        _check_shape(f"weight_mask[{k}]", m, shape, f"(G*H, {width}) = ")
        out.append(np.ascontiguousarray(m))
    return out


def _bernoulli_mask(generator: np.random.Generator, shape: tuple, p: float, dtype) -> np.ndarray:
    """Bernoulli(1 - p) / (1 - p) of ``shape``: the dropout masks' values, 0 or 1/(1-p)."""
    return ((generator.random(shape) >= p) / (1.0 - p)).astype(dtype)


def _plain_forward(cell, xt, weights, h0, c0, lengths, H, L, bidirectional, training, recurrent_mask, grad_clip,
                   zone=(None, None), options=None, mask_seed=None):
    """One kernel call for the whole stack: xt [T, B, I] -> (y [T, B, D*H], hn, cn, Saved or None).
    zone: the zoneout masks (d_h, d_c), each [L*D, T, B, H] or None; options: the LSTM variants'
    (``_check_options``), which the kernels combine with every modifier; mask_seed: the masks the
    kernels draw, (seed, stream, zoneout, zoneout_cell, recurrent_dropout), or None."""
    options = options or {}
    T, B, I = xt.shape
    D = 2 if bidirectional else 1
    state_shape = (L * D, B, H)
    HW, _ = _h_width(options, H)
    y = np.empty((T, B, D * HW), xt.dtype)
    hn = np.empty((L * D, B, HW), xt.dtype)
    cn = np.empty(state_shape, xt.dtype) if carries_cell_state(cell) else None
    reserve = None
    if training:
        size = _core.reserve_size(_CELL_ID[cell], T, B, I, H, L, bidirectional, **options)
        # memory the kernels' scratch cache keeps once the reserve is freed (ops.py's _new_reserve)
        reserve = _core.reserve_buffer(size * xt.dtype.itemsize).view(xt.dtype)
    # a training forward keeps h~ / c~ of every zoned-out step for the cell's backward
    seeded_p = (0.0, 0.0) if mask_seed is None else (mask_seed[2], mask_seed[3] if cn is not None else 0.0)
    pre = [np.empty((L * D, T, B, H), xt.dtype) if (training and (z is not None or p > 0)) else None
           for z, p in zip(zone, seeded_p)]
    _core.forward(_CELL_ID[cell], xt, weights, h0, c0, lengths, y, hn, cn, reserve, H, L, bidirectional,
                  recurrent_mask, zone[0], zone[1], pre[0], pre[1], **options, mask_seed=mask_seed)
    saved = None
    if training:
        saved = Saved(cell=cell, x=xt, weights=weights, h0=h0, c0=c0, lengths=lengths, reserve=reserve,
                      hidden_size=H, num_layers=L, bidirectional=bidirectional, batch_first=False,
                      recurrent_mask=recurrent_mask, grad_clip=grad_clip, zoneout=(zone, pre), options=options,
                      mask_seed=mask_seed)
    return y, hn, cn, saved


# ---- dilation: layer l's step t reads step t - d, i.e. d interleaved sequences of every d-th step ------
# Step t = k*d + r is step k of sequence (r, b): [T, B] is folded into [ceil(T/d), d*B] (row r*B + b),
# padded past T, and the ordinary kernels run on it, one call per layer. Every folded sequence starts
# from its sequence's initial state; sequence b's final state is that of its last step len_b - 1
# (residue (len_b - 1) % d) forward, and that of step 0 (residue 0) in reverse. Exact: the same
# products and cells on the same rows, reordered.
def _fold(a: np.ndarray, d: int) -> np.ndarray:
    """[T, B, F] -> [ceil(T/d), d*B, F], zero-padded past T."""
    T, B, F = a.shape
    K = -(-T // d)
    padded = np.zeros((K * d, B, F), a.dtype)
    padded[:T] = a
    return padded.reshape(K, d * B, F)


def _unfold(a: np.ndarray, d: int, T: int) -> np.ndarray:
    """Inverse of _fold: [K, d*B, F] -> [T, B, F]."""
    K, dB, F = a.shape
    return a.reshape(K * d, dB // d, F)[:T]


def _fold_lengths(lengths: Optional[np.ndarray], T: int, B: int, d: int) -> np.ndarray:
    """Each folded sequence's length, ceil((len_b - r) / d), at least 1 (a sequence shorter than r has
    no step there: its one step is padding, never read into an output or a final state)."""
    full = np.full(B, T, np.int64) if lengths is None else lengths
    r = np.arange(d)[:, None]
    return np.ascontiguousarray(np.maximum(-(-(full[None, :] - r) // d), 1).reshape(d * B), dtype=np.int64)


def _final_rows(lengths: Optional[np.ndarray], T: int, B: int, d: int, D: int) -> list:
    """Per direction, the folded row of each sequence's final state: [B] indices into d*B."""
    full = np.full(B, T, np.int64) if lengths is None else lengths
    rows = [((full - 1) % d) * B + np.arange(B)]
    if D == 2:
        rows.append(np.arange(B))
    return rows


def _dilated_forward(cell, xt, weights, h0, c0, lengths, H, L, bidirectional, training, recurrent_mask, grad_clip,
                     dilations, zone=(None, None), options=None):
    """Layer by layer, each on its folded sequence: xt [T, B, I] -> (y [T, B, D*H], hn, cn, Saved or None)."""
    T, B, _ = xt.shape
    D = 2 if bidirectional else 1
    lstm = carries_cell_state(cell)
    layer_in, hns, cns, layers = xt, [], [], []
    for l, d in enumerate(dilations):
        k = slice(l * D, (l + 1) * D)
        fold_state = (lambda s: None if s is None else np.ascontiguousarray(np.tile(s[k], (1, d, 1))))
        lengths_f = lengths if d == 1 else _fold_lengths(lengths, T, B, d) if lengths is not None or T % d else None
        x_f = np.ascontiguousarray(_fold(layer_in, d))
        zone_f = [None if z is None else np.ascontiguousarray(np.stack([_fold(z[i], d) for i in range(k.start, k.stop)]))
                  for z in zone]  # [D, ceil(T/d), d*B, H]
        y_f, hn_f, cn_f, saved = _plain_forward(cell, x_f, weights[k], fold_state(h0), fold_state(c0), lengths_f, H, 1,
                                                bidirectional, training, fold_state(recurrent_mask), grad_clip, zone_f,
                                                options)
        y = _unfold(y_f, d, T)
        if lengths is not None:  # folded sequences of no live step output their padding step: zero it
            y = y * (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
        rows = _final_rows(lengths, T, B, d, D)
        hns += [hn_f[i, rows[i]] for i in range(D)]
        if lstm:
            cns += [cn_f[i, rows[i]] for i in range(D)]
        layers.append((saved, d, lengths_f))
        layer_in = np.ascontiguousarray(y)
    hn = np.ascontiguousarray(np.stack(hns))
    cn = np.ascontiguousarray(np.stack(cns)) if lstm else None
    saved = None
    if training:
        saved = Saved(cell=cell, x=xt, weights=weights, h0=h0, c0=c0, lengths=lengths, reserve=None, hidden_size=H,
                      num_layers=L, bidirectional=bidirectional, batch_first=False, recurrent_mask=recurrent_mask,
                      grad_clip=grad_clip, dilated=layers)
    return layer_in, hn, cn, saved


def _dilated_backward(saved, dyt, dhn, dcn):
    """Backward of _dilated_forward, layer by layer from the top: -> (dx [T, B, I], dh0, dc0, dweights)."""
    T, B, _ = saved.x.shape
    D = 2 if saved.bidirectional else 1
    H, lstm = saved.hidden_size, carries_cell_state(saved.cell)
    dout = dyt
    dh0s, dc0s, dweights = [None] * saved.num_layers, [None] * saved.num_layers, [None] * saved.num_layers
    for l in reversed(range(saved.num_layers)):
        layer_saved, d, _ = saved.dilated[l]
        rows = _final_rows(saved.lengths, T, B, d, D)

        def fold_final(g):  # dL/d(final states) [D, B, H] -> the folded rows that hold them
            if g is None:
                return None
            out = np.zeros((D, d * B, H), dyt.dtype)
            for i in range(D):
                out[i, rows[i]] = g[l * D + i]
            return out
        if saved.lengths is not None:  # zeroed outputs (see _dilated_forward) pass no gradient
            dout = dout * (np.arange(T)[:, None] < saved.lengths[None, :])[:, :, None]
        dy_f = _fold(dout, d)
        dx_f, dh0_f, dc0_f, dw = _plain_backward(layer_saved, np.ascontiguousarray(dy_f), fold_final(dhn),
                                                 fold_final(dcn) if lstm else None)
        dout = np.ascontiguousarray(_unfold(dx_f, d, T))
        dh0s[l] = dh0_f.reshape(D, d, B, H).sum(axis=1)
        dc0s[l] = dc0_f.reshape(D, d, B, H).sum(axis=1) if lstm else None
        dweights[l] = dw
    dh0 = np.ascontiguousarray(np.concatenate(dh0s))
    dc0 = np.ascontiguousarray(np.concatenate(dc0s)) if lstm else None
    return dout, dh0, dc0, [entry for layer in dweights for entry in layer]


def backward(saved: Saved, dy, dhn=None, dcn=None) -> RNNGrads:
    """Backpropagation through time for a ``forward(..., training=True)`` call.

    dy: gradient of ``output``, same shape and layout. dhn, dcn: gradients of h_n and c_n
    ([L*D, B, H]; None = zero; dcn for the LSTM only; with proj_size dhn is [L*D, B, P]).

    Returns RNNGrads(dx (layout of x), dh0, dc0 (LSTM) or None, dweights) where dweights mirrors
    ``weights``: one tuple (dW_ih, dW_hh[, db_ih, db_hh][, dW_ch][, dW_hr]) per layer and direction.

    It reads x, the weights and the states through ``saved``'s references: they must not have been
    changed in place since the forward (see :func:`forward`).
    """
    if not isinstance(saved, Saved):
        raise TypeError("saved must be the .saved of a forward(..., training=True) result, "
                        f"got {type(saved).__name__}")
    x = saved.x
    T, B, I = x.shape
    H, L, D = saved.hidden_size, saved.num_layers, 2 if saved.bidirectional else 1
    HW, hw = _h_width(saved.options, H)
    dy = _array("dy", dy)
    _check_dtype("dy", dy, x.dtype)
    _check_shape("dy", dy, (B, T, D * HW) if saved.batch_first else (T, B, D * HW), "the output's shape ")
    dyt = np.ascontiguousarray(dy.transpose(1, 0, 2) if saved.batch_first else dy)
    state_shape = (L * D, B, H)
    dhn = _check_state("dhn", dhn, (L * D, B, HW), x.dtype, hw)
    lstm = carries_cell_state(saved.cell)
    if not lstm and dcn is not None:
        raise ValueError(f"dcn is only for the LSTM, got one for cell {saved.cell!r}")
    dcn = _check_state("dcn", dcn, state_shape, x.dtype) if lstm else None

    if saved.dilated is not None:
        dx, dh0, dc0, dweights = _dilated_backward(saved, dyt, dhn, dcn)
    else:
        dx, dh0, dc0, dweights = _plain_backward(saved, dyt, dhn, dcn)
    if saved.weight_mask is not None:  # dL/dW_hh = M * dL/d(W_hh * M)
        dweights = [(e[0], e[1] * m) + tuple(e[2:]) for e, m in zip(dweights, saved.weight_mask)]
    if saved.batch_first:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    return RNNGrads(dx, dh0, dc0, dweights)


def _plain_backward(saved: Saved, dyt, dhn, dcn):
    """The kernel backward of a _plain_forward: dyt [T, B, D*H] -> (dx [T, B, I], dh0, dc0, dweights)."""
    x = saved.x
    L, D = saved.num_layers, 2 if saved.bidirectional else 1
    state_shape = (L * D, x.shape[1], saved.hidden_size)
    lstm = carries_cell_state(saved.cell)
    dx = np.empty_like(x)
    dh0 = np.empty((L * D, x.shape[1], _h_width(saved.options, saved.hidden_size)[0]), x.dtype)
    dc0 = np.empty(state_shape, x.dtype) if lstm else None
    dweights = [tuple(np.empty_like(w) for w in entry) for entry in saved.weights]
    zone, pre = saved.zoneout or ((None, None), (None, None))  # the masks d and the kept h~, c~
    _core.backward(_CELL_ID[saved.cell], x, saved.weights, saved.h0, saved.c0, saved.lengths, saved.reserve, dyt,
                   dhn, dcn, dx, dh0, dc0, dweights, saved.hidden_size, L, saved.bidirectional,
                   saved.recurrent_mask, saved.grad_clip, *zone, *pre, **saved.options, mask_seed=saved.mask_seed)
    return dx, dh0, dc0, dweights


def _backward_for(cell_names: tuple, saved, dy, dhn, dcn) -> RNNGrads:
    if isinstance(saved, Saved) and saved.cell not in cell_names:
        raise ValueError(f"saved comes from a {saved.cell!r} forward, expected one of {cell_names}")
    return backward(saved, dy, dhn, dcn)


def lstm_forward(x, weights, h0=None, c0=None, **kwargs) -> RNNResult:
    """``forward("lstm", ...)``: gates i, f, g, o; see :func:`forward`."""
    return forward(LSTM, x, weights, h0, c0, **kwargs)


def gru_forward(x, weights, h0=None, **kwargs) -> RNNResult:
    """``forward("gru", ...)``: gates r, z, n, reset applied after the hidden product (PyTorch's GRU), or
    before it with ``reset_after=False`` (Cho et al. 2014); see :func:`forward`."""
    return forward(GRU, x, weights, h0, **kwargs)


def rnn_forward(x, weights, h0=None, *, nonlinearity: str = "tanh", **kwargs) -> RNNResult:
    """Elman RNN ``h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh)``; see :func:`forward`."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return forward(BY_NONLINEARITY[nonlinearity].name, x, weights, h0, **kwargs)


def lstm_backward(saved, dy, dhn=None, dcn=None) -> RNNGrads:
    """Backward of :func:`lstm_forward`."""
    return _backward_for((LSTM,), saved, dy, dhn, dcn)


def gru_backward(saved, dy, dhn=None) -> RNNGrads:
    """Backward of :func:`gru_forward`."""
    return _backward_for((GRU,), saved, dy, dhn, None)


def rnn_backward(saved, dy, dhn=None) -> RNNGrads:
    """Backward of :func:`rnn_forward`."""
    return _backward_for((RNN_TANH, RNN_RELU), saved, dy, dhn, None)


def init_weights(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *, bidirectional: bool = False,
                 bias: bool = True, dtype=np.float32, seed=None, peephole: bool = False, coupled: bool = False,
                 init: str = "uniform", proj_size: int = 0) -> list:
    """Weights initialised as torch.nn does, U(-1/sqrt(H), 1/sqrt(H)), in the layout ``forward`` takes
    (with ``peephole``: w_ch [U, H] after the biases, initialised like the other weights; with
    ``coupled``: G = 3 gate blocks; with ``proj_size=P`` (LSTM): w_hh [G*H, P], layers above the
    first read D*P inputs, and w_hr [P, H] last, uniform like the others, as torch.nn.LSTM).
    ``init="identity"`` (IRNN, Le, Jaitly & Hinton 2015): every H x H gate block of w_hh is the
    identity, biases zero, w_ih ~ N(0, 0.001^2); the LSTM's peepholes, if any, stay uniform; with
    proj_size it raises ValueError (w_hh's blocks are H x P, not square)."""
    cell = _check_cell(cell)
    options = _check_options(cell, peephole, coupled, None, proj_size=proj_size)
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if init not in ("uniform", "identity"):
        raise ValueError(f"init must be 'uniform' or 'identity', got {init!r}")
    if init == "identity" and proj_size:
        raise ValueError(f"init='identity' needs square H x H blocks of w_hh; with proj_size={proj_size} they are "
                         f"H x P")
    rng = np.random.default_rng(seed)
    D, G, H = (2 if bidirectional else 1), _gates(cell, options), hidden_size
    k = 1.0 / np.sqrt(H)
    # (w_ih, w_hh[, b_ih, b_hh][, w_ch]) of every entry, by the cell table's rule
    all_shapes = param_shapes(cell, input_size, H, num_layers, bool(bidirectional), bool(bias), bool(peephole),
                              bool(coupled), int(proj_size))
    weights = []
    for layer in range(num_layers):
        for d in range(D):
            shapes = all_shapes[layer * D + d][:4 if bias else 2]
            entry = [rng.uniform(-k, k, s).astype(dtype) for s in shapes]
            if init == "identity":
                entry[0] = rng.normal(0.0, 0.001, shapes[0]).astype(dtype)
                entry[1] = np.tile(np.eye(H), (G, 1)).astype(dtype)
                entry[2:] = [np.zeros(s, dtype) for s in shapes[2:]]
            if peephole:
                entry.append(rng.uniform(-k, k, all_shapes[layer * D + d][-1]).astype(dtype))
            if proj_size:
                entry.append(rng.uniform(-k, k, (proj_size, H)).astype(dtype))
            weights.append(tuple(entry))
    return weights


def _half_weights(weight_dtype, dtype, matrices) -> bool:
    """Checks PreparedCell/PreparedStack's weight_dtype; True for float16 storage. matrices: (name,
    array) pairs that float16 must hold."""
    if weight_dtype not in (None, "float16", np.float16):
        raise ValueError(f"weight_dtype must be None (the weights' dtype) or 'float16', got {weight_dtype!r}")
    half = weight_dtype is not None
    if half and dtype != np.float32:
        raise TypeError(f"weight_dtype='float16' needs float32 weights, got {dtype}")
    if half:  # float16 holds |w| <= 65504; beyond that a weight would become inf
        for name, w in matrices:
            if w.size and not np.abs(w).max() <= np.finfo(np.float16).max:
                raise ValueError(f"{name} has values outside float16's range (|w| <= 65504, or not finite): "
                                 f"max |w| = {np.abs(w).max()}; use weight_dtype=None")
    return half


class _PreparedStep:
    """What PreparedCell and PreparedStack share: the checks of one step's arrays. A subclass sets
    cell, dtype, input_size, hidden_size and proj_size (0: none), ``_state_shape(B, width)`` and
    ``_state_formula(letter)`` (that shape in letters, for messages)."""

    proj_size: int = 0

    def _check_dtype(self, name: str, a: np.ndarray) -> None:
        if a.dtype != self.dtype:
            raise TypeError(f"{name} must have dtype {self.dtype} (the dtype of the prepared weights), got {a.dtype}")

    def _state_shape(self, B: int, width: int) -> tuple:
        raise NotImplementedError

    def _state_formula(self, letter: str) -> str:
        raise NotImplementedError

    def _widths(self, name: str) -> tuple:
        """The width of state ``name`` (h, h_out: P for the projected LSTM; c, c_out: H) and its letter."""
        if self.proj_size and name.startswith("h"):
            return self.proj_size, "P"
        return self.hidden_size, "H"

    def _state(self, name: str, s, B: int) -> np.ndarray:
        width, letter = self._widths(name)
        shape = self._state_shape(B, width)
        if s is None:
            return np.zeros(shape, self.dtype)
        s = _array(name, s)
        self._check_dtype(name, s)
        _check_shape(name, s, shape, self._state_formula(letter))
        return np.ascontiguousarray(s)

    def _step_arrays(self, x, h, c, out) -> tuple:
        """x [B, I], the states and the outputs checked: (x, h, c or None, out tuple); the compiled
        step refuses outputs that overlap an input or each other."""
        x = _array("x", x)
        self._check_dtype("x", x)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != self.input_size:
            raise ValueError(f"x must have shape (B, I={self.input_size}) with B >= 1, got {x.shape}")
        B = int(x.shape[0])
        lstm = carries_cell_state(self.cell)
        if not lstm and c is not None:
            raise ValueError(f"c is only for the LSTM, got one for cell {self.cell!r}")
        h = self._state("h", h, B)
        c = self._state("c", c, B) if lstm else None
        names = ("h_out", "c_out") if lstm else ("h_out",)
        if out is None:
            out = tuple(np.empty(self._state_shape(B, self._widths(name)[0]), self.dtype) for name in names)
        else:
            out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
            if len(out) != (2 if lstm else 1):
                raise ValueError(f"out must hold {'(h_out, c_out)' if lstm else '(h_out,)'}, got {len(out)} arrays")
            for name, o in zip(("h_out", "c_out"), out):
                if not isinstance(o, np.ndarray):
                    raise TypeError(f"{name} must be a numpy array, got {type(o).__name__}")
                self._check_dtype(name, o)
                width, letter = self._widths(name)
                _check_shape(name, o, self._state_shape(B, width), self._state_formula(letter))
        return np.ascontiguousarray(x), h, c, out


def _options_repr(options: dict) -> str:
    """The cell options that differ from the base cell's, as ``, name=value`` for a repr."""
    defaults = dict(peephole=False, coupled=False, cell_clip=0.0, reset_after=True, layer_norm=False, proj_size=0)
    return "".join(f", {k}={v!r}" for k, v in options.items() if v != defaults[k])


class PreparedCell(_PreparedStep):
    """One cell's weights prepared once for many single steps: step-by-step generation (decoding).

        step = fastrnn.PreparedCell("lstm", w_ih, w_hh, b_ih, b_hh)
        h, c = step(x, h, c)          # LSTM: x [B, I], h, c [B, H] -> new (h, c)
        h = gru_step(x, h)            # GRU / RNN: -> new h

    The weights (PyTorch's layout, as for ``forward``'s one entry) are checked and packed once, so
    that a step is one pass over them with the cell fused in and no per-call validation of the
    weights. A step equals ``forward`` on a one-step sequence. ``weight_dtype="float16"`` (float32
    weights only) stores them in half the bytes: a step of a large cell is bound by reading the
    weights, so this is about twice as fast, at float16's rounding of each weight (relative 2^-11);
    the products, the states and the cell maths stay float32. ``h``/``c`` default to zeros;
    ``out=(h_out[, c_out])`` writes the results into given arrays (they must not overlap x, h, c or
    each other in memory: ValueError).
    Later changes to the weight arrays are not seen: prepare again.

    The cell options (README "Cell variants"), the same step as ``forward``'s: ``peephole=True``
    with ``w_ch`` [3, H] (rows i, f, o; coupled: [2, H], rows f, o), ``coupled=True`` (G = 3 gate
    blocks f, g, o), ``cell_clip=C``; the GRU's ``reset_after=False`` (the n product on r*h_{t-1}:
    the step makes a second pass over the units for it) and ``layer_norm=True`` with the norm's
    vectors ``ln_weight_ih``, ``ln_weight_hh`` [G*H] and, for the LSTM, ``ln_weight_c``,
    ``ln_bias_c`` [H] (the row statistics over all units come between the passes).

    The projected LSTM (torch.nn.LSTM's ``proj_size``): ``proj_size=P`` with ``w_hr`` [P, H] (given
    ``w_hr`` alone, P is its row count); w_hh is [G*H, P], h and h_out are [B, P], c stays [B, H],
    and the step is ``h_t = (o*tanh(c_t)) W_hr^T`` after the cell (a second pass, over P units).
    """

    def __init__(self, cell: str, w_ih, w_hh, b_ih=None, b_hh=None, *, weight_dtype=None, peephole: bool = False,
                 coupled: bool = False, cell_clip=None, w_ch=None, reset_after: bool = True, layer_norm: bool = False,
                 ln_weight_ih=None, ln_weight_hh=None, ln_weight_c=None, ln_bias_c=None, proj_size: int = 0,
                 w_hr=None):
        self.cell = _check_cell(cell)
        if w_hr is not None:
            w_hr = _array("w_hr", w_hr)
            if w_hr.ndim != 2:
                raise ValueError(f"w_hr must be 2-D (P, H), got shape {w_hr.shape}")
            if isinstance(proj_size, (int, np.integer)) and not isinstance(proj_size, (bool, np.bool_)) \
                    and proj_size == 0:
                proj_size = int(w_hr.shape[0])  # P from w_hr [P, H]
        options = _check_options(self.cell, peephole, coupled, cell_clip, reset_after, layer_norm, proj_size)
        P = options.get("proj_size", 0)
        if P and w_hr is None:
            raise ValueError(f"proj_size={P} needs w_hr (the projection [P, H]), got None")
        norm_names = ("ln_weight_ih", "ln_weight_hh") + (("ln_weight_c", "ln_bias_c") if carries_cell_state(self.cell)
                                                         else ())
        given = dict(ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c, ln_bias_c=ln_bias_c)
        for name, v in given.items():
            if v is not None and (not options["layer_norm"] or name not in norm_names):
                raise ValueError(f"{name} is a vector of the layer norm ({', '.join(norm_names)} with "
                                 f"layer_norm=True, cell {self.cell!r}); got it with layer_norm={layer_norm!r}")
            if v is None and options["layer_norm"] and name in norm_names:
                raise ValueError(f"layer_norm=True needs {', '.join(norm_names)}; {name} is missing")
        if options["peephole"] != (w_ch is not None):
            raise ValueError("w_ch (the peepholes [U, H]) is required with peephole=True and only then, got "
                             f"peephole={peephole} and w_ch {'given' if w_ch is not None else 'None'}")
        w_ih, w_hh = _array("w_ih", w_ih), _array("w_hh", w_hh)
        if w_ih.dtype not in _DTYPES:
            raise TypeError(f"w_ih must have dtype float32 or float64, got {w_ih.dtype}")
        self.dtype = w_ih.dtype
        _check_dtype("w_hh", w_hh, self.dtype)
        G = _gates(self.cell, options)
        H = _hidden_size_of("w_hh", w_hh, G, P)
        if w_ih.ndim != 2 or w_ih.shape[1] < 1:
            raise ValueError(f"w_ih must be 2-D ({G}*H, I) with I >= 1, got shape {w_ih.shape}")
        # (w_ih, w_hh, b_ih, b_hh[, w_ch][, w_hr]) by the one rule, with the options (coupled: 3 gate blocks)
        peephole, coupled = options["peephole"], options["coupled"]
        shapes = param_shapes(self.cell, int(w_ih.shape[1]), H, 1, False, True, peephole, coupled, P)[0]
        formulas = param_formulas(self.cell, 0, 1, True, peephole, coupled, P)
        _check_shape("w_hh", w_hh, shapes[1], formulas[1])
        _check_shape("w_ih", w_ih, shapes[0], formulas[0])
        if (b_ih is None) != (b_hh is None):
            raise ValueError("give both b_ih and b_hh, or neither")
        biases = []
        for name, b, shape, formula in (("b_ih", b_ih, shapes[2], formulas[2]), ("b_hh", b_hh, shapes[3], formulas[3])):
            if b is not None:
                b = _array(name, b)
                _check_dtype(name, b, self.dtype)
                _check_shape(name, b, shape, formula)
                b = np.ascontiguousarray(b)
            biases.append(b)
        if w_ch is not None:
            w_ch = _array("w_ch", w_ch)
            _check_dtype("w_ch", w_ch, self.dtype)
            _check_shape("w_ch", w_ch, shapes[4], formulas[4])
            w_ch = np.ascontiguousarray(w_ch)
        if w_hr is not None:
            _check_dtype("w_hr", w_hr, self.dtype)
            _check_shape("w_hr", w_hr, (P, H), formulas[-1])
            w_hr = np.ascontiguousarray(w_hr)
        norm = []
        if options["layer_norm"]:
            for name, shape, formula in zip(norm_names, ((G * H,), (G * H,), (H,), (H,)),
                                            (f"({G}*H,) = ", f"({G}*H,) = ", "(H,) = ", "(H,) = ")):
                v = _array(name, given[name])
                _check_dtype(name, v, self.dtype)
                _check_shape(name, v, shape, formula)
                norm.append(np.ascontiguousarray(v))
        half = _half_weights(weight_dtype, self.dtype, (("w_ih", w_ih), ("w_hh", w_hh))
                             + ((("w_hr", w_hr),) if P else ()))
        _check_sizes(1, 1, int(w_ih.shape[1]), H, G, 1)
        self.input_size, self.hidden_size, self.weight_dtype = int(w_ih.shape[1]), H, "float16" if half else None
        self.proj_size = P
        self.options = options
        self._step = _core.PreparedCell(_CELL_ID[self.cell], np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh),
                                        biases[0], biases[1], half, w_ch=w_ch, norm=tuple(norm), w_hr=w_hr, **options)

    def __repr__(self) -> str:
        wd = f", weight_dtype={self.weight_dtype!r}" if self.weight_dtype else ""
        opts = _options_repr(self.options)
        return f"PreparedCell({self.cell!r}, input_size={self.input_size}, hidden_size={self.hidden_size}, " \
               f"dtype={self.dtype}{wd}{opts})"

    def _state_formula(self, letter: str) -> str:
        return f"(B, {letter}) = "

    def _state_shape(self, B: int, width: int) -> tuple:
        return (B, width)

    def __call__(self, x, h=None, c=None, *, out=None):
        x, h, c, out = self._step_arrays(x, h, c, out)
        lstm = c is not None
        self._step.step(x, h, c, out[0], out[1] if lstm else None)
        return out if lstm else out[0]


class PreparedStack(_PreparedStep):
    """A unidirectional stack of L layers prepared once for many single steps: the multi-layer
    step of step-by-step generation, as one call.

        step = fastrnn.PreparedStack("lstm", weights)     # weights as forward takes them
        y, h, c = step(x, h, c)     # x [B, I]; h, c [L, B, H] -> y [B, H], new h, c [L, B, H]
        y, h, _ = gru_step(x, h)    # GRU / RNN: the third value is None

    ``weights``: L tuples ``(w_ih, w_hh[, b_ih, b_hh])`` as ``forward(..., bidirectional=False)``
    takes them (layer l > 0 reads the H outputs of layer l-1). Each layer is packed as by
    :class:`PreparedCell` (``weight_dtype="float16"``: the same half-size storage), and a call
    steps all L layers, one after the other, in one call with the GIL released. ``y`` is the top
    layer's new h (``y is h_n[-1]``, the same memory). States default to zeros; ``out=(h_out[,
    c_out])`` writes the new states into given [L, B, H] arrays (they must not overlap x, h, c or
    each other in memory: ValueError). It equals
    ``forward`` on a one-step sequence. Later changes to the weight arrays are not seen: prepare
    again. The cell options are ``forward``'s (``peephole``, ``coupled``, ``cell_clip``,
    ``reset_after``, ``layer_norm``), with each entry holding the arrays ``forward`` takes for them
    (w_ch, the layer norm's vectors), stepped as by :class:`PreparedCell`. ``proj_size=P`` (the
    projected LSTM): entries ``(w_ih, w_hh [G*H, P][, b_ih, b_hh][, w_ch], w_hr [P, H])`` as
    ``forward(..., proj_size=P)`` takes them, layers above the first read P inputs, ``h`` is
    [L, B, P] (so is ``y``'s h_n; ``y`` [B, P]) and ``c`` [L, B, H].
    """

    def __init__(self, cell: str, weights, weight_dtype=None, *, peephole: bool = False, coupled: bool = False,
                 cell_clip=None, reset_after: bool = True, layer_norm: bool = False, proj_size: int = 0):
        self.cell = _check_cell(cell)
        options = _check_options(self.cell, peephole, coupled, cell_clip, reset_after, layer_norm, proj_size)
        if isinstance(weights, (list, tuple)) and weights and isinstance(weights[0], (list, tuple)) and weights[0]:
            w_ih0 = _array("weights[0][0] (w_ih)", weights[0][0])
        else:
            raise TypeError(f"weights must be a non-empty list of (w_ih, w_hh[, b_ih, b_hh]) tuples, got "
                            f"{type(weights).__name__}")
        if w_ih0.dtype not in _DTYPES:
            raise TypeError(f"weights[0][0] (w_ih) must have dtype float32 or float64, got {w_ih0.dtype}")
        if w_ih0.ndim != 2 or w_ih0.shape[1] < 1:
            raise ValueError(f"weights[0][0] (w_ih) must be 2-D (G*H, I) with I >= 1, got shape {w_ih0.shape}")
        self.dtype, self.input_size = w_ih0.dtype, int(w_ih0.shape[1])
        checked, H, L, _ = _check_weights(self.cell, weights, self.input_size, 1, self.dtype, options)
        P = options.get("proj_size", 0)
        half = _half_weights(weight_dtype, self.dtype,
                             [(f"weights[{k}][{i}]", entry[i]) for k, entry in enumerate(checked)
                              for i in ((0, 1, len(entry) - 1) if P else (0, 1))])
        _check_sizes(1, 1, self.input_size, H, _gates(self.cell, options), 1)
        self.hidden_size, self.num_layers, self.weight_dtype = H, L, "float16" if half else None
        self.proj_size = P
        self.options = options
        self._stack = _core.PreparedStack(_CELL_ID[self.cell],
                                          [tuple(np.ascontiguousarray(a) for a in entry) for entry in checked], half,
                                          **options)

    def __repr__(self) -> str:
        wd = f", weight_dtype={self.weight_dtype!r}" if self.weight_dtype else ""
        return f"PreparedStack({self.cell!r}, input_size={self.input_size}, hidden_size={self.hidden_size}, " \
               f"num_layers={self.num_layers}, dtype={self.dtype}{wd}{_options_repr(self.options)})"

    def _state_formula(self, letter: str) -> str:
        return f"(L, B, {letter}) = "

    def _state_shape(self, B: int, width: int) -> tuple:
        return (self.num_layers, B, width)

    def __call__(self, x, h=None, c=None, *, out=None):
        x, h, c, out = self._step_arrays(x, h, c, out)
        lstm = c is not None
        self._stack.step(x, h, c, out[0], out[1] if lstm else None)
        h_out = out[0]
        return h_out[-1], h_out, (out[1] if lstm else None)
