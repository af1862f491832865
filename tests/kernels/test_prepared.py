"""fastrnn.PreparedCell (weights packed once, single steps for decoding) against the float64
reference's one-step forward: every cell x float32/float64 x bias x sizes that do and don't fill the
64-byte unit blocks; float16 weight storage within its own tolerance; a loop of steps equals forward
over the sequence; thread count does not change a bit; out=; and bad input raising clear errors.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.types import CELLS
from tolerances import assert_close

DTYPES = (np.float32, np.float64)
SIZES = [(4, 5, 1), (7, 33, 3), (33, 17, 2), (64, 100, 5)]  # (I, H, B); 17, 33, 100: partial blocks


def problem(cell, dtype, I, H, B, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    w = fastrnn.init_weights(cell, I, H, bias=bias, dtype=dtype, seed=seed)[0]
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, H)).astype(dtype)
    c = rng.standard_normal((B, H)).astype(dtype) if cell == "lstm" else None
    return w, x, h, c


def expected_step(cell, w, x, h, c):
    w64 = [tuple(a.astype(np.float64) for a in w)]
    r = reference.forward(cell, x[None].astype(np.float64), w64, h[None].astype(np.float64),
                          None if c is None else c[None].astype(np.float64), training=False)
    return r.h_n[0], (None if c is None else r.c_n[0])


def run(step, x, h, c):
    out = step(x, h, c) if c is not None else step(x, h)
    return out if c is not None else (out, None)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("I,H,B", SIZES)
def test_step_matches_reference(cell, dtype, bias, I, H, B):
    w, x, h, c = problem(cell, dtype, I, H, B, bias)
    h1, c1 = run(fastrnn.PreparedCell(cell, *w), x, h, c)
    eh, ec = expected_step(cell, w, x, h, c)
    assert h1.dtype == dtype and h1.shape == (B, H)
    assert_close(h1, eh, dtype, "h")
    assert_close(c1, ec, dtype, "c")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("I,H,B", [(33, 17, 2), (512, 512, 1), (256, 384, 3)])
def test_float16_weights(cell, I, H, B):
    w, x, h, c = problem(cell, np.float32, I, H, B)
    step = fastrnn.PreparedCell(cell, *w, weight_dtype="float16")
    h1, c1 = run(step, x, h, c)
    eh, ec = expected_step(cell, w, x, h, c)
    assert h1.dtype == np.float32
    assert_close(h1, eh, "float16-weights", "h")
    assert_close(c1, ec, "float16-weights", "c")
    # and it really rounds the weights: the result differs from the exact float32 step
    h32, _ = run(fastrnn.PreparedCell(cell, *w), x, h, c)
    assert not np.array_equal(h1, h32)


@pytest.mark.parametrize("cell", CELLS)
def test_loop_of_steps_equals_forward(cell):
    T, I, H, B = 6, 9, 21, 3
    w, _, h0, c0 = problem(cell, np.float64, I, H, B)
    xs = np.random.default_rng(1).standard_normal((T, B, I))
    full = fastrnn.forward(cell, xs, [w], h0[None], None if c0 is None else c0[None])
    step = fastrnn.PreparedCell(cell, *w)
    h, c = h0, c0
    for t in range(T):
        h, c = run(step, xs[t], h, c)
        assert_close(h, full.output[t], np.float64, f"h[{t}]")
    assert_close(c, None if c0 is None else full.c_n[0], np.float64, "c_n")


def test_default_states_are_zeros():
    w, x, _, _ = problem("lstm", np.float32, 5, 7, 2)
    zeros = np.zeros((2, 7), np.float32)
    h1, c1 = fastrnn.PreparedCell("lstm", *w)(x)
    h2, c2 = fastrnn.PreparedCell("lstm", *w)(x, zeros, zeros)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1, c2)


def assert_same_bits_for_1_to_3_threads(step, x, h, c):
    """step(x, h, c)'s new h and c are bitwise the same with 1, 2 and 3 threads."""
    before = fastrnn.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            fastrnn.set_num_threads(n)
            results.append(step(x, h, c))
    finally:
        fastrnn.set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r[0], results[0][0])
        np.testing.assert_array_equal(r[1], results[0][1])


def test_thread_count_does_not_change_a_bit():
    w, x, h, c = problem("lstm", np.float32, 100, 300, 3)
    assert_same_bits_for_1_to_3_threads(fastrnn.PreparedCell("lstm", *w), x, h, c)


def test_out_arrays_are_written_and_returned():
    w, x, h, c = problem("lstm", np.float64, 6, 8, 2)
    ho, co = np.empty((2, 8)), np.empty((2, 8))
    step = fastrnn.PreparedCell("lstm", *w)
    r = step(x, h, c, out=(ho, co))
    assert r[0] is ho and r[1] is co
    eh, ec = step(x, h, c)
    np.testing.assert_array_equal(ho, eh)
    np.testing.assert_array_equal(co, ec)
    g = fastrnn.PreparedCell("gru", *problem("gru", np.float64, 6, 8, 2)[0])
    assert g(x, h, out=ho) is ho


def test_weights_are_copied_when_prepared():
    w, x, h, c = problem("gru", np.float64, 6, 8, 2)
    step = fastrnn.PreparedCell("gru", *w)
    before = step(x, h)
    w[1][:] = 0.0  # w_hh
    np.testing.assert_array_equal(step(x, h), before)


def test_repr():
    w = fastrnn.init_weights("gru", 3, 4)[0]
    assert repr(fastrnn.PreparedCell("gru", *w, weight_dtype="float16")) == \
        "PreparedCell('gru', input_size=3, hidden_size=4, dtype=float32, weight_dtype='float16')"


def test_errors():
    w32 = fastrnn.init_weights("lstm", 3, 4)[0]
    w64 = fastrnn.init_weights("lstm", 3, 4, dtype=np.float64)[0]
    x, h, c = np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="cell must be one of"):
        fastrnn.PreparedCell("lstmx", *w32)
    with pytest.raises(TypeError, match="w_ih must have dtype float32 or float64, got int64"):
        fastrnn.PreparedCell("lstm", np.zeros((16, 3), np.int64), w32[1])
    with pytest.raises(TypeError, match="w_hh must have dtype float32"):
        fastrnn.PreparedCell("lstm", w32[0], w64[1])
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4\*H, H\) = \(16, 4\), got \(12, 4\)"):
        fastrnn.PreparedCell("lstm", w32[0], w32[1][:12])
    with pytest.raises(ValueError, match=r"w_ih must have shape \(4\*H, I\) = \(16, 3\), got \(15, 3\)"):
        fastrnn.PreparedCell("lstm", w32[0][:15], w32[1])
    with pytest.raises(ValueError, match="both b_ih and b_hh, or neither"):
        fastrnn.PreparedCell("lstm", w32[0], w32[1], w32[2])
    with pytest.raises(ValueError, match=r"b_hh must have shape \(4\*H,\) = \(16,\), got \(15,\)"):
        fastrnn.PreparedCell("lstm", w32[0], w32[1], w32[2], w32[3][:15])
    with pytest.raises(TypeError, match="weight_dtype='float16' needs float32 weights, got float64"):
        fastrnn.PreparedCell("lstm", *w64, weight_dtype="float16")
    big = (w32[0] * 1e6, w32[1])
    with pytest.raises(ValueError, match="w_ih has values outside float16's range"):
        fastrnn.PreparedCell("lstm", *big, weight_dtype="float16")
    nan = (w32[0], np.full_like(w32[1], np.nan))
    with pytest.raises(ValueError, match="w_hh has values outside float16's range"):
        fastrnn.PreparedCell("lstm", *nan, weight_dtype="float16")
    with pytest.raises(ValueError, match="weight_dtype must be None"):
        fastrnn.PreparedCell("lstm", *w32, weight_dtype="bfloat16")
    step = fastrnn.PreparedCell("lstm", *w32)
    with pytest.raises(ValueError, match=r"x must have shape \(B, I=3\) with B >= 1, got \(2, 5\)"):
        step(np.zeros((2, 5), np.float32), h, c)
    with pytest.raises(ValueError, match=r"x must have shape \(B, I=3\)"):
        step(np.zeros(3, np.float32), h, c)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        step(x.astype(np.float64), h, c)
    with pytest.raises(ValueError, match=r"h must have shape \(B, H\) = \(2, 4\), got \(3, 4\)"):
        step(x, np.zeros((3, 4), np.float32), c)
    with pytest.raises(TypeError, match="c must have dtype float32"):
        step(x, h, c.astype(np.float64))
    with pytest.raises(ValueError, match="must not be the arrays h/c"):
        step(x, h, c, out=(h, np.empty_like(c)))
    with pytest.raises(ValueError, match="out must hold"):
        step(x, h, c, out=(np.empty_like(h),))
    with pytest.raises(TypeError, match="h_out must be a numpy array"):
        step(x, h, c, out=([0.0], np.empty_like(c)))
    gru = fastrnn.PreparedCell("gru", *fastrnn.init_weights("gru", 3, 4)[0])
    with pytest.raises(ValueError, match="c is only for the LSTM"):
        gru(x, h, c)


# ---- the projected LSTM (proj_size = P): h [B, P], c [B, H], h_t = (o*tanh(c_t)) W_hr^T ----------------
PROJ_SIZES = [(4, 5, 2, 1), (7, 33, 17, 3), (33, 100, 40, 5), (16, 20, 19, 2)]  # (I, H, P, B); partial blocks
PROJ_OPTIONS = [{}, dict(peephole=True), dict(coupled=True, cell_clip=0.5), dict(peephole=True, coupled=True)]


def projected_problem(dtype, I, H, P, B, bias=True, seed=0, **options):
    rng = np.random.default_rng(seed)
    w = fastrnn.init_weights("lstm", I, H, bias=bias, dtype=dtype, seed=seed, proj_size=P,
                             peephole=options.get("peephole", False), coupled=options.get("coupled", False))[0]
    x = rng.standard_normal((B, I)).astype(dtype)
    h = rng.standard_normal((B, P)).astype(dtype)
    c = rng.standard_normal((B, H)).astype(dtype)
    return w, x, h, c


def prepared_projected(w, options, **kw):
    """A PreparedCell of a weights entry (w_ih, w_hh[, b_ih, b_hh][, w_ch], w_hr) of init_weights."""
    *rest, w_hr = w
    w_ch = rest.pop() if options.get("peephole") else None
    return fastrnn.PreparedCell("lstm", *rest, proj_size=w_hr.shape[0], w_hr=w_hr, w_ch=w_ch, **options, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("I,H,P,B", PROJ_SIZES)
@pytest.mark.parametrize("options", PROJ_OPTIONS, ids=["plain", "peep", "cifg-clip", "peep-cifg"])
def test_projected_step_matches_reference(dtype, bias, I, H, P, B, options):
    w, x, h, c = projected_problem(dtype, I, H, P, B, bias, **options)
    h1, c1 = prepared_projected(w, options)(x, h, c)
    w64 = [tuple(a.astype(np.float64) for a in w)]
    r = reference.forward("lstm", x[None].astype(np.float64), w64, h[None].astype(np.float64),
                          c[None].astype(np.float64), training=False, proj_size=P, **options)
    assert h1.dtype == dtype and h1.shape == (B, P) and c1.shape == (B, H)
    assert_close(h1, r.h_n[0], dtype, "h")
    assert_close(c1, r.c_n[0], dtype, "c")


@pytest.mark.parametrize("options", [{}, dict(peephole=True, cell_clip=0.5)], ids=["plain", "peep-clip"])
def test_projected_steps_equal_forward_over_the_sequence(options):
    T, I, H, P, B = 7, 9, 37, 11, 3
    w, _, h0, c0 = projected_problem(np.float64, I, H, P, B, **options)
    xs = np.random.default_rng(1).standard_normal((T, B, I))
    full = fastrnn.forward("lstm", xs, [w], h0[None], c0[None], proj_size=P, training=False, **options)
    one = fastrnn.forward("lstm", xs[:1], [w], h0[None], c0[None], proj_size=P, training=False, **options)
    step = prepared_projected(w, options)
    h, c = step(xs[0], h0, c0)  # == the T = 1 sequence call
    assert_close(h, one.h_n[0], np.float64, "h (T = 1)")
    assert_close(c, one.c_n[0], np.float64, "c (T = 1)")
    h, c = h0, c0
    for t in range(T):
        h, c = step(xs[t], h, c)
        assert_close(h, full.output[t], np.float64, f"h[{t}]")
    assert_close(h, full.h_n[0], np.float64, "h_n")
    assert_close(c, full.c_n[0], np.float64, "c_n")


def test_projected_float16_weights_and_threads():
    """float16 storage rounds W_hr too (within float16-weights' tolerance, and not equal to the
    float32 step); 1, 2 and 3 threads (splitting H's and P's unit blocks) give the same bits."""
    I, H, P, B = 96, 300, 100, 3
    w, x, h, c = projected_problem(np.float32, I, H, P, B)
    w64 = [tuple(a.astype(np.float64) for a in w)]
    r = reference.forward("lstm", x[None].astype(np.float64), w64, h[None].astype(np.float64),
                          c[None].astype(np.float64), training=False, proj_size=P)
    half = prepared_projected(w, {}, weight_dtype="float16")
    h16, c16 = half(x, h, c)
    assert_close(h16, r.h_n[0], "float16-weights", "h")
    assert_close(c16, r.c_n[0], "float16-weights", "c")
    step = prepared_projected(w, {})
    assert not np.array_equal(h16, step(x, h, c)[0])
    assert_same_bits_for_1_to_3_threads(step, x, h, c)


def test_projected_defaults_out_and_repr():
    w, x, h, c = projected_problem(np.float64, 6, 8, 3, 2)
    step = fastrnn.PreparedCell("lstm", *w[:4], w_hr=w[4])  # P from w_hr
    assert step.proj_size == 3 and step.hidden_size == 8
    h1, c1 = step(x)
    h2, c2 = step(x, np.zeros((2, 3)), np.zeros((2, 8)))
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1, c2)
    ho, co = np.empty((2, 3)), np.empty((2, 8))
    res = step(x, h, c, out=(ho, co))
    assert res[0] is ho and res[1] is co
    np.testing.assert_array_equal(ho, step(x, h, c)[0])
    assert repr(step) == "PreparedCell('lstm', input_size=6, hidden_size=8, dtype=float64, proj_size=3)"


def test_projected_errors():
    w, x, h, c = projected_problem(np.float32, 3, 4, 2, 2)
    w_ih, w_hh, b_ih, b_hh, w_hr = w
    with pytest.raises(ValueError, match=r"proj_size=2 needs w_hr"):
        fastrnn.PreparedCell("lstm", w_ih, w_hh, b_ih, b_hh, proj_size=2)
    with pytest.raises(ValueError, match=r"w_hr must have shape \(P, H\) = \(2, 4\), got \(2, 3\)"):
        fastrnn.PreparedCell("lstm", w_ih, w_hh, b_ih, b_hh, proj_size=2, w_hr=w_hr[:, :3])
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4\*H, P\) = \(16, 2\), got \(16, 3\)"):
        fastrnn.PreparedCell("lstm", w_ih, np.zeros((16, 3), np.float32), b_ih, b_hh, proj_size=2, w_hr=w_hr)
    with pytest.raises(TypeError, match="w_hr must have dtype float32"):
        fastrnn.PreparedCell("lstm", w_ih, w_hh, b_ih, b_hh, proj_size=2, w_hr=w_hr.astype(np.float64))
    with pytest.raises(ValueError, match="proj_size is an LSTM option"):
        fastrnn.PreparedCell("gru", *fastrnn.init_weights("gru", 3, 4)[0], proj_size=2, w_hr=w_hr)
    with pytest.raises(ValueError, match="w_hr has values outside float16's range"):
        fastrnn.PreparedCell("lstm", w_ih, w_hh, b_ih, b_hh, w_hr=w_hr * 1e6, weight_dtype="float16")
    step = fastrnn.PreparedCell("lstm", w_ih, w_hh, b_ih, b_hh, proj_size=2, w_hr=w_hr)
    with pytest.raises(ValueError, match=r"h must have shape \(B, P\) = \(2, 2\), got \(2, 4\)"):
        step(x, np.zeros((2, 4), np.float32), c)
    with pytest.raises(ValueError, match=r"c must have shape \(B, H\) = \(2, 4\), got \(2, 2\)"):
        step(x, h, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"h_out must have shape \(B, P\) = \(2, 2\)"):
        step(x, h, c, out=(np.empty((2, 4), np.float32), np.empty((2, 4), np.float32)))
