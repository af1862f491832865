"""The CUDA back end's LSTM variants (peephole, coupled, cell_clip) and training modifiers
(recurrent dropout, zoneout of h and c, grad_clip in BPTT) through ``fastrnn._core.cuda``,
against the float64 reference (``fastrnn.reference``, with the same explicit masks): forward and
every gradient, the peepholes' dL/dw_ch included, stacked, bidirectional, ragged lengths, float32
and float64, sizes across the step kernels' tile edges; dW_ch bitwise the same from run to run.

Like tests/cuda/test_cuda.py (both use helpers.find_cuda_device) these run on a GPU, or on the CPU emulation
of the kernels with FASTRNN_CUDA_EMU=<dir> (cuda/emu/build.sh), and skip with one reason otherwise.
"""
import copy

import numpy as np
import pytest

from fastrnn import reference
from fastrnn.cell_table import CELL_ID, carries_cell_state
from helpers import (VARIANT_IDS, VARIANTS, find_cuda_device, layer_norm_problem, make_problem, seed_of,
                     variant_problem)
from tolerances import assert_close

DEVICE, SKIP_REASON = find_cuda_device()

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))]

GRAD_NAMES = ("dw_ih", "dw_hh", "db_ih", "db_hh")


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


# ---- 16-bit storage on the host: float16 as NumPy's, bfloat16 as its bits in uint16 ----------------
STORAGE16 = ("float16", "bfloat16")


def to_storage(a, name):
    """float array -> the storage array of dtype ``name`` (values rounded to nearest, ties to even;
    bfloat16: the upper 16 bits of the float32, as uint16)."""
    if name == "float16":
        return np.asarray(a, np.float32).astype(np.float16)
    if name == "bfloat16":
        u = np.ascontiguousarray(np.asarray(a, np.float32)).view(np.uint32)
        return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    return np.asarray(a, name)


def from_storage(a, name):
    """The inverse of to_storage, as float64 (exact)."""
    if name == "bfloat16":
        return (np.asarray(a).astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)
    return np.asarray(a).astype(np.float64) if name == "float16" else a


def round_to(a, name):
    """a rounded to dtype ``name`` where the kernels store it, as float64 (None stays None)."""
    return None if a is None else from_storage(to_storage(a, name), name)


def run_cuda(dev, p, training=True):
    """forward then backward through the CUDA entry points with p's cell options (p["opts"]:
    peephole, coupled, cell_clip, proj_size or None) and modifiers (p["mods"]: recurrent_mask [L*D, B, H],
    zoneout_mask / zoneout_cell_mask [L*D, T, B, H], grad_clip); {name: host array} with the names
    tests/kernels/test_variants.py names them (a weight tuple's grads dw_ih, dw_hh[, db_ih, db_hh][, dw_ch]
    [, dw_hr]). With proj_size = P, h is P wide (h0, hn, y's D*P columns), c H wide.
    p["dtype"] float16 / bfloat16: p's arrays hold values of that type; the results come back as float64."""
    cell, bi = p.get("cell", "lstm"), p["bidirectional"]
    storage = np.dtype(p["dtype"]).name if p["dtype"] not in STORAGE16 else p["dtype"]
    opts = dict(p.get("opts") or {})
    opts["cell_clip"] = float(opts.get("cell_clip") or 0.0)
    mods = p.get("mods") or {}
    D = 2 if bi else 1
    T, B, I = p["x"].shape
    HW = p["weights"][0][1].shape[1]  # h's width: w_hh's columns (H, or P when projected)
    H = p["weights"][0][-1].shape[1] if opts.get("proj_size") else HW  # w_hr [P, H] ends each tuple
    L = len(p["weights"]) // D
    lstm = carries_cell_state(cell)
    state, steps = (L * D, B, H), (L * D, T, B, H)
    h_state = (L * D, B, HW)
    m, ptr = dev.module, dev.ptr
    put = lambda a: None if a is None else dev.put(to_storage(a, storage))
    empty = lambda shape: put(np.full(shape, np.nan))  # NaN: an element the kernels forget fails
    weights = [tuple(put(w) for w in entry) for entry in p["weights"]]
    x, h0, c0 = put(p["x"]), put(p["h0"]), put(p["c0"])
    lengths = None if p["lengths"] is None else dev.put(np.asarray(p["lengths"], np.int64))
    mask, zone_h = put(mods.get("recurrent_mask")), put(mods.get("zoneout_mask"))
    zone_c = put(mods.get("zoneout_cell_mask")) if lstm else None
    # h~ and c~, what a training forward with zoneout keeps for backward (fastrnn.ops: after the reserve)
    pre_h = empty(steps) if training and zone_h is not None else None
    pre_c = empty(steps) if training and zone_c is not None else None
    y, hn = empty((T, B, D * HW)), empty(h_state)
    cn = empty(state) if lstm else None
    size = m.reserve_size(CELL_ID[cell], T, B, I, H, L, bi, **opts)
    reserve = empty((size,)) if training else None
    head = (CELL_ID[cell], storage, T, B, I, H, L, bi)
    wptrs = [tuple(ptr(w) for w in entry) for entry in weights]
    m.forward(*head, ptr(x), wptrs, ptr(h0), ptr(c0), ptr(lengths), ptr(y), ptr(hn), ptr(cn), ptr(reserve),
              dev.stream(), recurrent_mask_ptr=ptr(mask), zoneout_h_ptr=ptr(zone_h), zoneout_c_ptr=ptr(zone_c),
              pre_h_ptr=ptr(pre_h), pre_c_ptr=ptr(pre_c), **opts)
    out = {"output": y, "h_n": hn, "c_n": cn}
    if training:
        dy, dhn, dcn = put(p["dy"]), put(p["dhn"]), put(p["dcn"])
        dx, dh0 = empty((T, B, I)), empty(h_state)
        dc0 = empty(state) if lstm else None
        grads = [tuple(empty(w.shape) for w in entry) for entry in p["weights"]]
        m.backward(*head, ptr(x), wptrs, ptr(h0), ptr(c0), ptr(lengths), ptr(reserve), ptr(dy), ptr(dhn), ptr(dcn),
                   ptr(dx), ptr(dh0), ptr(dc0), [tuple(ptr(g) for g in entry) for entry in grads], dev.stream(),
                   recurrent_mask_ptr=ptr(mask), grad_clip=float(mods.get("grad_clip") or 0.0),
                   zoneout_h_ptr=ptr(zone_h), zoneout_c_ptr=ptr(zone_c), pre_h_ptr=ptr(pre_h), pre_c_ptr=ptr(pre_c),
                   **opts)
        out.update(dx=dx, dh0=dh0, dc0=dc0)
        names = grad_names(p)
        for k, entry in enumerate(grads):
            for name, g in zip(names, entry):
                out[f"dweights[{k}].{name}"] = g
    dev.synchronize()
    return {k: None if v is None else from_storage(dev.get(v), storage) for k, v in out.items()}


def grad_names(p):
    opts = p.get("opts") or {}
    if opts.get("layer_norm"):  # w_ih, w_hh[, b_ih, b_hh], ln_weight_ih, ln_weight_hh[, ln_weight_c, ln_bias_c]
        norm = ["dln_weight_ih", "dln_weight_hh"] + (["dln_weight_c", "dln_bias_c"] if p.get("cell") == "lstm" else [])
        return list(GRAD_NAMES[:len(p["weights"][0]) - len(norm)]) + norm
    peephole, projected = bool(opts.get("peephole")), bool(opts.get("proj_size"))
    return (list(GRAD_NAMES[:len(p["weights"][0]) - peephole - projected]) + (["dw_ch"] if peephole else [])
            + (["dw_hr"] if projected else []))


def run_reference(p):
    """The float64 reference on float64 casts of p's data, with the same options and masks."""
    cell, mods = p.get("cell", "lstm"), p.get("mods") or {}
    opts = dict(p.get("opts") or {})
    lstm = carries_cell_state(cell)
    res = reference.forward(cell, _f64(p["x"]), [tuple(_f64(w) for w in e) for e in p["weights"]], _f64(p["h0"]),
                            _f64(p["c0"]), lengths=p["lengths"], bidirectional=p["bidirectional"], training=True,
                            recurrent_mask=_f64(mods.get("recurrent_mask")), grad_clip=mods.get("grad_clip"),
                            zoneout_mask=_f64(mods.get("zoneout_mask")),
                            zoneout_cell_mask=_f64(mods.get("zoneout_cell_mask")) if lstm else None, **opts)
    g = reference.backward(res.saved, _f64(p["dy"]), _f64(p["dhn"]), _f64(p["dcn"]))
    out = {"output": res.output, "h_n": res.h_n, "c_n": res.c_n, "dx": g.dx, "dh0": g.dh0, "dc0": g.dc0}
    names = grad_names(p)
    for k, entry in enumerate(g.dweights):
        assert len(entry) == len(names)
        for name, v in zip(names, entry):
            out[f"dweights[{k}].{name}"] = v
    return out


def check_against_reference(p):
    got, expected = run_cuda(DEVICE, p), run_reference(p)
    assert got.keys() == expected.keys(), f"quantities differ: {sorted(got)} vs {sorted(expected)}"
    for name, v in got.items():
        assert v is None or v.dtype == p["dtype"], f"{name} has dtype {v.dtype}, expected {p['dtype']}"
        assert_close(v, expected[name], p["dtype"], name)
    return got


# ---- the LSTM variants ---------------------------------------------------------------
@pytest.mark.parametrize("layout", ["L1-uni", "L2-bi-ragged"])
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_variants_match_reference(variant, dtype, layout):
    L, bi, ragged = (1, False, False) if layout == "L1-uni" else (2, True, True)
    # weights scaled by 2 so that the clip of 0.4 is active at some units and not at others
    p = variant_problem(variant, dtype, L, bi, T=5, B=3, I=4, H=5, ragged=ragged, scale=2.0,
                             seed=seed_of("variant", variant, np.dtype(dtype).name, layout))
    got = check_against_reference(p)
    if variant[2] is not None:  # the clip holds c inside [-C, C]
        assert np.abs(got["c_n"]).max() <= variant[2]


# B > 16 rows, H > 16 units and not a multiple of 16, I > 64, G*H > 64: every tile edge of the step
# kernels and of the own GEMM, the peepholes' column sums over more than one block of 32 columns.
@pytest.mark.parametrize("variant", [(True, False, 0.4), (True, True, None)], ids=["peep-clip", "peep-cifg"])
def test_variants_tile_edges(variant):
    p = variant_problem(variant, np.float32, 2, True, T=3, B=17, I=70, H=33, ragged=True, scale=2.0,
                             seed=seed_of("variant-edges", variant))
    check_against_reference(p)


def test_variant_no_bias_no_state_and_deterministic():
    """Peepholes without biases or initial states; two runs bitwise equal (the peepholes' gradient is
    each row's share summed in a fixed order, no atomics); inference == training forward."""
    p = variant_problem((True, True, 0.4), np.float32, 2, True, T=4, B=5, I=3, H=6, bias=False, ragged=True,
                             scale=2.0, seed=5)
    p["h0"], p["c0"] = None, None
    first = check_against_reference(p)
    assert "dweights[0].db_ih" not in first and "dweights[0].dw_ch" in first
    second = run_cuda(DEVICE, p)
    for name, v in first.items():
        assert (v is None and second[name] is None) or np.array_equal(v, second[name]), f"{name} differs between runs"
    inference = run_cuda(DEVICE, p, training=False)
    for name in ("output", "h_n", "c_n"):
        assert np.array_equal(inference[name], first[name]), f"{name}: inference differs from the training forward"


def test_zero_peepholes_and_infinite_clip_are_the_plain_lstm():
    """The variant kernels with w_ch = 0 and cell_clip = 1e30 compute the plain LSTM's values."""
    p = variant_problem((True, False, 1e30), np.float64, 1, True, T=4, B=3, I=4, H=5, ragged=True, seed=3)
    p["weights"] = [e[:4] + (np.zeros_like(e[4]),) for e in p["weights"]]
    got = run_cuda(DEVICE, p)
    plain = run_cuda(DEVICE, {**p, "cell": "lstm", "opts": None, "weights": [e[:4] for e in p["weights"]]})
    for name, v in plain.items():
        assert_close(got[name], v, np.float64, name)
    assert np.abs(got["dweights[0].dw_ch"]).max() > 0  # the peepholes' gradient is there, w_ch = 0 or not


# ---- the reset-before GRU (reset_after=False): two kernels per step ------------------------------
def _reset_before_problem(dtype, L, bi, ragged, T=5, B=3, I=4, H=5, **kw):
    p = make_problem("gru", dtype, L, bi, T, B, I, H, ragged=ragged, **kw)
    p["opts"] = {"reset_after": False}
    return p


@pytest.mark.parametrize("ragged", (False, True), ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", (False, True), ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", (1, 2))
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=["f32", "f64"])
def test_gru_reset_before_matches_reference(dtype, num_layers, bidirectional, ragged):
    p = _reset_before_problem(dtype, num_layers, bidirectional, ragged,
                              seed=seed_of("reset-before", np.dtype(dtype).name, num_layers, bidirectional, ragged))
    got = check_against_reference(p)
    # it is not the reset-after GRU: the same weights give other outputs there
    plain = run_reference({**p, "opts": None})
    assert np.abs(got["output"] - plain["output"]).max() > 1e-3


def test_gru_reset_before_tile_edges():
    """B > 16 rows, H = 33 (not a multiple of the 16-unit tiles), I > 64: the second product reads
    r*h of units in other blocks, and its backward dG_n of units in other blocks."""
    check_against_reference(_reset_before_problem(np.float32, 2, True, True, T=3, B=17, I=70, H=33,
                                                  seed=seed_of("reset-before-edges")))


def test_gru_reset_before_no_bias_no_state_deterministic():
    """Without biases or h0; two runs bitwise equal; inference == the training forward."""
    p = _reset_before_problem(np.float32, 2, True, True, T=4, B=5, I=3, H=6, bias=False, seed=7)
    p["h0"] = None
    first = check_against_reference(p)
    assert "dweights[0].db_ih" not in first
    second = run_cuda(DEVICE, p)
    for name, v in first.items():
        assert (v is None and second[name] is None) or np.array_equal(v, second[name]), f"{name} differs between runs"
    inference = run_cuda(DEVICE, p, training=False)
    for name in ("output", "h_n"):
        assert np.array_equal(inference[name], first[name]), f"{name}: inference differs from the training forward"


@pytest.mark.parametrize("which", ["zoneout", "zoneout_eval", "grad_clip", "zoneout_clip"])
def test_gru_reset_before_kernel_modifiers(which):
    """The kernels' zoneout and grad_clip with the reset-before GRU (as on the CPU kernels; fastrnn.ops
    still routes modified reset-before calls to composed torch ops), and recurrent dropout refused."""
    p = _modifier_problem("gru", np.float64, which, "L2-bi-ragged")
    p["opts"] = {"reset_after": False}
    check_against_reference(p)


def test_gru_reset_before_refuses_recurrent_dropout():
    p = _modifier_problem("gru", np.float32, "recurrent", "L1-uni")
    p["opts"] = {"reset_after": False}
    with pytest.raises(ValueError, match="recurrent dropout is not implemented for the reset-before GRU"):
        run_cuda(DEVICE, p)


# ---- layer norm (layer_norm=True): a GEMM and one row-block kernel per step ----------------------
def _layer_norm_problem(cell, dtype, L, bi, ragged, T=5, B=3, I=4, H=5, **kw):
    """helpers.layer_norm_problem (gains and the cell norm's bias
    away from their init), with the CUDA runner's keys."""
    p = layer_norm_problem(cell, dtype, L, bi, T, B, I, H, ragged=ragged, **kw)
    p["opts"] = {"layer_norm": True}
    return p


def check_layer_norm(p, with_state=True):
    """Against the float64 reference with tests/tolerances.py's layer-norm rows."""
    if not with_state:
        p = {**p, "h0": None, "c0": None}
    got, expected = run_cuda(DEVICE, p), run_reference(p)
    assert got.keys() == expected.keys(), f"quantities differ: {sorted(got)} vs {sorted(expected)}"
    for name, v in got.items():
        assert v is None or v.dtype == p["dtype"], f"{name} has dtype {v.dtype}, expected {p['dtype']}"
        assert_close(v, expected[name], np.dtype(p["dtype"]).name + "-layer-norm", name)
    return got


@pytest.mark.parametrize("with_state", (True, False), ids=["state", "no-state"])
@pytest.mark.parametrize("ragged", (False, True), ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", (False, True), ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", (1, 2))
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_layer_norm_matches_reference(cell, dtype, num_layers, bidirectional, ragged, with_state):
    p = _layer_norm_problem(cell, dtype, num_layers, bidirectional, ragged,
                            seed=seed_of("layer-norm", cell, np.dtype(dtype).name, num_layers, bidirectional, ragged))
    got = check_layer_norm(p, with_state)
    # the norm is there: the plain cell gives other outputs on the same gate weights
    plain = run_reference({**p, "opts": None, "weights": [e[:len(e) - (4 if cell == "lstm" else 2)] for e in p["weights"]]})
    assert np.abs(got["output"] - plain["output"]).max() > 1e-3


@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_layer_norm_tile_edges(cell):
    """B > 16 rows, H = 33 and H = 300 (more units than a row block's 256 threads: threads own two
    units and uneven slices of the reductions), I > 64, G*H past the GEMM's and column sums' tiles."""
    check_layer_norm(_layer_norm_problem(cell, np.float32, 2, True, True, T=3, B=17, I=70, H=33,
                                         seed=seed_of("layer-norm-edges", cell)))
    check_layer_norm(_layer_norm_problem(cell, np.float64, 1, True, True, T=2, B=2, I=3, H=300,
                                         seed=seed_of("layer-norm-wide", cell)))


@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_layer_norm_no_bias_deterministic_and_inference(cell):
    """Without biases or initial states; two runs bitwise equal (row statistics and the gains' and
    biases' gradients reduced in a fixed order, no atomics); inference == the training forward."""
    p = _layer_norm_problem(cell, np.float32, 2, True, True, T=4, B=5, I=3, H=6, bias=False, seed=11)
    first = check_layer_norm(p, with_state=False)
    assert "dweights[0].db_ih" not in first and "dweights[0].dln_weight_ih" in first
    p = {**p, "h0": None, "c0": None}
    second = run_cuda(DEVICE, p)
    for name, v in first.items():
        assert (v is None and second[name] is None) or np.array_equal(v, second[name]), f"{name} differs between runs"
    inference = run_cuda(DEVICE, p, training=False)
    for name in ("output", "h_n", "c_n"):
        assert (first[name] is None and inference[name] is None) or np.array_equal(inference[name], first[name]), \
            f"{name}: inference differs from the training forward"


def test_layer_norm_refuses_16bit_storage_and_modifiers():
    """What the row kernels do not run is a ValueError before anything is queued: 16-bit storage, and
    the kernels' training modifiers (fastrnn.ops runs layer norm with modifiers as composed torch ops)."""
    p = _layer_norm_problem("lstm", np.float32, 1, False, False, T=3, B=2, I=3, H=4, seed=1)
    with pytest.raises(ValueError, match="layer norm on CUDA runs float32/float64 storage"):
        run_cuda(DEVICE, {**p, "dtype": "float16"})
    for mods in ({"grad_clip": 0.5}, {"zoneout_mask": np.zeros((1, 3, 2, 4))}):
        with pytest.raises(ValueError, match="layer norm on CUDA runs without the kernels' training modifiers"):
            run_cuda(DEVICE, {**p, "mods": mods})


# ---- the training modifiers ----------------------------------------------------------
def _modifier_problem(cell, dtype, which, layout, T=6, B=3, I=4, H=17):
    L, bi, ragged = (1, False, False) if layout == "L1-uni" else (2, True, True)
    D = 2 if bi else 1
    p = make_problem(cell, dtype, L, bi, T, B, I, H, ragged=ragged, seed=seed_of("mods", cell, which, layout))
    rng = np.random.default_rng(seed_of("masks", cell, which, layout))
    # p = 0.5: the recurrent mask's 2 is exact in every float type, so m * h adds no rounding the
    # reference lacks
    recurrent = dict(recurrent_mask=(rng.random((L * D, B, H)) >= 0.5) / 0.5)
    zone = dict(zoneout_mask=(rng.random((L * D, T, B, H)) < 0.4).astype(np.float64),
                zoneout_cell_mask=(rng.random((L * D, T, B, H)) < 0.4).astype(np.float64) if carries_cell_state(cell) else None)
    zone_eval = dict(zoneout_mask=np.full((L * D, T, B, H), 0.25),
                     zoneout_cell_mask=np.full((L * D, T, B, H), 0.5) if carries_cell_state(cell) else None)
    # a clip that acts on some elements and not others (the incoming dy, dhn are standard normal)
    p["mods"] = {"recurrent": recurrent, "zoneout": zone, "zoneout_eval": zone_eval,
                 "grad_clip": dict(grad_clip=0.3), "zoneout_clip": dict(grad_clip=0.3, **zone),
                 "all": dict(grad_clip=0.3, **recurrent, **zone)}[which]
    return p


MODIFIERS = ["recurrent", "zoneout", "zoneout_eval", "grad_clip", "zoneout_clip", "all"]


@pytest.mark.parametrize("layout", ["L1-uni", "L2-bi-ragged"])
@pytest.mark.parametrize("which", MODIFIERS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_modifiers_match_reference(cell, which, layout):
    dtype = np.float64 if layout == "L1-uni" else np.float32
    check_against_reference(_modifier_problem(cell, dtype, which, layout))


@pytest.mark.parametrize("which", ["recurrent", "zoneout", "zoneout_clip", "all"])
@pytest.mark.parametrize("variant", [(True, False, None), (False, True, 0.4), (True, True, 0.4)],
                         ids=["peep", "cifg-clip", "peep-cifg-clip"])
def test_modifiers_with_lstm_variants_match_reference(variant, which):
    """The modifiers on top of the LSTM variants (peepholes read c_{t-1} and c_t, which zoneout of c
    mixes; the clip acts on c~ before zoneout) against the reference with the same masks."""
    p = _modifier_problem("lstm", np.float64, which, "L2-bi-ragged", H=6)
    v = variant_problem(variant, np.float64, 2, True, T=6, B=3, I=4, H=6, ragged=True, scale=2.0,
                        seed=seed_of("mods-variant", variant, which))
    check_against_reference({**v, "mods": p["mods"]})


@pytest.mark.parametrize("which", ["all", "zoneout_eval"])
def test_modifiers_relu_and_tile_edges(which):
    """rnn_relu, and B > 16 rows, H = 33, I > 64 under every modifier at once."""
    check_against_reference(_modifier_problem("rnn_relu", np.float32, which, "L2-bi-ragged", T=3, B=17, I=70, H=33))


def test_neutral_modifiers_are_bit_identical():
    """A recurrent mask of ones, zoneout masks of zeros and a clip no gradient reaches change nothing."""
    for cell in ("lstm", "gru"):
        p = make_problem(cell, np.float32, 2, True, 5, 3, 4, 9, ragged=True, seed=seed_of("neutral", cell))
        plain = run_cuda(DEVICE, p)
        L, D, (T, B, _), H = 2, 2, p["x"].shape, 9
        neutral = dict(recurrent_mask=np.ones((L * D, B, H)), grad_clip=1e30,
                       zoneout_mask=np.zeros((L * D, T, B, H)),
                       zoneout_cell_mask=np.zeros((L * D, T, B, H)) if carries_cell_state(cell) else None)
        got = run_cuda(DEVICE, {**p, "mods": neutral})
        for name, v in plain.items():
            assert (v is None and got[name] is None) or np.array_equal(v, got[name]), f"{cell} {name}"


def test_modifier_pointer_errors():
    """zoneout in backward needs the forward's h~ (pre_h); c's masks are the LSTM's only."""
    m = DEVICE.module
    args = dict(cell=2, dtype="float32", T=5, B=3, I=4, H=6, L=1, bidirectional=False, x_ptr=8,
                weight_ptrs=[(8, 8, 8, 8)], h0_ptr=0, c0_ptr=0, lengths_ptr=0, reserve_ptr=8, dy_ptr=8, dhn_ptr=0,
                dcn_ptr=0, dx_ptr=8, dh0_ptr=8, dc0_ptr=8, grad_ptrs=[(8, 8, 8, 8)], stream=0)
    with pytest.raises(ValueError, match="pre_h_ptr is required"):
        m.backward(**args, zoneout_h_ptr=8)
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        m.backward(**args, grad_clip=-1.0)
    with pytest.raises(ValueError, match="zoneout_c_ptr must be 0 for this cell"):
        m.backward(**{**args, "cell": 3, "dc0_ptr": 0, "weight_ptrs": [(8, 8, 8, 8)]}, zoneout_c_ptr=8)
    with pytest.raises(ValueError, match="peephole, coupled and cell_clip are LSTM options"):
        m.reserve_size(3, 5, 3, 4, 6, 1, False, peephole=True)
    with pytest.raises(ValueError, match="must hold 3 or 5 pointers"):  # peepholes: w_ch after the four
        m.backward(**args, peephole=True)


# ---- through fastrnn.ops / fastrnn.nn (the torch op's CUDA branch) -----------------------------
@pytest.fixture
def cuda_ops(monkeypatch):
    """``to_device(tensor)`` for the op's CUDA branch: on a GPU, CUDA tensors; under the emulator,
    CPU tensors with fastrnn.ops routed through its CUDA branch (``_cuda_entry_points``) onto the
    emulated kernels, torch's device and stream calls stubbed. Call ``to_device.route()`` first."""
    torch = pytest.importorskip("torch")
    import contextlib
    import types

    from fastrnn import ops

    class ToDevice:
        def __call__(self, t):
            return t if DEVICE.emulated else t.cuda()

        def route(self, cpu_tensors_as_cuda_dtypes=False):  # the op takes 16-bit CPU tensors too now
            if DEVICE.emulated:
                monkeypatch.setattr(ops, "_entry_points", lambda x: ops._cuda_entry_points(DEVICE.module, x.device))
                monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
                monkeypatch.setattr(torch.cuda, "current_stream", lambda: types.SimpleNamespace(cuda_stream=0))

    return ToDevice()


def _op_gradients(torch, p, to_device):
    """fastrnn.ops.run_forward on the device with p's data, options and masks, then torch.autograd
    through the op's backward; {name: host array} as run_reference names them."""
    from fastrnn import ops
    cell, mods, opts = p.get("cell", "lstm"), p.get("mods") or {}, p.get("opts") or {}
    tensor = lambda a: None if a is None else to_device(torch.tensor(np.asarray(a, p["dtype"])))
    D = 2 if p["bidirectional"] else 1
    H = p["weights"][0][-1 if opts.get("proj_size") else 1].shape[1]  # w_hr [P, H] ends a projected tuple
    L = len(p["weights"]) // D
    x, h0, c0 = tensor(p["x"]), tensor(p["h0"]), tensor(p["c0"])
    weights = [tensor(w) for entry in p["weights"] for w in entry]
    named_leaves = [(n, t) for n, t in (("dx", x), ("dh0", h0), ("dc0", c0)) if t is not None]
    named_leaves += list(enumerate(weights))
    for _, t in named_leaves:
        t.requires_grad_(True)
    lengths = None if p["lengths"] is None else to_device(torch.tensor(p["lengths"], dtype=torch.int64))
    cell_string = ops.variant_cell(cell, **opts) if opts else cell
    y, hn, cn, _ = ops.run_forward(x, weights, h0, c0, lengths, cell_string, H, L, p["bidirectional"], True,
                                   tensor(mods.get("recurrent_mask")), float(mods.get("grad_clip") or 0.0),
                                   tensor(mods.get("zoneout_mask")), tensor(mods.get("zoneout_cell_mask")))
    loss = (y * tensor(p["dy"])).sum() + (hn * tensor(p["dhn"])).sum()
    if carries_cell_state(cell):
        loss = loss + (cn * tensor(p["dcn"])).sum()
    g = dict(zip([n for n, _ in named_leaves], torch.autograd.grad(loss, [t for _, t in named_leaves])))
    host = lambda t: t.detach().cpu().to(torch.float64).numpy()
    out = {"output": host(y), "h_n": host(hn), "c_n": host(cn) if carries_cell_state(cell) else None,
           "dx": host(g["dx"]), "dh0": host(g["dh0"]), "dc0": host(g["dc0"]) if carries_cell_state(cell) else None}
    names, n = grad_names(p), len(p["weights"][0])
    for k in range(len(p["weights"])):
        for j, name in enumerate(names):
            out[f"dweights[{k}].{name}"] = host(g[k * n + j])
    return out


@pytest.mark.parametrize("case", ["peep-cifg-clip", "lstm-zoneout-clip", "gru-recurrent-zoneout"])
def test_op_cuda_branch_matches_reference(case, cuda_ops):
    """torch.ops.fastrnn's CUDA branch (fastrnn.ops): the cell options and the modifiers reach the
    CUDA kernels (forward, and backward through autograd) and give the reference's values."""
    torch = pytest.importorskip("torch")
    if case == "peep-cifg-clip":
        p = variant_problem((True, True, 0.4), np.float64, 2, True, T=4, B=3, I=4, H=5, ragged=True, scale=2.0,
                                 seed=seed_of("op", case))
    else:
        cell, which = {"lstm-zoneout-clip": ("lstm", "zoneout_clip"), "gru-recurrent-zoneout": ("gru", "all")}[case]
        p = _modifier_problem(cell, np.float64, which, "L2-bi-ragged", T=4, H=6)
    cuda_ops.route()
    got, expected = _op_gradients(torch, p, cuda_ops), run_reference(p)
    assert got.keys() == expected.keys()
    for name, v in got.items():
        assert_close(v, expected[name], np.float64, name)


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_nn_variant_module_on_cuda_matches_cpu(dtype, cuda_ops):
    """fastrnn.nn.LSTM(peephole, coupled, cell_clip) on the CUDA back end == the same module on the
    CPU kernels in float64: outputs, states and every parameter's gradient; in bfloat16 too (the
    parameters and the input are bfloat16 values, so float64 on the CPU sees the same numbers)."""
    torch = pytest.importorskip("torch")
    import fastrnn.nn as fnn
    torch.manual_seed(0)
    tdtype = getattr(torch, dtype)
    cpu = fnn.LSTM(4, 6, num_layers=2, bidirectional=True, peephole=True, coupled=True, cell_clip=0.5).double()
    with torch.no_grad():
        for q in cpu.parameters():
            q.copy_(q.to(tdtype).double())
    x = torch.randn(5, 3, 4, dtype=torch.float64).to(tdtype).double()

    def run(module, x):
        x = x.clone().requires_grad_(True)
        y, (h, c) = module(x)
        (y.sum() + (h * h).sum() + c.sum()).backward()
        return [y, h, c, x.grad] + [q.grad for q in module.parameters()]

    expected = run(cpu, x)
    module = copy.deepcopy(cpu).to(tdtype)
    module = module if DEVICE.emulated else module.cuda()
    module.zero_grad(set_to_none=True)
    cuda_ops.route(cpu_tensors_as_cuda_dtypes=True)
    got = run(module, cuda_ops(x.to(tdtype)))
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == tdtype
        assert_close(a.detach().cpu().double().numpy(), e.detach().numpy(), np.float64 if dtype == "float64" else
                     "cuda-bfloat16", "output" if i < 3 else "d")


@pytest.mark.parametrize("case", ["gru-reset-before", "lstm-variant-modifiers", "lstm-layer-norm", "gru-layer-norm"])
def test_nn_module_on_cuda_matches_cpu(case, cuda_ops):
    """fastrnn.nn.GRU(reset_after=False), an LSTM variant with the kernels' modifiers (eval mode:
    zoneout's deterministic mix and grad_clip, no masks drawn, so that CPU and GPU see the same
    numbers), and LSTM/GRU(layer_norm=True) (the norm's vectors away from their init), on the CUDA
    back end == the same module on the CPU kernels in float64: outputs, final states, the input's
    and every parameter's gradient."""
    torch = pytest.importorskip("torch")
    import fastrnn.nn as fnn
    torch.manual_seed(0)
    if case == "gru-reset-before":
        cpu = fnn.GRU(4, 6, num_layers=2, bidirectional=True, reset_after=False).double()
    elif case.endswith("layer-norm"):
        cls = fnn.LSTM if case.startswith("lstm") else fnn.GRU
        cpu = cls(4, 6, num_layers=2, bidirectional=True, layer_norm=True).double()
        with torch.no_grad():
            for name, q in cpu.named_parameters():
                if name.startswith("ln_"):
                    q.add_(0.3 * torch.randn_like(q))
    else:
        cpu = fnn.LSTM(4, 6, num_layers=2, bidirectional=True, peephole=True, cell_clip=0.5, zoneout=0.2,
                       zoneout_cell=0.1, grad_clip=0.05).double().eval()
    x = torch.randn(5, 3, 4, dtype=torch.float64)

    def run(module, x):
        x = x.clone().requires_grad_(True)
        y, state = module(x)
        states = list(state) if isinstance(state, tuple) else [state]
        (y.sum() + sum((s * s).sum() for s in states)).backward()
        return [y, *states, x.grad] + [q.grad for q in module.parameters()]

    expected = run(cpu, x)
    module = copy.deepcopy(cpu)
    module = module if DEVICE.emulated else module.cuda()
    module.zero_grad(set_to_none=True)
    cuda_ops.route()
    got = run(module, cuda_ops(x))
    assert len(got) == len(expected)
    layer_norm = case.endswith("layer-norm")
    outputs = 3 if isinstance(cpu, fnn.LSTM) else 2  # y and the final states; then the gradients
    for i, (a, e) in enumerate(zip(got, expected)):
        if layer_norm:  # tests/tolerances.py's layer-norm row (outputs, then gradients)
            assert_close(a.detach().cpu().numpy(), e.detach().numpy(), "float64-layer-norm",
                         f"quantity {i}" if i < outputs else f"d(quantity {i})")
        else:
            assert_close(a.detach().cpu().numpy(), e.detach().numpy(), np.float64, f"quantity {i}")


# ---- float16 / bfloat16 storage ------------------------------------------------------
def rounding_reference_forward(p):
    """The float64 reference rounded to p's 16-bit dtype exactly where the CUDA kernels store: each
    layer's input projection gi = x W_ih^T + b_ih (one GEMM before the steps, stored), and the
    layer's outputs y (the next layer's input), h_n and c_n; the recurrent state between steps is
    not rounded (the kernels keep h and c in float32). Built on the public reference: the rounded gi
    of both directions is the input of a reference call whose W_ih selects each direction's part."""
    name, cell, bi = p["dtype"], p.get("cell", "lstm"), p["bidirectional"]
    opts = dict(p.get("opts") or {})
    extra = bool(opts.get("peephole")) + bool(opts.get("proj_size"))  # w_ch, w_hr after the gate parameters
    D = 2 if bi else 1
    L = len(p["weights"]) // D
    x, h_n, c_n = _f64(p["x"]), [], []
    for layer in range(L):
        entries = [tuple(_f64(w) for w in e) for e in p["weights"][layer * D:(layer + 1) * D]]
        GH = entries[0][1].shape[0]
        bias = len(entries[0]) - extra == 4
        gi = [round_to(x @ e[0].T + (e[2] if bias else 0.0), name) for e in entries]  # D x [T, B, G*H]
        select = np.eye(D * GH)
        weights = [(select[d * GH:(d + 1) * GH], e[1], np.zeros(GH), e[3] if bias else np.zeros(GH))
                   + tuple(e[len(e) - extra:]) for d, e in enumerate(entries)]
        k = slice(layer * D, (layer + 1) * D)
        res = reference.forward(cell, np.concatenate(gi, axis=-1), weights, None if p["h0"] is None else _f64(p["h0"][k]),
                                None if p["c0"] is None else _f64(p["c0"][k]), lengths=p["lengths"],
                                bidirectional=bi, training=False, **opts)
        x = round_to(res.output, name)
        h_n.append(round_to(res.h_n, name))
        c_n.append(round_to(res.c_n, name))
    return {"output": x, "h_n": np.concatenate(h_n), "c_n": np.concatenate(c_n) if carries_cell_state(cell) else None}


def problem16(name, cell, layout, T=6, B=3, I=4, H=5, variant=None, seed=0, proj_size=0):
    """A problem whose inputs, weights and incoming gradients are values of the 16-bit dtype `name`,
    so that the reference (float64 of the same values) measures the kernels' own rounding. With
    proj_size, the LSTM `variant` (peephole, coupled, cell_clip) projected."""
    L, bi, ragged = (1, False, False) if layout == "L1-uni" else (2, True, True)
    if variant is None:
        p = make_problem(cell, np.float64, L, bi, T, B, I, H, ragged=ragged, seed=seed)
    else:
        p = variant_problem(variant, np.float64, L, bi, T=T, B=B, I=I, H=H, ragged=ragged, scale=2.0, seed=seed,
                            proj_size=proj_size)
    for key in ("x", "h0", "c0", "dy", "dhn", "dcn"):
        p[key] = round_to(p[key], name)
    p["weights"] = [tuple(round_to(w, name) for w in e) for e in p["weights"]]
    p["dtype"] = name
    return p


def scaled_errors(actual, expected):
    """|actual - expected| / (1 + |expected|) elementwise (the tolerance table's measure)."""
    return np.abs(actual - expected) / (1.0 + np.abs(expected))


def check16(p):
    """The 16-bit kernels against the float64 reference: forward outputs by STYLE.md's rule, at most
    2x as far from float64 as the rounding reference (elementwise worst, the same measure as the
    table), and everything within tests/tolerances.py's cuda-<dtype> row."""
    name = p["dtype"]
    got, expected, rounded = run_cuda(DEVICE, p), run_reference(p), rounding_reference_forward(p)
    assert got.keys() == expected.keys()
    for key in ("output", "h_n", "c_n"):
        if expected[key] is None:
            continue
        kernel, lowp = scaled_errors(got[key], expected[key]).max(), scaled_errors(rounded[key], expected[key]).max()
        assert kernel <= 2 * lowp, f"{key} ({name}): the kernels' error {kernel:.3g} > 2x the rounding reference's {lowp:.3g}"
    for key, v in got.items():
        assert_close(v, expected[key], f"cuda-{name}", key)
    return got


@pytest.mark.parametrize("layout", ["L1-uni", "L2-bi-ragged"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("name", STORAGE16)
def test_16bit_matches_reference(name, cell, layout):
    check16(problem16(name, cell, layout, seed=seed_of("16", name, cell, layout)))


@pytest.mark.parametrize("name", STORAGE16)
def test_16bit_variant_modifiers_and_tile_edges(name):
    """The peephole + coupled + clip LSTM, the modifiers (recurrent mask, zoneout, grad_clip), and
    sizes across the tiles (B = 17, I = 70, H = 33), in 16-bit storage."""
    check16(problem16(name, "lstm", "L2-bi-ragged", variant=(True, True, 0.4), seed=seed_of("16v", name)))
    p = problem16(name, "gru", "L2-bi-ragged", T=3, B=17, I=70, H=33, seed=seed_of("16e", name))
    check16(p)
    D, L = 2, 2
    rng = np.random.default_rng(seed_of("16m", name))
    T, B, _ = p["x"].shape
    p["mods"] = dict(recurrent_mask=(rng.random((L * D, B, 33)) >= 0.5) / 0.5, grad_clip=0.3,
                     zoneout_mask=(rng.random((L * D, T, B, 33)) < 0.4).astype(np.float64))
    got, expected = run_cuda(DEVICE, p), run_reference(p)
    for key, v in got.items():
        assert_close(v, expected[key], f"cuda-{name}", key)


@pytest.mark.parametrize("name", STORAGE16)
def test_16bit_gru_reset_before(name):
    p = problem16(name, "gru", "L2-bi-ragged", seed=seed_of("16rb", name))
    p["opts"] = {"reset_after": False}
    check16(p)


def test_16bit_op_cuda_branch(cuda_ops):
    """torch.ops.fastrnn on bfloat16 / float16 CUDA tensors (fastrnn.ops' CUDA branch) gives the
    entry points' results: the same values as run_cuda, for the forward and the autograd backward."""
    torch = pytest.importorskip("torch")
    cuda_ops.route(cpu_tensors_as_cuda_dtypes=True)
    for name in STORAGE16:
        p = problem16(name, "lstm", "L2-bi-ragged", seed=seed_of("16op", name))
        direct = run_cuda(DEVICE, p)
        dtype = getattr(torch, name)
        got = _op_gradients(torch, {**p, "dtype": np.float64},
                            lambda t: cuda_ops(t.to(dtype) if t.is_floating_point() else t))
        for key, v in direct.items():
            if v is not None:
                np.testing.assert_array_equal(got[key], v, err_msg=f"{name} {key}")


# ---- the projected LSTM (proj_size = P): a cell kernel and a projection kernel per step ------------
PROJ_VARIANTS = [(False, False, None)] + VARIANTS  # the plain LSTM, then every (peephole, coupled, cell_clip)
PROJ_VARIANT_IDS = ["plain"] + VARIANT_IDS


def _projection_problem(variant, dtype, L, bi, ragged, T=5, B=3, I=4, H=7, P=3, **kw):
    """helpers.variant_problem with proj_size = P; the weights scaled by 2 so that a clip of 0.4 acts
    at some units and not at others."""
    return variant_problem(variant, dtype, L, bi, T=T, B=B, I=I, H=H, ragged=ragged, scale=2.0, proj_size=P, **kw)


PROJ_LAYOUTS = {"L1-uni": (1, False, False), "L2-bi-ragged": (2, True, True)}


@pytest.mark.parametrize("layout", list(PROJ_LAYOUTS))
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=["f32", "f64"])
@pytest.mark.parametrize("variant", PROJ_VARIANTS, ids=PROJ_VARIANT_IDS)
def test_projection_matches_reference(variant, dtype, layout):
    """Outputs, final states (h P wide, c H wide) and every gradient, dW_hr included, against the
    float64 reference, for the projected LSTM and each variant combined with the projection."""
    L, bi, ragged = PROJ_LAYOUTS[layout]
    p = _projection_problem(variant, dtype, L, bi, ragged,
                            seed=seed_of("projection", variant, np.dtype(dtype).name, layout))
    got = check_against_reference(p)
    D = 2 if bi else 1
    assert got["output"].shape == (5, 3, D * 3) and got["h_n"].shape == (L * D, 3, 3)
    assert got["c_n"].shape == (L * D, 3, 7) and got["dweights[0].dw_hr"].shape == (3, 7)
    if variant[2] is not None:  # the clip holds c inside [-C, C]
        assert np.abs(got["c_n"]).max() <= variant[2]


@pytest.mark.parametrize("case", ["L3-uni-ragged", "L2-bi-equal"])
def test_projection_layouts(case):
    """Three stacked layers (each above the first reads the D*P outputs below) with ragged lengths,
    and two bidirectional layers without lengths."""
    L, bi, ragged = {"L3-uni-ragged": (3, False, True), "L2-bi-equal": (2, True, False)}[case]
    check_against_reference(_projection_problem((True, True, 0.4), np.float64, L, bi, ragged, T=4, B=4, I=3, H=6,
                                                P=4, seed=seed_of("projection-layouts", case)))


# B > 16 rows, H > 16 units not a multiple of 16, P across the state kernel's 16 units and the
# projection kernel's 64 (and K = P past the 32 staged at a time), I > 64, P = 1 and B = 1.
@pytest.mark.parametrize("case", [dict(T=3, B=17, I=70, H=33, P=20), dict(T=2, B=3, I=5, H=70, P=65),
                                  dict(T=3, B=1, I=3, H=5, P=1)], ids=["B17-H33-P20", "H70-P65", "B1-P1"])
def test_projection_tile_edges(case):
    p = _projection_problem((True, False, 0.4), np.float32, 2, True, True, **case,
                            seed=seed_of("projection-edges", tuple(case.values())))
    check_against_reference(p)


def test_projection_no_bias_no_state_deterministic():
    """Without biases or initial states; two runs bitwise equal (dW_hr one GEMM, the peepholes'
    gradient summed in a fixed order, no atomics); inference == the training forward."""
    p = _projection_problem((True, True, 0.4), np.float32, 2, True, True, T=4, B=5, I=3, H=6, P=4, bias=False,
                            seed=13)
    p["h0"], p["c0"] = None, None
    first = check_against_reference(p)
    assert "dweights[0].db_ih" not in first and "dweights[0].dw_hr" in first and "dweights[0].dw_ch" in first
    second = run_cuda(DEVICE, p)
    for name, v in first.items():
        assert (v is None and second[name] is None) or np.array_equal(v, second[name]), f"{name} differs between runs"
    inference = run_cuda(DEVICE, p, training=False)
    for name in ("output", "h_n", "c_n"):
        assert np.array_equal(inference[name], first[name]), f"{name}: inference differs from the training forward"


def test_projection_identity_is_the_plain_lstm():
    """W_hr = I (P = H) gives the unprojected LSTM's values: the projection adds nothing else."""
    p = _projection_problem((False, False, None), np.float64, 2, True, True, T=4, B=3, I=4, H=5, P=5, seed=17)
    p["weights"] = [e[:-1] + (np.eye(5),) for e in p["weights"]]
    got = run_cuda(DEVICE, p)
    plain = run_cuda(DEVICE, {**p, "opts": None, "weights": [e[:-1] for e in p["weights"]]})
    for name, v in plain.items():
        assert_close(got[name], v, np.float64, name)


@pytest.mark.parametrize("mods", [{"grad_clip": 0.5}, {"recurrent_mask": np.ones((2, 3, 7))}],
                         ids=["grad_clip", "recurrent"])
def test_projection_refuses_modifiers(mods):
    """The kernels' training modifiers do not run with proj_size: ValueError before anything runs."""
    p = _projection_problem((False, False, None), np.float32, 1, True, False, seed=1)
    with pytest.raises(ValueError, match="do not run with proj_size"):
        run_cuda(DEVICE, {**p, "mods": mods})


@pytest.mark.parametrize("name", STORAGE16)
def test_16bit_projection(name):
    """The projected peephole + clip LSTM in 16-bit storage (h, c, m and the carried gradients in
    float between steps): the outputs by the 2x rule against the rounding reference, everything
    within tests/tolerances.py's cuda-<dtype> row."""
    check16(problem16(name, "lstm", "L2-bi-ragged", H=7, variant=(True, False, 0.4), proj_size=3,
                      seed=seed_of("16proj", name)))


@pytest.mark.parametrize("case", ["f64-peep-clip", "bfloat16"])
def test_op_cuda_branch_projection(case, cuda_ops):
    """torch.ops.fastrnn's CUDA branch with proj_size (fastrnn.ops routes it to the kernels, forward
    and the autograd backward): the reference's values in float64; in bfloat16, the entry points'."""
    torch = pytest.importorskip("torch")
    cuda_ops.route(cpu_tensors_as_cuda_dtypes=True)
    if case == "bfloat16":
        p = problem16("bfloat16", "lstm", "L2-bi-ragged", H=7, variant=(False, True, None), proj_size=3,
                      seed=seed_of("op-proj", case))
        direct = run_cuda(DEVICE, p)
        got = _op_gradients(torch, {**p, "dtype": np.float64},
                            lambda t: cuda_ops(t.to(torch.bfloat16) if t.is_floating_point() else t))
        for key, v in direct.items():
            if v is not None:
                np.testing.assert_array_equal(got[key], v, err_msg=key)
        return
    p = _projection_problem((True, False, 0.4), np.float64, 2, True, True, T=4, B=3, I=4, H=6, P=2,
                            seed=seed_of("op-proj", case))
    got, expected = _op_gradients(torch, p, cuda_ops), run_reference(p)
    assert got.keys() == expected.keys()
    for name, v in got.items():
        assert_close(v, expected[name], np.float64, name)


def test_nn_projection_module_on_cuda_matches_cpu(cuda_ops):
    """fastrnn.nn.LSTM(proj_size=P, peephole, cell_clip) on the CUDA back end == the same module on
    the CPU kernels in float64: outputs, final states, the input's and every parameter's gradient
    (weight_hr_l{k}{suffix} included)."""
    torch = pytest.importorskip("torch")
    import fastrnn.nn as fnn
    torch.manual_seed(0)
    cpu = fnn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3, peephole=True, cell_clip=0.5).double()
    x = torch.randn(5, 3, 4, dtype=torch.float64)

    def run(module, x):
        x = x.clone().requires_grad_(True)
        y, (h, c) = module(x)
        (y.sum() + (h * h).sum() + c.sum()).backward()
        return [y, h, c, x.grad] + [q.grad for q in module.parameters()]

    expected = run(cpu, x)
    module = copy.deepcopy(cpu)
    module = module if DEVICE.emulated else module.cuda()
    module.zero_grad(set_to_none=True)
    cuda_ops.route()
    got = run(module, cuda_ops(x))
    assert len(got) == len(expected) == 4 + 2 * 2 * 6
    for i, (a, e) in enumerate(zip(got, expected)):
        assert_close(a.detach().cpu().numpy(), e.detach().numpy(), np.float64, "output" if i < 3 else "d")
