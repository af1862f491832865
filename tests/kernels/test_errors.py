"""Bad input to the public API and to the raw extension (fastrnn._core) raises ValueError or
TypeError with a message naming the argument, never crashes, overflows or writes out of bounds;
awkward but valid input (non-contiguous views, Fortran-order weights, transposed arrays) is accepted
and gives the result of contiguous copies. Each case is one row of a table: what is wrong, the call,
the exception type and a regex the message must match (re.escape'd literal text).
"""
import re

import numpy as np
import pytest

import fastrnn
from fastrnn import _core, reference
from fastrnn.types import GATES
from tolerances import assert_close

T, B, I, H = 5, 3, 4, 6
F32 = np.float32


def weights(cell="lstm", L=1, bi=False, bias=True, dtype=F32, input_size=I):
    return fastrnn.init_weights(cell, input_size, H, L, bidirectional=bi, bias=bias, dtype=dtype, seed=0)


def x_(shape=(T, B, I), dtype=F32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def state(L=1, D=1, dtype=F32, shape=None):
    return np.zeros(shape or (L * D, B, H), dtype)


def fwd(cell="lstm", x=None, w=None, h0=None, c0=None, **kw):
    return fastrnn.forward(cell, x_() if x is None else x, weights(cell) if w is None else w, h0, c0, **kw)


def saved(cell="lstm", **kw):
    return fwd(cell, training=True, **kw).saved


def replace(entries, k, i, value):
    """A copy of the weights list with entries[k][i] replaced (or removed if value is None)."""
    out = [list(e) for e in entries]
    if value is None:
        del out[k][i]
    else:
        out[k][i] = value
    return [tuple(e) for e in out]


G4 = GATES["lstm"]

BAD = [
    # --- x ---
    ("x 2-D", lambda: fwd(x=x_((T, B))), ValueError, r"x must be 3-D"),
    ("x 4-D", lambda: fwd(x=x_((T, B, I, 1))), ValueError, r"x must be 3-D"),
    ("x empty T", lambda: fwd(x=x_((0, B, I))), ValueError, r"x must not be empty"),
    ("x empty B", lambda: fwd(x=x_((T, 0, I))), ValueError, r"x must not be empty"),
    ("x empty I", lambda: fwd(x=x_((T, B, 0))), ValueError, r"x must not be empty"),
    ("x int", lambda: fwd(x=np.ones((T, B, I), np.int64)), TypeError, r"x must have dtype"),
    # float16 is a dtype of its own (16-bit storage): with float32 weights the weights are named
    ("x float16, weights float32", lambda: fwd(x=x_(dtype=np.float16)), TypeError,
     r"w_ih.*must have dtype float16 \(the dtype of x\), got float32"),
    ("x object", lambda: fwd(x=x_().astype(object)), TypeError, r"x must have dtype"),
    ("x complex", lambda: fwd(x=x_().astype(np.complex64)), TypeError, r"x must have dtype"),
    # --- weights: container and count ---
    ("weights an array", lambda: fwd(w=np.zeros((2, 2), F32)), TypeError, r"weights must be a list"),
    ("weights empty", lambda: fwd(w=[]), ValueError, r"weights must hold num_layers \* 1 entries"),
    ("weights odd count for bi", lambda: fwd(w=weights(L=2, bi=True)[:3], bidirectional=True), ValueError,
     r"weights must hold num_layers \* 2 entries.*got 3"),
    ("weights entry of 3", lambda: fwd(w=[weights()[0][:3]]), ValueError, r"weights\[0\] must be a tuple"),
    ("weights entry an array", lambda: fwd(w=[weights()[0][0]]), ValueError, r"weights\[0\] must be a tuple"),
    ("mixed bias / no bias", lambda: fwd(w=weights(L=2)[:1] + weights(L=2, bias=False)[1:]), ValueError,
     re.escape("weights[1] (layer 1, forward) must be a tuple of 4 arrays like weights[0]")),
    ("mixed no bias / bias", lambda: fwd(w=weights(L=2, bias=False)[:1] + weights(L=2)[1:]), ValueError,
     re.escape("weights[1] (layer 1, forward) must be a tuple of 2 arrays")),
    # --- weights: shapes ---
    ("w_ih rows", lambda: fwd(w=replace(weights(), 0, 0, np.zeros((G4 * H - 1, I), F32))), ValueError,
     re.escape("weights[0][0] (w_ih, layer 0, forward) must have shape (4*H, I) = (24, 4), got (23, 4)")),
    ("w_ih cols", lambda: fwd(w=replace(weights(), 0, 0, np.zeros((G4 * H, I + 1), F32))), ValueError,
     re.escape("weights[0][0] (w_ih, layer 0, forward) must have shape (4*H, I) = (24, 4), got (24, 5)")),
    ("w_hh shape", lambda: fwd(w=replace(weights(L=2), 1, 1, np.zeros((G4 * H, H + 1), F32))), ValueError,
     re.escape("weights[1][1] (w_hh, layer 1, forward) must have shape (4*H, H) = (24, 6), got (24, 7)")),
    ("w_hh 1-D", lambda: fwd(w=replace(weights(), 0, 1, np.zeros(G4 * H, F32))), ValueError,
     re.escape("weights[0][1] (w_hh) must be 2-D")),
    ("b_ih shape", lambda: fwd(w=replace(weights(), 0, 2, np.zeros(G4 * H + 1, F32))), ValueError,
     re.escape("weights[0][2] (b_ih, layer 0, forward) must have shape (4*H,) = (24,), got (25,)")),
    ("b_hh 2-D", lambda: fwd(w=replace(weights(), 0, 3, np.zeros((1, G4 * H), F32))), ValueError,
     re.escape("weights[0][3] (b_hh, layer 0, forward) must have shape")),
    ("layer 1 input size (uni)", lambda: fwd(w=replace(weights(L=2), 1, 0, np.zeros((G4 * H, I), F32))), ValueError,
     re.escape("weights[1][0] (w_ih, layer 1, forward) must have shape (4*H, 1*H) = (24, 6), got (24, 4)")),
    ("layer 1 input size (bi: H instead of 2H)",
     lambda: fwd(w=replace(weights(L=2, bi=True), 3, 0, np.zeros((G4 * H, H), F32)), bidirectional=True), ValueError,
     re.escape("weights[3][0] (w_ih, layer 1, reverse) must have shape (4*H, 2*H) = (24, 12), got (24, 6)")),
    ("gru given lstm weights", lambda: fwd("gru", w=weights("lstm")), ValueError, re.escape("weights[0][0] (w_ih")),
    # --- dtypes ---
    ("weights f64, x f32", lambda: fwd(w=weights(dtype=np.float64)), TypeError,
     re.escape("weights[0][0] (w_ih, layer 0, forward) must have dtype float32 (the dtype of x), got float64")),
    ("weights f32, x f64", lambda: fwd(x=x_(dtype=np.float64)), TypeError, re.escape("weights[0][0] (w_ih")),
    ("one bias f64", lambda: fwd(w=replace(weights(), 0, 3, np.zeros(G4 * H))), TypeError,
     re.escape("weights[0][3] (b_hh, layer 0, forward) must have dtype float32")),
    # --- h0 / c0 ---
    ("h0 shape", lambda: fwd(h0=state(shape=(2, B, H))), ValueError, r"h0 must have shape .*\(1, 3, 6\), got \(2, 3, 6\)"),
    ("h0 2-D", lambda: fwd(h0=state(shape=(B, H))), ValueError, r"h0 must have shape"),
    ("h0 dtype", lambda: fwd(h0=state(dtype=np.float64)), TypeError, r"h0 must have dtype float32"),
    ("c0 shape", lambda: fwd(h0=state(), c0=state(shape=(1, B, H + 1))), ValueError, r"c0 must have shape"),
    ("c0 dtype", lambda: fwd(h0=state(), c0=state(dtype=np.int32)), TypeError, r"c0 must have dtype float32"),
    ("c0 given to gru", lambda: fwd("gru", w=weights("gru"), c0=state()), ValueError, r"c0 is only for the LSTM"),
    ("c0 given to rnn", lambda: fwd("rnn_tanh", w=weights("rnn_tanh"), c0=state()), ValueError,
     r"c0 is only for the LSTM"),
    # --- lengths ---
    ("lengths 0", lambda: fwd(lengths=np.array([5, 0, 2])), ValueError, r"lengths must lie in \[1, T=5\], got 0"),
    ("lengths negative", lambda: fwd(lengths=np.array([-1, 1, 2])), ValueError, r"lengths must lie in \[1, T=5\]"),
    ("lengths > T", lambda: fwd(lengths=np.array([5, 6, 2])), ValueError, r"lengths must lie in \[1, T=5\], got 6"),
    ("lengths > T batch_first", lambda: fwd(x=x_((B, T, I)), lengths=np.array([5, 6, 2]), batch_first=True),
     ValueError, r"lengths must lie in \[1, T=5\], got 6"),
    ("lengths huge uint64", lambda: fwd(lengths=np.array([2**64 - 1, 1, 1], np.uint64)), ValueError,
     r"lengths must lie in"),
    ("lengths short", lambda: fwd(lengths=np.array([5, 5])), ValueError, r"lengths must have shape \(B,\) = \(3,\)"),
    ("lengths 2-D", lambda: fwd(lengths=np.array([[5, 5, 5]])), ValueError, r"lengths must have shape"),
    ("lengths scalar", lambda: fwd(lengths=5), ValueError, r"lengths must have shape"),
    ("lengths float", lambda: fwd(lengths=np.array([5.0, 1.0, 2.0])), TypeError, r"lengths must hold integers"),
    ("lengths bool", lambda: fwd(lengths=np.array([True, True, True])), TypeError, r"lengths must hold integers"),
    # --- cell names ---
    ("unknown cell", lambda: fwd("lstm2"), ValueError, r"cell must be one of"),
    ("cell None", lambda: fwd(None), ValueError, r"cell must be one of"),
    ("bad nonlinearity", lambda: fastrnn.rnn_forward(x_(), weights("rnn_tanh"), nonlinearity="sigmoid"), ValueError,
     r"nonlinearity must be 'tanh' or 'relu'"),
    # --- backward ---
    ("backward saved None", lambda: fastrnn.backward(fwd().saved, np.zeros((T, B, H), F32)), TypeError,
     r"saved must be the \.saved of a forward"),
    ("backward saved a dict", lambda: fastrnn.backward({"cell": "lstm"}, np.zeros((T, B, H), F32)), TypeError,
     r"saved must be the \.saved of a forward"),
    ("backward saved from reference", lambda: fastrnn.backward(
        reference.forward("lstm", x_(), weights(), training=True).saved, np.zeros((T, B, H))), TypeError,
     r"saved must be"),
    ("lstm_backward saved None", lambda: fastrnn.lstm_backward(None, np.zeros((T, B, H), F32)), TypeError,
     r"saved must be"),
    ("dy shape", lambda: fastrnn.backward(saved(), np.zeros((T, B, H + 1), F32)), ValueError,
     r"dy must have shape .*\(5, 3, 6\), got \(5, 3, 7\)"),
    ("dy time-major for batch_first",
     lambda: fastrnn.backward(saved(x=x_((B, T, I)), batch_first=True), np.zeros((T, B, H), F32)), ValueError,
     r"dy must have shape .*\(3, 5, 6\), got \(5, 3, 6\)"),
    ("dy dtype", lambda: fastrnn.backward(saved(), np.zeros((T, B, H))), TypeError, r"dy must have dtype float32"),
    ("dy int", lambda: fastrnn.backward(saved(), np.zeros((T, B, H), np.int32)), TypeError, r"dy must have dtype"),
    ("dhn shape", lambda: fastrnn.backward(saved(), np.zeros((T, B, H), F32), state(shape=(1, B, 1))), ValueError,
     r"dhn must have shape"),
    ("dhn dtype", lambda: fastrnn.backward(saved(), np.zeros((T, B, H), F32), state(dtype=np.float64)), TypeError,
     r"dhn must have dtype float32"),
    ("dcn shape", lambda: fastrnn.backward(saved(), np.zeros((T, B, H), F32), None, state(shape=(2, B, H))),
     ValueError, r"dcn must have shape"),
    ("dcn given to gru", lambda: fastrnn.backward(saved("gru", w=weights("gru")), np.zeros((T, B, H), F32), None,
                                                  state()), ValueError, r"dcn is only for the LSTM"),
    ("gru_backward of lstm", lambda: fastrnn.gru_backward(saved(), np.zeros((T, B, H), F32)), ValueError,
     r"saved comes from a 'lstm' forward"),
    ("lstm_backward of gru", lambda: fastrnn.lstm_backward(saved("gru", w=weights("gru")), np.zeros((T, B, H), F32)),
     ValueError, r"saved comes from a 'gru' forward"),
    ("rnn_backward of lstm", lambda: fastrnn.rnn_backward(saved(), np.zeros((T, B, H), F32)), ValueError,
     r"saved comes from a 'lstm' forward"),
    # --- init_weights ---
    ("init input_size 0", lambda: fastrnn.init_weights("gru", 0, 4), ValueError, r"input_size must be an int >= 1"),
    ("init hidden_size -1", lambda: fastrnn.init_weights("gru", 3, -1), ValueError, r"hidden_size must be an int >= 1"),
    ("init hidden_size float", lambda: fastrnn.init_weights("gru", 3, 2.5), ValueError, r"hidden_size must be an int"),
    ("init hidden_size str", lambda: fastrnn.init_weights("gru", 3, "4"), ValueError, r"hidden_size must be an int"),
    ("init num_layers 0", lambda: fastrnn.init_weights("gru", 3, 4, 0), ValueError, r"num_layers must be an int >= 1"),
    ("init num_layers bool", lambda: fastrnn.init_weights("gru", 3, 4, True), ValueError, r"num_layers must be an int"),
    ("init unknown cell", lambda: fastrnn.init_weights("rnn", 3, 4), ValueError, r"cell must be one of"),
    # --- threads ---
    ("set_num_threads 0", lambda: fastrnn.set_num_threads(0), ValueError, r"num_threads must be >= 1, got 0"),
    ("set_num_threads -3", lambda: fastrnn.set_num_threads(-3), ValueError, r"num_threads must be >= 1"),
    ("set_num_threads str", lambda: fastrnn.set_num_threads("2"), TypeError, r"num_threads must be an int, got str"),
    ("set_num_threads float", lambda: fastrnn.set_num_threads(2.0), TypeError, r"num_threads must be an int"),
    ("_core.set_num_threads 0", lambda: _core.set_num_threads(0), ValueError, r"num_threads must be >= 1"),
    # --- huge sizes: checked before any copy or allocation ---
    ("x with T*B > 2^31", lambda: fwd("gru", x=np.broadcast_to(np.zeros((1, 1, 1), F32), (2**31, 2, 1)),
                                      w=fastrnn.init_weights("gru", 1, 2)), ValueError, r"sizes too large: T\*B = 4294967296"),
    ("x with T*B > 2^31 batch_first", lambda: fwd("gru", x=np.broadcast_to(np.zeros((1, 1, 1), F32), (2, 2**31, 1)),
                                                  w=fastrnn.init_weights("gru", 1, 2), batch_first=True),
     ValueError, r"sizes too large: T\*B"),
    # A G*H that fits the BLAS but a W_hh far too large to exist: a broadcast view (3 EiB if copied).
    # NumPy cannot even describe a G*H beyond 2^31 this way, so the checks left are that this raises
    # (MemoryError from the copy) instead of crashing, and quickly.
    ("3 EiB broadcast w_hh", lambda: fwd(
        "gru", x=x_((2, 2, 1)), w=[(np.zeros((3 * 2**29, 1), F32), np.broadcast_to(F32(0), (3 * 2**29, 2**29)))]),
     MemoryError, r"allocate"),
    ("reserve_size 64-bit overflow", lambda: _core.reserve_size(2, 2**40, 2**40, 1, 2**20, 1, True), ValueError,
     r"overflows 64 bits"),
    ("reserve_size overflow in layers", lambda: _core.reserve_size(2, 2**20, 2**20, 1, 2**20, 2**10, True),
     ValueError, r"overflows 64 bits"),
    ("reserve_size negative", lambda: _core.reserve_size(0, -1, 1, 1, 1, 1, False), ValueError, r"overflows|>= 1"),
    ("reserve_size bad cell", lambda: _core.reserve_size(9, 1, 1, 1, 1, 1, False), ValueError, r"cell"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_set_num_threads_keeps_previous_value():
    before = fastrnn.get_num_threads()
    for bad in (0, -1):
        with pytest.raises(ValueError):
            fastrnn.set_num_threads(bad)
    assert fastrnn.get_num_threads() == before


# ------------------------------------------------------------------------------------------------
# Raw extension misuse: _core.forward / _core.backward check every array they write or read.
# ------------------------------------------------------------------------------------------------

def core_args(cell=2, dtype=F32, L=1, bi=False, training=False):
    """Valid positional arguments for _core.forward (time-major, contiguous, caller-allocated)."""
    name = ("rnn_tanh", "rnn_relu", "lstm", "gru")[cell]
    D = 2 if bi else 1
    w = fastrnn.init_weights(name, I, H, L, bidirectional=bi, dtype=dtype, seed=0)
    st = (L * D, B, H)
    lstm = cell == 2
    reserve = np.empty(_core.reserve_size(cell, T, B, I, H, L, bi), dtype) if training else None
    return dict(cell=cell, x=x_(dtype=dtype), weights=w, h0=None, c0=None, lengths=None,
                y=np.full((T, B, D * H), np.nan, dtype), hn=np.empty(st, dtype), cn=np.empty(st, dtype) if lstm else None,
                reserve=reserve, hidden_size=H, num_layers=L, bidirectional=bi)


def call_core_forward(a):
    _core.forward(a["cell"], a["x"], a["weights"], a["h0"], a["c0"], a["lengths"], a["y"], a["hn"], a["cn"],
                  a["reserve"], a["hidden_size"], a["num_layers"], a["bidirectional"])


def test_core_forward_valid_call_matches_api():
    a = core_args(training=True)
    call_core_forward(a)
    res = fastrnn.forward("lstm", a["x"], a["weights"])
    assert_close(a["y"], res.output, F32, "output")
    assert_close(a["hn"], res.h_n, F32, "h_n")


def _guarded(shape, dtype=F32):
    """An array viewed out of a larger buffer with sentinel values around it, so a write out of
    bounds is detected even if it does not crash. Returns (buffer, view)."""
    n = int(np.prod(shape))
    buf = np.full(n + 64, 7.0, dtype)
    return buf, buf[32:32 + n].reshape(shape)


CORE_BAD = [
    ("y wrong shape", dict(y=np.empty((T, B, H - 1), F32)), ValueError, r"y must have shape \(5, 3, 6\), got \(5, 3, 5\)"),
    ("y too small 1-D", dict(y=np.empty(T * B * H - 1, F32)), ValueError, r"y must have shape"),
    ("y non-contiguous", dict(y=np.empty((T, B, 2 * H), F32)[:, :, ::2]), ValueError, r"y must be C-contiguous"),
    ("y Fortran", dict(y=np.asfortranarray(np.empty((T, B, H), F32))), ValueError, r"y must be C-contiguous"),
    ("y float64", dict(y=np.empty((T, B, H))), TypeError, r"y must have dtype float32"),
    ("y read-only", dict(y=np.broadcast_to(np.empty(1, F32), (T, B, H))), ValueError, r"y must be"),
    ("y None", dict(y=None), TypeError, r"y must be an array"),
    ("y a list", dict(y=[[[0.0] * H] * B] * T), TypeError, r"y must be a numpy array"),
    ("hn wrong shape", dict(hn=np.empty((2, B, H), F32)), ValueError, r"hn must have shape"),
    ("cn missing for lstm", dict(cn=None), TypeError, r"cn must be an array"),
    ("cn non-contiguous", dict(cn=np.empty((1, B, 2 * H), F32)[..., ::2]), ValueError, r"cn must be C-contiguous"),
    ("reserve too small", dict(reserve=np.empty(10, F32)), ValueError, r"reserve must have shape"),
    ("h0 wrong shape", dict(h0=np.zeros((1, B, H + 1), F32)), ValueError, r"h0 must have shape"),
    ("h0 non-contiguous", dict(h0=np.zeros((1, B, 2 * H), F32)[..., ::2]), ValueError, r"h0 must be C-contiguous"),
    ("x non-contiguous", dict(x=x_((T, B, 2 * I))[:, :, ::2]), ValueError, r"x must be C-contiguous"),
    ("x 2-D", dict(x=x_((T, B))), ValueError, r"x must be 3-D"),
    ("x float16, weights float32", dict(x=x_(dtype=np.float16)), TypeError, r"must have dtype float16, got float32"),
    ("x empty", dict(x=x_((0, B, I))), ValueError, r"sizes must be >= 1"),
    ("lengths int32", dict(lengths=np.array([5, 2, 1], np.int32)), TypeError, r"lengths must have dtype int64"),
    ("lengths > T", dict(lengths=np.array([5, 6, 1])), ValueError, r"lengths\[1\] = 6 is outside \[1, T=5\]"),
    ("lengths 0", dict(lengths=np.array([5, 0, 1])), ValueError, r"lengths\[1\] = 0"),
    ("lengths short", dict(lengths=np.array([5, 1])), ValueError, r"lengths must have shape"),
    ("hidden_size mismatch", dict(hidden_size=H + 1), ValueError, r"weights\[0\]\.w_ih must have shape"),
    ("hidden_size 0", dict(hidden_size=0), ValueError, r"sizes must be >= 1"),
    ("num_layers mismatch", dict(num_layers=2), ValueError, r"weights must hold num_layers\*num_directions = 2"),
    ("num_layers 0", dict(num_layers=0), ValueError, r"sizes must be >= 1"),
    ("cell out of range", dict(cell=4), ValueError, r"cell must be 0\.\.3"),
    ("weights entry of 3", dict(weights=[(np.zeros((24, I), F32),) * 3]), ValueError, r"weights\[0\] must hold 2 or 4"),
    ("weights entry an int", dict(weights=[5]), TypeError, r"weights\[0\] must be a tuple"),
    ("w_hh non-contiguous", dict(weights=[(np.zeros((24, I), F32), np.zeros((24, 2 * H), F32)[:, ::2])]), ValueError,
     r"weights\[0\]\.w_hh must be C-contiguous"),
    ("bias wrong dtype", dict(weights=[(np.zeros((24, I), F32), np.zeros((24, H), F32), np.zeros(24), np.zeros(24))]),
     TypeError, r"weights\[0\]\.b_ih must have dtype float32"),
]


@pytest.mark.parametrize("change, exc, match", [c[1:] for c in CORE_BAD], ids=[c[0] for c in CORE_BAD])
def test_core_forward_rejects_bad_arrays(change, exc, match):
    a = core_args(training=True)
    a.update(change)
    with pytest.raises(exc, match=match):
        call_core_forward(a)


def test_core_forward_wrong_shape_output_is_not_written():
    """A too-small output viewed inside a guarded buffer: the call raises and the buffer is unchanged."""
    a = core_args()
    buf, y = _guarded((T, B, H - 1))
    a["y"] = y
    before = buf.copy()
    with pytest.raises(ValueError, match=r"y must have shape"):
        call_core_forward(a)
    np.testing.assert_array_equal(buf, before)


def core_backward_args(cell=2):
    a = core_args(cell, training=True)
    call_core_forward(a)
    st = a["hn"].shape
    lstm = cell == 2
    return dict(cell=cell, x=a["x"], weights=a["weights"], h0=None, c0=None, lengths=None, reserve=a["reserve"],
                dy=np.ones_like(a["y"]), dhn=None, dcn=None, dx=np.empty_like(a["x"]), dh0=np.empty(st, F32),
                dc0=np.empty(st, F32) if lstm else None, grads=[tuple(np.empty_like(w) for w in e) for e in a["weights"]],
                hidden_size=H, num_layers=1, bidirectional=False)


def call_core_backward(a):
    _core.backward(a["cell"], a["x"], a["weights"], a["h0"], a["c0"], a["lengths"], a["reserve"], a["dy"], a["dhn"],
                   a["dcn"], a["dx"], a["dh0"], a["dc0"], a["grads"], a["hidden_size"], a["num_layers"],
                   a["bidirectional"])


CORE_BACKWARD_BAD = [
    ("dx wrong shape", dict(dx=np.empty((T, B, I + 1), F32)), ValueError, r"dx must have shape"),
    ("dx non-contiguous", dict(dx=np.empty((T, B, 2 * I), F32)[..., ::2]), ValueError, r"dx must be C-contiguous"),
    ("dh0 wrong dtype", dict(dh0=np.empty((1, B, H))), TypeError, r"dh0 must have dtype float32"),
    ("dc0 missing", dict(dc0=None), TypeError, r"dc0 must be an array"),
    ("dy wrong shape", dict(dy=np.ones((T, B, H + 1), F32)), ValueError, r"dy must have shape"),
    ("reserve missing", dict(reserve=None), TypeError, r"reserve must be an array"),
    ("reserve wrong size", dict(reserve=np.empty(7, F32)), ValueError, r"reserve must have shape"),
    ("grads wrong shape", dict(grads=[(np.empty((24, I + 1), F32), np.empty((24, H), F32), np.empty(24, F32),
                                       np.empty(24, F32))]), ValueError, r"weights\[0\]\.w_ih must have shape"),
    ("grads without bias", dict(grads=[(np.empty((24, I), F32), np.empty((24, H), F32))]), ValueError,
     r"grads\[0\] must match weights\[0\] in length"),
    ("grads read-only", dict(grads=[tuple(np.broadcast_to(np.empty(1, F32), s) for s in
                                          ((24, I), (24, H), (24,), (24,)))]), ValueError, r"must be"),
    ("grads count", dict(grads=[]), ValueError, r"weights must hold num_layers\*num_directions = 1"),
]


@pytest.mark.parametrize("change, exc, match", [c[1:] for c in CORE_BACKWARD_BAD],
                         ids=[c[0] for c in CORE_BACKWARD_BAD])
def test_core_backward_rejects_bad_arrays(change, exc, match):
    a = core_backward_args()
    a.update(change)
    with pytest.raises(exc, match=match):
        call_core_backward(a)


# ------------------------------------------------------------------------------------------------
# Awkward but valid layouts are accepted and equal contiguous copies
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_non_contiguous_inputs_equal_contiguous_copies(cell, batch_first):
    rng = np.random.default_rng(1)
    L, D = 2, 2
    shape = (B, T, I) if batch_first else (T, B, I)
    # x: every other row of a bigger array along the batch axis, and a transposed view
    big = rng.standard_normal((shape[0], 2 * shape[1], shape[2])).astype(F32)
    x_strided = big[:, ::2]
    x_transposed = np.ascontiguousarray(x_strided.transpose(1, 0, 2)).transpose(1, 0, 2)
    assert not x_strided.flags.c_contiguous and not x_transposed.flags.c_contiguous
    w = fastrnn.init_weights(cell, I, H, L, bidirectional=True, dtype=F32, seed=2)
    # weights: Fortran order for matrices, every other element for biases
    w_odd = []
    for e in w:
        mats = [np.asfortranarray(m) for m in e[:2]]
        biases = [np.repeat(b, 2)[::2] for b in e[2:]]
        assert not mats[0].flags.c_contiguous and not biases[0].flags.c_contiguous
        w_odd.append(tuple(mats + biases))
    h0 = rng.standard_normal((B, L * D, H)).astype(F32).transpose(1, 0, 2)  # transposed view
    c0 = rng.standard_normal((L * D, B, 2 * H)).astype(F32)[..., ::2] if cell == "lstm" else None
    lengths = np.array([5, 9, 2, 9, 1, 9])[::2]
    kw = dict(bidirectional=True, batch_first=batch_first, training=True)
    c = lambda a: None if a is None else np.ascontiguousarray(a)  # noqa: E731
    ref = fastrnn.forward(cell, c(x_strided), [tuple(c(a) for a in e) for e in w_odd], c(h0), c(c0),
                          lengths=c(lengths), **kw)
    oshape = ref.output.shape
    dy = rng.standard_normal((oshape[0], oshape[1], 2 * oshape[2])).astype(F32)[..., ::2]
    dhn = rng.standard_normal((B, L * D, H)).astype(F32).transpose(1, 0, 2)
    dcn = np.asfortranarray(rng.standard_normal((L * D, B, H)).astype(F32)) if cell == "lstm" else None
    g_ref = fastrnn.backward(ref.saved, c(dy), c(dhn), c(dcn))
    for x in (x_strided, x_transposed):
        res = fastrnn.forward(cell, x, w_odd, h0, c0, lengths=lengths, **kw)
        g = fastrnn.backward(res.saved, dy, dhn, dcn)
        for name in ("output", "h_n", "c_n"):
            assert_close(getattr(res, name), getattr(ref, name), F32, name)
        for name in ("dx", "dh0", "dc0"):
            assert_close(getattr(g, name), getattr(g_ref, name), F32, name)
        for k, (e, e_ref) in enumerate(zip(g.dweights, g_ref.dweights)):
            for i, (a, b) in enumerate(zip(e, e_ref)):
                assert_close(a, b, F32, f"dweights[{k}][{i}]")
