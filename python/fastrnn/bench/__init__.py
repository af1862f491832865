"""``python -m fastrnn.bench``: times fastrnn against torch.nn (when torch imports) and the NumPy
reference (small cases only) in ONE process, and reports each case as milliseconds, GFLOP/s, a
percentage of the machine's fp32 GEMM peak measured in the same run, the speed-up over torch.nn and
microseconds per time step. Numbers from one process on one machine are only comparable with each
other, so everything the verdict needs is measured here: the baseline, the peak and the header that
says what ran where (CPU, cores, threads, versions, commit).

Method: per case, each implementation is first checked against torch.nn (or the reference) once,
then warmed up, then timed interleaved (A B C, B C A, ... so that drift in clock speed or in the
neighbours' load hits every implementation alike), ``--reps`` samples each; a sample is a block of
calls long enough (``min_sample_s``) for the clock's resolution not to matter, divided by its call
count. The table gives the median with min-max; read a ratio as real only when the ranges do not
overlap. Forward FLOPs are ``sum over layers and directions of 2*G*H*(I_l+H)*B*T`` (G = 4 LSTM,
3 GRU, 1 RNN; I_l = I for layer 0, D*H after); training (forward + backward, all gradients)
counts 3x that. See bench/README.md for how to read the output.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import glob
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import fastrnn
from fastrnn import reference
from fastrnn.types import GATES

MODES = ("inference", "training", "decode")
BENCH_CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
DEFAULT_CELLS = ("lstm", "gru", "rnn_tanh")
DEFAULT_SIZES = ((256, 1, 100), (256, 32, 100), (512, 16, 50), (512, 64, 50), (1024, 32, 25), (128, 128, 200))
INFERENCE_ONLY_SIZES = ((1536, 4, 50),)  # issue 3's suite times this one in inference only
QUICK_SIZES = ((256, 1, 100), (256, 32, 100), (512, 16, 50))
TINY_SIZES = ((16, 2, 5),)  # the harness's own tests: every code path in well under a second
BIDIR_CASE = (256, 32, 100)  # the suite's 2-layer bidirectional LSTM, training
DECODE_HB = (512, 1)  # the suite's LSTM decode step: H, B
# The reference is a float64 Python loop: only run it where it takes well under a second per call.
REFERENCE_MAX_FLOPS = 4e8
# A "gross mismatch": |fastrnn - baseline| / (1 + |baseline|) above this for outputs, or above this
# times max(1, max |baseline|) for gradients (sums of T*B float32 terms). This is a guard against
# timing a wrong kernel, not a precision test (tests/ does that): the --quick suite differs from
# torch.nn by at most ~1e-6 in outputs and ~5e-4 (absolute) in gradients, while a wrong term or a
# wrong weight is O(1).
GROSS_MISMATCH = 1e-2
GEMM_N = 2048


class VerificationError(RuntimeError):
    """fastrnn's result differs grossly from torch.nn's or the reference's on a benchmark case."""


# ------------------------------------------------------------------------------------------------
# Cases and FLOPs
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    cell: str
    H: int
    B: int
    T: int  # 1 for decode
    I: int
    mode: str  # one of MODES
    layers: int = 1
    bidirectional: bool = False
    half_weights: bool = False  # decode only: PreparedCell(..., weight_dtype="float16")

    @property
    def name(self) -> str:
        shape = f"{self.cell} H={self.H} B={self.B} T={self.T}"
        if self.I != self.H:
            shape += f" I={self.I}"
        if self.layers > 1 or self.bidirectional:
            shape += f" {self.layers}L{'x2dir' if self.bidirectional else ''}"
        if self.half_weights:
            shape += " float16-weights"
        return f"{shape} {self.mode}"


def flops(cell: str, I: int, H: int, B: int, T: int, layers: int = 1, bidirectional: bool = False,
          training: bool = False) -> float:
    """Forward FLOPs, sum over layers and directions of 2*G*H*(I_l+H)*B*T; training counts 3x
    (the backward is two GEMMs of the forward's size: dX/dh and dW)."""
    G, D = GATES[cell], 2 if bidirectional else 1
    total = 0.0
    for layer in range(layers):
        I_l = I if layer == 0 else D * H
        total += D * 2.0 * G * H * (I_l + H) * B * T
    return 3.0 * total if training else total


def case_flops(case: Case) -> float:
    return flops(case.cell, case.I, case.H, case.B, case.T, case.layers, case.bidirectional,
                 training=case.mode == "training")


def parse_sizes(text: str) -> List[Tuple[int, int, int, int]]:
    """"512x16x50,256x1x100" -> [(H, B, T, I), ...] with I = H unless a 4th field gives it
    ("HxBxTxI"); the names "default", "quick" and "tiny" stand for those suites' sizes."""
    out: List[Tuple[int, int, int, int]] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        preset = {"default": DEFAULT_SIZES, "quick": QUICK_SIZES, "tiny": TINY_SIZES}.get(item)
        if preset is not None:
            out.extend((h, b, t, h) for h, b, t in preset)
            continue
        parts = item.split("x")
        if len(parts) not in (3, 4) or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"sizes: expected HxBxT or HxBxTxI with positive integers (e.g. 512x16x50), got {item!r}")
        H, B, T = (int(p) for p in parts[:3])
        out.append((H, B, T, int(parts[3]) if len(parts) == 4 else H))
    if not out:
        raise ValueError(f"sizes: no size given in {text!r}")
    return out


def build_cases(cells: Sequence[str], modes: Sequence[str], sizes: Optional[Sequence[Tuple[int, int, int, int]]],
                quick: bool = False) -> List[Case]:
    """The default suite (sizes None), the quick suite, or every cell x size x mode of ``sizes``
    (decode then runs at each size's H and B)."""
    cases: List[Case] = []
    suite = sizes is None
    if suite:
        sizes = [(h, b, t, h) for h, b, t in (QUICK_SIZES if quick else DEFAULT_SIZES)]
    for mode in ("inference", "training"):
        if mode not in modes:
            continue
        for cell in cells:
            for H, B, T, I in sizes:
                cases.append(Case(cell, H, B, T, I, mode))
            if suite and mode == "inference" and not quick:
                cases.extend(Case(cell, H, B, T, H, mode) for H, B, T in INFERENCE_ONLY_SIZES)
    if suite and not quick and "training" in modes and "lstm" in cells:
        H, B, T = BIDIR_CASE
        cases.append(Case("lstm", H, B, T, H, "training", layers=2, bidirectional=True))
    if "decode" in modes and "lstm" in cells:
        decode_sizes = [(DECODE_HB[0], DECODE_HB[1], 1, DECODE_HB[0])] if suite else \
            sorted({(H, B, 1, I) for H, B, _, I in sizes})
        cases.extend(Case("lstm", H, B, 1, I, "decode") for H, B, _, I in decode_sizes)
        if suite and hasattr(fastrnn, "PreparedCell"):  # the same step on float16-stored weights
            cases.extend(Case("lstm", H, B, 1, I, "decode", half_weights=True) for H, B, _, I in decode_sizes)
    return cases


# ------------------------------------------------------------------------------------------------
# Implementations: each returns a zero-argument callable (one timed call) and, once, the values it
# computes (for verification), as float64 NumPy arrays keyed by name.
# ------------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    x: np.ndarray  # [T, B, I] (decode: [B, I])
    weights: list  # L*D tuples (w_ih, w_hh, b_ih, b_hh)
    dy: Optional[np.ndarray]  # [T, B, D*H] for training
    h0: Optional[np.ndarray] = None  # decode: [B, H]
    c0: Optional[np.ndarray] = None


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    weights = fastrnn.init_weights(case.cell, case.I, case.H, case.layers, bidirectional=case.bidirectional,
                                   seed=seed)
    D = 2 if case.bidirectional else 1
    if case.mode == "decode":
        x = rng.standard_normal((case.B, case.I), dtype=np.float32)
        h0 = rng.uniform(-0.5, 0.5, (case.B, case.H)).astype(np.float32)
        c0 = rng.uniform(-0.5, 0.5, (case.B, case.H)).astype(np.float32)
        return Inputs(x, weights, None, h0, c0)
    x = rng.standard_normal((case.T, case.B, case.I), dtype=np.float32)
    dy = rng.standard_normal((case.T, case.B, D * case.H), dtype=np.float32) if case.mode == "training" else None
    return Inputs(x, weights, dy)


def _grads_dict(dx, dweights) -> Dict[str, np.ndarray]:
    out = {"dx": dx}
    for k, entry in enumerate(dweights):
        for name, g in zip(("dW_ih", "dW_hh", "db_ih", "db_hh"), entry):
            out[f"{name}[{k}]"] = g
    return out


def _api_impl(api, case: Case, inp: Inputs):
    """The case through ``api``.forward/backward, for fastrnn and fastrnn.reference alike (one API);
    decode as a one-step sequence, which re-validates the weights on every call."""
    cell, bidir = case.cell, case.bidirectional
    if case.mode == "decode":
        x3, h3, c3 = inp.x[None], inp.h0[None], inp.c0[None]

        def step():
            r = api.forward("lstm", x3, inp.weights, h3, c3, training=False)
            return r.h_n[0], r.c_n[0]

        def values():
            h, c = step()
            return {"h": np.asarray(h), "c": np.asarray(c)}
        return step, values

    if case.mode == "inference":
        def run():
            return api.forward(cell, inp.x, inp.weights, bidirectional=bidir, training=False)

        def values():
            r = run()
            return {"output": r.output, "h_n": r.h_n, **({"c_n": r.c_n} if r.c_n is not None else {})}
        return run, values

    def train():
        r = api.forward(cell, inp.x, inp.weights, bidirectional=bidir, training=True)
        return r, api.backward(r.saved, inp.dy)

    def values():
        r, g = train()
        return {"output": r.output, **_grads_dict(g.dx, g.dweights)}
    return train, values


def fastrnn_impl(case: Case, inp: Inputs) -> Tuple[Callable[[], object], Callable[[], Dict[str, np.ndarray]]]:
    if case.mode == "decode" and hasattr(fastrnn, "PreparedCell"):  # weights packed once, kept across calls
        prepared = fastrnn.PreparedCell("lstm", *inp.weights[0], weight_dtype="float16" if case.half_weights else None)

        def step():
            return prepared(inp.x, inp.h0, inp.c0)

        def values():
            h, c = step()
            return {"h": np.asarray(h), "c": np.asarray(c)}
        return step, values
    return _api_impl(fastrnn, case, inp)


def reference_impl(case: Case, inp: Inputs):
    return _api_impl(reference, case, inp)


def torch_impl(torch, case: Case, inp: Inputs):
    """torch.nn with the same weights: nn.LSTM/GRU/RNN (oneDNN for the LSTM on CPU, ATen for the
    others), nn.LSTMCell for decode; torch.inference_mode() for inference and decode."""
    nn = torch.nn
    D = 2 if case.bidirectional else 1
    if case.mode == "decode":
        module = nn.LSTMCell(case.I, case.H)
        names = [("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    else:
        if case.cell == "lstm":
            module = nn.LSTM(case.I, case.H, case.layers, bidirectional=case.bidirectional)
        elif case.cell == "gru":
            module = nn.GRU(case.I, case.H, case.layers, bidirectional=case.bidirectional)
        else:
            module = nn.RNN(case.I, case.H, case.layers, nonlinearity=case.cell.split("_")[1],
                            bidirectional=case.bidirectional)
        names = []
        for k in range(len(inp.weights)):
            layer, d = divmod(k, D)
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            names.append(tuple(n + suffix for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    params = dict(module.named_parameters())
    with torch.no_grad():
        for entry_names, entry in zip(names, inp.weights):
            for n, w in zip(entry_names, entry):
                params[n].copy_(torch.from_numpy(w))

    x = torch.from_numpy(inp.x)
    if case.mode == "decode":
        h0, c0 = torch.from_numpy(inp.h0), torch.from_numpy(inp.c0)

        def step():
            with torch.inference_mode():
                return module(x, (h0, c0))

        def values():
            h, c = step()
            return {"h": h.numpy(), "c": c.numpy()}
        return step, values

    if case.mode == "inference":
        def run():
            with torch.inference_mode():
                return module(x)

        def values():
            out, state = run()
            if case.cell == "lstm":
                return {"output": out.numpy(), "h_n": state[0].numpy(), "c_n": state[1].numpy()}
            return {"output": out.numpy(), "h_n": state.numpy()}
        return run, values

    xg = x.clone().requires_grad_(True)
    dy = torch.from_numpy(inp.dy)
    plist = [[params[n] for n in entry_names] for entry_names in names]

    def train():
        # Gradients are set to None, not accumulated: fastrnn returns fresh arrays every call too.
        xg.grad = None
        for p in module.parameters():
            p.grad = None
        out, _ = module(xg)
        out.backward(dy)
        return out

    def values():
        out = train()
        return {"output": out.detach().numpy(),
                **_grads_dict(xg.grad.numpy(), [tuple(p.grad.numpy() for p in entry) for entry in plist])}
    return train, values


def compare(actual: Dict[str, np.ndarray], expected: Dict[str, np.ndarray], case: Case, against: str) -> float:
    """Max abs difference over every quantity; raises VerificationError on a gross mismatch."""
    worst = 0.0
    for key, e in expected.items():
        if key not in actual:
            raise VerificationError(f"{case.name}: fastrnn returned no {key!r} to compare with {against}")
        a = np.asarray(actual[key], np.float64)
        e = np.asarray(e, np.float64)
        if a.shape != e.shape:
            raise VerificationError(f"{case.name}: {key} has shape {a.shape}, {against} gives {e.shape}")
        if not np.all(np.isfinite(a)):
            raise VerificationError(f"{case.name}: fastrnn's {key} has non-finite values")
        err = np.abs(a - e)
        diff = float(err.max()) if err.size else 0.0
        worst = max(worst, diff)
        if key.startswith("d"):
            bad = diff > GROSS_MISMATCH * max(1.0, float(np.abs(e).max()))
        else:
            bad = bool(np.any(err > GROSS_MISMATCH * (1.0 + np.abs(e))))
        if bad:
            raise VerificationError(f"{case.name}: fastrnn's {key} differs from {against}'s by up to {diff:.3g} "
                                    f"(gross-mismatch bound {GROSS_MISMATCH:g}, relative)")
    return worst


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

def _calibrate(fn: Callable[[], object], min_sample_s: float) -> int:
    """Calls per sample so that a sample lasts at least ``min_sample_s`` (fn is already warm)."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, int(math.ceil(min_sample_s / max(dt, 1e-7))))


WARMUP_S = 0.2


def time_interleaved(fns: Dict[str, Callable[[], object]], reps: int, min_sample_s: float,
                     warmup: int = 1) -> Dict[str, dict]:
    """Warm each up, then take ``reps`` samples of each, interleaved and rotating the order every
    round. Returns per name: median/min/max ms per call, the samples and calls per sample."""
    names = list(fns)
    for name in names:  # at least `warmup` calls and WARMUP_S: caches, page faults, clock ramp-up
        t0 = time.perf_counter()
        calls = 0
        while calls < warmup or time.perf_counter() - t0 < WARMUP_S:
            fns[name]()
            calls += 1
    calls = {name: _calibrate(fns[name], min_sample_s) for name in names}
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, n = fns[name], calls[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) * 1e3 / n)
    return {name: {"median_ms": float(np.median(s)), "min_ms": float(min(s)), "max_ms": float(max(s)),
                   "samples_ms": s, "calls_per_sample": calls[name]} for name, s in samples.items()}


def limit_numpy_blas(threads: int) -> bool:
    """Set the thread count of NumPy's OpenBLAS (what threadpoolctl does, without needing it).
    NumPy's BLAS threads spin for a while after each call and, once used, slowed both fastrnn and
    torch.nn in the same process by 30-90 % here; the benchmark keeps them at one thread whenever
    torch is there to give the GEMM peak. Returns False when no OpenBLAS of NumPy's was found."""
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for lib in sorted(glob.glob(os.path.join(libs_dir, "*openblas*"))):
        try:
            dll = ctypes.CDLL(lib)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(dll, symbol):
                getattr(dll, symbol)(int(threads))
                return True
    return False


def measure_peak(torch, reps: int, threads: int, n: int = GEMM_N) -> dict:
    """fp32 GEMM peak of this process at ``threads`` threads, timed like the cases: a large n^3
    sgemm with torch.mm when torch is here (NumPy's BLAS then stays at one thread, see
    limit_numpy_blas), else NumPy's matmul at ``threads`` (or its own default if that can't be set)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        tc = torch.empty((n, n))
        fns = {"torch.mm": lambda: torch.mm(ta, tb, out=tc)}
        numpy_threads = "1 (torch.mm gives the peak)"
    else:
        numpy_threads = str(threads) if limit_numpy_blas(threads) else "NumPy's BLAS default"
        fns = {"numpy.matmul": lambda: np.matmul(a, b, out=c)}
    timed = time_interleaved(fns, reps=max(3, reps), min_sample_s=0.0)
    gflops = {name: 2.0 * n ** 3 / (t["median_ms"] * 1e-3) / 1e9 for name, t in timed.items()}
    best = max(gflops, key=gflops.get)
    return {"n": n, "gflops": gflops, "peak_gflops": gflops[best], "peak_from": best, "numpy_threads": numpy_threads,
            "timings": {k: {kk: v for kk, v in t.items() if kk != "samples_ms"} for k, t in timed.items()}}


def _affinity() -> int:
    """CPUs this process may run on (NumPy's BLAS threads by default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------
# Header: what ran where
# ------------------------------------------------------------------------------------------------

def _cpu_model() -> Tuple[str, List[str]]:
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "avx2", "fma", "neon", "asimd") if f in flags]
    return model or platform.processor() or platform.machine() or "unknown", isa


def _git_commit() -> str:
    """HEAD of the checkout fastrnn was installed from, when that is the package's or the working
    directory's checkout (a repository holding python/fastrnn), else "unknown"."""
    for start in (os.path.dirname(os.path.abspath(fastrnn.__file__)), os.getcwd()):
        try:
            top = subprocess.run(["git", "-C", start, "rev-parse", "--show-toplevel"], capture_output=True,
                                 text=True, timeout=10)
            if top.returncode or not os.path.isdir(os.path.join(top.stdout.strip(), "python", "fastrnn")):
                continue
            head = subprocess.run(["git", "-C", start, "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", start, "diff", "--quiet", "HEAD"], timeout=10).returncode != 0
            return head + ("-dirty" if dirty else "") if head else "unknown"
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def make_header(threads: int, torch, torch_note: str) -> dict:
    model, isa = _cpu_model()
    return {
        "cpu": model, "isa": isa, "cpu_count": os.cpu_count(), "affinity": _affinity(), "threads": threads,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "fastrnn": fastrnn.__version__, "commit": _git_commit(), "numpy": np.__version__,
        # the instruction set the kernels were dispatched to at run time
        "fastrnn_cpu_isa": fastrnn._core.cpu_isa() if hasattr(fastrnn._core, "cpu_isa") else None,
        "torch": torch.__version__ if torch is not None else None, "torch_note": torch_note,
        "python": platform.python_version(), "platform": platform.platform(),
        # Thread and spin settings change the numbers: record the ones that were set.
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "FASTRNN_"))},
    }


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def _import_torch(no_torch: bool):
    if no_torch:
        return None, "not used (--no-torch)"
    try:
        import torch
    except ImportError:
        return None, "not installed"
    except Exception as e:  # a broken install (e.g. OSError from a missing shared library)
        return None, f"not usable ({type(e).__name__}: {e})"
    return torch, "torch.nn on CPU (oneDNN LSTM, ATen GRU/RNN)"


class _Progress:
    """A one-line progress bar on stderr (only on a terminal: logs stay clean)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.start = total, enabled and sys.stderr.isatty(), time.perf_counter()

    def update(self, done: int, what: str) -> None:
        if not self.enabled:
            return
        width = 24
        fill = int(width * done / max(self.total, 1))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{self.total} {elapsed:5.0f}s {what[:48]:<48}")
        sys.stderr.flush()

    def clear(self) -> None:
        """Blank the line (before anything else is printed to the terminal)."""
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def run_case(case: Case, torch, reps: int, min_sample_s: float, peak_gflops: float, seed: int = 0) -> dict:
    inp = make_inputs(case, seed)
    impls = {"fastrnn": fastrnn_impl(case, inp)}
    if torch is not None:
        impls["torch"] = torch_impl(torch, case, inp)
    with_reference = case_flops(case) <= REFERENCE_MAX_FLOPS
    if with_reference:
        impls["reference"] = reference_impl(case, inp)

    # Verify before timing: against torch.nn when here, else the reference (run once even when too
    # slow to time). Also catches a baseline that silently computes something else.
    mine = impls["fastrnn"][1]()
    if torch is not None:
        against, expected = "torch.nn", impls["torch"][1]()
    else:
        against, expected = "reference", (impls["reference"][1] if with_reference else reference_impl(case, inp)[1])()
    max_abs_diff = compare(mine, expected, case, against)

    # fastrnn and torch.nn interleaved; the reference after them, apart: NumPy's BLAS threads keep
    # spinning for a while after each of its calls and would steal a core from whatever runs next.
    timed = time_interleaved({name: fn for name, (fn, _) in impls.items() if name != "reference"}, reps,
                             min_sample_s)
    if with_reference:
        timed.update(time_interleaved({"reference": impls["reference"][0]}, reps, min_sample_s))
    fl = case_flops(case)
    steps = case.T
    for name, t in timed.items():
        s = t["median_ms"] * 1e-3
        t["gflops"] = fl / s / 1e9
        t["pct_peak"] = 100.0 * t["gflops"] / peak_gflops if peak_gflops else None
        t["us_per_step"] = t["median_ms"] * 1e3 / steps
    speedup = timed["torch"]["median_ms"] / timed["fastrnn"]["median_ms"] if "torch" in timed else None
    ref_speedup = timed["reference"]["median_ms"] / timed["fastrnn"]["median_ms"] if "reference" in timed else None
    return {**asdict(case), "name": case.name, "flops": fl, "impls": timed, "speedup_vs_torch": speedup,
            "speedup_vs_reference": ref_speedup, "verified_against": against, "max_abs_diff": max_abs_diff,
            "decode_api": ("PreparedCell" if hasattr(fastrnn, "PreparedCell") else "lstm_forward(T=1)")
            if case.mode == "decode" else None}


def geomean(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v]
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else None


def summarize(results: List[dict]) -> dict:
    per_mode = {}
    for mode in MODES:
        s = [r["speedup_vs_torch"] for r in results if r["mode"] == mode and r["speedup_vs_torch"]]
        if s:
            per_mode[mode] = {"geomean": geomean(s), "cases": len(s)}
    allv = [r["speedup_vs_torch"] for r in results if r["speedup_vs_torch"]]
    return {"geomean_speedup_vs_torch": per_mode, "overall": geomean(allv), "cases": len(allv)}


def run(cells: Sequence[str] = DEFAULT_CELLS, modes: Sequence[str] = MODES, sizes=None, threads: Optional[int] = None,
        reps: int = 7, quick: bool = False, no_torch: bool = False, progress: bool = True,
        min_sample_s: Optional[float] = None, gemm_n: int = GEMM_N,
        emit: Optional[Callable[[str], None]] = None) -> dict:
    """Runs the benchmark and returns the JSON-able result: header, peak, cases, summary. With
    ``emit``, the markdown is handed to it piece by piece as it is measured (header and table head,
    then each row), so a long run shows its results as it goes; the summary is left to the caller."""
    torch, torch_note = _import_torch(no_torch)
    threads = threads or fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
        limit_numpy_blas(1)  # before NumPy's BLAS first runs (the reference, the checks)
    if min_sample_s is None:
        min_sample_s = 0.02 if quick else 0.05
    header = make_header(threads, torch, torch_note)
    cases = build_cases(cells, modes, sizes, quick)
    bar = _Progress(len(cases) + 1, progress)
    bar.update(0, "fp32 GEMM peak")
    peak = measure_peak(torch, reps=3 if quick else 5, threads=threads, n=gemm_n)
    header["gemm_peak_gflops"] = peak["peak_gflops"]
    header["gemm_peak_from"] = peak["peak_from"]
    result = {"header": header, "peak": peak, "reps": reps, "min_sample_s": min_sample_s, "cases": []}
    if emit:
        bar.clear()
        emit(format_header(result) + "\n\n" + TABLE_HEAD)
    try:
        for k, case in enumerate(cases):
            bar.update(k + 1, case.name)
            result["cases"].append(run_case(case, torch, reps, min_sample_s, peak["peak_gflops"]))
            if emit:
                bar.clear()
                emit(format_row(result["cases"][-1]))
    finally:
        bar.clear()
    result["summary"] = summarize(result["cases"])
    return result


# ------------------------------------------------------------------------------------------------
# --variants: issue 14's cell variants against fastrnn's base cell and a plain-PyTorch loop
# ------------------------------------------------------------------------------------------------
VARIANT_SIZES = ((256, 8, 50), (256, 64, 50))  # (H, B, T), I = H: B <= 16 and B = 64
TINY_VARIANT_SIZES = ((8, 2, 3),)  # the harness's own test
VARIANT_CASES = (  # (name, module, options)
    ("lstm peephole", "LSTM", dict(peephole=True)),
    ("lstm coupled", "LSTM", dict(coupled=True)),
    ("lstm cell_clip", "LSTM", dict(cell_clip=1.0)),
    ("lstm peephole+coupled+clip", "LSTM", dict(peephole=True, coupled=True, cell_clip=1.0)),
    ("gru reset_after=False", "GRU", dict(reset_after=False)),
    ("lstm layer_norm", "LSTM", dict(layer_norm=True)),
    ("gru layer_norm", "GRU", dict(layer_norm=True)),
)


def _torch_loop(torch, m, x):
    """What a user writes without fastrnn: the variant's step as a Python loop of torch ops over T,
    reading m's parameters (x [T, B, I] -> y [T, B, H]); the input projection hoisted."""
    F = torch.nn.functional
    w_ih, w_hh, b_ih, b_hh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
    H = m.hidden_size
    ln = getattr(m, "layer_norm", False)  # LN(v)*γ over the G*H row, then the bias

    def norm(v, gain, bias):
        return F.layer_norm(v, (v.size(-1),), gain, None, 1e-5) + bias

    xw = norm(F.linear(x, w_ih), m.ln_weight_ih_l0, b_ih) if ln else F.linear(x, w_ih, b_ih)
    h = x.new_zeros(x.size(1), H)
    c = x.new_zeros(x.size(1), H)
    p = getattr(m, "weight_ch_l0", None)
    ys = []
    for t in range(x.size(0)):
        if ln:
            gh = norm(F.linear(h, w_hh), m.ln_weight_hh_l0, b_hh)
            if m.mode == "GRU":  # the reset gate multiplies the normalised, gained n part plus b_hn
                r_i, z_i, n_i = xw[t].chunk(3, 1)
                r_h, z_h, n_h = gh.chunk(3, 1)
                r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
                h = (1 - z) * torch.tanh(n_i + r * n_h) + z * h
            else:
                a_i, a_f, a_g, a_o = (xw[t] + gh).chunk(4, 1)
                c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
                h = torch.sigmoid(a_o) * torch.tanh(norm(c, m.ln_weight_c_l0, m.ln_bias_c_l0))
        elif m.mode == "GRU":  # reset before the hidden product
            r_i, z_i, n_i = xw[t].chunk(3, 1)
            r_h, z_h = F.linear(h, w_hh[:2 * H], b_hh[:2 * H]).chunk(2, 1)
            r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
            h = (1 - z) * torch.tanh(n_i + F.linear(r * h, w_hh[2 * H:], b_hh[2 * H:])) + z * h
        else:
            a = xw[t] + F.linear(h, w_hh, b_hh)
            if m.coupled:
                a_f, a_g, a_o = a.chunk(3, 1)
                f = torch.sigmoid(a_f + p[0] * c if p is not None else a_f)
                i = 1 - f
            else:
                a_i, a_f, a_g, a_o = a.chunk(4, 1)
                i = torch.sigmoid(a_i + p[0] * c if p is not None else a_i)
                f = torch.sigmoid(a_f + p[1] * c if p is not None else a_f)
            c = f * c + i * torch.tanh(a_g)
            if m.cell_clip is not None:
                c = c.clamp(-m.cell_clip, m.cell_clip)
            h = torch.sigmoid(a_o + p[-1] * c if p is not None else a_o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys)


def run_variants(sizes=VARIANT_SIZES, threads: Optional[int] = None, reps: int = 5, min_sample_s: float = 0.05,
                 emit: Optional[Callable[[str], None]] = None) -> dict:
    """Times each variant (fastrnn.nn, float32, one layer) against fastrnn's base cell of the same
    size and against ``_torch_loop``, interleaved in one process, in inference and training
    (forward + backward of y.sum()). Returns the JSON-able result with per-case ratios."""
    torch, torch_note = _import_torch(False)
    if torch is None:
        raise RuntimeError(f"--variants needs torch ({torch_note})")
    import fastrnn.nn as fnn
    threads = threads or fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    result = {"header": make_header(threads, torch, torch_note), "reps": reps, "min_sample_s": min_sample_s,
              "variant_cases": []}
    if emit:
        emit(format_header(result) + "\n\n" + VARIANT_TABLE_HEAD)
    for (H, B, T) in sizes:
        for name, module, opts in VARIANT_CASES:
            torch.manual_seed(0)
            variant = getattr(fnn, module)(H, H, **opts)
            base = getattr(fnn, module)(H, H)
            x = torch.randn(T, B, H)
            with torch.no_grad():
                err = float((variant(x)[0] - _torch_loop(torch, variant, x)).abs().max())
            if not err < GROSS_MISMATCH:
                raise VerificationError(f"{name} H={H} B={B} T={T}: |fastrnn - torch loop| = {err:.3g}")
            for mode in ("inference", "training"):
                def call(fn, train=mode == "training"):
                    if not train:
                        def go():
                            with torch.no_grad():
                                fn()
                        return go

                    def go_train():
                        out = fn()
                        (out[0] if isinstance(out, tuple) else out).sum().backward()
                    return go_train
                fns = {"variant": call(lambda: variant(x)), "base": call(lambda: base(x)),
                       "torch_loop": call(lambda: _torch_loop(torch, variant, x))}
                t = time_interleaved(fns, reps, min_sample_s)
                row = {"name": name, "mode": mode, "H": H, "B": B, "T": T, "times": t,
                       "variant_over_base": t["variant"]["median_ms"] / t["base"]["median_ms"],
                       "loop_over_variant": t["torch_loop"]["median_ms"] / t["variant"]["median_ms"]}
                result["variant_cases"].append(row)
                if emit:
                    emit(format_variant_row(row))
    return result


VARIANT_TABLE_HEAD = ("| variant | mode | H | B | T | variant ms | base cell ms | torch loop ms | variant / base "
                      "| loop / variant |\n|---|---|---|---|---|---|---|---|---|---|")


def format_variant_row(r: dict) -> str:
    t = r["times"]
    return (f"| {r['name']} | {r['mode']} | {r['H']} | {r['B']} | {r['T']} | {_ms(t['variant'])} | {_ms(t['base'])} "
            f"| {_ms(t['torch_loop'])} | {r['variant_over_base']:.2f}x | {r['loop_over_variant']:.1f}x |")


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

def _num(v: float) -> str:
    """3 significant digits, never an exponent: 0.0123, 1.23, 123, 12345."""
    return f"{v:.0f}" if v >= 1000 else f"{v:.3g}"


def _ms(t: Optional[dict]) -> str:
    if not t:
        return "–"
    return f"{_num(t['median_ms'])} ({_num(t['min_ms'])}–{_num(t['max_ms'])})"


def format_header(result: dict) -> str:
    h = result["header"]
    lines = [
        f"# fastrnn benchmark — {h['date_utc']}",
        "",
        f"- CPU: {h['cpu']} ({', '.join(h['isa']) or 'ISA unknown'}); {h['cpu_count']} logical CPUs, "
        f"{h['affinity']} in this process's affinity; {h['threads']} thread{'s' if h['threads'] != 1 else ''} "
        "for fastrnn and torch",
        f"- fastrnn {h['fastrnn']} (commit {h['commit']}; kernels: {h['fastrnn_cpu_isa'] or '?'}), numpy {h['numpy']}, "
        f"torch {h['torch'] or '–'} ({h['torch_note']}), Python {h['python']}",
    ]
    if "peak" in result:  # the --variants suite measures no peak
        p = result["peak"]
        peaks = ", ".join(f"{k} {v:.1f}" for k, v in p["gflops"].items())
        lines.append(f"- fp32 GEMM peak: {p['peak_gflops']:.1f} GFLOP/s ({p['peak_from']}, {p['n']}^3; {peaks}; "
                     f"NumPy's threads: {p['numpy_threads']})")
    lines.append(f"- median of {result['reps']} interleaved samples (min–max), each sample >= "
                 f"{result['min_sample_s'] * 1e3:.0f} ms")
    return "\n".join(lines)


TABLE_HEAD = ("| case | mode | fastrnn ms (min–max) | GFLOP/s | % peak | µs/step | torch.nn ms (min–max) | "
              "torch % peak | speed-up vs torch | reference ms | max abs diff |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    f, t, ref = r["impls"]["fastrnn"], r["impls"].get("torch"), r["impls"].get("reference")
    shape = r["name"].rsplit(" ", 1)[0]

    def pct(x):
        return f"{x['pct_peak']:.0f}%" if x and x.get("pct_peak") is not None else "–"
    return " | ".join([
        f"| {shape}", r["mode"], _ms(f), _num(f["gflops"]), pct(f), _num(f["us_per_step"]), _ms(t), pct(t),
        f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "–",
        _num(ref["median_ms"]) if ref else "–",
        f"{r['max_abs_diff']:.1e} ({'torch' if r['verified_against'] == 'torch.nn' else 'ref'})",
    ]) + " |"


def format_table(result: dict) -> str:
    return "\n".join([TABLE_HEAD] + [format_row(r) for r in result["cases"]])


def format_summary(result: dict) -> str:
    s = result["summary"]
    if not s["geomean_speedup_vs_torch"]:
        return "Geometric-mean speed-up over torch.nn: no torch.nn baseline in this run " \
               f"(torch {result['header']['torch_note']})."
    parts = [f"{mode} {v['geomean']:.2f}x ({v['cases']} cases)" for mode, v in s["geomean_speedup_vs_torch"].items()]
    return f"Geometric-mean speed-up over torch.nn: {', '.join(parts)}; overall {s['overall']:.2f}x ({s['cases']} cases)."


def format_markdown(result: dict) -> str:
    return f"{format_header(result)}\n\n{format_table(result)}\n\n{format_summary(result)}\n"


def write_plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["cases"] if r["speedup_vs_torch"]]
    if not rows:
        print(f"--plot: no torch.nn baseline in this run, nothing to plot; {path} not written", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    colors = {"inference": "tab:blue", "training": "tab:orange", "decode": "tab:green"}
    speedups = [r["speedup_vs_torch"] for r in rows]
    # Bars from 1x on a log axis: 2x faster and 2x slower are equally long, on opposite sides.
    ax.barh(range(len(rows)), [s - 1.0 for s in speedups], left=1.0, color=[colors[r["mode"]] for r in rows])
    for y, s in enumerate(speedups):
        ax.text(s, y, f" {s:.2f}x ", va="center", ha="left" if s >= 1 else "right", fontsize=6)
    ax.set_xscale("log")
    lo, hi = min(speedups + [1.0]), max(speedups + [1.0])
    ax.set_xlim(lo / 1.6, hi * 1.6)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speed-up over torch.nn (median time ratio, log scale; > 1: fastrnn faster)")
    ax.set_title(f"fastrnn vs torch.nn — {result['header']['cpu']}, {result['header']['threads']} threads", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def results_basename(result: dict) -> str:
    """<date>-<machine> for bench/results/: the date, a slug of the CPU model, the instruction set the
    kernels ran with (virtual machines often show one model name for different CPUs) and the core
    count."""
    h = result["header"]
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|cpu|@.*", "", h["cpu"].lower())).strip("-")
    isa = h.get("fastrnn_cpu_isa")
    return f"{h['date_utc'][:10]}-{slug or 'cpu'}{'-' + isa if isa else ''}-{h['affinity']}c"


# ------------------------------------------------------------------------------------------------
# The decode suite (--suite decode): the multi-layer step of generation
# ------------------------------------------------------------------------------------------------

DECODE_SUITE_CELLS = ("lstm", "gru")
DECODE_SUITE_H = (256, 512, 1024)
DECODE_SUITE_B = (1, 5, 32)
DECODE_SUITE_LAYERS = 2


def decode_suite_impls(torch, cell: str, H: int, B: int, layers: int = DECODE_SUITE_LAYERS, seed: int = 0):
    """One step of a ``layers``-layer unidirectional stack (I = H), as zero-argument callables on the
    same weights, input and state: fastrnn.nn's ``stepper()`` (and with float16-stored weights), the
    fastrnn.nn module called with T = 1, torch.nn's cells stepped layer by layer (LSTMCell /
    GRUCell), and torch.nn.LSTM/GRU called with T = 1; all in torch.inference_mode(). Returns
    (callables, the stepper's and torch.nn's new states as NumPy arrays for verification)."""
    import fastrnn.nn as fnn
    torch.manual_seed(seed)
    tnn = torch.nn
    module = (tnn.LSTM if cell == "lstm" else tnn.GRU)(H, H, layers)
    fast = (fnn.LSTM if cell == "lstm" else fnn.GRU)(H, H, layers)
    fast.load_state_dict(module.state_dict())
    cells = [(tnn.LSTMCell if cell == "lstm" else tnn.GRUCell)(H, H) for _ in range(layers)]
    with torch.no_grad():
        for layer, c in enumerate(cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(c, name).copy_(getattr(module, f"{name}_l{layer}"))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, H, generator=g)
    h0 = torch.rand(layers, B, H, generator=g) - 0.5
    state = (h0, torch.rand(layers, B, H, generator=g) - 0.5) if cell == "lstm" else h0
    stepper, stepper16 = fast.stepper(), fast.stepper(weight_dtype="float16")

    def torch_cells():
        inp, out = x, []
        for layer, c in enumerate(cells):
            s = c(inp, (state[0][layer], state[1][layer])) if cell == "lstm" else c(inp, state[layer])
            inp = s[0] if cell == "lstm" else s
            out.append(s)
        return out

    def inference(fn):
        def run():
            with torch.inference_mode():
                return fn()
        return run

    fns = {
        "stepper": inference(lambda: stepper(x, state)),
        "stepper_f16": inference(lambda: stepper16(x, state)),
        "fastrnn_module": inference(lambda: fast(x[None], state)),
        "torch_cells": inference(torch_cells),
        "torch_module": inference(lambda: module(x[None], state)),
    }
    mine, theirs = fns["stepper"]()[1], fns["torch_module"]()[1]
    flat = (lambda s: {"h_n": s[0].numpy(), "c_n": s[1].numpy()}) if cell == "lstm" else (lambda s: {"h_n": s.numpy()})
    return fns, flat(mine), flat(theirs)


def run_decode_suite(torch, threads: Optional[int] = None, reps: int = 5, min_sample_s: float = 0.02,
                     cells: Optional[Sequence[str]] = None, hs: Optional[Sequence[int]] = None,
                     bs: Optional[Sequence[int]] = None, progress: bool = True, gemm_n: int = GEMM_N,
                     emit: Optional[Callable[[str], None]] = None) -> dict:
    """The decode suite: per cell x H x B, µs per step of each decode_suite_impls implementation,
    timed interleaved, after checking the stepper's new state against torch.nn.LSTM/GRU's. cells,
    hs, bs: default DECODE_SUITE_CELLS, DECODE_SUITE_H, DECODE_SUITE_B."""
    cells, hs, bs = cells or DECODE_SUITE_CELLS, hs or DECODE_SUITE_H, bs or DECODE_SUITE_B
    threads = threads or fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    limit_numpy_blas(1)
    header = make_header(threads, torch, "torch.nn on CPU (oneDNN LSTM, ATen GRU; cells: ATen)")
    header["suite"] = f"decode: {DECODE_SUITE_LAYERS}-layer unidirectional, I = H, float32, one step per call"
    peak = measure_peak(torch, reps=3, threads=threads, n=gemm_n)
    header["gemm_peak_gflops"], header["gemm_peak_from"] = peak["peak_gflops"], peak["peak_from"]
    result = {"header": header, "peak": peak, "reps": reps, "min_sample_s": min_sample_s, "cases": []}
    if emit:
        emit(format_header(result) + "\n\n" + DECODE_TABLE_HEAD)
    grid = [(c, H, B) for c in cells for H in hs for B in bs]
    bar = _Progress(len(grid), progress)
    try:
        for k, (cell, H, B) in enumerate(grid):
            bar.update(k, f"{cell} H={H} B={B}")
            case = Case(cell, H, B, 1, H, "decode", layers=DECODE_SUITE_LAYERS)
            fns, mine, theirs = decode_suite_impls(torch, cell, H, B)
            diff = compare(mine, theirs, case, "torch.nn")
            timed = time_interleaved(fns, reps, min_sample_s)
            us = {name: t["median_ms"] * 1e3 for name, t in timed.items()}
            row = {"cell": cell, "H": H, "B": B, "layers": DECODE_SUITE_LAYERS, "us_per_step": us,
                   "us_min_max": {name: (t["min_ms"] * 1e3, t["max_ms"] * 1e3) for name, t in timed.items()},
                   "tokens_per_s": {name: B * 1e6 / v for name, v in us.items()},
                   "speedup_vs_torch_cells": us["torch_cells"] / us["stepper"],
                   "speedup_vs_torch_module": us["torch_module"] / us["stepper"],
                   "max_abs_diff": diff, "timings": timed}
            result["cases"].append(row)
            if emit:
                bar.clear()
                emit(format_decode_row(row))
    finally:
        bar.clear()
    small = [r for r in result["cases"] if r["B"] <= 5]
    result["summary"] = {
        "geomean_vs_torch_cells_B_le_5": geomean([r["speedup_vs_torch_cells"] for r in small]),
        "geomean_vs_torch_module_B_le_5": geomean([r["speedup_vs_torch_module"] for r in small]),
        "geomean_vs_torch_cells": geomean([r["speedup_vs_torch_cells"] for r in result["cases"]]),
        "geomean_vs_torch_module": geomean([r["speedup_vs_torch_module"] for r in result["cases"]]),
    }
    return result


DECODE_TABLE_HEAD = ("| cell | H | B | stepper µs (min–max) | stepper float16-weights µs | fastrnn.nn T=1 µs | "
                     "torch.nn cells µs | torch.nn T=1 µs | vs cells | vs T=1 | stepper tokens/s | max abs diff |\n"
                     "|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_decode_row(r: dict) -> str:
    us, mm = r["us_per_step"], r["us_min_max"]
    return " | ".join([
        f"| {r['cell']}", str(r["H"]), str(r["B"]),
        f"{_num(us['stepper'])} ({_num(mm['stepper'][0])}–{_num(mm['stepper'][1])})", _num(us["stepper_f16"]),
        _num(us["fastrnn_module"]), _num(us["torch_cells"]), _num(us["torch_module"]),
        f"{r['speedup_vs_torch_cells']:.2f}x", f"{r['speedup_vs_torch_module']:.2f}x",
        f"{r['tokens_per_s']['stepper']:.0f}", f"{r['max_abs_diff']:.1e}"]) + " |"


def format_decode_markdown(result: dict) -> str:
    s = result["summary"]
    rows = "\n".join(format_decode_row(r) for r in result["cases"])
    return (f"{format_header(result)}\n- suite: {result['header']['suite']}; µs per step of the whole stack "
            f"(medians); tokens/s = B / (stepper's µs per step), the recurrent step alone\n\n"
            f"{DECODE_TABLE_HEAD}\n{rows}\n\n"
            f"Geometric-mean speed-up of the stepper at B <= 5: {s['geomean_vs_torch_cells_B_le_5']:.2f}x over "
            f"torch.nn's cells, {s['geomean_vs_torch_module_B_le_5']:.2f}x over torch.nn with T = 1 (all B: "
            f"{s['geomean_vs_torch_cells']:.2f}x, {s['geomean_vs_torch_module']:.2f}x).\n")


def decode_suite_main(args) -> int:
    """``--suite decode``: run_decode_suite, printed as it goes, saved as <date>-<machine>-decode.{json,md}."""
    torch, note = _import_torch(args.no_torch)
    if torch is None:
        print(f"fastrnn.bench: --suite decode compares with torch.nn, which is {note}", file=sys.stderr)
        return 2
    reps = args.reps or (3 if args.quick else 5)
    try:
        result = run_decode_suite(torch, threads=args.threads, reps=reps, progress=not args.no_progress,
                                  hs=DECODE_SUITE_H[:1] if args.quick else DECODE_SUITE_H,
                                  min_sample_s=0.02 if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                                  gemm_n=args.gemm_size, emit=lambda text: print(text, flush=True))
    except VerificationError as e:
        print(f"fastrnn.bench: VERIFICATION FAILED: {e}", file=sys.stderr)
        return 1
    text = format_decode_markdown(result)
    print("\n" + text.rsplit("\n\n", 1)[-1], end="")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        base = os.path.join(args.save, results_basename(result) + "-decode")
        with open(base + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(text)
        print(f"saved {base}.json and {base}.md", file=sys.stderr)
    return 0


def _csv(name: str, allowed: Sequence[str]):
    def parse(text: str) -> List[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{name}: expected a comma-separated subset of {', '.join(allowed)}, "
                                             f"got {text!r}")
        return items
    return parse


def _sizes_arg(text: str):
    try:
        return parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=_csv("--cells", BENCH_CELLS), default=list(DEFAULT_CELLS),
                        help=f"comma-separated cells (default {','.join(DEFAULT_CELLS)})")
    parser.add_argument("--sizes", type=_sizes_arg, default=None,
                        help="comma-separated HxBxT[xI] (I = H unless given), or default/quick/tiny; "
                             "default: the suite of issue 3")
    parser.add_argument("--modes", type=_csv("--modes", MODES), default=list(MODES),
                        help="comma-separated of inference,training,decode (default all)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="threads for fastrnn and torch alike (default fastrnn.get_num_threads())")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the GPU suite against cuDNN (fastrnn/bench_cuda.py)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="--device cuda: start no new case after this many seconds")
    parser.add_argument("--reps", type=_positive, default=None, help="timed samples per case (default 7, --quick 3)")
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: the three smaller sizes, no 1536 or bidirectional case, 3 samples")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with torch.nn even if installed")
    parser.add_argument("--json", metavar="PATH", help="write the full result (header, peak, every sample) as JSON")
    parser.add_argument("--save", metavar="DIR",
                        help="write DIR/<date>-<machine>.json and .md (e.g. --save bench/results)")
    parser.add_argument("--plot", metavar="PATH", help="PNG bar chart of the speed-ups (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--gemm-size", type=_positive, default=GEMM_N,
                        help=f"n of the n^3 sgemm that measures the peak (default {GEMM_N})")
    parser.add_argument("--variants", action="store_true",
                        help="the cell variants' suite (issue 14): each variant vs fastrnn's base cell and a "
                             "plain-PyTorch loop; --sizes HxBxT sets its sizes, --save writes <name>-variants.*")
    parser.add_argument("--min-sample-ms", type=float, default=None,
                        help="shortest timed sample; short calls are repeated to fill it (default 50, --quick 20)")
    parser.add_argument("--suite", choices=("default", "decode"), default="default",
                        help="decode: the multi-layer generation step (2-layer LSTM/GRU, H 256/512/1024, "
                             "B 1/5/32: stepper vs torch.nn's cells and T = 1 calls); --cells/--sizes/--modes "
                             "do not apply")
    parser.add_argument("--modifiers", action="store_true",
                        help="the training modifiers' suite (zoneout, recurrent/weight dropout, grad_clip, dilation "
                             "on LSTM and GRU vs the plain cell and a plain-PyTorch loop; fastrnn/bench_modifiers.py)")
    args = parser.parse_args(argv)
    if args.modifiers:
        from .modifiers import main_variants
        return main_variants(args)
    if args.suite == "decode":
        if args.device == "cuda":
            parser.error("--suite decode runs on the CPU (the stepper has no CUDA step kernel yet)")
        return decode_suite_main(args)

    if args.device == "cuda":  # the GPU suite: fastrnn.bench_cuda (needs torch with CUDA and a GPU)
        from . import cuda as bench_cuda
        return bench_cuda.main(args, parser)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib, which is not installed (pip install matplotlib, "
                         "or pip install 'fastrnn[bench]')")
    reps = args.reps or (3 if args.quick else 7)
    if args.variants:
        sizes = VARIANT_SIZES if args.sizes is None else [(h, b, t) for h, b, t, _ in args.sizes]
        try:
            result = run_variants(sizes, threads=args.threads, reps=args.reps or 5,
                                  min_sample_s=0.05 if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                                  emit=lambda text: print(text, flush=True))
        except VerificationError as e:
            print(f"fastrnn.bench: VERIFICATION FAILED: {e}", file=sys.stderr)
            return 1
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            base = os.path.join(args.save, results_basename(result) + "-variants")
            with open(base + ".json", "w") as f:
                json.dump(result, f, indent=1)
            with open(base + ".md", "w") as f:
                f.write(format_header(result) + "\n\n" + VARIANT_TABLE_HEAD + "\n"
                        + "\n".join(format_variant_row(r) for r in result["variant_cases"]) + "\n")
            print(f"saved {base}.json and {base}.md", file=sys.stderr)
        return 0
    try:
        result = run(cells=args.cells, modes=args.modes, sizes=args.sizes, threads=args.threads, reps=reps,
                     quick=args.quick, no_torch=args.no_torch, progress=not args.no_progress,
                     min_sample_s=None if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                     gemm_n=args.gemm_size, emit=lambda text: print(text, flush=True))
    except VerificationError as e:
        print(f"fastrnn.bench: VERIFICATION FAILED: {e}", file=sys.stderr)
        return 1

    text = format_markdown(result)  # what was printed above, plus the summary
    print(f"\n{format_summary(result)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        base = os.path.join(args.save, results_basename(result))
        with open(base + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(text)
        print(f"saved {base}.json and {base}.md", file=sys.stderr)
    if args.plot:
        write_plot(result, args.plot)
    return 0

