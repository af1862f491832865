"""``python -m fastrnn.bench --dtype bfloat16|float16``: the 16-bit kernels against fastrnn's own
float32 and torch.nn under the same CPU autocast, in ONE process, interleaved.

Per case four implementations run on the same numbers (inputs and weights rounded to the 16-bit
type first, so that every implementation sees identical values):
  fastrnn 16-bit   the NumPy API on 16-bit arrays (the 16-bit kernels)
  fastrnn float32  the NumPy API on float32 arrays of the same values
  torch autocast   torch.nn (float32 parameters) under ``torch.autocast("cpu", dtype)``; torch's CPU
                   autocast runs nn.LSTM's oneDNN layer in the 16-bit type and nn.GRU / nn.RNN in
                   float32 (they are not on its lower-precision list), which the table says per row
  torch float32    torch.nn without autocast
(torch.nn.LSTM under float16 autocast fails on CPUs whose oneDNN has no float16 LSTM, Zen 4 among
them: that column then says "unavailable" with torch's message.)
The table gives each one's median time and the ratios: 16-bit over fastrnn float32, over torch
autocast, and over torch float32 (the last is a 16-bit run against a float32 one, labelled so).
Verification before timing: fastrnn 16-bit against torch float32, with a gross-mismatch bound
scaled for the 16-bit rounding (GROSS_MISMATCH_16).
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import fastrnn

from . import cases as _cases, impls as _impls, machine as _machine, report as _report, timing as _timing


class B:  # the float32 benchmark's pieces this suite reuses, under one name
    Inputs, make_inputs, build_cases, case_flops = _cases.Inputs, _cases.make_inputs, _cases.build_cases, \
        _cases.case_flops
    VerificationError, _api_impl, torch_impl = _impls.VerificationError, _impls._api_impl, _impls.torch_impl
    time_interleaved, limit_numpy_blas = _timing.time_interleaved, _timing.limit_numpy_blas
    make_header, _import_torch = _machine.make_header, _machine._import_torch
    format_header, _ms = _report.format_header, _report._ms

# 16-bit storage rounds every stored activation to 2^-8 (bfloat16) relative: the guard against
# timing a wrong kernel is ~10x what the tests measure (tests/tolerances.py, STORAGE16).
GROSS_MISMATCH_16 = 2e-1
TORCH_AUTOCAST_LOW = {"lstm"}  # torch's CPU autocast list holds the LSTM layer (mkldnn_rnn_layer) only


def _np_dtype(name: str):
    if name == "float16":
        return np.dtype(np.float16)
    from fastrnn.functional import BFLOAT16
    if BFLOAT16 is None:
        raise SystemExit("--dtype bfloat16 needs ml_dtypes (pip install ml_dtypes)")
    return BFLOAT16


def _rounded(inp: "B.Inputs", dtype) -> "B.Inputs":
    """inp with every array rounded to dtype and back to float32."""
    r = (lambda a: None if a is None else a.astype(dtype).astype(np.float32))
    return B.Inputs(r(inp.x), [tuple(r(a) for a in e) for e in inp.weights], r(inp.dy), r(inp.h0), r(inp.c0))


def _as(inp: "B.Inputs", dtype) -> "B.Inputs":
    c = (lambda a: None if a is None else a.astype(dtype))
    return B.Inputs(c(inp.x), [tuple(c(a) for a in e) for e in inp.weights], c(inp.dy), c(inp.h0), c(inp.c0))


def _under_autocast(torch, dtype, fns):
    run, values = fns

    def run16():
        with torch.autocast("cpu", dtype=dtype):
            return run()

    def values16():
        with torch.autocast("cpu", dtype=dtype):
            return values()
    return run16, values16


def _check(actual: Dict[str, np.ndarray], expected: Dict[str, np.ndarray], case) -> float:
    worst = 0.0
    for key, e in expected.items():
        a = np.asarray(actual[key], np.float64)
        e = np.asarray(e, np.float64)
        if a.shape != e.shape or not np.all(np.isfinite(a)):
            raise B.VerificationError(f"{case.name}: fastrnn's 16-bit {key} has shape {a.shape} (expected "
                                      f"{e.shape}) or non-finite values")
        rel = float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))
        worst = max(worst, rel)
        if rel > GROSS_MISMATCH_16:
            raise B.VerificationError(f"{case.name}: fastrnn's 16-bit {key} is {rel:.3g} (relative) from torch.nn "
                                      f"float32's (gross-mismatch bound {GROSS_MISMATCH_16:g})")
    return worst


def run_case16(case, torch, dtype_name: str, reps: int, min_sample_s: float, seed: int = 0,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    np_dtype = _np_dtype(dtype_name)
    torch_dtype = getattr(torch, dtype_name) if torch is not None else None
    inp = _rounded(B.make_inputs(case, seed), np_dtype)
    impls = {"fastrnn16": B._api_impl(fastrnn, case, _as(inp, np_dtype)), "fastrnn32": B._api_impl(fastrnn, case, inp)}
    if torch is not None:
        impls["torch_autocast"] = _under_autocast(torch, torch_dtype, B.torch_impl(torch, case, inp))
        impls["torch32"] = B.torch_impl(torch, case, inp)
    autocast_runs = dtype_name if case.cell in TORCH_AUTOCAST_LOW else "float32"
    if "torch_autocast" in impls:
        try:
            impls["torch_autocast"][0]()  # (its values() would call .numpy() on 16-bit tensors)
        except RuntimeError as e:  # oneDNN has no float16 LSTM on CPUs without AVX512-FP16 (Zen 4)
            del impls["torch_autocast"]
            autocast_runs = f"unavailable: {str(e).splitlines()[0][:80]}"
    expected = (impls["torch32"] if torch is not None else impls["fastrnn32"])[1]()
    rel = _check(impls["fastrnn16"][1](), expected, case)
    timed = B.time_interleaved({k: fn for k, (fn, _) in impls.items()}, reps, min_sample_s, clock=clock)
    fl = B.case_flops(case)
    for t in timed.values():
        t["gflops"] = fl / (t["median_ms"] * 1e-3) / 1e9
    f16 = timed["fastrnn16"]["median_ms"]
    ratio = {k: timed[k]["median_ms"] / f16 for k in timed if k != "fastrnn16"}
    return {"name": case.name, "cell": case.cell, "mode": case.mode, "H": case.H, "B": case.B, "T": case.T,
            "dtype": dtype_name, "impls": timed, "speedup": ratio, "max_rel_diff_vs_float32": rel,
            "torch_autocast_runs": autocast_runs}


def run_dtype(dtype_name: str, cells: Sequence[str], modes: Sequence[str], sizes, threads: Optional[int], reps: int,
              quick: bool, no_torch: bool, min_sample_s: Optional[float] = None,
              emit: Optional[Callable[[str], None]] = None, cpu_time: bool = False) -> dict:
    """The 16-bit suite (module docstring). cpu_time: samples in the process's CPU time instead of
    wall time (for one thread on a loaded machine)."""
    torch, torch_note = B._import_torch(no_torch)
    threads = threads or fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
        B.limit_numpy_blas(1)
    min_sample_s = min_sample_s or (0.02 if quick else 0.05)
    header = B.make_header(threads, torch, torch_note)
    result = {"header": header, "reps": reps, "min_sample_s": min_sample_s, "dtype": dtype_name, "cases": [],
              "clock": "process CPU time" if cpu_time else "wall", "load_average": os.getloadavg()}
    if emit:
        emit(format_header16(result) + "\n\n" + TABLE_HEAD16)
    cases = [c for c in B.build_cases(cells, [m for m in modes if m != "decode"], sizes, quick) if c.mode != "decode"]
    for case in cases:
        result["cases"].append(run_case16(case, torch, dtype_name, reps, min_sample_s,
                                          clock=time.process_time if cpu_time else time.perf_counter))
        if emit:
            emit(format_row16(result["cases"][-1]))
    result["summary"] = summarize16(result["cases"])
    return result


def summarize16(rows: List[dict]) -> dict:
    out = {}
    for key in ("fastrnn32", "torch_autocast", "torch32"):
        s = [r["speedup"][key] for r in rows if key in r["speedup"]]
        if s:
            out[key] = float(math.exp(sum(math.log(v) for v in s) / len(s)))
    return out


def format_header16(result: dict) -> str:
    return (B.format_header(result).replace("# fastrnn benchmark", f"# fastrnn {result['dtype']} benchmark")
            + f"\n- 16-bit: fastrnn's {result['dtype']} kernels vs fastrnn float32 and torch.nn under "
              f"torch.autocast('cpu', dtype=torch.{result['dtype']}) (nn.LSTM runs oneDNN's {result['dtype']} "
              "layer there; nn.GRU / nn.RNN stay float32 under CPU autocast) and torch.nn float32; inputs and "
              "weights rounded to the 16-bit type for all four"
            + (f"\n- samples timed in {result['clock']}; load average at the start "
               f"{' / '.join(f'{v:.1f}' for v in result['load_average'])} (1 / 5 / 15 min)"
               if "clock" in result else ""))


TABLE_HEAD16 = ("| case | mode | fastrnn 16-bit ms | fastrnn fp32 ms | torch autocast ms (runs in) | torch fp32 ms | "
                "16-bit vs own fp32 | vs torch autocast | vs torch fp32 (16-bit vs fp32!) | rel. diff vs fp32 |\n"
                "|---|---|---|---|---|---|---|---|---|---|")


def format_row16(r: dict) -> str:
    t, s = r["impls"], r["speedup"]
    x = (lambda k: f"{s[k]:.2f}x" if k in s else "–")
    return " | ".join([
        f"| {r['name'].rsplit(' ', 1)[0]}", r["mode"], B._ms(t["fastrnn16"]), B._ms(t["fastrnn32"]),
        (B._ms(t["torch_autocast"]) + f" ({r['torch_autocast_runs']})") if "torch_autocast" in t
        else f"– ({r['torch_autocast_runs']})",
        B._ms(t.get("torch32")), x("fastrnn32"), x("torch_autocast"), x("torch32"),
        f"{r['max_rel_diff_vs_float32']:.1e}"]) + " |"


def format_markdown16(result: dict) -> str:
    s = result["summary"]
    parts = [f"over {k.replace('fastrnn32', 'fastrnn float32').replace('torch32', 'torch.nn float32').replace('torch_autocast', 'torch.nn autocast')} {v:.2f}x"
             for k, v in s.items()]
    return (f"{format_header16(result)}\n\n" + "\n".join([TABLE_HEAD16] + [format_row16(r) for r in result["cases"]])
            + f"\n\nGeometric-mean speed-up of fastrnn {result['dtype']}: " + ", ".join(parts) + ".\n")
