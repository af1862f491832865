"""The CPU suite (``python -m fastrnn.bench`` without --suite/--variants/--modifiers): one case
verified then timed against torch.nn and the reference, the run over all cases with its progress
line, and the summary (geometric means)."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from typing import Callable, List, Optional, Sequence

import fastrnn

from .cases import build_cases, Case, case_flops, DEFAULT_CELLS, make_inputs, MODES
from .impls import compare, fastrnn_impl, reference_impl, torch_impl
from .machine import _import_torch, make_header
from .report import format_header, format_row, TABLE_HEAD
from .timing import GEMM_N, limit_numpy_blas, measure_peak, time_interleaved


# The reference is a float64 Python loop: only run it where it takes well under a second per call.
REFERENCE_MAX_FLOPS = 4e8


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
            "decode_api": "PreparedCell" if case.mode == "decode" else None}


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
