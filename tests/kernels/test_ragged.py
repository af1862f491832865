"""Ragged batches run on their live rows only (csrc/cpu/layer.h, LiveRows): step t runs the first
rows(t) rows of the batch, the input and weight-gradient GEMMs the sum-of-lengths rows that ran,
and an unsorted batch is sorted once by decreasing length, run, and put back (csrc/cpu/stack.cpp).
Checked here: the reference on lengths that make steps shrink to one row and to none (the longest
sequence shorter than T), sorted and unsorted batches, the promise that an unsorted batch gives
exactly (bitwise) the permuted results of its sorted order, gradients included (also with the
modifiers' per-row masks, sorted with the rows), and that padding (NaN, Inf) is never read.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.types import CELLS
from helpers import assert_all_close, make_problem, named, run
from tolerances import assert_close

DTYPES = (np.float32, np.float64)

# (T, B, I, H, lengths, layers, bidirectional): steps whose row count shrinks to 1 and to 0
# (max length < T), one row alone, equal lengths, T*B below 16 (few rows) and above (packed).
CASES = [
    (7, 5, 4, 6, [7, 5, 5, 2, 1], 2, True),
    (8, 6, 3, 5, [5, 4, 4, 3, 1, 1], 1, False),   # max length < T: the last steps run no row
    (6, 3, 5, 4, [3, 2, 1], 2, True),             # T*B >= 16 but few rows run
    (3, 4, 4, 5, [3, 3, 1, 1], 1, True),          # T*B < 16: few rows
    (5, 1, 3, 4, [3], 2, True),                   # one sequence, shorter than T
    (9, 17, 33, 40, list(range(9, 0, -1)) + [4] * 8, 2, True),  # wider, several runs of the input GEMM
]


def case_problem(cell, dtype, case, seed):
    T, B, I, H, lengths, layers, bi = case
    p = make_problem(cell, dtype, layers, bi, T, B, I, H, ragged=True, seed=seed)
    p["lengths"] = np.array(lengths, dtype=np.int64)
    return p


def permuted(p, order):
    """The same problem with its batch rows in `order` (new row i = old row order[i])."""
    q = dict(p, lengths=p["lengths"][order], x=p["x"][:, order], dy=p["dy"][:, order],
             dhn=p["dhn"][:, order])
    for k in ("h0", "c0", "dcn"):
        if p[k] is not None:
            q[k] = p[k][:, order]
    return q


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_sorted_and_unsorted_match_reference(cell, dtype, case):
    p = case_problem(cell, dtype, CASES[case], seed=case)
    rng = np.random.default_rng(case)
    for q in (p, permuted(p, rng.permutation(len(p["lengths"])))):
        fast = named(*run(fastrnn, q))
        assert_all_close(fast, named(*run(reference, q)), dtype)
        alive = np.arange(q["x"].shape[0])[:, None] < q["lengths"][None, :]  # [T, B]
        assert not fast["output"][~alive].any(), "outputs past a length must be zero"
        assert not fast["dx"][~alive].any(), "dx past a length must be zero"


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_unsorted_is_the_sorted_problem_permuted_bitwise(cell, dtype, bidirectional):
    """An unsorted batch runs as its stable sort by decreasing length: every output, state and
    gradient is bitwise the sorted batch's, rows put back (weight gradients as they are)."""
    T, B = 12, 9
    p = make_problem(cell, dtype, 2, bidirectional, T, B, 6, 20, ragged=True, seed=5)
    p["lengths"] = np.array([3, 12, 7, 1, 7, 12, 5, 2, 9])
    order = np.argsort(-p["lengths"], kind="stable")
    sorted_fast = named(*run(fastrnn, permuted(p, order)))
    fast = named(*run(fastrnn, p))
    batch_axis = {"output": 1, "dx": 1, "h_n": 1, "c_n": 1, "dh0": 1, "dc0": 1}
    for name, v in fast.items():
        if v is None:
            continue
        expected = sorted_fast[name]
        if name in batch_axis:
            back = np.empty_like(expected)
            np.put_along_axis(back, order.reshape([-1 if a == batch_axis[name] else 1 for a in range(v.ndim)]),
                              expected, axis=batch_axis[name])
            expected = back
        np.testing.assert_array_equal(v, expected, err_msg=name)


@pytest.mark.parametrize("order", ["sorted", "unsorted"])
@pytest.mark.parametrize("cell", CELLS)
def test_padding_is_never_read(cell, order):
    """NaN/Inf in x's and dy's padding change nothing, bitwise: the GEMMs run the live rows only."""
    p = case_problem(cell, np.float32, CASES[0], seed=3)
    if order == "unsorted":
        p = permuted(p, np.array([3, 0, 4, 1, 2]))
    clean = named(*run(fastrnn, p))
    dead = ~(np.arange(p["x"].shape[0])[:, None] < p["lengths"][None, :])
    x, dy = p["x"].copy(), p["dy"].copy()
    x[dead] = np.nan
    dy[dead] = np.inf
    dirty = named(*run(fastrnn, dict(p, x=x, dy=dy)))
    for name, v in clean.items():
        if v is not None:
            np.testing.assert_array_equal(dirty[name], v, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_equal_lengths_equal_no_lengths_bitwise(cell):
    """lengths all T runs the very problem without lengths (one run of T*B rows)."""
    p = make_problem(cell, np.float32, 2, True, 6, 5, 4, 7, seed=8)
    plain = named(*run(fastrnn, p))
    full = named(*run(fastrnn, dict(p, lengths=np.full(5, 6))))
    for name, v in plain.items():
        if v is not None:
            np.testing.assert_array_equal(full[name], v, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_unsorted_with_recurrent_mask_matches_reference(cell):
    """The modifiers' per-row masks travel with their rows when the batch is sorted."""
    T, B, I, H = 7, 5, 4, 6
    p = make_problem(cell, np.float64, 1, True, T, B, I, H, ragged=True, seed=11)
    p["lengths"] = np.array([2, 7, 1, 5, 7])
    mask = (np.random.default_rng(1).random((2, B, H)) > 0.3) / 0.7
    kw = dict(lengths=p["lengths"], bidirectional=True, training=True, recurrent_mask=mask)
    out = {}
    for module in (fastrnn, reference):
        res = module.forward(cell, p["x"], p["weights"], p["h0"], p["c0"], **kw)
        grads = module.backward(res.saved, p["dy"], p["dhn"], p["dcn"])
        out[module] = named(res, grads)
    assert_all_close(out[fastrnn], out[reference], np.float64)
    assert_close(out[fastrnn]["output"][5:, 0], np.zeros((2, 2 * H)), np.float64, "padding of sequence 0")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unsorted_with_masks_is_the_sorted_problem_permuted_bitwise(cell):
    """Recurrent-dropout and zoneout masks are permuted with the rows: an unsorted batch with masks
    gives bitwise the sorted batch's results (with its masks sorted alike), rows put back."""
    T, B, H = 8, 5, 6
    p = make_problem(cell, np.float32, 1, True, T, B, 4, H, ragged=True, seed=21)
    lengths = np.array([3, 8, 1, 5, 8])
    rng = np.random.default_rng(2)
    masks = dict(recurrent_mask=((rng.random((2, B, H)) > 0.3) / 0.7).astype(np.float32),
                 zoneout_mask=(rng.random((2, T, B, H)) > 0.8).astype(np.float32))
    if cell == "lstm":
        masks["zoneout_cell_mask"] = (rng.random((2, T, B, H)) > 0.8).astype(np.float32)
    order = np.argsort(-lengths, kind="stable")
    results = []
    for perm in (np.arange(B), order):
        q = permuted(dict(p, lengths=lengths), perm)
        m = {k: v[..., perm, :] for k, v in masks.items()}
        res = fastrnn.forward(cell, q["x"], q["weights"], q["h0"], q["c0"], lengths=q["lengths"], bidirectional=True,
                              training=True, **m)
        results.append((perm, named(res, fastrnn.backward(res.saved, q["dy"], q["dhn"], q["dcn"]))))
    (_, plain), (_, sorted_run) = results
    for name, v in plain.items():
        if v is None:
            continue
        expected = sorted_run[name]
        if not name.startswith("dweights"):
            back = np.empty_like(expected)
            back[:, order] = expected
            expected = back
        np.testing.assert_array_equal(v, expected, err_msg=name)
