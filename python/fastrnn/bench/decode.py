"""--suite decode: the multi-layer step of generation (``module.stepper()``, with float16 weights,
the fastrnn.nn module at T = 1, torch.nn's cells and modules at T = 1), its table and its CLI."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import fastrnn
from fastrnn.cell_table import GRU, LSTM, cell_info

from .cases import Case
from .impls import compare, VerificationError
from .machine import _import_torch, make_header
from .report import _num, format_header, results_basename, save_results, write_json
from .suite import geomean, _Progress
from .timing import GEMM_N, limit_numpy_blas, measure_peak, time_interleaved


DECODE_SUITE_CELLS = (LSTM, GRU)


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
    tnn, info = torch.nn, cell_info(cell)
    has_c = info.carries_cell_state  # the state is (h, c)
    module = getattr(tnn, info.torch_module)(H, H, layers)
    fast = getattr(fnn, info.torch_module)(H, H, layers)
    fast.load_state_dict(module.state_dict())
    cells = [getattr(tnn, info.torch_module + "Cell")(H, H) for _ in range(layers)]
    with torch.no_grad():
        for layer, c in enumerate(cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(c, name).copy_(getattr(module, f"{name}_l{layer}"))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(B, H, generator=g)
    h0 = torch.rand(layers, B, H, generator=g) - 0.5
    state = (h0, torch.rand(layers, B, H, generator=g) - 0.5) if has_c else h0
    stepper, stepper16 = fast.stepper(), fast.stepper(weight_dtype="float16")

    def torch_cells():
        inp, out = x, []
        for layer, c in enumerate(cells):
            s = c(inp, (state[0][layer], state[1][layer])) if has_c else c(inp, state[layer])
            inp = s[0] if has_c else s
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
    flat = (lambda s: {"h_n": s[0].numpy(), "c_n": s[1].numpy()}) if has_c else (lambda s: {"h_n": s.numpy()})
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
        write_json(result, args.json)
    if args.save:
        save_results(result, text, args.save, results_basename(result) + "-decode")
    return 0
