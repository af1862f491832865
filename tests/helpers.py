"""The one module of helpers that the test folders share (tests/ is on sys.path: pytest puts the
rootdir conftest's folder there, and the fresh interpreters some tests start insert ``TESTS_DIR``).
Tolerances are not here: they live in tolerances.py. Sections:

- kernels against the reference (tests/kernels, tests/cuda): seeded problems, forward+backward
  through either, every compared quantity by name; the LSTM variants' and the layer-normalised
  cells' problems;
- the CUDA back end (tests/cuda): its device (a GPU, or the CPU emulation of the kernels) and
  buffers on it;
- finite differences (tests/reference, tests/kernels): the float64 central-difference gradient and
  its tolerances, the reference's tiny problems;
- fresh processes: a digest of arrays, the resident set size;
- fastrnn.nn against torch.nn (tests/nn, tests/cuda): the parity checks over every cell and input
  form; the plain-torch loop of every cell variant with every training modifier
  (``torch_modified_loop``). Importing this module never imports torch (the NumPy tests and their
  fresh processes must not pay for it, nor have it touch OpenMP): those helpers import it when
  first used (or take it as an argument);
- the NLP examples (tests/examples): load an example as a module, find the project's datasets at
  ``<repo>/../shared/data`` (skipping, with the reason, where a dataset is absent), and run an
  example's ``main`` once per argument list for the whole session.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import os
import resource
import sys
import zlib

import numpy as np
import pytest

import fastrnn
import tolerances
from fastrnn import reference
from fastrnn.types import GATES
from tolerances import assert_close

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


# ---- kernels against the reference --------------------------------------------------------------
GRAD_NAMES = ("dw_ih", "dw_hh", "db_ih", "db_hh")


def ragged_lengths(rng: np.random.Generator, T: int, B: int) -> np.ndarray:
    """Lengths [B] in [1, T] drawn from ``rng``, containing T and (for B > 1) 1, shuffled: every
    problem's ragged case (the longest and the shortest sequence both present)."""
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    if B > 1:
        lengths[-1] = 1
    rng.shuffle(lengths)
    return lengths


def make_problem(cell, dtype, num_layers, bidirectional, T, B, I, H, *, bias=True, ragged=False,
                 batch_first=False, with_state=True, seed=0):
    """A complete, seeded problem: x [T, B, I] ([B, T, I] if batch_first), L*D weight tuples drawn
    as torch.nn does (U(-1/sqrt(H), 1/sqrt(H))), h0/c0 [L*D, B, H], lengths [B] (ragged: unsorted,
    containing T and 1), and the incoming gradients dy (layout of the output), dhn, dcn."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    G = GATES[cell]
    k = 1.0 / np.sqrt(H)
    weights = []
    for layer in range(num_layers):
        in_size = I if layer == 0 else D * H
        for _ in range(D):
            shapes = [(G * H, in_size), (G * H, H)] + ([(G * H,), (G * H,)] if bias else [])
            weights.append(tuple(rng.uniform(-k, k, s).astype(dtype) for s in shapes))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    if batch_first:
        x, dy = np.ascontiguousarray(x.transpose(1, 0, 2)), np.ascontiguousarray(dy.transpose(1, 0, 2))
    state = (num_layers * D, B, H)
    lstm = cell == "lstm"
    h0 = (0.5 * rng.standard_normal(state)).astype(dtype) if with_state else None
    c0 = (0.5 * rng.standard_normal(state)).astype(dtype) if with_state and lstm else None
    dhn = rng.standard_normal(state).astype(dtype)
    dcn = rng.standard_normal(state).astype(dtype) if lstm else None
    lengths = ragged_lengths(rng, T, B) if ragged else None
    return dict(cell=cell, dtype=np.dtype(dtype), x=x, weights=weights, h0=h0, c0=c0, lengths=lengths, dy=dy,
                dhn=dhn, dcn=dcn, bidirectional=bidirectional, batch_first=batch_first)


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def run(module, p, **overrides):
    """forward(training=True) then backward with p's dy/dhn/dcn, through ``module`` (fastrnn or
    fastrnn.reference; the reference gets float64 casts of the same data). Returns (result, grads)."""
    p = {**p, **overrides}
    cast = _f64 if module is reference else (lambda a: a)
    weights = [tuple(cast(w) for w in entry) for entry in p["weights"]]
    res = module.forward(p["cell"], cast(p["x"]), weights, cast(p["h0"]), cast(p["c0"]), lengths=p["lengths"],
                         bidirectional=p["bidirectional"], batch_first=p["batch_first"], training=True)
    grads = module.backward(res.saved, cast(p["dy"]), cast(p["dhn"]), cast(p["dcn"]))
    return res, grads


def named(res, grads):
    """Every compared quantity by name: output, h_n, c_n, dx, dh0, dc0, dweights[k].dw_ih, ..."""
    out = {"output": res.output, "h_n": res.h_n, "c_n": res.c_n, "dx": grads.dx, "dh0": grads.dh0, "dc0": grads.dc0}
    for k, entry in enumerate(grads.dweights):
        for i, g in enumerate(entry):
            out[f"dweights[{k}].{GRAD_NAMES[i]}"] = g
    return out


def assert_all_close(actual: dict, expected: dict, dtype) -> None:
    assert actual.keys() == expected.keys(), f"quantities differ: {sorted(actual)} vs {sorted(expected)}"
    for name in actual:
        assert_close(actual[name], expected[name], dtype, name)


def check_against_reference(p) -> dict:
    """Compare everything the fast path returns with the reference; returns the fast path's values."""
    fast = named(*run(fastrnn, p))
    ref = named(*run(reference, p))
    for name, v in fast.items():
        if v is not None:
            assert v.dtype == p["dtype"], f"{name} has dtype {v.dtype}, expected {p['dtype']}"
    assert_all_close(fast, ref, p["dtype"])
    return fast


# ---- the LSTM variants (tests/kernels, tests/cuda) ----------------------------------------------------
# (peephole, coupled, cell_clip): every combination the kernels run
VARIANTS = [(p, c, clip) for p, c, clip in itertools.product([False, True], [False, True], [None, 0.4])
            if p or c or clip is not None]
VARIANT_IDS = ["%s%s%s" % ("peep" if p else "", "-cifg" if c else "", "-clip" if clip else "") for p, c, clip in VARIANTS]


def variant_options(variant):
    """(peephole, coupled, cell_clip) -> the keywords of fastrnn.forward / fastrnn.reference.forward."""
    peephole, coupled, cell_clip = variant
    return dict(peephole=peephole, coupled=coupled, cell_clip=cell_clip)


def variant_problem(variant, dtype, num_layers, bidirectional, T, B, I, H, *, bias=True, ragged=False, seed=0,
                 scale=1.0, proj_size=0):
    """A seeded problem for the LSTM variant: weights drawn as init_weights does (scale widens the
    weights, so that a clip of 0.4 is active), h0/c0, lengths (ragged: contains T and 1), dy, dhn, dcn.
    proj_size = P > 0: the projected LSTM (each weight tuple ends with w_hr [P, H]; h0, dhn
    [L*D, B, P] and dy [T, B, D*P]; opts gains proj_size)."""
    peephole, coupled, _ = variant
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    weights = fastrnn.init_weights("lstm", I, H, num_layers, bidirectional=bidirectional, bias=bias, dtype=np.float64,
                                   seed=seed, peephole=peephole, coupled=coupled, proj_size=proj_size)
    weights = [tuple((scale * w).astype(dtype) for w in entry) for entry in weights]
    state, h_state = (num_layers * D, B, H), (num_layers * D, B, proj_size or H)
    lengths = ragged_lengths(rng, T, B) if ragged else None
    opts = {**variant_options(variant), **({"proj_size": proj_size} if proj_size else {})}
    return dict(x=rng.standard_normal((T, B, I)).astype(dtype), weights=weights,
                h0=(0.5 * rng.standard_normal(h_state)).astype(dtype),
                c0=(0.5 * rng.standard_normal(state)).astype(dtype),
                lengths=lengths, dy=rng.standard_normal((T, B, D * (proj_size or H))).astype(dtype),
                dhn=rng.standard_normal(h_state).astype(dtype), dcn=rng.standard_normal(state).astype(dtype),
                bidirectional=bidirectional, opts=opts, dtype=np.dtype(dtype))


def layer_norm_problem(cell, dtype, num_layers, bidirectional, T, B, I, H, *, bias=True, ragged=False, seed=0):
    """A seeded layer-normalised problem, weights in fastrnn.nn's order (w_ih, w_hh[, b_ih, b_hh],
    ln_weight_ih, ln_weight_hh[, ln_weight_c, ln_bias_c]) with the norm's vectors drawn away from
    their init (ones, zeros) so that their gradients are tested in general position."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    G = 4 if cell == "lstm" else 3
    weights = fastrnn.init_weights(cell, I, H, num_layers, bidirectional=bidirectional, bias=bias, dtype=np.float64,
                                   seed=seed)
    lns = [(1.0 + 0.3 * rng.standard_normal(G * H), 1.0 + 0.3 * rng.standard_normal(G * H))
           + ((1.0 + 0.3 * rng.standard_normal(H), 0.3 * rng.standard_normal(H)) if cell == "lstm" else ())
           for _ in weights]
    weights = [tuple(a.astype(dtype) for a in tuple(2.0 * w for w in entry) + ln) for entry, ln in zip(weights, lns)]
    state = (num_layers * D, B, H)
    lengths = ragged_lengths(rng, T, B) if ragged else None
    lstm = cell == "lstm"
    return dict(cell=cell, x=rng.standard_normal((T, B, I)).astype(dtype), weights=weights,
                h0=(0.5 * rng.standard_normal(state)).astype(dtype),
                c0=rng.standard_normal(state).astype(dtype) if lstm else None, lengths=lengths,
                dy=rng.standard_normal((T, B, D * H)).astype(dtype), dhn=rng.standard_normal(state).astype(dtype),
                dcn=rng.standard_normal(state).astype(dtype) if lstm else None,
                bidirectional=bidirectional, dtype=np.dtype(dtype), bias=bias)


def run_layer_norm(module, p, with_state=True, storage=None):
    """forward + backward of the layer-normalised problem ``p`` through ``module`` (fastrnn, or
    fastrnn.reference on float64 copies, in its low-precision mode with ``storage``) -> {name: array}."""
    ref = module is reference
    cast = (lambda a: None if a is None else np.asarray(a, np.float64)) if ref else (lambda a: a)
    weights = [tuple(cast(w) for w in entry) for entry in p["weights"]]
    res = module.forward(p["cell"], cast(p["x"]), weights, cast(p["h0"]) if with_state else None,
                         cast(p["c0"]) if with_state else None, lengths=p["lengths"],
                         bidirectional=p["bidirectional"], training=True, layer_norm=True,
                         **({"storage": storage} if ref else {}))
    grads = module.backward(res.saved, cast(p["dy"]), cast(p["dhn"]), cast(p["dcn"]))
    out = {"output": res.output, "h_n": res.h_n, "c_n": res.c_n, "dx": grads.dx, "dh0": grads.dh0, "dc0": grads.dc0}
    names = (["dw_ih", "dw_hh"] + (["db_ih", "db_hh"] if p["bias"] else []) + ["dln_weight_ih", "dln_weight_hh"]
             + (["dln_weight_c", "dln_bias_c"] if p["cell"] == "lstm" else []))
    for k, entry in enumerate(grads.dweights):
        assert len(entry) == len(names)
        for name, g in zip(names, entry):
            out[f"dweights[{k}].{name}"] = g
    return out



# ---- the CUDA back end (tests/cuda) ------------------------------------------------------------------
# Device buffers for the tests that call ``fastrnn._core.cuda`` through data pointers: torch CUDA
# tensors on a GPU, or NumPy arrays for the CPU emulation of the kernels (cuda/emu/build.sh, selected
# with FASTRNN_CUDA_EMU=<dir holding _cuda_emu>).


def seed_of(*key) -> int:
    """A reproducible seed from any repr-able key (the same key, the same problem, in every process)."""
    return zlib.crc32(repr(key).encode())


class TorchDevice:
    """Buffers as torch CUDA tensors on the current device, kernels on torch's current stream."""

    emulated = False

    def __init__(self, torch):
        self.torch = torch
        self.module = fastrnn._core.cuda

    def put(self, a):
        return None if a is None else self.torch.from_numpy(np.ascontiguousarray(a)).cuda()

    def empty(self, shape, dtype):
        # NaN-filled, so an element the kernels forget to write fails the comparison.
        return self.torch.full(shape, float("nan"), dtype=getattr(self.torch, np.dtype(dtype).name), device="cuda")

    def ptr(self, t):
        return 0 if t is None else t.data_ptr()

    def get(self, t):
        return None if t is None else t.cpu().numpy()

    def stream(self):
        return self.torch.cuda.current_stream().cuda_stream

    def synchronize(self):
        self.torch.cuda.synchronize()


class EmulatedDevice:
    """The CPU emulation of the kernels (cuda/emu/): "device" buffers are NumPy arrays."""

    emulated = True

    def __init__(self, directory):
        path = next(os.path.join(directory, f) for f in os.listdir(directory) if f.startswith("_cuda_emu"))
        spec = importlib.util.spec_from_file_location("_cuda_emu", path)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)

    def put(self, a):
        return None if a is None else np.array(a, copy=True, order="C")

    def empty(self, shape, dtype):
        return np.full(shape, np.nan, dtype)

    def ptr(self, a):
        return 0 if a is None else a.ctypes.data

    def get(self, a):
        return None if a is None else a.copy()

    def stream(self):
        return 0

    def synchronize(self):
        pass


NO_CUDA_BUILD = "fastrnn was built without CUDA (FASTRNN_WITH_CUDA=OFF or no nvcc)"


@functools.lru_cache(maxsize=None)
def find_cuda_device():
    """(device, None) or (None, the one reason the GPU tests skip): the CUDA back end on the GPU
    (TorchDevice) or, with FASTRNN_CUDA_EMU=<dir>, its CPU emulation (EmulatedDevice); one per
    process, shared by the tests/cuda files."""
    _core = fastrnn._core
    if os.environ.get("FASTRNN_CUDA_EMU"):
        return EmulatedDevice(os.environ["FASTRNN_CUDA_EMU"]), None
    if not _core.built_with_cuda:
        return None, NO_CUDA_BUILD
    if _core.cuda.device_count() == 0:
        return None, "no CUDA device visible to the process"
    try:
        import torch
    except ImportError:
        return None, "the CUDA tests allocate device memory with torch, which is not installed"
    if not torch.cuda.is_available():
        return None, "torch has no CUDA (a CPU-only build)"
    return TorchDevice(torch), None


# ---- finite differences --------------------------------------------------------------------------
# Central differences in float64 with step EPS: truncation error ~ EPS**2 * |f'''| ~ 1e-12 and
# rounding error ~ 1e-16 * |loss| / EPS ~ 1e-10 for the O(1) losses used here, so analytic and
# numeric gradients must agree to ~1e-9; FD_RTOL / FD_ATOL leave two orders of margin over that
# while still catching any real mistake (a wrong term is O(1e-2) or larger at these sizes).
EPS = 1e-6
FD_RTOL = 1e-6
FD_ATOL = 1e-8
# Tiny sizes so that finite differences over every parameter stay fast: T, B, I, H.
FD_SIZES = (3, 3, 3, 2)


def reference_problem(cell, num_layers, bidirectional, bias=True, seed=0, t=FD_SIZES[0], b=FD_SIZES[1],
                      i=FD_SIZES[2], h=FD_SIZES[3]):
    """Random weights (list of L*D tuples), x [T, B, I] time-major, h0 and c0 [L*D, B, H]."""
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    G = GATES[cell]
    weights = []
    for l in range(num_layers):
        in_size = i if l == 0 else D * h
        for _ in range(D):
            w = [rng.uniform(-0.8, 0.8, (G * h, in_size)), rng.uniform(-0.8, 0.8, (G * h, h))]
            if bias:
                w += [rng.uniform(-0.5, 0.5, G * h), rng.uniform(-0.5, 0.5, G * h)]
            weights.append(tuple(w))
    x = rng.standard_normal((t, b, i))
    h0 = 0.5 * rng.standard_normal((num_layers * D, b, h))
    c0 = 0.5 * rng.standard_normal((num_layers * D, b, h)) if cell == "lstm" else None
    return x, weights, h0, c0


def numeric_grad(f, arr):
    """Central-difference gradient of the scalar f() with respect to arr, perturbed in place."""
    g = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + EPS
        fp = f()
        arr[idx] = old - EPS
        fm = f()
        arr[idx] = old
        g[idx] = (fp - fm) / (2 * EPS)
    return g


# ---- fresh processes -----------------------------------------------------------------------------
def digest(arrays: dict) -> str:
    """One SHA-256 over every named array's bytes (None skipped): equal digests, identical bits."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        if arrays[name] is not None:
            h.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak one (getrusage), in bytes."""
    if os.path.exists("/proc/self/statm"):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


# ---- fastrnn.nn against torch.nn -----------------------------------------------------------------
PARITY_SIZES = (5, 3, 4, 5, 3)  # T, B, I, H, P (P: proj_size)
PARITY_LENGTHS = [3, 5, 1]  # unsorted, containing T and 1: exercises the sorted_indices permutation
# packed_batch_first: a PackedSequence made from [B, T, I] for a batch_first module, with hx=None
FORMS = ("batched", "batched_no_hx", "batch_first", "unbatched", "unbatched_batch_first", "packed",
         "packed_batch_first")
_TORCH_TABLES: dict = {}


def _torch():
    """torch, imported on first use (see the module's docstring)."""
    import torch
    return torch


def _tables() -> dict:
    """TORCH_DTYPES, LAYER_PAIRS (cell -> (torch.nn class, fastrnn.nn class, extra constructor
    kwargs)) and CELL_PAIRS (the same for the *Cell modules), built once, on first use."""
    if not _TORCH_TABLES:
        torch = _torch()
        import fastrnn.nn as fnn
        _TORCH_TABLES.update(
            TORCH_DTYPES=(torch.float32, torch.float64),
            LAYER_PAIRS={
                "rnn_tanh": (torch.nn.RNN, fnn.RNN, {"nonlinearity": "tanh"}),
                "rnn_relu": (torch.nn.RNN, fnn.RNN, {"nonlinearity": "relu"}),
                "lstm": (torch.nn.LSTM, fnn.LSTM, {}),
                "gru": (torch.nn.GRU, fnn.GRU, {}),
            },
            CELL_PAIRS={
                "rnn_tanh": (torch.nn.RNNCell, fnn.RNNCell, {"nonlinearity": "tanh"}),
                "rnn_relu": (torch.nn.RNNCell, fnn.RNNCell, {"nonlinearity": "relu"}),
                "lstm": (torch.nn.LSTMCell, fnn.LSTMCell, {}),
                "gru": (torch.nn.GRUCell, fnn.GRUCell, {}),
            })
    return _TORCH_TABLES


def __getattr__(name: str):
    """``from helpers import LAYER_PAIRS`` (or TORCH_DTYPES, CELL_PAIRS) builds the torch tables."""
    if name in ("TORCH_DTYPES", "LAYER_PAIRS", "CELL_PAIRS"):
        return _tables()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_numpy(t):
    """A tensor's values as a NumPy array (detached, on the CPU)."""
    return t.detach().cpu().numpy()


def assert_torch_close(actual, expected, dtype, what):
    """tolerances.assert_close with a torch dtype (a gradient iff ``what`` starts with 'd')."""
    tolerances.assert_close(actual, expected, np.dtype(str(dtype).replace("torch.", "")), what)


def pair(torch_cls, fast_cls, dtype, seed=0, device="cpu", **kwargs):
    """(torch.nn module in float64 on the CPU, fastrnn.nn module in dtype on ``device``) with the same
    weights (the float64 copy holds the dtype-rounded values, so both see identical numbers)."""
    torch = _torch()
    torch.manual_seed(seed)
    ref = torch_cls(**kwargs, dtype=dtype)
    fast = fast_cls(**kwargs, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    return ref.double(), fast.to(device)


def seeded(shape, dtype, seed, requires_grad=True, device="cpu"):
    torch = _torch()
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same numbers on every device
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device).requires_grad_(requires_grad)


def run_module(module, x, hx, form, lstm, w):
    """Forward, then a scalar loss that weighs every output with fixed random weights w (so each
    element's gradient differs). Returns (output tensor, states tuple, loss)."""
    torch = _torch()
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
    packed = form.startswith("packed")
    if packed:
        x = pack_padded_sequence(x, torch.tensor(PARITY_LENGTHS), batch_first=form == "packed_batch_first",
                                 enforce_sorted=False)
    y, h = module(x, hx)
    states = tuple(h) if lstm else (h,)
    if packed:
        assert isinstance(y, PackedSequence) and torch.equal(y.batch_sizes, x.batch_sizes)
        assert torch.equal(y.sorted_indices, x.sorted_indices) and torch.equal(y.unsorted_indices, x.unsorted_indices)
        y = y.data
    loss = (y * w[0].to(y)).sum() + sum((s * wi.to(s)).sum() for s, wi in zip(states, w[1:]))
    return y, states, loss


def check_parity(cell, num_layers, bidirectional, form, dtype, proj_size=0, bias=True, device="cpu"):
    """fastrnn.nn on ``device`` against torch.nn in float64 on the CPU: outputs, final states and
    the gradients of the input, the initial states and every parameter."""
    torch = _torch()
    torch_cls, fast_cls, extra = _tables()["LAYER_PAIRS"][cell]
    lstm = cell == "lstm"
    batch_first = form in ("batch_first", "unbatched_batch_first", "packed_batch_first")
    T, B, I, H, _ = PARITY_SIZES
    kwargs = dict(input_size=I, hidden_size=H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                  bidirectional=bidirectional, **extra)
    if proj_size:
        kwargs["proj_size"] = proj_size
    ref, fast = pair(torch_cls, fast_cls, dtype, device=device, **kwargs)
    D = 2 if bidirectional else 1
    out_h = proj_size or H
    unbatched = form.startswith("unbatched")
    if unbatched:
        x_shape, state_shapes = (T, I), [(num_layers * D, out_h), (num_layers * D, H)]
        w_shape = (T, D * out_h)
    else:
        x_shape = (B, T, I) if batch_first else (T, B, I)
        state_shapes = [(num_layers * D, B, out_h), (num_layers * D, B, H)]
        w_shape = (B, T, D * out_h) if batch_first else (T, B, D * out_h)
    if form.startswith("packed"):
        w_shape = (sum(PARITY_LENGTHS), D * out_h)
    n_states = 2 if lstm else 1
    x = seeded(x_shape, dtype, 1, device=device)
    hx = None if form in ("batched_no_hx", "packed_batch_first") else \
        [seeded(s, dtype, 2 + k, device=device) for k, s in enumerate(state_shapes[:n_states])]
    w = [seeded(w_shape, torch.float64, 10, False)] + [seeded(s, torch.float64, 11 + k, False)
                                                        for k, s in enumerate(state_shapes[:n_states])]

    x64 = x.detach().cpu().double().requires_grad_()
    hx64 = None if hx is None else [h.detach().cpu().double().requires_grad_() for h in hx]
    as_arg = (lambda h: None if h is None else (tuple(h) if lstm else h[0]))
    y_ref, s_ref, loss_ref = run_module(ref, x64, as_arg(hx64), form, lstm, w)
    y, s, loss = run_module(fast, x, as_arg(hx), form, lstm, w)
    loss_ref.backward()
    loss.backward()

    assert y.dtype == dtype and all(t.dtype == dtype for t in s)
    assert y.device.type == torch.device(device).type and all(t.device == y.device for t in s)
    assert_torch_close(to_numpy(y), to_numpy(y_ref), dtype, "output")
    for k, (a, e) in enumerate(zip(s, s_ref)):
        assert_torch_close(to_numpy(a), to_numpy(e), dtype, ("h_n", "c_n")[k])
    assert_torch_close(to_numpy(x.grad), to_numpy(x64.grad), dtype, "dx")
    if hx is not None:
        for k in range(n_states):
            assert_torch_close(to_numpy(hx[k].grad), to_numpy(hx64[k].grad), dtype, ("dh0", "dc0")[k])
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in fast.named_parameters()]
    assert names == list(ref_params)
    for name, p in fast.named_parameters():
        assert p.grad is not None, name
        assert_torch_close(to_numpy(p.grad), to_numpy(ref_params[name].grad), dtype, "d" + name)


def check_cell_parity(cell, bias, form, dtype, device="cpu"):
    """A fastrnn.nn cell on ``device`` against torch.nn's in float64 on the CPU, one step with backward."""
    torch = _torch()
    _, B, I, H, _ = PARITY_SIZES
    torch_cls, fast_cls, extra = _tables()["CELL_PAIRS"][cell]
    ref, fast = pair(torch_cls, fast_cls, dtype, device=device, input_size=I, hidden_size=H, bias=bias, **extra)
    lstm = cell == "lstm"
    n = 2 if lstm else 1
    lead = () if form == "unbatched" else (B,)
    x = seeded(lead + (I,), dtype, 1, device=device)
    hx = None if form == "no_hx" else [seeded(lead + (H,), dtype, 2 + k, device=device) for k in range(n)]
    w = [seeded(lead + (H,), torch.float64, 10 + k, False) for k in range(n)]
    x64 = x.detach().cpu().double().requires_grad_()
    hx64 = None if hx is None else [h.detach().cpu().double().requires_grad_() for h in hx]

    def step(module, x, hx):
        out = module(x, None if hx is None else (tuple(hx) if lstm else hx[0]))
        out = tuple(out) if lstm else (out,)
        (sum((o * wi.to(o)).sum() for o, wi in zip(out, w))).backward()
        return out

    out_ref, out = step(ref, x64, hx64), step(fast, x, hx)
    for k in range(n):
        assert out[k].shape == out_ref[k].shape and out[k].dtype == dtype
        assert out[k].device.type == torch.device(device).type
        assert_torch_close(to_numpy(out[k]), to_numpy(out_ref[k]), dtype, ("h'", "c'")[k])
    assert_torch_close(to_numpy(x.grad), to_numpy(x64.grad), dtype, "dx")
    if hx is not None:
        for k in range(n):
            assert_torch_close(to_numpy(hx[k].grad), to_numpy(hx64[k].grad), dtype, ("dh", "dc")[k])
    ref_params = dict(ref.named_parameters())
    assert [n for n, _ in fast.named_parameters()] == list(ref_params)
    for name, p in fast.named_parameters():
        assert_torch_close(to_numpy(p.grad), to_numpy(ref_params[name].grad), dtype, "d" + name)


# ---- plain-torch loops of the modifiers with the cell variants ------------------------------------
# (tests/kernels/test_modifier_variants.py: the reference's clamped BPTT; tests/nn/
# test_nn_modifier_variants.py: fastrnn.nn's composed and fused paths.) ``torch`` is an argument, so
# that importing this module does not import it.
def _layer_norm_t(torch, v, gain, bias=None):
    y = torch.nn.functional.layer_norm(v, (v.size(-1),), gain, None, 1e-5)
    return y if bias is None else y + bias


def torch_modified_loop(torch, cell, x, entries, h0, c0, lengths, bidirectional, *, peephole=False, coupled=False,
                        cell_clip=None, reset_after=True, layer_norm=False, recurrent_mask=None, zoneout=None,
                        zoneout_cell=None, grad_clip=None, dilation=1):
    """The issue's equations in plain torch ops (autograd differentiates them; grad_clip as
    ``register_hook(lambda g: g.clamp(-C, C))`` on every h_t and c_t), for every cell variant and
    modifier. x [T, B, I]; entries: L*D dicts of tensors w_ih, w_hh, b_ih, b_hh (or None), w_ch
    (peepholes), w_hr (projection: h is P wide), ln_ih, ln_hh, ln_c_w, ln_c_b (layer norm); weight
    dropout is the caller's (entries' w_hh already masked); h0 [L*D, B, P or H], c0 [L*D, B, H];
    lengths [B] or None; masks as fastrnn.reference takes them (recurrent [L*D, B, P or H], zoneout
    [L*D, T, B, P or H], zoneout_cell [L*D, T, B, H]). -> (y [T, B, D*P or D*H], h_n, c_n or None)."""
    F = torch.nn.functional
    T_, B_ = x.shape[0], x.shape[1]
    D = 2 if bidirectional else 1
    L = len(entries) // D
    dil = [dilation] * L if isinstance(dilation, int) else list(dilation)
    lens = torch.full((B_,), T_) if lengths is None else torch.as_tensor(lengths)
    lstm = cell == "lstm"
    hns, cns, layer_in = [], [], x
    for l in range(L):
        outs = []
        for dr in range(D):
            k = l * D + dr
            e = entries[k]
            d = dil[l]
            hs, cs = {}, {}
            y = [None] * T_
            for t in (range(T_ - 1, -1, -1) if dr else range(T_)):
                src = t + d if dr else t - d
                has = (src < lens) if dr else torch.full((B_,), src >= 0)
                hp = torch.where(has[:, None], hs[src], h0[k]) if src in hs else h0[k].expand(B_, -1)
                cp = None
                if lstm:
                    cp = torch.where(has[:, None], cs[src], c0[k]) if src in cs else c0[k].expand(B_, -1)
                h_in = hp if recurrent_mask is None else recurrent_mask[k] * hp
                if layer_norm:  # LN(W x) γ + b per product, over the whole gate row
                    gi = _layer_norm_t(torch, F.linear(layer_in[t], e["w_ih"]), e["ln_ih"], e["b_ih"])
                    gh = _layer_norm_t(torch, F.linear(h_in, e["w_hh"]), e["ln_hh"], e["b_hh"])
                else:
                    gi, gh = F.linear(layer_in[t], e["w_ih"], e["b_ih"]), F.linear(h_in, e["w_hh"], e["b_hh"])
                c_new = None
                if lstm:
                    a = gi + gh
                    p = e.get("w_ch") if peephole else None
                    if coupled:
                        a_f, a_g, a_o = a.chunk(3, 1)
                        f = torch.sigmoid(a_f + (p[0] * cp if p is not None else 0))
                        i = 1 - f
                    else:
                        a_i, a_f, a_g, a_o = a.chunk(4, 1)
                        i = torch.sigmoid(a_i + (p[0] * cp if p is not None else 0))
                        f = torch.sigmoid(a_f + (p[1] * cp if p is not None else 0))
                    c_new = f * cp + i * torch.tanh(a_g)
                    if cell_clip is not None:
                        c_new = c_new.clamp(-cell_clip, cell_clip)
                    o = torch.sigmoid(a_o + (p[-1] * c_new if p is not None else 0))
                    h_new = o * torch.tanh(_layer_norm_t(torch, c_new, e["ln_c_w"], e["ln_c_b"]) if layer_norm
                                           else c_new)
                    if e.get("w_hr") is not None:
                        h_new = F.linear(h_new, e["w_hr"])
                elif cell == "gru":
                    ri, zi, ni = gi.chunk(3, 1)
                    rh, zh, nh = gh.chunk(3, 1)
                    r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
                    if reset_after:
                        n = torch.tanh(ni + r * nh)
                    else:  # Cho et al.: W_hn (r * m * h) + b_hn
                        Hh = hp.size(1)
                        b_n = None if e["b_hh"] is None else e["b_hh"][2 * Hh:]
                        n = torch.tanh(ni + F.linear(r * h_in, e["w_hh"][2 * Hh:], b_n))
                    h_new = (1 - z) * n + z * hp
                else:
                    h_new = torch.tanh(gi + gh) if cell == "rnn_tanh" else torch.relu(gi + gh)
                if zoneout is not None:
                    h_new = zoneout[k, t] * hp + (1 - zoneout[k, t]) * h_new
                if zoneout_cell is not None:
                    c_new = zoneout_cell[k, t] * cp + (1 - zoneout_cell[k, t]) * c_new
                if grad_clip is not None and h_new.requires_grad:
                    h_new.register_hook(lambda g: g.clamp(-grad_clip, grad_clip))
                    if c_new is not None:
                        c_new.register_hook(lambda g: g.clamp(-grad_clip, grad_clip))
                hs[t], cs[t] = h_new, c_new
                y[t] = h_new * (t < lens)[:, None].to(h_new.dtype)
            outs.append(torch.stack(y))
            last = torch.zeros(B_, dtype=torch.long) if dr else lens - 1
            hns.append(torch.stack([hs[int(last[b])][b] for b in range(B_)]))
            if lstm:
                cns.append(torch.stack([cs[int(last[b])][b] for b in range(B_)]))
        layer_in = torch.cat(outs, 2)
    return layer_in, torch.stack(hns), (torch.stack(cns) if lstm else None)


def nn_drawn_masks(torch, m, T_, B_, dtype=None) -> dict:
    """The masks fastrnn.nn's module ``m`` draws in a training call on a CPU input [T, B, I], in its
    documented order, from torch's default generator (seed it as before the call): the weight-dropout
    masks (F.dropout's bernoulli(keep) / keep of each W_hh's shape), then either one seed from which
    the kernels draw the others (where ``m._kernels_draw_masks``; materialised here by
    fastrnn.reference.philox.seeded_masks) or the recurrent [L*D, B, P] and zoneout [L*D, T, B, P]
    (h), [L*D, T, B, H] (c) tensors. Keys (those drawn): weight_masks (a list of L*D), recurrent_mask,
    zoneout, zoneout_cell, as torch_modified_loop takes them (weight_masks: the caller's)."""
    from fastrnn.nn.layers import _draw_mask_seed
    from fastrnn.reference.philox import seeded_masks
    L, D, Hh = m.num_layers, 2 if m.bidirectional else 1, m.hidden_size
    P = m.proj_size or Hh
    dtype = dtype or torch.float64
    lstm = m.mode == "LSTM"
    out = {}
    if m.weight_dropout:
        keep = 1 - m.weight_dropout
        out["weight_masks"] = [torch.empty(getattr(m, names[1]).shape, dtype=dtype).bernoulli_(keep) / keep
                               for names in m._all_weights]
    probe = torch.empty(T_, B_, m.input_size, dtype=dtype)
    if m._kernels_draw_masks(probe, None, None, list(m._weights())):
        seed = int(_draw_mask_seed())
        masks = seeded_masks(seed, L * D, T_, B_, Hh, zoneout=m.zoneout, zoneout_cell=m.zoneout_cell if lstm else 0.0,
                             recurrent_dropout=m.recurrent_dropout)
        for key, mask in zip(("recurrent_mask", "zoneout", "zoneout_cell"), masks):
            if mask is not None:
                out[key] = torch.from_numpy(mask).to(dtype)
        return out
    if m.recurrent_dropout:
        keep = 1 - m.recurrent_dropout
        out["recurrent_mask"] = torch.empty(L * D, B_, P, dtype=dtype).bernoulli_(keep).div_(keep)
    if m.zoneout:
        out["zoneout"] = torch.empty(L * D, T_, B_, P, dtype=dtype).bernoulli_(m.zoneout)
    if lstm and m.zoneout_cell:
        out["zoneout_cell"] = torch.empty(L * D, T_, B_, Hh, dtype=dtype).bernoulli_(m.zoneout_cell)
    return out


# ---- the NLP examples ----------------------------------------------------------------------------
REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
EXAMPLES = os.path.join(REPO, "examples")
DATA = os.path.normpath(os.path.join(REPO, os.pardir, "shared", "data"))

_modules: dict = {}
_runs: dict = {}


def example(name: str):
    """examples/<name>.py as a module (examples/ put on sys.path for its nlp_data import)."""
    if name not in _modules:
        if EXAMPLES not in sys.path:
            sys.path.insert(0, EXAMPLES)
        spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[name] = module
    return _modules[name]


def data_or_skip(dataset: str, *files: str) -> str:
    """<repo>/../shared/data/<dataset>, or skip the test saying which file is missing."""
    path = os.path.join(DATA, dataset)
    for f in files:
        if not os.path.exists(os.path.join(path, f)):
            pytest.skip(f"dataset file {os.path.join(path, f)} is absent (CI has ../shared/data beside the clone)")
    return path


def run_example(name: str, args) -> dict:
    """``examples/<name>.main(args)``, cached by (name, args) for the session."""
    if args and "fastrnn" in args:
        pytest.importorskip("fastrnn.nn")
    key = (name, tuple(args))
    if key not in _runs:
        _runs[key] = example(name).main(list(args))
    return _runs[key]


def head_tail_means(losses, n: int):
    """Mean of the first ``n`` and of the last ``n`` per-batch losses."""
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def max_relative_difference(a, b) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def loss_weights(res, seed):
    """Random weights (r_out, r_h, r_c) of the loss sum(r_out*y) + sum(r_h*h_n) + sum(r_c*c_n) of a
    forward result (r_c None without a cell state)."""
    rng = np.random.default_rng(seed)
    r_out = rng.standard_normal(res.output.shape)
    r_h = rng.standard_normal(res.h_n.shape)
    r_c = None if res.c_n is None else rng.standard_normal(res.c_n.shape)
    return r_out, r_h, r_c


def check_modified_kernels(cell, x, weights, h0, c0, mods, dtype, *, lengths, bidirectional, opts=None):
    """The kernels in ``dtype`` with the training modifiers ``mods`` (fastrnn.forward's keywords; mask
    arrays cast alike) against the reference on float64 casts of the same data: outputs, final
    states, dx, dh0, dc0 and every weight gradient (dW_ch too with peepholes)."""
    opts = opts or {}
    cast = lambda a: None if a is None else np.asarray(a, dtype)
    fmods = {k: ([cast(a) for a in v] if k == "weight_mask" else cast(v) if k.endswith("mask") else v)
             for k, v in mods.items()}
    wts = [tuple(cast(a) for a in w) for w in weights]
    res = fastrnn.forward(cell, cast(x), wts, cast(h0), cast(c0), lengths=lengths, bidirectional=bidirectional,
                          training=True, **opts, **fmods)
    up = lambda a: None if a is None else np.asarray(a, np.float64)
    rmods = {k: ([up(a) for a in v] if k == "weight_mask" else up(v) if k.endswith("mask") else v)
             for k, v in fmods.items()}
    ref = reference.forward(cell, up(cast(x)), [tuple(up(a) for a in w) for w in wts], up(cast(h0)), up(cast(c0)),
                            lengths=lengths, bidirectional=bidirectional, **opts, **rmods)
    for name in ("output", "h_n", "c_n"):
        assert_close(getattr(res, name), getattr(ref, name), dtype, name)
    r = loss_weights(ref, 9)
    got = fastrnn.backward(res.saved, cast(r[0]), cast(r[1]), cast(r[2]))
    want = reference.backward(ref.saved, *r)
    for name in ("dx", "dh0", "dc0"):
        assert_close(getattr(got, name), getattr(want, name), dtype, name)
    names = ["dW_ih", "dW_hh", "db_ih", "db_hh"] + (["dW_ch"] if opts.get("peephole") else [])
    for k, (g, w) in enumerate(zip(got.dweights, want.dweights)):
        assert len(g) == len(names)
        for j, nm in enumerate(names):
            assert_close(g[j], w[j], dtype, f"{nm}[{k}]")
