"""Masks the CPU kernels draw themselves from a seed (csrc/philox.h): zoneout's d of h and c and
recurrent dropout's m, drawn in the fused step and again in backward from Philox4x32-10 keyed on
(seed, layer/direction, t, b, j).

The NumPy stream (fastrnn.reference.philox) against Random123's published known answers; a seeded
kernel call against the same call given the masks that stream materialises, bit for bit (outputs,
final states, every gradient), over cells, LSTM variants, layers, directions, unsorted lengths,
dtypes, thread counts and awkward sizes; against the NumPy reference; the sharp stochastic checks
(H = 1: a zoned-out step is exactly h_{t-1} in the fraction p +- 4 sigma, a recurrent-dropout mask
is constant over a sequence); p = 0 bit-identical to the plain cell; seeds reproduce and differ;
the NumPy API's seed= errors.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.reference.philox import philox4x32_10, seeded_masks
from helpers import make_problem, variant_problem
from tolerances import assert_close


def test_philox_known_answers():
    """Random123's kat_vectors for philox4x32_10 (also in TensorFlow's and cuRAND's tests)."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in philox4x32_10(np.array(counter, np.uint32), key)) == expected


def _mods(cell, zoneout=0.0, zoneout_cell=0.0, recurrent_dropout=0.0):
    kw = dict(zoneout=zoneout, recurrent_dropout=recurrent_dropout)
    if cell == "lstm":
        kw["zoneout_cell"] = zoneout_cell
    return kw


def _seeded_and_given(p, cell, seed, mods, opts=None, **extra):
    """fastrnn.forward + backward with seed= and with the masks seeded_masks materialises for it."""
    opts = opts or {}
    x = p["x"]
    T, B, _ = x.shape
    L, D = len(p["weights"]) // (2 if p["bidirectional"] else 1), 2 if p["bidirectional"] else 1
    H = p["weights"][0][1].shape[1]
    r, zh, zc = seeded_masks(seed, L * D, T, B, H, dtype=x.dtype, **mods)
    common = dict(lengths=p["lengths"], bidirectional=p["bidirectional"], training=True, **opts, **mods, **extra)
    runs = []
    for given in (dict(seed=seed), dict(recurrent_mask=r, zoneout_mask=zh, zoneout_cell_mask=zc)):
        res = fastrnn.forward(cell, x, p["weights"], p["h0"], p["c0"], **common, **given)
        grads = fastrnn.backward(res.saved, p["dy"], p["dhn"], p["dcn"])
        runs.append((res, grads))
    return runs, (r, zh, zc)


def _assert_bitwise(a, b):
    (ra, ga), (rb, gb) = a, b
    for name in ("output", "h_n", "c_n"):
        x, y = getattr(ra, name), getattr(rb, name)
        assert (x is None and y is None) or np.array_equal(x, y), name
    for name in ("dx", "dh0", "dc0"):
        x, y = getattr(ga, name), getattr(gb, name)
        assert (x is None and y is None) or np.array_equal(x, y), name
    for k, (ea, eb) in enumerate(zip(ga.dweights, gb.dweights)):
        for i, (wa, wb) in enumerate(zip(ea, eb)):
            assert np.array_equal(wa, wb), f"dweights[{k}][{i}]"


MODS = {"zoneout": dict(zoneout=0.3, zoneout_cell=0.25), "recurrent": dict(recurrent_dropout=0.4),
        "all": dict(zoneout=0.2, zoneout_cell=0.35, recurrent_dropout=0.3)}


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("mods", list(MODS))
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["1x1", "2x2"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seeded_equals_the_materialised_masks_bitwise(cell, mods, layers, bidirectional, ragged, dtype):
    p = make_problem(cell, dtype, layers, bidirectional, 6, 5, 3, 7, ragged=ragged, seed=4)
    kw = _mods(cell, **MODS[mods])
    (seeded, given), masks = _seeded_and_given(p, cell, 2**63 + 12345, kw, grad_clip=0.5 if mods == "all" else None)
    _assert_bitwise(seeded, given)
    assert any(m is not None and 0 < m.mean() and m.min() == 0 for m in masks)  # the masks act


@pytest.mark.parametrize("variant", [(True, False, None), (False, True, 0.4), (True, True, 0.4)],
                         ids=["peephole", "coupled-clip", "peephole-coupled-clip"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
def test_seeded_lstm_variants_bitwise(variant, ragged):
    p = variant_problem(variant, np.float64, 2, True, 5, 4, 3, 6, ragged=ragged, seed=2, scale=2.0)
    p["cell"] = "lstm"
    (seeded, given), _ = _seeded_and_given(p, "lstm", 77, MODS["all"], opts=p["opts"], grad_clip=0.3)
    _assert_bitwise(seeded, given)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(1, 1, 97), (9, 3, 33), (4, 17, 130)], ids=["T1-B1-H97", "T9-B3-H33", "T4-B17-H130"])
def test_seeded_awkward_sizes_and_threads(threads, size):
    """Each element's draw depends on (t, b, j) only: any split of the units over threads, any
    vector tail, gives the same masks."""
    T, B, H = size
    p = make_problem("lstm", np.float32, 1, True, T, B, 5, H, ragged=B > 2, seed=8)
    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    try:
        (seeded, given), _ = _seeded_and_given(p, "lstm", 5, MODS["all"])
    finally:
        fastrnn.set_num_threads(before)
    _assert_bitwise(seeded, given)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_seeded_against_the_reference(cell):
    p = make_problem(cell, np.float64, 2, True, 5, 4, 3, 6, ragged=True, seed=1)
    kw = _mods(cell, **MODS["all"])
    (seeded, _), (r, zh, zc) = _seeded_and_given(p, cell, 31, kw)
    ref = reference.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], lengths=p["lengths"], bidirectional=True,
                            training=True, recurrent_mask=r, zoneout_mask=zh, zoneout_cell_mask=zc)
    grads = reference.backward(ref.saved, p["dy"], p["dhn"], p["dcn"])
    res, got = seeded
    assert_close(res.output, ref.output, np.float64, "y")
    assert_close(res.h_n, ref.h_n, np.float64, "h_n")
    assert_close(got.dx, grads.dx, np.float64, "dx")
    for k, (ea, eb) in enumerate(zip(got.dweights, grads.dweights)):
        for i, (wa, wb) in enumerate(zip(ea, eb)):
            assert_close(wa, wb, np.float64, f"dweights[{k}][{i}]")


def test_seeded_with_dilation_uses_the_materialised_masks():
    p = make_problem("gru", np.float64, 2, True, 7, 3, 3, 5, ragged=True, seed=3)
    (seeded, given), _ = _seeded_and_given(p, "gru", 9, _mods("gru", **MODS["all"]), dilation=[2, 3])
    _assert_bitwise(seeded, given)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_zoned_out_step_is_exactly_the_previous_state_in_fraction_p(cell):
    """H = 1: y_t == y_{t-1} exactly where the stream's d_h is 1 (and only there, up to ties of
    measure zero), in the fraction p +- 4 sigma."""
    p_zone, T, B = 0.3, 20, 200
    p = make_problem(cell, np.float64, 1, False, T, B, 3, 1, seed=5)
    res = fastrnn.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], training=True, zoneout=p_zone, seed=11)
    y = res.output[..., 0]  # [T, B]
    prev = np.concatenate([p["h0"][0, :, 0][None], y[:-1]])
    kept = y == prev
    _, zh, _ = seeded_masks(11, 1, T, B, 1, zoneout=p_zone)
    assert np.array_equal(kept, zh[0, ..., 0] == 1)
    sigma = (p_zone * (1 - p_zone) / kept.size) ** 0.5
    assert abs(kept.mean() - p_zone) <= 4 * sigma


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_recurrent_mask_is_constant_over_a_sequence(cell):
    """H = 1: each row's whole sequence equals one of the two deterministic runs (the mask 0 or
    1/(1-p) at every step); the dropped fraction is p +- 4 sigma."""
    p_drop, T, B = 0.5, 10, 128
    p = make_problem(cell, np.float64, 1, False, T, B, 2, 1, seed=6)
    y = fastrnn.forward(cell, p["x"], p["weights"], training=True, recurrent_dropout=p_drop, seed=3).output
    runs = [fastrnn.forward(cell, p["x"], p["weights"], recurrent_mask=np.full((1, B, 1), v)).output
            for v in (0.0, 1 / (1 - p_drop))]
    dropped = np.all(y == runs[0], axis=(0, 2))
    kept = np.all(y == runs[1], axis=(0, 2))
    assert np.all(dropped ^ kept)
    sigma = (p_drop * (1 - p_drop) / B) ** 0.5
    assert abs(dropped.mean() - p_drop) <= 4 * sigma


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_p_zero_is_bit_identical_to_the_plain_cell(cell):
    """A seed with every p = 0, through the NumPy API and straight into the kernels (mask_seed on,
    nothing drawn), gives the plain cell's bits."""
    p = make_problem(cell, np.float32, 2, True, 5, 4, 3, 6, ragged=True, seed=7)
    args = (cell, p["x"], p["weights"], p["h0"], p["c0"])
    plain = fastrnn.forward(*args, lengths=p["lengths"], bidirectional=True, training=True)
    zero = fastrnn.forward(*args, lengths=p["lengths"], bidirectional=True, training=True, seed=1,
                           **_mods(cell))
    _assert_bitwise((plain, fastrnn.backward(plain.saved, p["dy"])), (zero, fastrnn.backward(zero.saved, p["dy"])))
    from fastrnn.functional import _CELL_ID, _core
    T, B, I = p["x"].shape
    y = np.empty_like(plain.output)
    hn = np.empty_like(plain.h_n)
    cn = np.empty_like(plain.h_n) if cell == "lstm" else None
    _core.forward(_CELL_ID[cell], p["x"], p["weights"], p["h0"], p["c0"], p["lengths"], y, hn, cn, None, 6, 2, True,
                  mask_seed=(123, 0, 0.0, 0.0, 0.0))
    assert np.array_equal(y, plain.output) and np.array_equal(hn, plain.h_n)


def test_seeds_reproduce_and_differ():
    p = make_problem("lstm", np.float32, 2, True, 6, 4, 3, 5, seed=9)
    kw = dict(bidirectional=True, training=True, **MODS["all"])
    run = lambda seed: fastrnn.forward("lstm", p["x"], p["weights"], **kw, seed=seed).output  # noqa: E731
    assert np.array_equal(run(5), run(5))
    assert np.array_equal(run(5), run(5 + 2**64))  # taken mod 2^64
    assert not np.array_equal(run(5), run(6))
    assert not np.array_equal(run(2**32 + 5), run(5))  # the key's high word counts
    assert np.array_equal(run(np.random.default_rng(1)), run(np.random.default_rng(1)))
    g = np.random.default_rng(1)
    assert not np.array_equal(run(g), run(g))  # a Generator moves on
    r, zh, zc = seeded_masks(5, 4, 6, 4, 5, **MODS["all"])
    for m in (r, zh, zc):  # every layer and direction its own masks
        assert len({m[k].tobytes() for k in range(4)}) == 4


def test_eval_draws_nothing_from_the_seed():
    p = make_problem("gru", np.float64, 1, False, 5, 3, 3, 4, seed=10)
    a = fastrnn.forward("gru", p["x"], p["weights"], zoneout=0.3, recurrent_dropout=0.5, seed=1)
    b = fastrnn.forward("gru", p["x"], p["weights"], zoneout=0.3, recurrent_dropout=0.5)
    assert np.array_equal(a.output, b.output)


@pytest.mark.parametrize("kw,err,match", [
    (dict(seed=1, rng=2), ValueError, "not both"),
    (dict(seed=1, recurrent_mask=np.ones((1, 3, 2))), ValueError, "recurrent_mask"),
    (dict(seed=1, zoneout_mask=np.zeros((1, 3, 3, 2))), ValueError, "zoneout_mask"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(seed=True), TypeError, "seed must be an int"),
    (dict(seed="7"), TypeError, "seed must be an int"),
    (dict(seed=np.random.RandomState(0)), TypeError, "numpy.random.Generator"),
])
def test_seed_errors(kw, err, match):
    p = make_problem("gru", np.float64, 1, False, 3, 3, 3, 2, seed=0)
    with pytest.raises(err, match=match):
        fastrnn.forward("gru", p["x"], p["weights"], training=True, zoneout=0.2, recurrent_dropout=0.2, **kw)


@pytest.mark.parametrize("mask_seed,err", [((1, 0, 0.1), TypeError), ([1, 0, 0.1, 0.0, 0.0], TypeError),
                                           ((1.0, 0, 0.1, 0.0, 0.0), TypeError), ((1, -1, 0.1, 0.0, 0.0), ValueError),
                                           ((1, 0, 1.0, 0.0, 0.0), ValueError), ((1, 0, 0.1, 0.2, 0.0), ValueError),
                                           ((1, 0, 0.0, 0.0, -0.5), ValueError)])
def test_kernel_mask_seed_errors(mask_seed, err):
    """The entry point's mask_seed: a 5-tuple of an int seed, a stream >= 0 and probabilities in
    [0, 1); zoneout_cell only for the LSTM (this is a GRU)."""
    from fastrnn.functional import _CELL_ID, _core
    p = make_problem("gru", np.float64, 1, False, 3, 2, 3, 2, seed=0)
    y, hn = np.empty((3, 2, 2)), np.empty((1, 2, 2))
    with pytest.raises(err):
        _core.forward(_CELL_ID["gru"], p["x"], p["weights"], None, None, None, y, hn, None, None, 2, 1, False,
                      mask_seed=mask_seed)
