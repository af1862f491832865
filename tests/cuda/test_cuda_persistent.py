"""The persistent small-batch forward of the CUDA back end (cuda/persistent.cuh): one cooperative
launch per layer x direction, W_hh's slices in shared memory, a grid barrier per step. Selected by
FASTRNN_CUDA_PERSISTENT (0 / unset: the per-step kernels, 1, auto); these tests switch it per call.

What is checked, on a GPU or on the CPU emulator (FASTRNN_CUDA_EMU, whose cooperative launch runs
every block at once as real threads with a real grid barrier):
- the persistent forward against the float64 reference and against the per-step forward, for every
  base cell, awkward sizes (H not a multiple of the units per block, B = 1..5), ragged lengths,
  bidirectional and stacked layers, with and without h0/c0, float32/float64 and bfloat16/float16;
  and the per-step backward run on the persistent forward's reserve (same layout), against the
  reference. Persistent == per-step is asserted BITWISE on the emulator where the plan has one K
  slice (the product is summed in the per-step kernel's order, k = 0, 1, ..., and the emulator's
  compiler contracts neither); otherwise (several slices regroup the sum, and on a GPU nvcc may
  contract the two kernels' sums differently) within the dtype's tolerance of tests/tolerances.py;
- determinism (two persistent runs bitwise equal) at a size with several K slices;
- the plan (``persistent_plan``): off by default, ``auto`` only for B <= 32, not for the LSTM
  variants; the fallback to the per-step path (bitwise its result) when W_hh's slice does not fit
  in a block's shared memory, when the grid does not fit co-resident, and with training modifiers;
- clear errors for bad values of FASTRNN_CUDA_PERSISTENT and FASTRNN_CUDA_PERSISTENT_UNITS.
"""
import numpy as np
import pytest

from fastrnn.cell_table import CELL_ID
from fastrnn.types import CELLS
from helpers import find_cuda_device, make_problem, seed_of
from test_cuda_features import STORAGE16, round_to, run_cuda, run_reference
from tolerances import assert_close

DEVICE, SKIP_REASON = find_cuda_device()

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]

SWITCH, UNITS = "FASTRNN_CUDA_PERSISTENT", "FASTRNN_CUDA_PERSISTENT_UNITS"


def plan_of(p, **opts):
    """persistent_plan for problem p (what forward would do with it now)."""
    T, B, I = p["x"].shape
    H = p["weights"][0][1].shape[1]
    D = 2 if p["bidirectional"] else 1
    dtype = p["dtype"] if p["dtype"] in STORAGE16 else np.dtype(p["dtype"]).name
    return DEVICE.module.persistent_plan(CELL_ID[p["cell"]], dtype, T, B, I, H, len(p["weights"]) // D,
                                         p["bidirectional"], **opts)


def run_both(p, monkeypatch, units=None, training=True):
    """(per-step results, persistent results, the persistent plan) of problem p."""
    if units is not None:
        monkeypatch.setenv(UNITS, str(units))
    monkeypatch.setenv(SWITCH, "0")
    per_step = run_cuda(DEVICE, p, training)
    monkeypatch.setenv(SWITCH, "1")
    plan = plan_of(p)
    persistent = run_cuda(DEVICE, p, training)
    return per_step, persistent, plan


def assert_same(a, b, what=""):
    for name, v in a.items():
        assert (v is None and b[name] is None) or np.array_equal(v, b[name]), f"{what}{name} differs"


def check_persistent(p, monkeypatch, units=None):
    """The persistent forward (and the per-step backward on its reserve) against the reference and
    against the per-step path; returns the plan."""
    per_step, persistent, plan = run_both(p, monkeypatch, units)
    assert plan["runs"], plan["reason"]
    storage = p["dtype"] if p["dtype"] in STORAGE16 else np.dtype(p["dtype"]).name
    expected = run_reference(p)
    tol_row = f"cuda-{storage}" if storage in STORAGE16 else p["dtype"]
    for name, v in persistent.items():
        assert_close(v, expected[name], tol_row, name)
    if DEVICE.emulated and plan["k_slices"] == 1:
        assert_same(persistent, per_step, "persistent vs per-step: ")
    else:
        for name, v in persistent.items():
            assert_close(v, per_step[name], tol_row, f"{name} (persistent vs per-step)")
    return plan


# (T, B, I, H, units per block or None: the default, H spread over the SMs)
SIZES = [
    (5, 3, 4, 33, None),  # H not a multiple of the units (the emulator's 4 SMs: 9 units, the last block 6)
    (4, 1, 3, 7, 2),      # B = 1, one unit left in the last block
    (3, 5, 6, 20, 6),     # B = 5
]
LAYOUTS = [(1, False, False, True), (2, True, True, True), (2, True, True, False)]  # L, bidirectional, ragged, h0/c0
LAYOUT_IDS = ["L1-uni", "L2-bi-ragged", "L2-bi-ragged-nostate"]


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("size", SIZES, ids=["T%d-B%d-I%d-H%d-u%s" % s for s in SIZES])
@pytest.mark.parametrize("cell", CELLS)
def test_persistent_matches_reference_and_per_step(cell, size, layout, monkeypatch):
    T, B, I, H, units = size
    L, bi, ragged, state = layout
    dtype = np.float64 if B == 1 else np.float32
    p = make_problem(cell, dtype, L, bi, T, B, I, H, ragged=ragged, with_state=state,
                     seed=seed_of("persistent", cell, size, layout))
    check_persistent(p, monkeypatch, units)


@pytest.mark.parametrize("storage", STORAGE16)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_16bit(cell, storage, monkeypatch):
    """float16/bfloat16 storage (float arithmetic and state): the same stores, rounded the same way."""
    p = make_problem(cell, np.float64, 2, True, 4, 3, 5, 11, ragged=True, seed=seed_of("persistent16", cell, storage))
    for key in ("x", "h0", "c0", "dy", "dhn", "dcn"):
        p[key] = round_to(p[key], storage)
    p["weights"] = [tuple(round_to(w, storage) for w in e) for e in p["weights"]]
    p["dtype"] = storage
    check_persistent(p, monkeypatch, units=3)


def test_persistent_k_slices_and_deterministic(monkeypatch):
    """A size whose product is split into several K slices (the sum regrouped): within float32's
    tolerance of the reference and of the per-step path; two runs bitwise equal."""
    p = make_problem("lstm", np.float32, 1, False, 4, 2, 8, 64, ragged=True, seed=seed_of("persistent-slices"))
    plan = check_persistent(p, monkeypatch, units=8)
    assert plan["k_slices"] == 4 and plan["blocks"] == 8, plan
    monkeypatch.setenv(SWITCH, "1")
    assert_same(run_cuda(DEVICE, p), run_cuda(DEVICE, p), "between two persistent runs: ")


# ---- the switch and the plan ---------------------------------------------------------------------
def test_plan_switch(monkeypatch):
    p = make_problem("lstm", np.float32, 1, False, 3, 4, 3, 16, seed=1)
    monkeypatch.delenv(SWITCH, raising=False)
    plan = plan_of(p)
    assert not plan["runs"] and "FASTRNN_CUDA_PERSISTENT is 0 or unset" in plan["reason"]
    monkeypatch.setenv(SWITCH, "auto")
    plan = plan_of(p)
    assert plan["runs"], plan["reason"]
    assert plan["blocks"] == -(-16 // plan["units"]) and plan["smem_bytes"] <= plan["smem_limit"]
    wide = make_problem("lstm", np.float32, 1, False, 3, 33, 3, 16, seed=1)
    plan = plan_of(wide)
    assert not plan["runs"] and "B = 33 > 32" in plan["reason"]
    monkeypatch.setenv(SWITCH, "1")  # 1: any batch
    assert plan_of(wide)["runs"]
    peephole = make_problem("lstm", np.float32, 1, False, 3, 4, 3, 16, seed=1)
    plan = plan_of(peephole, peephole=True)
    assert not plan["runs"] and "base cells" in plan["reason"]


def test_fallback_when_w_hh_does_not_fit(monkeypatch):
    """All of a float64 LSTM's W_hh with H = 128 in one block (512 KiB) fits no GPU's shared memory:
    the per-step path runs, bitwise its own result. And a huge layer does not fit by default."""
    p = make_problem("lstm", np.float64, 1, False, 3, 2, 3, 128, seed=2)
    per_step, fallback, plan = run_both(p, monkeypatch, units=128)
    assert not plan["runs"] and "does not fit on chip" in plan["reason"], plan
    assert plan["smem_bytes"] > plan["smem_limit"]
    assert_same(fallback, per_step, "fallback vs per-step: ")
    monkeypatch.delenv(UNITS)
    plan = DEVICE.module.persistent_plan(CELL_ID["lstm"], "float64", 2, 1, 1, 8192, 1, False)
    assert not plan["runs"] and "does not fit on chip" in plan["reason"], plan


def test_fallback_when_the_grid_is_not_co_resident(monkeypatch):
    """One unit per block and more blocks than the device holds at once: the per-step path runs."""
    monkeypatch.setenv(SWITCH, "1")
    monkeypatch.setenv(UNITS, "1")
    probe = DEVICE.module.persistent_plan(CELL_ID["gru"], "float32", 2, 1, 2, 64, 1, False)
    H = probe["sms"] * probe["blocks_per_sm"] + 1
    p = make_problem("gru", np.float32, 1, False, 2, 1, 2, H, seed=3)
    per_step, fallback, plan = run_both(p, monkeypatch, units=1)
    assert not plan["runs"] and "does not fit co-resident" in plan["reason"], plan
    assert_same(fallback, per_step, "fallback vs per-step: ")
    expected = run_reference(p)
    for name, v in fallback.items():
        assert_close(v, expected[name], np.float32, name)


def test_fallback_with_training_modifiers(monkeypatch):
    """Zoneout and recurrent dropout run on the per-step path: the same results with the switch on."""
    p = make_problem("lstm", np.float32, 1, True, 4, 3, 4, 6, ragged=True, seed=4)
    rng = np.random.default_rng(4)
    p["mods"] = {"zoneout_mask": (rng.random((2, 4, 3, 6)) < 0.3).astype(np.float32),
                 "recurrent_mask": (rng.random((2, 3, 6)) < 0.8).astype(np.float32) / 0.8}
    per_step, switched, _ = run_both(p, monkeypatch)
    assert_same(switched, per_step, "modifiers with the switch on vs off: ")


@pytest.mark.parametrize("name, value, message", [
    (SWITCH, "yes", "FASTRNN_CUDA_PERSISTENT must be 0, 1 or auto, got 'yes'"),
    (UNITS, "0", "FASTRNN_CUDA_PERSISTENT_UNITS must be a positive integer, got '0'"),
    (UNITS, "4x", "FASTRNN_CUDA_PERSISTENT_UNITS must be a positive integer, got '4x'"),
])
def test_bad_switch_values_are_value_errors(name, value, message, monkeypatch):
    monkeypatch.setenv(SWITCH, "1")
    monkeypatch.setenv(name, value)
    p = make_problem("rnn_tanh", np.float32, 1, False, 2, 1, 2, 3, seed=5)
    with pytest.raises(ValueError, match=message):
        plan_of(p)
    with pytest.raises(ValueError, match=message):
        run_cuda(DEVICE, p, training=False)
