"""The one module of helpers that the test folders share (tests/ is on sys.path: pytest puts the
rootdir conftest's folder there, and the fresh interpreters some tests start insert ``TESTS_DIR``).
Tolerances are not here: they live in tolerances.py. Sections:

- kernels against the reference (tests/kernels, tests/cuda): seeded problems, forward+backward
  through either, every compared quantity by name;
- finite differences (tests/reference, tests/kernels): the float64 central-difference gradient and
  its tolerances, the reference's tiny problems;
- fresh processes: a digest of arrays, the resident set size;
- fastrnn.nn against torch.nn (tests/nn, tests/cuda): the parity checks over every cell and input
  form. Importing this module never imports torch (the NumPy tests and their fresh processes must
  not pay for it, nor have it touch OpenMP): those helpers import it when first used;
- the NLP examples (tests/examples): load an example as a module, find the project's datasets at
  ``<repo>/../shared/data`` (skipping, with the reason, where a dataset is absent), and run an
  example's ``main`` once per argument list for the whole session.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import resource
import sys

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
    lengths = None
    if ragged:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        if B > 1:
            lengths[-1] = 1
        rng.shuffle(lengths)
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
