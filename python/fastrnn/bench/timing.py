"""How the benchmark times: calibrated blocks of calls, timed interleaved across implementations,
the BLAS thread limit for NumPy, and the machine's fp32 GEMM peak measured in the same run."""
from __future__ import annotations

import ctypes
import glob
import math
import os
import time
from typing import Callable, Dict, List

import numpy as np


def _calibrate(fn: Callable[[], object], min_sample_s: float,
               clock: Callable[[], float] = time.perf_counter) -> int:
    """Calls per sample so that a sample lasts at least ``min_sample_s`` (fn is already warm)."""
    t0 = clock()
    fn()
    dt = clock() - t0
    return max(1, int(math.ceil(min_sample_s / max(dt, 1e-7))))


WARMUP_S = 0.2


def time_interleaved(fns: Dict[str, Callable[[], object]], reps: int, min_sample_s: float,
                     warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> Dict[str, dict]:
    """Warm each up, then take ``reps`` samples of each, interleaved and rotating the order every
    round. Returns per name: median/min/max ms per call, the samples and calls per sample.
    ``clock`` times the samples: wall time by default; time.thread_time counts this thread's CPU
    time only, time.process_time the process's (keeps a single-threaded comparison readable on a
    machine shared with other loads)."""
    names = list(fns)
    for name in names:  # at least `warmup` calls and WARMUP_S: caches, page faults, clock ramp-up
        t0 = time.perf_counter()
        calls = 0
        while calls < warmup or time.perf_counter() - t0 < WARMUP_S:
            fns[name]()
            calls += 1
    calls = {name: _calibrate(fns[name], min_sample_s, clock) for name in names}
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, n = fns[name], calls[name]
            t0 = clock()
            for _ in range(n):
                fn()
            samples[name].append((clock() - t0) * 1e3 / n)
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


GEMM_N = 2048


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
