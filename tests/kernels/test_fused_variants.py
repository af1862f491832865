"""The fused CPU kernels of the GRU(reset_after=False) (Cho et al. 2014: the reset gate applied
to h_{t-1} before the n product) against the float64 NumPy reference (fastrnn.reference, whose
hand-written BPTT tests/test_variants.py checks against central differences): outputs, final states
and every gradient over the kernel matrix (layers x directions x equal/ragged lengths x h0 or not x
float32/float64), awkward sizes on both sides of the 16-row packing threshold and of the 2 MB
few-rows threshold, no biases, step-by-step == the sequence, and that reset_after=True is the base
GRU bit for bit. Tolerances: tests/tolerances.py.
"""
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from helpers import layer_norm_problem, ragged_lengths, run_layer_norm
from tolerances import assert_close

DTYPES = (np.float32, np.float64)


def gru_problem(dtype, num_layers, bidirectional, T, B, I, H, *, bias=True, ragged=False, seed=0, scale=1.0):
    """A seeded reset-before GRU problem: weights as init_weights draws them (times ``scale``), h0,
    lengths (ragged: containing T and 1), dy, dhn."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    weights = fastrnn.init_weights("gru", I, H, num_layers, bidirectional=bidirectional, bias=bias, dtype=np.float64,
                                   seed=seed)
    weights = [tuple((scale * w).astype(dtype) for w in entry) for entry in weights]
    state = (num_layers * D, B, H)
    lengths = ragged_lengths(rng, T, B) if ragged else None
    return dict(x=rng.standard_normal((T, B, I)).astype(dtype), weights=weights,
                h0=(0.5 * rng.standard_normal(state)).astype(dtype), lengths=lengths,
                dy=rng.standard_normal((T, B, D * H)).astype(dtype), dhn=rng.standard_normal(state).astype(dtype),
                bidirectional=bidirectional, dtype=np.dtype(dtype))


def run_gru(module, p, with_state=True, reset_after=False):
    """forward + backward of ``module`` (fastrnn or fastrnn.reference) -> {name: array}."""
    cast = (lambda a: None if a is None else np.asarray(a, np.float64)) if module is reference else (lambda a: a)
    weights = [tuple(cast(w) for w in entry) for entry in p["weights"]]
    kw = {} if reset_after is None else {"reset_after": reset_after}  # None: the keyword left out
    res = module.forward("gru", cast(p["x"]), weights, cast(p["h0"]) if with_state else None, lengths=p["lengths"],
                         bidirectional=p["bidirectional"], training=True, **kw)
    grads = module.backward(res.saved, cast(p["dy"]), cast(p["dhn"]))
    out = {"output": res.output, "h_n": res.h_n, "dx": grads.dx, "dh0": grads.dh0}
    names = ["dw_ih", "dw_hh", "db_ih", "db_hh"][:len(p["weights"][0])]
    for k, entry in enumerate(grads.dweights):
        assert len(entry) == len(names)
        for name, g in zip(names, entry):
            out[f"dweights[{k}].{name}"] = g
    return out


def assert_gru_matches_reference(p, with_state=True):
    fast, ref = run_gru(fastrnn, p, with_state), run_gru(reference, p, with_state)
    assert fast.keys() == ref.keys()
    for name in fast:
        assert fast[name].dtype == p["dtype"], name
        assert_close(fast[name], ref[name], p["dtype"], name)
    return fast


@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gru_reset_before_kernels_match_reference(dtype, num_layers, bidirectional, ragged, with_state):
    seed = zlib.crc32(repr(("gru-rb", np.dtype(dtype).name, num_layers, bidirectional, ragged)).encode())
    p = gru_problem(dtype, num_layers, bidirectional, T=6, B=3, I=4, H=5, ragged=ragged, seed=seed, scale=2.0)
    assert_gru_matches_reference(p, with_state)


AWKWARD = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (5, 3, 4, 1),
    (3, 2, 37, 21),    # T*B < 16: few rows, weights read from their rows through the BLAS
    (3, 7, 37, 21),    # T*B >= 16: packed panels
    (2, 33, 3, 19),    # odd batch, H not a multiple of the vector width
    (2, 3, 200, 280),  # T*B < 16 with weights >= 2 MB: rows_gemm.h's kernels
    (4, 5, 16, 40),    # several 16-unit blocks: threads own slices of units (FASTRNN_MIN_STEP_FLOPS=0)
]


@pytest.mark.parametrize("size", AWKWARD, ids=["T%d-B%d-I%d-H%d" % s for s in AWKWARD])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gru_reset_before_awkward_sizes(dtype, size):
    T, B, I, H = size
    p = gru_problem(dtype, 2, True, T, B, I, H, ragged=True, seed=sum(size), scale=1.5)
    assert_gru_matches_reference(p)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gru_reset_before_without_bias(dtype):
    p = gru_problem(dtype, 2, True, 5, 3, 4, 6, bias=False, ragged=True, seed=3)
    assert len(p["weights"][0]) == 2
    assert_gru_matches_reference(p, with_state=False)


def test_gru_reset_before_batch_first_and_gru_forward():
    p = gru_problem(np.float64, 1, False, 4, 3, 2, 5, seed=4)
    xb = np.ascontiguousarray(p["x"].transpose(1, 0, 2))
    res = fastrnn.gru_forward(xb, p["weights"], p["h0"], batch_first=True, reset_after=False, training=True)
    ref = reference.forward("gru", p["x"], p["weights"], p["h0"], reset_after=False)
    assert_close(res.output.transpose(1, 0, 2), ref.output, np.float64, "output")
    grads = fastrnn.gru_backward(res.saved, np.ascontiguousarray(p["dy"].transpose(1, 0, 2)))
    ref_grads = reference.backward(ref.saved, p["dy"])
    assert_close(grads.dx.transpose(1, 0, 2), ref_grads.dx, np.float64, "dx")


def test_gru_reset_before_step_by_step_equals_the_sequence():
    p = gru_problem(np.float64, 2, False, 6, 3, 4, 5, seed=14, scale=2.0)
    seq = fastrnn.forward("gru", p["x"], p["weights"], p["h0"], reset_after=False)
    h = p["h0"]
    for t in range(6):
        step = fastrnn.forward("gru", p["x"][t:t + 1], p["weights"], h, reset_after=False)
        np.testing.assert_allclose(step.output[0], seq.output[t], rtol=1e-13, atol=1e-14)
        h = step.h_n
    np.testing.assert_allclose(h, seq.h_n, rtol=1e-13, atol=1e-14)


def test_gru_reset_before_differs_and_reset_after_true_is_the_base_gru():
    p = gru_problem(np.float32, 2, True, 5, 4, 3, 6, ragged=True, seed=15, scale=2.0)
    base = run_gru(fastrnn, p, reset_after=None)  # None: the keyword left out below
    p_true = run_gru(fastrnn, p, reset_after=True)
    for name in base:
        np.testing.assert_array_equal(p_true[name], base[name], err_msg=name)
    before = run_gru(fastrnn, p)
    assert not np.allclose(before["output"], base["output"], atol=1e-3)


def test_gru_reset_before_refuses_what_it_does_not_run():
    x = np.zeros((2, 1, 3), np.float32)
    w = fastrnn.init_weights("gru", 3, 4)
    with pytest.raises(ValueError, match="reset_after is a GRU option"):
        fastrnn.forward("lstm", x, fastrnn.init_weights("lstm", 3, 4), reset_after=False)
    with pytest.raises(ValueError, match="reset_after is a GRU option and a bool"):
        fastrnn.forward("gru", x, w, reset_after="no")
    with pytest.raises(NotImplementedError, match="reset_after=False"):
        fastrnn.forward("gru", x, w, reset_after=False, recurrent_dropout=0.5, training=True)


# ---- layer_norm=True (LSTM and GRU) ----------------------------------------------------------------
def assert_layer_norm_matches_reference(p, with_state=True):
    fast, ref = run_layer_norm(fastrnn, p, with_state), run_layer_norm(reference, p, with_state)
    assert fast.keys() == ref.keys()
    for name in fast:
        if fast[name] is not None:
            assert fast[name].dtype == p["dtype"], name
        assert_close(fast[name], ref[name], p["dtype"].name + "-layer-norm", name)


@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_kernels_match_reference(cell, dtype, num_layers, bidirectional, ragged, with_state):
    seed = zlib.crc32(repr(("ln", cell, np.dtype(dtype).name, num_layers, bidirectional, ragged)).encode())
    p = layer_norm_problem(cell, dtype, num_layers, bidirectional, T=6, B=3, I=4, H=5, ragged=ragged, seed=seed)
    assert_layer_norm_matches_reference(p, with_state)


LN_AWKWARD = [  # (T, B, I, H)
    (1, 1, 1, 2),
    (3, 2, 37, 21),    # T*B < 16: few rows through the BLAS
    (3, 7, 37, 21),    # packed panels
    (2, 33, 3, 19),    # odd batch and H
    (2, 3, 150, 250),  # T*B < 16 with weights >= 2 MB: rows_gemm.h's kernels
    (4, 5, 16, 40),    # three reduction blocks, over threads (FASTRNN_MIN_STEP_FLOPS=0)
]


@pytest.mark.parametrize("size", LN_AWKWARD, ids=["T%d-B%d-I%d-H%d" % s for s in LN_AWKWARD])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_awkward_sizes(cell, dtype, size):
    T, B, I, H = size
    p = layer_norm_problem(cell, dtype, 2, True, T, B, I, H, ragged=True, seed=sum(size))
    assert_layer_norm_matches_reference(p)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_without_bias(cell):
    p = layer_norm_problem(cell, np.float64, 2, True, 5, 3, 4, 6, bias=False, ragged=True, seed=5)
    assert len(p["weights"][0]) == (6 if cell == "lstm" else 4)
    assert_layer_norm_matches_reference(p)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_layer_norm_does_not_depend_on_the_thread_count(cell):
    """The row statistics are combined per 16-unit block in block order: the outputs and final states
    of 1 and 2 threads agree bit for bit (the weight gradients' GEMMs are split by thread, their
    rounding may differ)."""
    p = layer_norm_problem(cell, np.float32, 1, False, 4, 3, 5, 48, seed=6)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        one = run_layer_norm(fastrnn, p)
        fastrnn.set_num_threads(2)
        two = run_layer_norm(fastrnn, p)
    finally:
        fastrnn.set_num_threads(before)
    for name in ("output", "h_n", "c_n"):
        if one[name] is not None:
            np.testing.assert_array_equal(one[name], two[name], err_msg=name)


def test_layer_norm_refuses_what_it_does_not_run():
    x = np.zeros((2, 1, 3), np.float32)
    w = layer_norm_problem("lstm", np.float32, 1, False, 2, 1, 3, 4)["weights"]
    with pytest.raises(ValueError, match="layer_norm is an LSTM/GRU option"):
        fastrnn.forward("rnn_tanh", x, fastrnn.init_weights("rnn_tanh", 3, 4), layer_norm=True)
    with pytest.raises(ValueError, match="does not combine"):
        fastrnn.forward("lstm", x, w, layer_norm=True, peephole=True)
    with pytest.raises(ValueError, match="layer_norm=True"):
        fastrnn.forward("lstm", x, fastrnn.init_weights("lstm", 3, 4), layer_norm=True)  # no norm vectors
    with pytest.raises(ValueError, match=r"ln_bias_c, layer 0, forward\) must have shape \(H,\)"):
        fastrnn.forward("lstm", x, [w[0][:-1] + (np.ones(5, np.float32),)], layer_norm=True)
    with pytest.raises(NotImplementedError, match="layer_norm"):
        fastrnn.forward("lstm", x, w, layer_norm=True, zoneout=0.5, training=True)


# ---- fastrnn.PreparedCell with the variants ---------------------------------------------------------
PREPARED_VARIANTS = [(True, False, None), (False, True, None), (False, False, 0.4), (True, True, 0.3)]


@pytest.mark.parametrize("H", [1, 21, 37])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("variant", PREPARED_VARIANTS, ids=["peep", "cifg", "clip", "peep-cifg-clip"])
def test_prepared_cell_lstm_variants_equal_the_sequence_step(variant, dtype, H):
    """One prepared step == the sequence kernels' T = 1 step (same maths, other products: tolerance)."""
    peephole, coupled, cell_clip = variant
    I, B = 5, 6
    w = fastrnn.init_weights("lstm", I, H, 1, dtype=dtype, seed=H, peephole=peephole, coupled=coupled)[0]
    w = tuple(2 * a for a in w)  # wide enough for the clip to act
    rng = np.random.default_rng(H)
    x, h, c = (rng.standard_normal((B, n)).astype(dtype) for n in (I, H, H))
    step = fastrnn.PreparedCell("lstm", *w[:4], w_ch=w[4] if peephole else None, peephole=peephole, coupled=coupled,
                                cell_clip=cell_clip)
    h1, c1 = step(x, h, c)
    seq = fastrnn.forward("lstm", x[None], [w], h[None], c[None], peephole=peephole, coupled=coupled,
                          cell_clip=cell_clip)
    assert_close(h1, seq.output[0], dtype, "h")
    assert_close(c1, seq.c_n[0], dtype, "c")
    if cell_clip is not None:
        assert np.abs(c1).max() <= cell_clip
    assert "peephole=True" in repr(step) if peephole else "peephole" not in repr(step)


def test_prepared_cell_variant_errors():
    w = fastrnn.init_weights("lstm", 3, 4, peephole=True)[0]
    with pytest.raises(ValueError, match="w_ch"):
        fastrnn.PreparedCell("lstm", *w[:4], peephole=True)
    with pytest.raises(ValueError, match="w_ch"):
        fastrnn.PreparedCell("lstm", *w[:4], w_ch=w[4])
    with pytest.raises(ValueError, match=r"w_ch must have shape \(2, H\)"):
        fastrnn.PreparedCell("lstm", *fastrnn.init_weights("lstm", 3, 4, coupled=True)[0], w_ch=w[4], peephole=True,
                             coupled=True)
    g = fastrnn.init_weights("gru", 3, 4)[0]
    with pytest.raises(ValueError, match="ln_weight_hh is missing"):
        fastrnn.PreparedCell("gru", *g, layer_norm=True, ln_weight_ih=np.ones(12, np.float32))
    with pytest.raises(ValueError, match="ln_weight_ih is a vector of the layer norm"):
        fastrnn.PreparedCell("gru", *g, ln_weight_ih=np.ones(12, np.float32))
    with pytest.raises(ValueError, match="ln_weight_c is a vector of the layer norm"):  # the GRU has no cell norm
        fastrnn.PreparedCell("gru", *g, layer_norm=True, ln_weight_ih=np.ones(12, np.float32),
                             ln_weight_hh=np.ones(12, np.float32), ln_weight_c=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"ln_weight_hh must have shape \(3\*H,\)"):
        fastrnn.PreparedCell("gru", *g, layer_norm=True, ln_weight_ih=np.ones(12, np.float32),
                             ln_weight_hh=np.ones(11, np.float32))
    with pytest.raises(TypeError, match="ln_weight_ih must have dtype float32"):
        fastrnn.PreparedCell("gru", *g, layer_norm=True, ln_weight_ih=np.ones(12), ln_weight_hh=np.ones(12, np.float32))
    with pytest.raises(ValueError, match="does not combine"):
        fastrnn.PreparedCell("gru", *g, layer_norm=True, reset_after=False, ln_weight_ih=np.ones(12, np.float32),
                             ln_weight_hh=np.ones(12, np.float32))
    with pytest.raises(ValueError, match="reset_after is a GRU option"):
        fastrnn.PreparedCell("lstm", *w[:4], reset_after=False)
    with pytest.raises(ValueError, match="LSTM options"):
        fastrnn.PreparedCell("gru", *g, peephole=True, w_ch=np.zeros((3, 4), np.float32))


# ---- fastrnn.PreparedCell / PreparedStack with the reset-before GRU and layer norm ------------------
# These cells need every unit of a row before a block's cell (r*h_{t-1} for the second product, the
# row statistics), so the prepared step runs them phase by phase over all blocks: tested against the
# sequence kernels' T = 1 step at sizes below, at and above a block (16 float32 / 8 float64 units),
# with and without biases, B = 1 and larger, and with the threads splitting the blocks.
def prepared_of(cell, entry, bias, reset_after=True, layer_norm=False, **kw):
    """A PreparedCell from one forward-style weights entry (w_ih, w_hh[, b_ih, b_hh][, ln vectors])."""
    k = 4 if bias else 2
    names = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")
    norm = dict(zip(names, entry[k:])) if layer_norm else {}
    return fastrnn.PreparedCell(cell, *entry[:k], reset_after=reset_after, layer_norm=layer_norm, **norm, **kw)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B", [1, 6])
@pytest.mark.parametrize("H", [1, 8, 21, 97])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_prepared_cell_reset_before_equals_the_sequence_step(dtype, H, B, bias, threads):
    p = gru_problem(dtype, 1, False, 1, B, 5, H, bias=bias, seed=H + B, scale=2.0)
    step = prepared_of("gru", p["weights"][0], bias, reset_after=False)
    old = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        h1 = step(p["x"][0], p["h0"][0])
    finally:
        fastrnn.set_num_threads(old)
    seq = fastrnn.forward("gru", p["x"], p["weights"], p["h0"], reset_after=False)
    assert_close(h1, seq.output[0], dtype, "h")
    ref = reference.forward("gru", p["x"].astype(np.float64), [tuple(w.astype(np.float64) for w in p["weights"][0])],
                            p["h0"].astype(np.float64), reset_after=False)
    assert_close(h1, ref.output[0], dtype, "h vs the reference")
    base = prepared_of("gru", p["weights"][0], bias)(p["x"][0], p["h0"][0])  # the reset-after GRU differs
    assert H == 1 or not np.allclose(h1, base, rtol=1e-3, atol=1e-4)
    assert "reset_after=False" in repr(step)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("B", [1, 6])
@pytest.mark.parametrize("H", [1, 8, 21, 97])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_prepared_cell_layer_norm_equals_the_sequence_step(cell, dtype, H, B, bias, threads):
    p = layer_norm_problem(cell, dtype, 1, False, 1, B, 5, H, bias=bias, seed=H + B)
    step = prepared_of(cell, p["weights"][0], bias, layer_norm=True)
    old = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        out = step(p["x"][0], p["h0"][0], p["c0"][0]) if cell == "lstm" else (step(p["x"][0], p["h0"][0]),)
    finally:
        fastrnn.set_num_threads(old)
    seq = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], layer_norm=True)
    assert_close(out[0], seq.output[0], dtype, "h")
    if cell == "lstm":
        assert_close(out[1], seq.c_n[0], dtype, "c")
    ref = reference.forward(cell, p["x"].astype(np.float64), [tuple(w.astype(np.float64) for w in p["weights"][0])],
                            p["h0"].astype(np.float64), None if p["c0"] is None else p["c0"].astype(np.float64),
                            layer_norm=True)
    assert_close(out[0], ref.output[0], dtype, "h vs the reference")
    assert "layer_norm=True" in repr(step)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_prepared_stack_variants_equal_the_sequence(dtype):
    """PreparedStack with each cell option: a 2-layer step == forward on a one-step sequence."""
    cases = [("gru", dict(reset_after=False), gru_problem(dtype, 2, False, 1, 3, 5, 19, seed=1, scale=2.0))]
    for cell in ("lstm", "gru"):
        cases.append((cell, dict(layer_norm=True), layer_norm_problem(cell, dtype, 2, False, 1, 3, 5, 19, seed=2)))
    w = fastrnn.init_weights("lstm", 5, 19, 2, dtype=dtype, seed=3, peephole=True, coupled=True)
    rng = np.random.default_rng(3)
    cases.append(("lstm", dict(peephole=True, coupled=True, cell_clip=0.5),
                  dict(x=rng.standard_normal((1, 3, 5)).astype(dtype), weights=[tuple(2 * a for a in e) for e in w],
                       h0=rng.standard_normal((2, 3, 19)).astype(dtype), c0=rng.standard_normal((2, 3, 19)).astype(dtype))))
    for cell, options, p in cases:
        c0 = p.get("c0") if cell == "lstm" else None
        stack = fastrnn.PreparedStack(cell, p["weights"], **options)
        y, h, c = stack(p["x"][0], p["h0"], c0)
        seq = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], c0, **options)
        assert_close(h, seq.h_n, dtype, f"{cell} {options} h")
        assert_close(y, seq.output[0], dtype, f"{cell} {options} y")
        if cell == "lstm":
            assert_close(c, seq.c_n, dtype, f"{cell} {options} c")
        assert all(f"{k}={v!r}" in repr(stack) for k, v in options.items())
    with pytest.raises(ValueError, match="layer_norm=True"):  # the norm's vectors are missing
        fastrnn.PreparedStack("lstm", fastrnn.init_weights("lstm", 5, 4, dtype=dtype), layer_norm=True)
    with pytest.raises(ValueError, match="reset_after is a GRU option"):
        fastrnn.PreparedStack("lstm", fastrnn.init_weights("lstm", 5, 4, dtype=dtype), reset_after=False)
