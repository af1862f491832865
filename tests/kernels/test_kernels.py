"""The fast path (fastrnn.forward / fastrnn.backward, the C++ kernels) against the slow float64
reference (fastrnn.reference) over the full matrix: every cell x float32/float64 x 1-3 layers x
uni/bidirectional x equal/ragged lengths x time-/batch-major, comparing output, h_n, c_n and every
gradient (dx, dh0, dc0, each dW and db) with h0/c0 given and random dhn/dcn; then awkward sizes
(T, B, I or H = 1, sizes of 97, a wider/longer case), no bias, absent states, and the invariances
the API promises (batch_first is a transpose, packed == each sequence alone, lengths all T ==
no lengths, training=False gives the same result and saves nothing). float32 inputs are compared
with the reference run on float64 casts of the same float32 data; tolerances live in tolerances.py.
"""
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn.types import CELLS, GATES
from helpers import GRAD_NAMES, assert_all_close, check_against_reference, make_problem, named, run
from tolerances import assert_close

DTYPES = (np.float32, np.float64)
# ------------------------------------------------------------------------------------------------
# The full matrix
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference(cell, dtype, num_layers, bidirectional, ragged, batch_first):
    seed = zlib.crc32(repr((cell, np.dtype(dtype).name, num_layers, bidirectional, ragged, batch_first)).encode())
    p = make_problem(cell, dtype, num_layers, bidirectional, T=6, B=3, I=4, H=5, ragged=ragged,
                     batch_first=batch_first, seed=seed)
    fast = check_against_reference(p)
    expected_count = num_layers * (2 if bidirectional else 1)
    assert sum(k.startswith("dweights") for k in fast) == 4 * expected_count


# ------------------------------------------------------------------------------------------------
# Awkward sizes
# ------------------------------------------------------------------------------------------------

AWKWARD = [  # (T, B, I, H)
    (1, 3, 4, 5),     # one step
    (5, 1, 4, 5),     # one sequence
    (5, 3, 1, 5),     # one input feature
    (5, 3, 4, 1),     # one hidden unit
    (1, 1, 1, 1),     # everything 1
    (3, 2, 97, 97),   # odd, larger than any vector width; T*B < 16: weights read from their rows
    (3, 6, 97, 97),   # the same with T*B >= 16: weights packed (csrc/cpu/layer.h, kPackMinRows)
    (2, 97, 3, 4),    # odd batch
    (40, 4, 8, 16),   # longer sequences: errors compound over time
    (4, 17, 33, 64),  # wider
]


@pytest.mark.parametrize("size", AWKWARD, ids=["T%d-B%d-I%d-H%d" % s for s in AWKWARD])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_awkward_sizes(cell, dtype, size):
    T, B, I, H = size
    p = make_problem(cell, dtype, 2, True, T, B, I, H, ragged=True, batch_first=(B % 2 == 0), seed=sum(size))
    check_against_reference(p)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_wide_input(cell, dtype):
    """I = 600: the input projection's GEMM walks x in several row blocks (~128 KB of x each) plus a
    remainder. x is scaled by 0.25 so that the gates'
    600-term sums stay O(1) as at the sizes the float32 tolerance was measured at (I, H <= 97);
    unscaled, their float32 rounding alone reaches the output tolerance."""
    p = make_problem(cell, dtype, 2, True, 7, 11, 600, 20, ragged=True, seed=600)
    p["x"] = p["x"] * dtype(0.25)
    check_against_reference(p)


@pytest.mark.parametrize("rows", [(2, 3), (1, 7), (1, 2), (1, 23)], ids=["T2-B3", "T1-B7", "T1-B2", "T1-B23"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_few_rows_large_weights(cell, dtype, rows):
    """T*B < 16 rows (one-step calls: < 32, csrc/cpu/layer.h kOneStepPackMinRows) with weights of at
    least 2 MB per layer and direction: forward and backward take rows_gemm.h's kernels there
    (kRowsKernelMinBytes), the BLAS below (the awkward sizes above); T = 1, B = 23 also runs the
    streamed dh/dx product in two passes of its 16-row blocks. Odd sizes, so that every tile leaves a remainder (4-row tiles and a
    3-row rest, the 2-row tile, K % 8 != 0, single rows of W); x scaled as in test_wide_input
    (sums of ~800 terms)."""
    T, B = rows
    H = 663 if GATES[cell] == 1 else 361  # G*H*(I+H)*4 bytes >= 2 MB for float32
    p = make_problem(cell, dtype, 2, True, T, B, 131, H, ragged=True, seed=H + B)
    p["x"] = p["x"] * dtype(0.25)
    check_against_reference(p)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_input_projection_in_chunks(cell):
    """The input projection runs ahead of the recurrence in chunks of ~2 MB of each thread's gate
    columns: at H = 64, B = 64 in float64 that is 16-42 steps (by cell and threads per direction),
    so T = 70 gives several chunks and a partial last one, in both directions. float64: the error is
    summation order only, whatever T*B."""
    check_against_reference(make_problem(cell, np.float64, 1, True, 70, 64, 8, 64, ragged=True, seed=70))


@pytest.mark.parametrize("cell", CELLS)
def test_reused_scratch_memory(cell):
    """Scratch buffers of >= 1 MB are kept per thread and reused by later calls without being
    cleared: a call right after a larger one (whose values its buffers still hold) must still
    match the reference. T*B = 1536 then 1024 rows of G*H gate values: 1.5 then 1 MB for the LSTM,
    1.1 then 0.75 MB for the GRU (which reuses the larger block); the RNN's stay below 1 MB."""
    check_against_reference(make_problem(cell, np.float32, 2, True, 64, 24, 64, 64, ragged=True, seed=1))
    check_against_reference(make_problem(cell, np.float32, 2, True, 64, 16, 64, 64, ragged=True, seed=2))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_no_bias(cell, dtype):
    p = make_problem(cell, dtype, 2, True, 5, 3, 4, 6, bias=False, ragged=True, seed=7)
    fast = check_against_reference(p)
    _, grads = run(fastrnn, p)
    assert all(len(entry) == 2 for entry in grads.dweights), "dweights must mirror bias-free weights (2 arrays)"
    assert "dweights[0].db_ih" not in fast


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_absent_states_are_zeros(cell, dtype):
    p = make_problem(cell, dtype, 2, True, 5, 3, 4, 6, ragged=True, with_state=False, seed=8)
    absent = check_against_reference(p)
    state = (4, 3, 6)
    zeros = dict(h0=np.zeros(state, dtype), c0=np.zeros(state, dtype) if cell == "lstm" else None)
    given = named(*run(fastrnn, p, **zeros))
    assert_all_close(absent, given, dtype)


def test_lstm_h0_given_c0_absent():
    p = make_problem("lstm", np.float64, 2, True, 5, 3, 4, 6, ragged=True, seed=9)
    p["c0"] = None
    check_against_reference(p)
    with_zero_c0 = named(*run(fastrnn, p, c0=np.zeros_like(p["h0"])))
    assert_all_close(named(*run(fastrnn, p)), with_zero_c0, np.float64)


@pytest.mark.parametrize("cell", CELLS)
def test_zero_incoming_state_gradients_default(cell):
    """dhn/dcn absent == zeros, and the reference agrees."""
    p = make_problem(cell, np.float64, 2, False, 5, 3, 4, 6, ragged=True, seed=10)
    p["dhn"], p["dcn"] = None, None
    absent = check_against_reference(p)
    zeros = named(*run(fastrnn, p, dhn=np.zeros((2, 3, 6)), dcn=np.zeros((2, 3, 6)) if cell == "lstm" else None))
    assert_all_close(absent, zeros, np.float64)


# ------------------------------------------------------------------------------------------------
# Invariances
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_all_T_equals_no_lengths(cell, dtype):
    p = make_problem(cell, dtype, 2, True, 5, 3, 4, 6, seed=11)
    without = named(*run(fastrnn, p))
    full = named(*run(fastrnn, p, lengths=np.full(3, 5)))
    assert_all_close(full, without, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_is_a_transpose(cell, dtype):
    p = make_problem(cell, dtype, 2, True, 5, 3, 4, 6, ragged=True, seed=12)
    tm = run(fastrnn, p)
    bf_p = dict(p, batch_first=True, x=np.ascontiguousarray(p["x"].transpose(1, 0, 2)),
                dy=np.ascontiguousarray(p["dy"].transpose(1, 0, 2)))
    bf = run(fastrnn, bf_p)
    assert bf[0].output.shape == (3, 5, 12) and bf[1].dx.shape == (3, 5, 4)
    a, b = named(*tm), named(*bf)
    b["output"] = b["output"].transpose(1, 0, 2)
    b["dx"] = b["dx"].transpose(1, 0, 2)
    assert_all_close(b, a, dtype)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed_equals_each_sequence_alone(cell, dtype, bidirectional):
    """A ragged batch == running each sequence alone on its own first len_b steps; outputs and dx
    past a length are zero; weight gradients of the batch are the sum over sequences."""
    T, B = 6, 4
    p = make_problem(cell, dtype, 2, bidirectional, T, B, 3, 5, ragged=True, seed=13)
    p["lengths"] = np.array([4, 6, 1, 3])
    res, grads = run(fastrnn, p)
    lstm = cell == "lstm"
    dw_sum = [[np.zeros(g.shape) for g in entry] for entry in grads.dweights]
    for b, n in enumerate(p["lengths"]):
        one = dict(p, x=p["x"][:n, b:b + 1], dy=p["dy"][:n, b:b + 1], lengths=None,
                   h0=p["h0"][:, b:b + 1], c0=p["c0"][:, b:b + 1] if lstm else None,
                   dhn=p["dhn"][:, b:b + 1], dcn=p["dcn"][:, b:b + 1] if lstm else None)
        r1, g1 = run(fastrnn, one)
        assert_close(res.output[:n, b], r1.output[:, 0], dtype, f"output[:{n}, {b}]")
        assert not res.output[n:, b].any(), f"output past length {n} of sequence {b} must be zero"
        assert_close(res.h_n[:, b], r1.h_n[:, 0], dtype, f"h_n[:, {b}]")
        if lstm:
            assert_close(res.c_n[:, b], r1.c_n[:, 0], dtype, f"c_n[:, {b}]")
            assert_close(grads.dc0[:, b], g1.dc0[:, 0], dtype, f"dc0[:, {b}]")
        assert_close(grads.dx[:n, b], g1.dx[:, 0], dtype, f"dx[:{n}, {b}]")
        assert not grads.dx[n:, b].any(), f"dx past length {n} of sequence {b} must be zero"
        assert_close(grads.dh0[:, b], g1.dh0[:, 0], dtype, f"dh0[:, {b}]")
        for k, entry in enumerate(g1.dweights):
            for i, g in enumerate(entry):
                dw_sum[k][i] += g
    for k, entry in enumerate(grads.dweights):
        for i, g in enumerate(entry):
            assert_close(g, dw_sum[k][i], dtype, f"dweights[{k}].{GRAD_NAMES[i]} (batch vs sum over sequences)")


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_inference_equals_training(cell, dtype, batch_first):
    p = make_problem(cell, dtype, 3, True, 5, 3, 4, 6, ragged=True, batch_first=batch_first, seed=14)
    kw = dict(lengths=p["lengths"], bidirectional=True, batch_first=batch_first)
    train = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], training=True, **kw)
    infer = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], training=False, **kw)
    default = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], **kw)
    assert infer.saved is None and default.saved is None
    assert train.saved is not None
    for name in ("output", "h_n", "c_n"):
        for other in (infer, default):
            assert_close(getattr(other, name), getattr(train, name), dtype, name)


@pytest.mark.parametrize("cell", CELLS)
def test_per_cell_spellings_equal_forward(cell):
    p = make_problem(cell, np.float32, 2, True, 5, 3, 4, 6, ragged=True, seed=15)
    kw = dict(lengths=p["lengths"], bidirectional=True, training=True)
    generic = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], **kw)
    if cell == "lstm":
        res = fastrnn.lstm_forward(p["x"], p["weights"], p["h0"], p["c0"], **kw)
        g = fastrnn.lstm_backward(res.saved, p["dy"], p["dhn"], p["dcn"])
    elif cell == "gru":
        res = fastrnn.gru_forward(p["x"], p["weights"], p["h0"], **kw)
        g = fastrnn.gru_backward(res.saved, p["dy"], p["dhn"])
    else:
        res = fastrnn.rnn_forward(p["x"], p["weights"], p["h0"], nonlinearity=cell[4:], **kw)
        g = fastrnn.rnn_backward(res.saved, p["dy"], p["dhn"])
    g_generic = fastrnn.backward(generic.saved, p["dy"], p["dhn"], p["dcn"])
    assert_all_close(named(res, g), named(generic, g_generic), np.float32)


@pytest.mark.parametrize("lengths_dtype", [np.int32, np.int64, np.uint8])
def test_lengths_integer_dtypes(lengths_dtype):
    p = make_problem("gru", np.float64, 1, True, 5, 3, 4, 6, seed=16)
    p["lengths"] = np.array([5, 2, 1])
    base = named(*run(fastrnn, p))
    other = named(*run(fastrnn, p, lengths=p["lengths"].astype(lengths_dtype)))
    assert_all_close(other, base, np.float64)


def test_backward_is_repeatable_and_leaves_saved_intact():
    """Two backward calls on the same saved give the same gradients (backward must not consume or
    overwrite the reserve), and forward does not modify its inputs."""
    p = make_problem("lstm", np.float64, 2, True, 5, 3, 4, 6, ragged=True, seed=17)
    copies = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in p.items()}
    wcopy = [tuple(w.copy() for w in e) for e in p["weights"]]
    res, g1 = run(fastrnn, p)
    g2 = fastrnn.backward(res.saved, p["dy"], p["dhn"], p["dcn"])
    assert_all_close(named(res, g2), named(res, g1), np.float64)
    for k, v in copies.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(p[k], v, err_msg=f"{k} was modified")
    for e, ec in zip(p["weights"], wcopy):
        for w, wc in zip(e, ec):
            np.testing.assert_array_equal(w, wc, err_msg="weights were modified")


@pytest.mark.parametrize("cell", CELLS)
def test_reserve_is_a_function_of_the_inputs(cell):
    """Dead rows (past a sequence's end) of the reserve are written too, so two training forwards
    from differently filled memory save bit-identical reserves (torch.compile/opcheck compare op
    outputs)."""
    p = make_problem(cell, np.float32, 2, True, 5, 4, 3, 6, ragged=True)
    reserves = []
    for fill in (0.0, np.nan):
        out = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], lengths=p["lengths"], bidirectional=True,
                              training=True)
        out.saved.reserve[...] = fill  # the kernel gets this buffer back as its output below
        _core_forward_into(out.saved)
        reserves.append(out.saved.reserve.copy())
    np.testing.assert_array_equal(reserves[0], reserves[1])


def _core_forward_into(saved):
    """Rerun the training forward of `saved` into its own (refilled) reserve."""
    from fastrnn import _core
    from fastrnn.functional import _CELL_ID
    L, D, H = saved.num_layers, 2 if saved.bidirectional else 1, saved.hidden_size
    T, B, _ = saved.x.shape
    y = np.empty((T, B, D * H), saved.x.dtype)
    hn = np.empty((L * D, B, H), saved.x.dtype)
    cn = np.empty_like(hn) if saved.cell == "lstm" else None
    _core.forward(_CELL_ID[saved.cell], saved.x, saved.weights, saved.h0, saved.c0, saved.lengths, y, hn, cn,
                  saved.reserve, H, L, saved.bidirectional)
