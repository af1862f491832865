"""The CUDA back end (``fastrnn._core.cuda``) against the float64 reference over the matrix every
cell x float32/float64 x 1-2 layers x uni/bidirectional x equal/ragged lengths, forward and every
gradient, plus sizes that cross every tile edge of the kernels, inference == training forward,
determinism (two runs bitwise equal), CUDA-graph capture and replay, and bad input (a ValueError or
TypeError, never a device fault). Device buffers are torch CUDA tensors passed by ``data_ptr()``.

The GPU tests are marked ``cuda`` and skip with one reason when the extension was built without
CUDA, no GPU is visible, or torch has no CUDA. The argument-checking tests and the import test run
without a GPU. Development aid: with FASTRNN_CUDA_EMU=<dir holding _cuda_emu> (built by
cuda/emu/build.sh) the same GPU tests run on the CPU emulation of the kernels, on NumPy buffers.
"""
import numpy as np
import pytest

import fastrnn
from fastrnn import _core, reference
from fastrnn.types import CELLS, GATES
from fastrnn.cell_table import CELL_ID
from helpers import NO_CUDA_BUILD, find_cuda_device, make_problem, named, run, seed_of
from tolerances import assert_close

DTYPES = (np.float32, np.float64)


DEVICE, SKIP_REASON = find_cuda_device()
with_cuda_build = pytest.mark.skipif(not _core.built_with_cuda, reason=NO_CUDA_BUILD)


def run_cuda(dev, p, training=True, allow_tf32=False):
    """forward (training or inference) then, when training, backward through the CUDA entry points
    on copies of p's data on the device; returns {name: host array} like test_kernels.named.
    allow_tf32: float32 products on cuBLAS may use TF32."""
    assert not p["batch_first"], "the CUDA entry points take time-major buffers"
    cell, dtype, D = p["cell"], np.dtype(p["dtype"]), 2 if p["bidirectional"] else 1
    T, B, I = p["x"].shape
    H = p["weights"][0][1].shape[1]
    L = len(p["weights"]) // D
    lstm = cell == "lstm"
    state = (L * D, B, H)
    m, ptr = dev.module, dev.ptr
    weights = [tuple(dev.put(w) for w in entry) for entry in p["weights"]]
    x, h0, c0 = dev.put(p["x"]), dev.put(p["h0"]), dev.put(p["c0"])
    lengths = dev.put(None if p["lengths"] is None else np.asarray(p["lengths"], np.int64))
    y, hn = dev.empty((T, B, D * H), dtype), dev.empty(state, dtype)
    cn = dev.empty(state, dtype) if lstm else None
    reserve = dev.empty((m.reserve_size(CELL_ID[cell], T, B, I, H, L, p["bidirectional"]),), dtype) if training else None
    head = (CELL_ID[cell], dtype.name, T, B, I, H, L, p["bidirectional"])
    wptrs = [tuple(ptr(w) for w in entry) for entry in weights]
    m.forward(*head, ptr(x), wptrs, ptr(h0), ptr(c0), ptr(lengths), ptr(y), ptr(hn), ptr(cn), ptr(reserve),
              dev.stream(), allow_tf32=allow_tf32)
    out = {"output": y, "h_n": hn, "c_n": cn}
    if training:
        dy, dhn, dcn = dev.put(p["dy"]), dev.put(p["dhn"]), dev.put(p["dcn"])
        dx, dh0 = dev.empty((T, B, I), dtype), dev.empty(state, dtype)
        dc0 = dev.empty(state, dtype) if lstm else None
        grads = [tuple(dev.empty(w.shape, dtype) for w in entry) for entry in p["weights"]]
        m.backward(*head, ptr(x), wptrs, ptr(h0), ptr(c0), ptr(lengths), ptr(reserve), ptr(dy), ptr(dhn), ptr(dcn),
                   ptr(dx), ptr(dh0), ptr(dc0), [tuple(ptr(g) for g in entry) for entry in grads], dev.stream(),
                   allow_tf32=allow_tf32)
        out.update(dx=dx, dh0=dh0, dc0=dc0)
        for k, entry in enumerate(grads):
            for i, g in enumerate(entry):
                out[f"dweights[{k}].{('dw_ih', 'dw_hh', 'db_ih', 'db_hh')[i]}"] = g
    dev.synchronize()
    return {k: dev.get(v) for k, v in out.items()}


def check_against_reference(p, allow_tf32=False):
    got = run_cuda(DEVICE, p, allow_tf32=allow_tf32)
    expected = named(*run(reference, p))
    assert got.keys() == expected.keys(), f"quantities differ: {sorted(got)} vs {sorted(expected)}"
    for name, v in got.items():
        assert v is None or v.dtype == p["dtype"], f"{name} has dtype {v.dtype}, expected {p['dtype']}"
        assert_close(v, expected[name], "tf32" if allow_tf32 else p["dtype"], name)
    return got


# ------------------------------------------------------------------------------------------------
# On a GPU: the matrix, tile edges, invariances
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_matches_reference(cell, dtype, num_layers, bidirectional, ragged):
    p = make_problem(cell, dtype, num_layers, bidirectional, T=6, B=3, I=4, H=5, ragged=ragged,
                     seed=seed_of(cell, np.dtype(dtype).name, num_layers, bidirectional, ragged))
    check_against_reference(p)


# Sizes that cross the kernels' tile edges: step tiles of 16 units x 16 rows with K staged 32 at a
# time, GEMM tiles of 64 x 64 x 16, bias sums over blocks of 32 columns and 8 row slices.
EDGES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (3, 17, 70, 33),   # B > 16 rows, I > 64, H > 32 (K of the forward step), G*H > 64
    (7, 2, 3, 40),     # T*B < 16, H > 32: K of the backward step (G*H) spans several stages
    (2, 40, 5, 16),    # H exactly one unit tile, T*B = 80 > 64
]


@pytest.mark.parametrize("size", EDGES, ids=["T%d-B%d-I%d-H%d" % s for s in EDGES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_tile_edges(cell, dtype, size):
    p = make_problem(cell, dtype, 2, True, *size, ragged=True, seed=seed_of(cell, size))
    check_against_reference(p)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_no_bias_no_state(cell):
    p = make_problem(cell, np.float64, 2, True, 5, 3, 4, 6, bias=False, ragged=True, with_state=False, seed=7)
    p["dhn"], p["dcn"] = None, None
    got = check_against_reference(p)
    assert "dweights[0].db_ih" not in got


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_deterministic_and_inference_equals_training(cell):
    p = make_problem(cell, np.float32, 2, True, 9, 21, 35, 37, ragged=True, seed=seed_of("det", cell))
    first, second = run_cuda(DEVICE, p), run_cuda(DEVICE, p)
    for name, v in first.items():
        assert (v is None and second[name] is None) or np.array_equal(v, second[name]), f"{name} differs between runs"
    inference = run_cuda(DEVICE, p, training=False)
    for name in ("output", "h_n", "c_n"):
        v = inference[name]
        assert (v is None and first[name] is None) or np.array_equal(v, first[name]), \
            f"{name}: inference differs from the training forward"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_padding_values_do_not_reach_gradients(cell):
    """NaN/Inf in x past lengths: dW_ih = dG^T X reads a copy with those rows zeroed (0 * NaN = NaN);
    and NaN through ReLU as torch (the cell maths of csrc/cells/spec.h, shared with the CPU)."""
    p = make_problem(cell, np.float32, 2, True, 7, 20, 9, 16, ragged=True, seed=seed_of("padding", cell))
    clean = run_cuda(DEVICE, p)
    x = p["x"].copy()
    for b, n in enumerate(p["lengths"]):
        x[n:, b] = np.nan
        x[n::2, b] = np.inf
    dirty = run_cuda(DEVICE, {**p, "x": x})
    for name, v in clean.items():
        assert (v is None and dirty[name] is None) or np.array_equal(v, dirty[name]), f"{name} depends on the padding"


def _cublas_loaded():
    return DEVICE is not None and DEVICE.module.cublas_status().startswith("cuBLAS ")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_own_gemm_when_cublas_is_switched_off(cell, dtype, monkeypatch):
    """FASTRNN_CUBLAS=0 runs every product on the own GEMM (cuda/gemm.cuh); both paths match the
    reference, on sizes past the GEMM's 64 x 64 tiles (I > 64, T*B > 64, G*H > 64)."""
    p = make_problem(cell, dtype, 2, True, 5, 17, 70, 33, ragged=True, seed=seed_of("gemm", cell))
    loaded = _cublas_loaded()
    on_default = check_against_reference(p)
    monkeypatch.setenv("FASTRNN_CUBLAS", "0")
    assert not _cublas_loaded(), DEVICE.module.cublas_status()
    on_own = check_against_reference(p)
    if not loaded:  # no cuBLAS here: the very same kernels ran twice
        for name, v in on_own.items():
            assert (v is None and on_default[name] is None) or np.array_equal(v, on_default[name]), name


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_tf32_products_within_tf32_tolerance(cell):
    """allow_tf32=True (what torch.backends.cuda.matmul.allow_tf32 passes through fastrnn.ops):
    float32 results within TF32's tolerance; float64 is unaffected (bitwise)."""
    if not _cublas_loaded():
        pytest.skip(f"cuBLAS is not loaded ({DEVICE.module.cublas_status()}): the own GEMM has no TF32")
    p = make_problem(cell, np.float32, 2, True, 6, 19, 70, 40, ragged=True, seed=seed_of("tf32", cell))
    check_against_reference(p, allow_tf32=True)
    p64 = make_problem(cell, np.float64, 1, False, 4, 3, 5, 6, seed=seed_of("tf32-64", cell))
    plain, tf32 = run_cuda(DEVICE, p64), run_cuda(DEVICE, p64, allow_tf32=True)
    for name, v in plain.items():
        assert (v is None and tf32[name] is None) or np.array_equal(v, tf32[name]), name


@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_cuda_graph_capture_and_replay():
    if DEVICE.emulated:
        pytest.skip("CUDA graphs need a GPU")
    torch = DEVICE.torch
    p = make_problem("lstm", np.float32, 2, True, 6, 5, 7, 9, ragged=True, seed=11)
    expected = run_cuda(DEVICE, p, training=False)
    T, B, I = p["x"].shape
    H, L, D = 9, 2, 2
    weights = [tuple(DEVICE.put(w) for w in entry) for entry in p["weights"]]
    x, h0, c0 = DEVICE.put(p["x"]), DEVICE.put(p["h0"]), DEVICE.put(p["c0"])
    lengths = DEVICE.put(np.asarray(p["lengths"], np.int64))
    y, hn, cn = (torch.empty(s, device="cuda") for s in ((T, B, D * H), (L * D, B, H), (L * D, B, H)))
    ptr = DEVICE.ptr

    def call():
        _core.cuda.forward(2, "float32", T, B, I, H, L, True, ptr(x), [tuple(ptr(w) for w in e) for e in weights],
                           ptr(h0), ptr(c0), ptr(lengths), ptr(y), ptr(hn), ptr(cn), 0,
                           torch.cuda.current_stream().cuda_stream)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for name, t in (("output", y), ("h_n", hn), ("c_n", cn)):
        assert np.array_equal(t.cpu().numpy(), expected[name]), f"{name}: graph replay differs from a direct call"


@pytest.mark.cuda
@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_host_pointer_is_a_value_error():
    if DEVICE.emulated:
        pytest.skip("the emulator has no host/device distinction")
    p = make_problem("gru", np.float32, 1, False, 3, 2, 4, 5, seed=12)
    host_x = np.ascontiguousarray(p["x"])
    weights = [tuple(DEVICE.put(w) for w in entry) for entry in p["weights"]]
    y, hn = DEVICE.empty((3, 2, 5), np.float32), DEVICE.empty((1, 2, 5), np.float32)
    with pytest.raises(ValueError, match="x_ptr must point to GPU memory"):
        _core.cuda.forward(3, "float32", 3, 2, 4, 5, 1, False, host_x.ctypes.data,
                           [tuple(DEVICE.ptr(w) for w in e) for e in weights], 0, 0, 0, DEVICE.ptr(y),
                           DEVICE.ptr(hn), 0, 0, DEVICE.stream())


# ------------------------------------------------------------------------------------------------
# Without a GPU: the module imports, and bad arguments are rejected before any device work
# ------------------------------------------------------------------------------------------------

def test_imports_without_gpu():
    assert fastrnn.cuda_available() == bool(_core.built_with_cuda)
    if _core.built_with_cuda:
        n = _core.cuda.device_count()
        assert isinstance(n, int) and n >= 0
        assert _core.cuda.reserve_size(2, 5, 3, 4, 6, 2, True) == _core.reserve_size(2, 5, 3, 4, 6, 2, True)
        assert (_core.cuda.reserve_size(3, 5, 3, 4, 6, 2, True, reset_after=False)
                == _core.reserve_size(3, 5, 3, 4, 6, 2, True, reset_after=False))
        assert _core.cuda.runtime_version() >= 11000  # what nvcc built it with
        assert _core.cuda.driver_version() >= 0
        status = _core.cuda.cublas_status()  # loads cuBLAS if it can, and never needs a GPU for that
        assert status.startswith(("cuBLAS ", "not found", "unusable", "off", "not built")), status


# Valid arguments with made-up nonzero pointers (never dereferenced: every case below fails first).
_ARGS = dict(cell=2, dtype="float32", T=5, B=3, I=4, H=6, L=1, bidirectional=False, x_ptr=8, weight_ptrs=[(8, 8, 8, 8)],
             h0_ptr=0, c0_ptr=0, lengths_ptr=0, y_ptr=8, hn_ptr=8, cn_ptr=8, reserve_ptr=0, stream=0)

BAD = [  # (overrides, exception, message)
    (dict(dtype="int8"), ValueError, "dtype must be 'float32', 'float64'.*got 'int8'"),
    (dict(cell=7), ValueError, "cell must be 0..3, got 7"),
    (dict(B=0), ValueError, "sizes must be >= 1"),
    (dict(H=-3), ValueError, "sizes must be >= 1"),
    (dict(T=2**40, B=2**40), ValueError, "overflows 64 bits"),
    (dict(B=2**21), ValueError, "grid limits"),
    (dict(x_ptr=0), ValueError, "x_ptr is required"),
    (dict(cn_ptr=0), ValueError, "cn_ptr is required"),
    (dict(cell=3, cn_ptr=8, weight_ptrs=[(8, 8, 8, 8)]), ValueError, "cn_ptr must be 0 for this cell"),
    (dict(weight_ptrs=[(8, 8, 8, 8)] * 2), ValueError, "weight_ptrs must hold num_layers\\*num_directions = 1"),
    (dict(weight_ptrs=[(8, 8, 8)]), ValueError, "must hold 2 or 4 pointers, got 3"),
    (dict(weight_ptrs=[(8, 8, 0, 8)]), ValueError, "weight_ptrs\\[0\\].b_ih is required"),
    (dict(weight_ptrs=[(8, 8, "a", 8)]), TypeError, "must hold non-negative ints"),
    (dict(weight_ptrs=[8]), TypeError, "must be a tuple of ints"),
    (dict(reset_after=False), ValueError, "reset_after=False is a GRU option"),
]


@with_cuda_build
@pytest.mark.parametrize("overrides, error, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_arguments(overrides, error, message):
    with pytest.raises(error, match=message):
        _core.cuda.forward(**{**_ARGS, **overrides})


@with_cuda_build
def test_persistent_plan_argument_errors():
    """persistent_plan (cuda/persistent.cuh's plan, tests/cuda/test_cuda_persistent.py) checks its
    arguments like forward, before it needs a device; without one it is a RuntimeError."""
    with pytest.raises(ValueError, match="dtype must be 'float32', 'float64'.*got 'int8'"):
        _core.cuda.persistent_plan(2, "int8", 5, 3, 4, 6, 1, False)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        _core.cuda.persistent_plan(2, "float32", 5, 0, 4, 6, 1, False)
    if _core.cuda.device_count() == 0:
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _core.cuda.persistent_plan(2, "float32", 5, 3, 4, 6, 1, False)


@with_cuda_build
def test_backward_requires_reserve_and_matching_grads():
    args = {k: v for k, v in _ARGS.items() if k not in ("y_ptr", "hn_ptr", "cn_ptr", "stream")}
    grads = dict(dy_ptr=8, dhn_ptr=0, dcn_ptr=0, dx_ptr=8, dh0_ptr=8, dc0_ptr=8, stream=0)
    with pytest.raises(ValueError, match="reserve_ptr is required"):
        _core.cuda.backward(**args, **grads, grad_ptrs=[(8, 8, 8, 8)])
    with pytest.raises(ValueError, match="grad_ptrs\\[0\\] must hold 4 pointers"):
        _core.cuda.backward(**{**args, "reserve_ptr": 8}, **grads, grad_ptrs=[(8, 8)])


@with_cuda_build
@pytest.mark.skipif(_core.built_with_cuda and _core.cuda.device_count() > 0, reason="a GPU is present")
def test_no_device_is_a_runtime_error():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        _core.cuda.forward(**_ARGS)


def test_op_device_rules():
    """fastrnn.ops' rule of what runs where, on any device: the kernels' training modifiers not with
    the reset-before GRU or layer norm (fastrnn.nn runs those as composed torch ops); layer norm, the
    reset-before GRU, and the LSTM variants with every modifier, pass on any device (the CUDA kernels
    run layer norm too)."""
    torch = pytest.importorskip("torch")
    from fastrnn import ops
    meta, cpu = torch.empty(3, 2, 4, device="meta"), torch.empty(3, 2, 4)
    ops._check_modifiers_cell(meta, "gru+layer_norm", None, 0.0, None, None)
    ops._check_modifiers_cell(cpu, "gru+layer_norm", None, 0.0, None, None)
    ops._check_modifiers_cell(meta, "gru+reset_before", None, 0.0, None, None)
    ops._check_modifiers_cell(meta, "lstm+peephole+coupled+cell_clip=0.5", meta, 0.5, meta, meta)
    for x in (meta, cpu):
        with pytest.raises(NotImplementedError, match="training modifiers"):
            ops._check_modifiers_cell(x, "gru+reset_before", None, 0.5, None, None)
