"""The GPU suite of the benchmark, ``python -m fastrnn.bench --device cuda``: fastrnn.nn against
torch.nn (cuDNN) on CUDA tensors in ONE process, timed with CUDA events, reported per case as µs
per call and per step, TFLOP/s, a percentage of the GPU's fp32 GEMM rate measured in the same run,
and the speed-up over cuDNN. Kept apart from the CPU harness (the rest of fastrnn.bench, which owns the CLI, the
cases and the FLOP count and hands ``--device cuda`` over to :func:`main`) because it needs torch
with CUDA and a GPU, and times differently: device work is asynchronous, so a sample is a CUDA
event pair around a block of calls, read after the end event completes.

Method per case: both modules get the same weights (``make_inputs``); fastrnn's outputs,
final states and, in training, every gradient are checked once against cuDNN's with TF32 off (a
gross-mismatch guard, ``compare``); a case that fails it is reported and not timed. Then each
implementation is warmed up and timed interleaved, ``reps`` samples of at least ``min_sample_s``
each; the median and min-max are reported. Both then run with torch's TF32 settings as found (the
header records them): cuDNN follows ``torch.backends.cudnn.allow_tf32``, fastrnn's products on
cuBLAS follow ``torch.backends.cuda.matmul.allow_tf32`` (its step kernels are always fp32).

The suite: DeepBench-style training and inference sizes for LSTM, GRU and RNN (H in
{512, 1024, 2048}, B in {16, 32, 64, 128}, T = 50 at H = 512 and 25 above), small batches (B in
{1, 4, 8} at H = 512 and 1024, T = 50) and a long sequence (B = 16, T = 1024, H = 768). ``--quick``
is a few of each, and ``--max-seconds`` stops starting new cases after that long (the JSON then
says how many were left), so a fixed device-time window is never overrun. A quick run adds a second
table (``EXTRAS``, one training size): the LSTM variants, the reset-before GRU, layer norm and the training
modifiers (alone, and on an LSTM variant) against fastrnn's fp32 base cell (what the option costs), the projected
LSTM (proj_size) against torch.nn.LSTM(proj_size) on cuDNN, and bfloat16/float16 layers against cuDNN in the
same dtype, each checked first in eval mode against fastrnn's CPU kernels in float64.
"""
from __future__ import annotations

import copy
import datetime
import math
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import fastrnn
from fastrnn.cell_table import LSTM, cell_info

from .cases import Case, case_flops, DEFAULT_CELLS, Inputs, make_inputs
from .impls import compare, _grads_dict, VerificationError
from .machine import _git_commit
from .report import _num, save_results, write_json
from .suite import _Progress, summarize
from .timing import GEMM_N as CPU_GEMM_N

GPU_MODES = ("inference", "training")
DEEPBENCH_H = (512, 1024, 2048)
DEEPBENCH_B = (16, 32, 64, 128)
SMALL_B = (1, 4, 8)
SMALL_B_H = (512, 1024)
LONG_SEQUENCE = (768, 16, 1024)  # H, B, T
QUICK_SIZES = ((512, 16, 50), (1024, 64, 25), (1024, 4, 50))  # H, B, T; every quick cell
QUICK_LSTM_SIZES = ((2048, 128, 25), LONG_SEQUENCE)  # the largest and the longest, LSTM only
GEMM_N = 8192  # the n^3 products that measure the GPU's rates (bf16: ~1.4 ms, fp32: ~20 ms on an H200)


def deepbench_T(H: int) -> int:
    return 50 if H <= 512 else 25


def gpu_suite_sizes(quick: bool = False) -> List[Tuple[str, int, int, int]]:
    """(cell group, H, B, T) of the GPU suite, in the order it runs: "all" for every requested
    cell, a cell's name for that cell only (the LSTM). Small batches come first, so that a run cut short by
    --max-seconds loses the sizes cuDNN is strongest at, not the ones the issue's targets name."""
    if quick:
        return [("all", H, B, T) for H, B, T in QUICK_SIZES] + [(LSTM, H, B, T) for H, B, T in QUICK_LSTM_SIZES]
    sizes = [("all", H, B, 50) for H in SMALL_B_H for B in SMALL_B]
    sizes += [("all", H, B, deepbench_T(H)) for H in DEEPBENCH_H for B in DEEPBENCH_B]
    sizes.append(("all",) + LONG_SEQUENCE)
    return sizes


def build_gpu_cases(cells: Sequence[str], modes: Sequence[str], sizes=None, quick: bool = False) -> List[Case]:
    """Every (cell, size, mode) of the GPU suite (sizes None) or of ``sizes`` ([(H, B, T, I)], as
    parse_sizes gives them), size by size (each cell's modes together). Modes other than
    inference and training are not GPU modes."""
    modes = [m for m in GPU_MODES if m in modes]
    if sizes is not None:
        return [Case(cell, H, B, T, I, mode) for H, B, T, I in sizes for cell in cells for mode in modes]
    return [Case(cell, H, B, T, H, mode) for group, H, B, T in gpu_suite_sizes(quick)
            for cell in cells if group == "all" or cell == group for mode in modes]


# ------------------------------------------------------------------------------------------------
# Availability: every reason there is nothing to time, in one sentence
# ------------------------------------------------------------------------------------------------

def unavailable_reason(no_torch: bool = False) -> Optional[str]:
    """None when the GPU suite can run here, else why not."""
    if not fastrnn.cuda_available():
        return "no CUDA kernels in this build (fastrnn.cuda_available() is False)"
    if no_torch:
        return "the GPU suite times fastrnn.nn on torch CUDA tensors: it needs torch (drop --no-torch)"
    try:
        import torch
    except ImportError:
        return "the GPU suite needs torch with CUDA, which is not installed"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        return f"no CUDA GPU visible to torch {torch.__version__} (its CUDA: {built})"
    if fastrnn._core.cuda.device_count() == 0:
        return "torch sees a GPU but fastrnn's CUDA runtime sees none (driver/runtime mismatch?)"
    return None


# ------------------------------------------------------------------------------------------------
# Modules and the timed calls
# ------------------------------------------------------------------------------------------------

def torch_module(torch, case: Case):
    """The torch.nn module of ``case`` (on the CPU, default initialisation)."""
    info = cell_info(case.cell)
    extra = {"nonlinearity": info.nonlinearity} if info.nonlinearity else {}
    return getattr(torch.nn, info.torch_module)(case.I, case.H, case.layers, bidirectional=case.bidirectional, **extra)


def make_modules(torch, case: Case, inp: Inputs, device):
    """(torch.nn module, fastrnn.nn module) on ``device`` with the weights of ``inp``, each with
    parameters of its own (so their gradients never mix)."""
    import fastrnn.nn as fnn

    ref = torch_module(torch, case)
    D = 2 if case.bidirectional else 1
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for k, entry in enumerate(inp.weights):
            layer, d = divmod(k, D)
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), entry):
                params[name + suffix].copy_(torch.from_numpy(w))
    fast = fnn.convert(copy.deepcopy(ref)).to(device)
    ref = ref.to(device)
    ref.flatten_parameters()  # cuDNN's weight buffer
    return ref, fast


def timed_calls(torch, case: Case, inp: Inputs, module, device) -> Tuple[Callable[[], object], Callable[[], dict]]:
    """(one timed call, the values it computes as float64 NumPy arrays) for ``module``: forward
    under torch.inference_mode(), or forward + backward of ``dy`` with the input's and every
    parameter's gradient (set to None before each call, as fastrnn.backward returns fresh arrays)."""
    x = torch.from_numpy(inp.x).to(device)
    lstm = cell_info(case.cell).carries_cell_state
    if case.mode == "inference":
        def run():
            with torch.inference_mode():
                return module(x)

        def values():
            out, state = run()
            states = {"h_n": state[0], "c_n": state[1]} if lstm else {"h_n": state}
            return {k: v.double().cpu().numpy() for k, v in {"output": out, **states}.items()}
        return run, values

    xg = x.clone().requires_grad_(True)
    dy = torch.from_numpy(inp.dy).to(device)
    params = list(module.parameters())
    per_entry = len(params) // len(inp.weights)

    def train():
        xg.grad = None
        for p in params:
            p.grad = None
        out, _ = module(xg)
        out.backward(dy)
        return out

    def values():
        out = train()
        grads = [tuple(p.grad.double().cpu().numpy() for p in params[k:k + per_entry])
                 for k in range(0, len(params), per_entry)]
        return {"output": out.detach().double().cpu().numpy(),
                **_grads_dict(xg.grad.double().cpu().numpy(), grads)}
    return train, values


def time_cuda_interleaved(torch, fns: Dict[str, Callable[[], object]], reps: int, min_sample_s: float,
                          warmup_s: float = 0.05, warmup_calls: int = 3) -> Dict[str, dict]:
    """Warm each up (at least ``warmup_calls`` and ``warmup_s``), then ``reps`` samples of each,
    interleaved with the order rotated every round. A sample: a CUDA event, n calls, an event; its
    time is the events' elapsed time / n, with n chosen so that a sample lasts >= min_sample_s.
    Returns per name: median/min/max ms per call, the samples and the calls per sample."""
    names = list(fns)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def sample(fn, n: int) -> float:
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n  # ms

    for name in names:
        t0, calls = time.perf_counter(), 0
        while calls < warmup_calls or time.perf_counter() - t0 < warmup_s:
            fns[name]()
            calls += 1
        torch.cuda.synchronize()
    calls = {name: max(1, int(math.ceil(min_sample_s * 1e3 / max(sample(fns[name], 1), 1e-4)))) for name in names}
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(sample(fns[name], calls[name]))
    return {name: {"median_ms": float(np.median(s)), "min_ms": float(min(s)), "max_ms": float(max(s)),
                   "samples_ms": s, "calls_per_sample": calls[name]} for name, s in samples.items()}


def measure_rates(torch, device, n: int = GEMM_N, reps: int = 5) -> dict:
    """The GPU's matrix rates in TFLOP/s from n^3 products with torch.mm on random data: fp32 with
    TF32 off (the ceiling of fastrnn's fp32 kernels, the '% peak' column), fp32 with TF32 on and
    bf16 (what tensor cores give)."""
    g = torch.Generator(device=device).manual_seed(1)
    rates = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                   ("bf16", torch.bfloat16, False)):
            a = torch.randn((n, n), generator=g, device=device).to(dtype)
            b = torch.randn((n, n), generator=g, device=device).to(dtype)
            c = torch.empty((n, n), device=device, dtype=dtype)
            torch.backends.cuda.matmul.allow_tf32 = tf32
            t = time_cuda_interleaved(torch, {label: lambda: torch.mm(a, b, out=c)}, reps, 0.0)[label]
            rates[label] = 2.0 * n ** 3 / (t["median_ms"] * 1e-3) / 1e12
            del a, b, c
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return {"n": n, "tflops": rates}


class _tf32_off:
    """TF32 off for cuDNN and for matmuls (fastrnn's included) inside the block; restored after."""

    def __init__(self, torch):
        self.backends = torch.backends

    def __enter__(self):
        self.saved = (self.backends.cudnn.allow_tf32, self.backends.cuda.matmul.allow_tf32)
        self.backends.cudnn.allow_tf32 = self.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        self.backends.cudnn.allow_tf32, self.backends.cuda.matmul.allow_tf32 = self.saved


def run_case(torch, case: Case, device, reps: int, min_sample_s: float, peak_tflops: float, seed: int = 0) -> dict:
    inp = make_inputs(case, seed)
    ref, fast = make_modules(torch, case, inp, device)
    impls = {"fastrnn": timed_calls(torch, case, inp, fast, device), "torch": timed_calls(torch, case, inp, ref, device)}
    record = {**asdict(case), "name": case.name, "flops": case_flops(case), "verified_against": "torch.nn (cuDNN)"}
    with _tf32_off(torch):  # the check compares fp32 with fp32 (fastrnn's cuBLAS products follow matmul's flag)
        expected = impls["torch"][1]()
        try:
            record["max_abs_diff"] = compare(impls["fastrnn"][1](), expected, case, "torch.nn (cuDNN, TF32 off)")
        except VerificationError as e:
            return {**record, "impls": {}, "speedup_vs_torch": None, "error": f"VERIFICATION FAILED: {e}"}
    timed = time_cuda_interleaved(torch, {name: fn for name, (fn, _) in impls.items()}, reps, min_sample_s)
    for t in timed.values():
        s = t["median_ms"] * 1e-3
        t["tflops"] = record["flops"] / s / 1e12
        t["pct_peak"] = 100.0 * t["tflops"] / peak_tflops if peak_tflops else None
        t["us_per_step"] = t["median_ms"] * 1e3 / case.T
    return {**record, "impls": timed, "speedup_vs_torch": timed["torch"]["median_ms"] / timed["fastrnn"]["median_ms"]}


# ------------------------------------------------------------------------------------------------
# The quick run's second table: the LSTM variants, the training modifiers and 16-bit storage
# ------------------------------------------------------------------------------------------------
# One training size (H, B, T); each case a fastrnn.nn layer with an option, timed against its
# baseline in the same run: the fp32 base cell of fastrnn (the variants and the modifiers: what the
# option costs) or cuDNN in the same dtype (torch.nn.LSTM/GRU in .to(dtype); the projected LSTM:
# torch.nn.LSTM(proj_size=P), which cuDNN runs fused too).
EXTRAS_SIZE = (512, 16, 50)
EXTRAS = (  # (name, cell, fastrnn.nn keywords, dtype, baseline: "base" or "cudnn")
    ("lstm bfloat16", "lstm", {}, "bfloat16", "cudnn"),
    ("lstm float16", "lstm", {}, "float16", "cudnn"),
    ("gru bfloat16", "gru", {}, "bfloat16", "cudnn"),
    ("lstm peephole", "lstm", dict(peephole=True), "float32", "base"),
    ("lstm coupled", "lstm", dict(coupled=True), "float32", "base"),
    ("lstm cell_clip", "lstm", dict(cell_clip=1.0), "float32", "base"),
    ("lstm recurrent_dropout", "lstm", dict(recurrent_dropout=0.25), "float32", "base"),
    ("lstm zoneout", "lstm", dict(zoneout=0.1, zoneout_cell=0.05), "float32", "base"),
    ("lstm grad_clip", "lstm", dict(grad_clip=1.0), "float32", "base"),
    ("gru zoneout", "gru", dict(zoneout=0.1), "float32", "base"),
    ("gru reset_after=False", "gru", dict(reset_after=False), "float32", "base"),
    ("lstm layer_norm", "lstm", dict(layer_norm=True), "float32", "base"),
    ("gru layer_norm", "gru", dict(layer_norm=True), "float32", "base"),
    ("lstm peephole + zoneout + grad_clip", "lstm", dict(peephole=True, zoneout=0.1, zoneout_cell=0.05, grad_clip=1.0),
     "float32", "base"),
    ("lstm proj", "lstm", dict(proj_size=128), "float32", "cudnn"),
)


def run_extra(torch, name: str, cell: str, options: dict, dtype: str, baseline: str, device, reps: int,
              min_sample_s: float, size=EXTRAS_SIZE, seed: int = 0) -> dict:
    """One EXTRAS case, training (forward + backward of every input and parameter): fastrnn.nn with
    ``options`` in ``dtype`` against ``baseline``. Checked first in eval mode (deterministic: no
    dropout, zoneout's expectation) against the same layer on the CPU kernels in float64, within
    the tests' tolerance table's bound for the dtype (cuda-<dtype>, or float32)."""
    import fastrnn.nn as fnn
    H, B, T = size
    record = {"name": name, "cell": cell, "options": options, "dtype": dtype, "baseline": baseline, "H": H, "B": B,
              "T": T, "mode": "training"}
    torch.manual_seed(seed)
    cls = getattr(fnn, cell_info(cell).torch_module)  # fastrnn.nn.LSTM / GRU
    fast_cpu = cls(H, H, **options).double()
    ref_cls = getattr(torch.nn, cell_info(cell).torch_module)
    tdtype = getattr(torch, dtype)
    fast = copy.deepcopy(fast_cpu).to(device=device, dtype=tdtype)
    P = options.get("proj_size", 0)  # the projected LSTM: h (the output) is P wide
    if baseline == "cudnn":
        base = ref_cls(H, H, **({"proj_size": P} if P else {})).to(device=device, dtype=tdtype)
        base.load_state_dict(fast.state_dict())
    else:
        base = cls(H, H).to(device)
        # the base cell's parameters: without the peepholes and the layer norm's vectors
        base.load_state_dict({k: v for k, v in fast_cpu.state_dict().items() if not k.startswith(("weight_ch", "ln_"))})
    g = torch.Generator().manual_seed(seed)
    x64 = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    dy64 = torch.randn(T, B, P or H, generator=g, dtype=torch.float64)
    # the check: eval mode on the device against fastrnn's CPU kernels in float64
    fast.eval()
    fast_cpu.eval()
    with torch.no_grad():
        expected = fast_cpu(x64.to(tdtype).double())[0]
        got = fast(x64.to(device=device, dtype=tdtype))[0].double().cpu()
    diff = float((got - expected).abs().max())
    bound = {"bfloat16": 0.1, "float16": 0.02}.get(dtype, 1e-3)  # a gross-mismatch guard, as bench.compare's
    record["max_abs_diff"] = diff
    if not diff <= bound:
        return {**record, "impls": {}, "error": f"VERIFICATION FAILED: max abs diff {diff:.3g} > {bound:g} "
                                                f"against fastrnn's CPU kernels in float64 (eval mode)"}
    fast.train()

    def trainer(module, dt):
        x = x64.to(device=device, dtype=dt).requires_grad_(True)
        dy = dy64.to(device=device, dtype=dt)
        params = list(module.parameters())

        def step():
            x.grad = None
            for p in params:
                p.grad = None
            out, _ = module(x)
            out.backward(dy)
        return step

    timed = time_cuda_interleaved(torch, {"fastrnn": trainer(fast, tdtype),
                                          baseline: trainer(base, tdtype if baseline == "cudnn" else torch.float32)},
                                  reps, min_sample_s)
    return {**record, "impls": timed, "ratio_vs_baseline": timed["fastrnn"]["median_ms"] / timed[baseline]["median_ms"]}


EXTRAS_HEAD = ("| case | dtype | fastrnn µs (min–max) | baseline | baseline µs (min–max) | fastrnn / baseline | "
               "max abs diff (eval, vs CPU float64) |\n|---|---|---|---|---|---|---|")


def format_extra_row(r: dict) -> str:
    base = {"base": "fastrnn fp32 base cell", "cudnn": f"cuDNN {r['dtype']}"}[r["baseline"]]
    if "error" in r:
        return f"| {r['name']} | {r['dtype']} | {r['error'][:200]} | {base} | | | |"
    return (f"| {r['name']} | {r['dtype']} | {_us(r['impls']['fastrnn'])} | {base} | {_us(r['impls'][r['baseline']])} | "
            f"{r['ratio_vs_baseline']:.2f}x | {r['max_abs_diff']:.1e} |")


def extras_title() -> str:
    H, B, T = EXTRAS_SIZE
    return (f"## LSTM variants, training modifiers, 16-bit storage (training, H={H}, B={B}, T={T}; "
            "fastrnn / baseline is the time ratio, < 1 is faster)")


def _format_table(result: dict, key: str, title: str, head: str, format_row: Callable[[dict], str],
                  what: str) -> str:
    """One of the quick run's extra tables (result[key]'s rows under title and head), with the count
    of ``what`` cases the --max-seconds cap left out (result[key + "_not_run"]); "" if it did not run."""
    if key not in result:
        return ""
    rows = "\n".join(format_row(r) for r in result[key])
    note = (f"\n\n{result[key + '_not_run']} {what} case(s) not run (the --max-seconds cap)."
            if result.get(key + "_not_run") else "")
    return f"\n{title}\n\n{head}\n{rows}{note}\n"


def _run_table(result: dict, key: str, cases: list, run_case: Callable, error_row: Callable, title: str, head: str,
               format_row: Callable[[dict], str], t_start: float, max_seconds: Optional[float],
               emit: Optional[Callable[[str], None]], bar, torch) -> None:
    """Runs ``cases`` (each ``run_case(*case)``, a failure ``error_row(*case, message)`` in its row)
    into result[key] (and the markdown through ``emit``), stopping at ``max_seconds`` after
    ``t_start`` or when a failure left the CUDA context unusable (result[key + "_not_run"] counts
    what was left)."""
    result[key], result[key + "_not_run"] = [], 0
    if emit:
        bar.clear()
        emit(f"\n{title}\n\n{head}")
    for k, case in enumerate(cases):
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            result[key + "_not_run"] = len(cases) - k
            break
        try:
            row = run_case(*case)
        except Exception as e:  # reported in its row, like the suite's cases
            row = error_row(*case, f"{type(e).__name__}: {e}")
        result[key].append(row)
        if emit:
            bar.clear()
            emit(format_row(row))
        if "error" in row and not _context_alive(torch):
            result[key + "_not_run"] = len(cases) - k - 1
            break


def format_extras(result: dict) -> str:
    return _format_table(result, "extras", extras_title(), EXTRAS_HEAD, format_extra_row, "extra")


def run_extras(torch, device, reps: int, min_sample_s: float, result: dict, t_start: float,
               max_seconds: Optional[float], emit: Optional[Callable[[str], None]], bar) -> None:
    """The EXTRAS cases into result["extras"] (and the markdown through ``emit``), stopping at
    ``max_seconds`` after ``t_start`` (result["extras_not_run"] counts what was left)."""
    def error_row(name, cell, options, dtype, baseline, message):
        return {"name": name, "cell": cell, "options": options, "dtype": dtype, "baseline": baseline,
                "impls": {}, "error": message}

    _run_table(result, "extras", EXTRAS,
               lambda *case: run_extra(torch, *case, device, reps, min_sample_s), error_row,
               extras_title(), EXTRAS_HEAD, format_extra_row, t_start, max_seconds, emit, bar, torch)


# ------------------------------------------------------------------------------------------------
# The quick run's third table: the persistent small-batch forward against the per-step kernels
# ------------------------------------------------------------------------------------------------
# fastrnn's two CUDA forward paths (FASTRNN_CUDA_PERSISTENT=0: one fused kernel per step; 1: one
# cooperative launch per layer x direction, cuda/persistent.cuh) and cuDNN, on the same LSTM layer in
# one process: where the persistent kernel starts to lose (the crossover in B and H) decides the
# `auto` heuristic. Forward (inference) at every size; training (the persistent forward, then the
# per-step backward on its reserve) at H = 512.
PERSISTENT_SWITCH = "FASTRNN_CUDA_PERSISTENT"
PERSISTENT_T = 100
PERSISTENT_SIZES = tuple((H, B, "inference") for H in (256, 512, 1024) for B in (1, 4, 8)) + tuple(
    (512, B, "training") for B in (1, 4, 8))  # (H, B, mode)


def _with_switch(fn: Callable[[], object], value: str) -> Callable[[], object]:
    """fn with FASTRNN_CUDA_PERSISTENT set to ``value`` for the call (the kernels read it per call)."""
    import os

    def call():
        os.environ[PERSISTENT_SWITCH] = value
        return fn()
    return call


def persistent_plan(cell: str, H: int, B: int, T: int) -> dict:
    """The CUDA kernels' plan for one float32 layer with FASTRNN_CUDA_PERSISTENT as set now (runs,
    reason, blocks, units, k_slices, smem_bytes, ...), or why there is none (no CUDA build or device)."""
    if not fastrnn.cuda_available():
        return {"runs": False, "reason": "no CUDA kernels in this build"}
    try:
        return fastrnn._core.cuda.persistent_plan(cell_info(cell).id, "float32", T, B, H, H, 1, False)
    except RuntimeError as e:  # no device
        return {"runs": False, "reason": str(e)}


def run_persistent_row(torch, H: int, B: int, mode: str, device, reps: int, min_sample_s: float,
                       cell: str = LSTM, T: int = PERSISTENT_T, seed: int = 0) -> dict:
    """One PERSISTENT_SIZES row: per-step, persistent and cuDNN timed interleaved (each fastrnn path
    checked against cuDNN first, TF32 off), with the persistent plan (blocks x units, K slices) or
    the reason it fell back to the per-step kernels."""
    import os

    case = Case(cell, H, B, T, H, mode)
    record = {"name": case.name, "cell": cell, "H": H, "B": B, "T": T, "mode": mode, "flops": case_flops(case)}
    saved = os.environ.get(PERSISTENT_SWITCH)
    try:
        os.environ[PERSISTENT_SWITCH] = "1"
        record["plan"] = persistent_plan(cell, H, B, T)
        inp = make_inputs(case, seed)
        ref, fast = make_modules(torch, case, inp, device)
        fast_run, fast_values = timed_calls(torch, case, inp, fast, device)
        torch_run, torch_values = timed_calls(torch, case, inp, ref, device)
        fns = {"per-step": _with_switch(fast_run, "0"), "persistent": _with_switch(fast_run, "1"), "torch": torch_run}
        with _tf32_off(torch):
            expected = torch_values()
            diffs = {}
            try:
                for name, value in (("per-step", "0"), ("persistent", "1")):
                    os.environ[PERSISTENT_SWITCH] = value
                    diffs[name] = compare(fast_values(), expected, case, "torch.nn (cuDNN, TF32 off)")
            except VerificationError as e:
                return {**record, "impls": {}, "error": f"VERIFICATION FAILED ({name}): {e}"}
        record["max_abs_diff"] = max(diffs.values())
        timed = time_cuda_interleaved(torch, fns, reps, min_sample_s)
    finally:
        if saved is None:
            os.environ.pop(PERSISTENT_SWITCH, None)
        else:
            os.environ[PERSISTENT_SWITCH] = saved
    for t in timed.values():
        t["us_per_step"] = t["median_ms"] * 1e3 / T
    return {**record, "impls": timed,
            "persistent_vs_per_step": timed["per-step"]["median_ms"] / timed["persistent"]["median_ms"],
            "persistent_vs_torch": timed["torch"]["median_ms"] / timed["persistent"]["median_ms"]}


PERSISTENT_HEAD = ("| case | mode | per-step µs (min–max) | persistent µs (min–max) | persistent µs/step | "
                   "cuDNN µs (min–max) | speed-up over per-step | speed-up over cuDNN | plan | max abs diff |\n"
                   "|---|---|---|---|---|---|---|---|---|---|")


def format_persistent_row(r: dict) -> str:
    shape = r["name"].rsplit(" ", 1)[0]
    plan = r.get("plan") or {}
    plan_text = (f"{plan['blocks']} blocks x {plan['units']} units, {plan['k_slices']} K slices, "
                 f"{plan['smem_bytes'] // 1024} KiB" if plan.get("runs") else f"per-step: {plan.get('reason', '?')}")
    if "error" in r:
        return f"| {shape} | {r['mode']} | {r['error'][:200]} | | | | | | {plan_text} | |"
    i = r["impls"]
    return (f"| {shape} | {r['mode']} | {_us(i['per-step'])} | {_us(i['persistent'])} | "
            f"{_num(i['persistent']['us_per_step'])} | {_us(i['torch'])} | {r['persistent_vs_per_step']:.2f}x | "
            f"{r['persistent_vs_torch']:.2f}x | {plan_text} | {r['max_abs_diff']:.1e} |")


def persistent_title() -> str:
    return (f"## Persistent small-batch forward vs the per-step kernels and cuDNN (LSTM, T={PERSISTENT_T}, "
            "one layer; speed-up > 1 is faster)")


def format_persistent(result: dict) -> str:
    return _format_table(result, "persistent", persistent_title(), PERSISTENT_HEAD, format_persistent_row,
                         "persistent")


def run_persistent_table(torch, device, reps: int, min_sample_s: float, result: dict, t_start: float,
                         max_seconds: Optional[float], emit: Optional[Callable[[str], None]], bar) -> None:
    """The PERSISTENT_SIZES rows into result["persistent"] (and the markdown through ``emit``),
    stopping at ``max_seconds`` after ``t_start`` (result["persistent_not_run"] counts the rest)."""
    def error_row(H, B, mode, message):
        return {"name": Case(LSTM, H, B, PERSISTENT_T, H, mode).name, "H": H, "B": B, "mode": mode, "impls": {},
                "error": message}

    _run_table(result, "persistent", PERSISTENT_SIZES,
               lambda H, B, mode: run_persistent_row(torch, H, B, mode, device, reps, min_sample_s), error_row,
               persistent_title(), PERSISTENT_HEAD, format_persistent_row, t_start, max_seconds, emit, bar, torch)


# ------------------------------------------------------------------------------------------------
# Header, the run, output
# ------------------------------------------------------------------------------------------------

def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _cuda_version(v: int) -> Optional[str]:
    """13000 -> "13.0" (CUDA's version encoding); None for 0 (unknown)."""
    return f"{v // 1000}.{v % 1000 // 10}" if v else None


def make_header(torch, device) -> dict:
    p = torch.cuda.get_device_properties(device)
    cudnn = torch.backends.cudnn
    return {
        "gpu": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
        "memory_gib": round(p.total_memory / 2 ** 30, 1), "driver": _driver_version(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": cudnn.version() if cudnn.is_available() else None,
        "cudnn_allow_tf32": bool(cudnn.allow_tf32), "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "fastrnn_gemm": fastrnn._core.cuda.cublas_status(),
        "fastrnn_cuda_runtime": _cuda_version(fastrnn._core.cuda.runtime_version()),
        "cuda_driver_api": _cuda_version(fastrnn._core.cuda.driver_version()),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "fastrnn": fastrnn.__version__, "commit": _git_commit(), "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
    }


def run(cells: Sequence[str] = DEFAULT_CELLS, modes: Sequence[str] = GPU_MODES, sizes=None, reps: int = 7,
        quick: bool = False, min_sample_s: Optional[float] = None, gemm_n: int = GEMM_N,
        max_seconds: Optional[float] = None, emit: Optional[Callable[[str], None]] = None,
        progress: bool = True, extras: Optional[bool] = None) -> dict:
    """Runs the GPU suite (or ``sizes``) and returns the JSON-able result; ``emit`` gets the markdown
    piece by piece (header and table head, then each row). ``extras`` (default: a quick run of the
    suite's own sizes) adds the EXTRAS table after it, within the same ``max_seconds``. Raises
    RuntimeError when no GPU is usable."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    import torch

    t_start = time.perf_counter()
    device = torch.device("cuda", torch.cuda.current_device())
    if min_sample_s is None:
        min_sample_s = 0.01 if quick else 0.02
    header = make_header(torch, device)
    cases = build_gpu_cases(cells, modes, sizes, quick)
    bar = _Progress(len(cases) + 1, progress)
    bar.update(0, "GEMM rates")
    rates = measure_rates(torch, device, gemm_n, reps=3 if quick else 5)
    result = {"header": header, "peak": rates, "reps": reps, "min_sample_s": min_sample_s, "cases": [],
              "max_seconds": max_seconds, "cases_not_run": 0}
    if emit:
        bar.clear()
        emit(format_header(result) + "\n\n" + TABLE_HEAD)
    try:
        for k, case in enumerate(cases):
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                result["cases_not_run"] = len(cases) - k
                break
            bar.update(k + 1, case.name)
            try:
                row = run_case(torch, case, device, reps, min_sample_s, rates["tflops"]["fp32"])
            except Exception as e:  # a kernel fault or a CUDA error: report it, and stop if the context is gone
                row = {**asdict(case), "name": case.name, "flops": case_flops(case), "impls": {},
                       "speedup_vs_torch": None, "error": f"{type(e).__name__}: {e}"}
            result["cases"].append(row)
            if emit:
                bar.clear()
                emit(format_row(row))
            if "error" in row and not _context_alive(torch):
                result["cases_not_run"] = len(cases) - k - 1
                result["aborted"] = "the CUDA context failed (a sticky error): no further case can run"
                break
        if (quick and sizes is None if extras is None else extras) and "aborted" not in result:
            run_persistent_table(torch, device, reps, min_sample_s, result, t_start, max_seconds, emit, bar)
            run_extras(torch, device, reps, min_sample_s, result, t_start, max_seconds, emit, bar)
    finally:
        bar.clear()
    result["summary"] = summarize(result["cases"])
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _context_alive(torch) -> bool:
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
        return True
    except Exception:
        return False


def _us(t: Optional[dict]) -> str:
    if not t:
        return "–"
    return f"{_num(t['median_ms'] * 1e3)} ({_num(t['min_ms'] * 1e3)}–{_num(t['max_ms'] * 1e3)})"


def format_header(result: dict) -> str:
    h, p = result["header"], result["peak"]
    rates = ", ".join(f"{k} {v:.1f}" for k, v in p["tflops"].items())
    return "\n".join([
        f"# fastrnn GPU benchmark — {h['date_utc']}",
        "",
        f"- GPU: {h['gpu']} (compute capability {h['capability']}, {h['sms']} SMs, {h['memory_gib']} GiB); "
        f"driver {h['driver'] or '?'} (CUDA {h.get('cuda_driver_api') or '?'}); fastrnn built with CUDA "
        f"{h.get('fastrnn_cuda_runtime') or '?'}",
        f"- torch {h['torch']} (CUDA {h['torch_cuda']}, cuDNN {h['cudnn']}; TF32 allowed: cuDNN "
        f"{h['cudnn_allow_tf32']}, matmul {h['matmul_allow_tf32']}), fastrnn {h['fastrnn']} (commit {h['commit']}; "
        f"large products: {h.get('fastrnn_gemm', '?')}, TF32 as matmul's), Python {h['python']}",
        f"- GEMM rates (torch.mm, {p['n']}^3, TFLOP/s): {rates}; '% peak' is of the fp32 rate (TF32 off), "
        "which fastrnn's fp32 kernels cannot exceed",
        f"- fastrnn.nn vs torch.nn (cuDNN), float32, one layer; CUDA-event timing, median of {result['reps']} "
        f"interleaved samples (min–max), each >= {result['min_sample_s'] * 1e3:.0f} ms; checked against cuDNN "
        "(TF32 off) before timing",
    ])


TABLE_HEAD = ("| case | mode | fastrnn µs (min–max) | µs/step | TFLOP/s | % peak | cuDNN µs (min–max) | "
              "cuDNN µs/step | cuDNN TFLOP/s | speed-up vs cuDNN | max abs diff |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    shape = r["name"].rsplit(" ", 1)[0]
    if "error" in r:
        return f"| {shape} | {r['mode']} | {r['error'][:200]} | | | | | | | | |"
    f, t = r["impls"]["fastrnn"], r["impls"]["torch"]
    pct = f"{f['pct_peak']:.0f}%" if f.get("pct_peak") is not None else "–"
    return " | ".join([
        f"| {shape}", r["mode"], _us(f), _num(f["us_per_step"]), f"{f['tflops']:.2f}", pct, _us(t),
        _num(t["us_per_step"]), f"{t['tflops']:.2f}", f"{r['speedup_vs_torch']:.2f}x", f"{r['max_abs_diff']:.1e}",
    ]) + " |"


def format_summary(result: dict) -> str:
    s = result["summary"]
    parts = [f"{mode} {v['geomean']:.2f}x ({v['cases']} cases)" for mode, v in s["geomean_speedup_vs_torch"].items()]
    lines = [f"Geometric-mean speed-up over cuDNN: {', '.join(parts)}; overall {s['overall']:.2f}x ({s['cases']} cases)."
             if parts else "Geometric-mean speed-up over cuDNN: no case was timed."]
    errors = sum(1 for r in result["cases"] if "error" in r)
    if errors:
        lines.append(f"{errors} case(s) failed (see their rows).")
    if result.get("cases_not_run"):
        lines.append(f"{result['cases_not_run']} case(s) not run: "
                     + result.get("aborted", f"the --max-seconds cap ({result['max_seconds']:g} s) was reached") + ".")
    return " ".join(lines)


def format_markdown(result: dict) -> str:
    rows = "\n".join(format_row(r) for r in result["cases"])
    return (f"{format_header(result)}\n\n{TABLE_HEAD}\n{rows}\n\n{format_summary(result)}\n{format_persistent(result)}"
            f"{format_extras(result)}")


def results_basename(result: dict, quick: bool) -> str:
    """<date>-<gpu>[-quick] for bench/results/, e.g. 2026-12-01-nvidia-h200-quick."""
    h = result["header"]
    slug = re.sub(r"[^a-z0-9]+", "-", h["gpu"].lower()).strip("-") or "gpu"
    return f"{h['date_utc'][:10]}-{slug}{'-quick' if quick else ''}"


def main(args, parser) -> int:
    """``python -m fastrnn.bench --device cuda ...``: ``args`` parsed by fastrnn.bench.main's parser (which
    calls this). No usable GPU: refused through ``parser.error`` (exit 2) with the reason."""
    import json
    import os

    reason = unavailable_reason(args.no_torch)
    if reason:
        parser.error(f"--device cuda: {reason}")
    if args.plot:
        parser.error("--plot draws the CPU suite only; the GPU results are in the markdown and JSON")
    modes = [m for m in args.modes if m in GPU_MODES]
    if not modes:
        parser.error(f"--device cuda times the modes {', '.join(GPU_MODES)}; got {', '.join(args.modes)}")
    reps = args.reps or (3 if args.quick else 7)
    result = run(cells=args.cells, modes=modes, sizes=args.sizes, reps=reps, quick=args.quick,
                 min_sample_s=None if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                 gemm_n=args.gemm_size if args.gemm_size != CPU_GEMM_N else GEMM_N,
                 max_seconds=args.max_seconds, emit=lambda text: print(text, flush=True),
                 progress=not args.no_progress)
    print(f"\n{format_summary(result)}")
    text = format_markdown(result)
    if args.json:
        write_json(result, args.json)
    if args.save:
        save_results(result, text, args.save, results_basename(result, args.quick and args.sizes is None))
    return 1 if any("error" in r for r in result["cases"] + result.get("extras", []) + result.get("persistent", [])) else 0
