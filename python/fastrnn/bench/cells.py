"""The cell-stepping suite (``python -m fastrnn.bench --suite cells``): fastrnn.nn's RNNCell /
LSTMCell / GRUCell against torch.nn's, stepped one call at a time from Python as clients do, timed
in one process with the same weights. Two parts:

- the client: pytorch/examples' ``time_sequence_prediction`` (``Sequence`` below, a faithful copy
  of its train.py model: two LSTMCells 1 -> 51 -> 51 and a Linear 51 -> 1, 999 steps of B = 97 sine
  waves, float64), timed as one L-BFGS closure (zero_grad, forward over the 999 steps, MSE loss,
  backward) and as its prediction pass (B = 3, 999 + 1000 steps, no grad). The target is 1.5x
  torch.nn for the closure.
- the grid: every cell (rnn_tanh, rnn_relu, lstm, gru) at B in {1, 16, 64}, I = H in {32, 128,
  512}, float32 and float64, one step forward (no grad) and one step forward + backward (the
  states require grad, the input does not, loss = sum of the new states). The target is >= 1x
  everywhere.

Timing: medians of interleaved samples (bench.time_interleaved), by default of this thread's CPU
time (``--clock cpu``): on one thread both libraries run every kernel, and autograd its backward,
on the calling thread, so CPU time counts exactly their work, and it is far less disturbed than
wall time when other processes share the cores. Each pair is first checked to agree (values and
gradients) so that no wrong kernel is timed.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict, List, Optional, Sequence as Seq

import numpy as np

import fastrnn

from ..cell_table import TABLE
from .impls import GROSS_MISMATCH, VerificationError
from .machine import _import_torch, make_header
from .report import format_header, results_basename, save_results, write_json
from .suite import _Progress, geomean
from .timing import time_interleaved

SUITE_CELLS = tuple(TABLE)  # every cell of the table: rnn_tanh, rnn_relu, lstm, gru
SUITE_B = (1, 16, 64)
SUITE_H = (32, 128, 512)
SUITE_DTYPES = ("float32", "float64")
CLIENT_TARGET, GRID_TARGET = 1.5, 1.0
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


# ---- the client: pytorch/examples' time_sequence_prediction -------------------------------------------
def sine_waves(T: int = 20, L: int = 1000, N: int = 100, seed: int = 2) -> np.ndarray:
    """generate_sine_wave.py: N sine waves of period 2*pi*T, L samples each, randomly shifted. [N, L] float64."""
    rng = np.random.RandomState(seed)
    x = np.empty((N, L), "int64")
    x[:] = np.array(range(L)) + rng.randint(-4 * T, 4 * T, N).reshape(N, 1)
    return np.sin(x / 1.0 / T).astype("float64")


def _sequence_class():
    import torch
    import torch.nn as nn

    class Sequence(nn.Module):
        """time_sequence_prediction's train.py model, unchanged (torch.nn's cells; fastrnn.nn.convert swaps them)."""

        def __init__(self):
            super().__init__()
            self.lstm1 = nn.LSTMCell(1, 51)
            self.lstm2 = nn.LSTMCell(51, 51)
            self.linear = nn.Linear(51, 1)

        def forward(self, input, future=0):
            outputs = []
            h_t = torch.zeros(input.size(0), 51, dtype=torch.double)
            c_t = torch.zeros(input.size(0), 51, dtype=torch.double)
            h_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)
            c_t2 = torch.zeros(input.size(0), 51, dtype=torch.double)

            for input_t in input.split(1, dim=1):
                h_t, c_t = self.lstm1(input_t, (h_t, c_t))
                h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
                output = self.linear(h_t2)
                outputs += [output]
            for i in range(future):  # if we should predict the future
                h_t, c_t = self.lstm1(output, (h_t, c_t))
                h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
                output = self.linear(h_t2)
                outputs += [output]
            outputs = torch.cat(outputs, dim=1)
            return outputs
    return Sequence


def make_sequence(impl: str, seed: int = 0):
    """The client's model in float64 from torch.manual_seed(seed) (train.py's seed 0), with
    fastrnn.nn's cells for impl 'fastrnn' (the same weights for the same seed)."""
    import torch
    if impl not in ("torch", "fastrnn"):
        raise ValueError(f"impl must be 'torch' or 'fastrnn', got {impl!r}")
    torch.manual_seed(seed)
    seq = _sequence_class()().double()
    if impl == "fastrnn":
        import fastrnn.nn
        seq = fastrnn.nn.convert(seq)
    return seq


def client_data():
    """train.py's tensors: input [97, 999], target [97, 999], test_input [3, 999], test_target [3, 999]."""
    import torch
    data = sine_waves()
    return (torch.from_numpy(data[3:, :-1]), torch.from_numpy(data[3:, 1:]),
            torch.from_numpy(data[:3, :-1]), torch.from_numpy(data[:3, 1:]))


def client_closure(seq, input, target):
    """train.py's L-BFGS closure (zero_grad, forward, MSE, backward); returns the loss."""
    import torch

    def closure():
        seq.zero_grad()
        loss = torch.nn.functional.mse_loss(seq(input), target)
        loss.backward()
        return loss
    return closure


def run_client(torch, reps: int, clock: str, future: int = 1000) -> dict:
    input, target, test_input, _ = client_data()
    seqs = {impl: make_sequence(impl) for impl in ("torch", "fastrnn")}
    closures = {impl: client_closure(s, input, target) for impl, s in seqs.items()}
    losses = {impl: f().item() for impl, f in closures.items()}
    grads = {impl: [p.grad.clone() for p in s.parameters()] for impl, s in seqs.items()}
    worst = max(float(((a - b).abs() / (1 + b.abs())).max()) for a, b in zip(grads["fastrnn"], grads["torch"]))
    if abs(losses["fastrnn"] - losses["torch"]) > 1e-9 * (1 + abs(losses["torch"])) or worst > 1e-8:
        raise RuntimeError(f"client: fastrnn and torch.nn disagree (losses {losses}, worst gradient {worst:.2e})")

    def predict(seq):
        def run():
            with torch.no_grad():
                seq(test_input, future=future)
        return run
    train = time_interleaved({f"{k} closure": f for k, f in closures.items()}, reps, 0.0, clock=CLOCKS[clock])
    pred = time_interleaved({f"{k} predict": predict(s) for k, s in seqs.items()}, reps, 0.0, clock=CLOCKS[clock])
    ms = {k: v["median_ms"] for k, v in {**train, **pred}.items()}
    return {"B": 97, "steps": input.shape[1], "future": future, "loss": losses, "max_grad_diff": worst, "ms": ms,
            "ms_min_max": {k: (v["min_ms"], v["max_ms"]) for k, v in {**train, **pred}.items()},
            "speedup_closure": ms["torch closure"] / ms["fastrnn closure"],
            "speedup_predict": ms["torch predict"] / ms["fastrnn predict"]}


# ---- the grid ---------------------------------------------------------------------------------------
def cell_pair(torch, cell: str, I: int, H: int, dtype, seed: int = 0):
    """torch.nn's and fastrnn.nn's cell with the same parameters."""
    import fastrnn.nn as fnn
    info = TABLE[cell]
    name, kw = info.torch_module + "Cell", ({"nonlinearity": info.nonlinearity} if info.nonlinearity else {})
    torch.manual_seed(seed)
    ref = getattr(torch.nn, name)(I, H, **kw).to(dtype)
    fast = getattr(fnn, name)(I, H, **kw).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def step_fns(torch, cell: str, B: int, H: int, dtype: str, mode: str):
    """{"torch": f, "fastrnn": f} for one step (mode "forward": no grad; "training": forward +
    backward of the new states' sum, states requiring grad), and each one's results to compare."""
    dt = getattr(torch, dtype)
    has_c = TABLE[cell].carries_cell_state
    mods = cell_pair(torch, cell, H, H, dt)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, H, dtype=dt, generator=g) * 2 - 1
    states = [(torch.rand(B, H, dtype=dt, generator=g) * 2 - 1).requires_grad_(mode == "training")
              for _ in range(2 if has_c else 1)]
    hx = tuple(states) if has_c else states[0]

    def fn(m):
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return m(x, hx)
        else:
            def run():
                out = m(x, hx)
                (sum(o.sum() for o in out) if has_c else out.sum()).backward()
                return out
        return run

    def results(m):
        m.zero_grad()
        for s in states:
            s.grad = None
        out = fn(m)()
        outs = list(out) if has_c else [out]
        if mode == "training":
            outs += [s.grad.clone() for s in states] + [p.grad.clone() for p in m.parameters()]
        return [o.detach() for o in outs]
    ref, fast = mods
    return {"torch": fn(ref), "fastrnn": fn(fast)}, results(fast), results(ref)


def run_grid(torch, reps: int, clock: str, min_sample_s: float, cells=SUITE_CELLS, bs=SUITE_B, hs=SUITE_H,
             dtypes=SUITE_DTYPES, modes=("forward", "training"), emit=None, progress: bool = True) -> List[dict]:
    grid = [(c, B, H, d, m) for c in cells for d in dtypes for H in hs for B in bs for m in modes]
    bar = _Progress(len(grid), progress)
    rows = []
    try:
        for k, (cell, B, H, dtype, mode) in enumerate(grid):
            bar.update(k, f"{cell} B={B} H={H} {dtype} {mode}")
            fns, mine, theirs = step_fns(torch, cell, B, H, dtype, mode)
            diff = max(float(((a - b).abs() / (1 + b.abs())).max()) for a, b in zip(mine, theirs))
            if diff > GROSS_MISMATCH:
                raise VerificationError(f"{cell} B={B} H={H} {dtype} {mode}: fastrnn.nn and torch.nn differ by {diff:.2e}")
            timed = time_interleaved(fns, reps, min_sample_s, clock=CLOCKS[clock])
            us = {name: t["median_ms"] * 1e3 for name, t in timed.items()}
            row = {"cell": cell, "B": B, "H": H, "dtype": dtype, "mode": mode, "us": us,
                   "us_min_max": {n: (t["min_ms"] * 1e3, t["max_ms"] * 1e3) for n, t in timed.items()},
                   "speedup": us["torch"] / us["fastrnn"], "max_rel_diff": diff}
            rows.append(row)
            if emit:
                bar.clear()
                emit(format_grid_row(row))
    finally:
        bar.clear()
    return rows


GRID_HEAD = ("| cell | dtype | H | B | mode | fastrnn.nn µs (min–max) | torch.nn µs (min–max) | speed-up |\n"
             "|---|---|---|---|---|---|---|---|")


def format_grid_row(r: dict) -> str:
    us, mm = r["us"], r["us_min_max"]
    return (f"| {r['cell']} | {r['dtype']} | {r['H']} | {r['B']} | {r['mode']} | {us['fastrnn']:.1f} "
            f"({mm['fastrnn'][0]:.1f}–{mm['fastrnn'][1]:.1f}) | {us['torch']:.1f} ({mm['torch'][0]:.1f}–"
            f"{mm['torch'][1]:.1f}) | {r['speedup']:.2f}x |")


def format_client(c: dict) -> str:
    ms, mm = c["ms"], c["ms_min_max"]
    lines = ["| time_sequence_prediction (B = 97, float64) | fastrnn.nn ms (min–max) | torch.nn ms (min–max) | speed-up |",
             "|---|---|---|---|"]
    for part, label in (("closure", f"L-BFGS closure: forward + backward over {c['steps']} steps"),
                        ("predict", f"prediction, no grad: B = 3, {c['steps']} + {c['future']} steps")):
        f, t = f"fastrnn {part}", f"torch {part}"
        lines.append(f"| {label} | {ms[f]:.1f} ({mm[f][0]:.1f}–{mm[f][1]:.1f}) | {ms[t]:.1f} ({mm[t][0]:.1f}–"
                     f"{mm[t][1]:.1f}) | {ms[t] / ms[f]:.2f}x |")
    return "\n".join(lines)


def summarize(client: Optional[dict], rows: List[dict]) -> dict:
    s = {}
    if client:
        s["client_closure"] = client["speedup_closure"]
        s["client_predict"] = client["speedup_predict"]
    if rows:
        for mode in ("forward", "training"):
            sel = [r for r in rows if r["mode"] == mode]
            if sel:
                worst = min(sel, key=lambda r: r["speedup"])
                s[f"{mode}_geomean"] = geomean([r["speedup"] for r in sel])
                s[f"{mode}_min"] = worst["speedup"]
                s[f"{mode}_min_case"] = f"{worst['cell']} {worst['dtype']} H={worst['H']} B={worst['B']}"
                s[f"{mode}_below_target"] = sum(r["speedup"] < GRID_TARGET for r in sel)
                s[f"{mode}_cases"] = len(sel)
    return s


def format_summary(s: dict) -> str:
    out = []
    if "client_closure" in s:
        out.append(f"Client (time_sequence_prediction closure): {s['client_closure']:.2f}x torch.nn (target "
                   f"{CLIENT_TARGET}x: {'met' if s['client_closure'] >= CLIENT_TARGET else 'missed'}); its "
                   f"prediction pass {s['client_predict']:.2f}x.")
    for mode in ("forward", "training"):
        if f"{mode}_cases" in s:
            out.append(f"Grid, {mode}: geometric mean {s[f'{mode}_geomean']:.2f}x, worst {s[f'{mode}_min']:.2f}x "
                       f"({s[f'{mode}_min_case']}); {s[f'{mode}_below_target']} of {s[f'{mode}_cases']} cases below "
                       f"{GRID_TARGET}x.")
    return "\n".join(out)


def main(args) -> int:
    """``--suite cells``: the client and the grid (``--quick``: the client and B = 16, H = 128 only),
    printed as they go; ``--save DIR`` writes <date>-<machine>-cells.{json,md}."""
    torch, note = _import_torch(args.no_torch)
    if torch is None:
        print(f"fastrnn.bench: --suite cells compares with torch.nn, which is {note}", file=sys.stderr)
        return 2
    threads = args.threads or 1
    torch.set_num_threads(threads)
    fastrnn.set_num_threads(threads)
    reps = args.reps or (3 if args.quick else 5)
    min_sample_s = 0.02 if args.min_sample_ms is None else args.min_sample_ms / 1e3
    header = make_header(threads, torch, "torch.nn's cells: ATen ops (MKL GEMMs)")
    header["suite"] = (f"cells stepped from Python; clock: {args.clock} ("
                       + ("this thread's CPU time" if args.clock == "cpu" else "wall time") + ")")
    result = {"header": header, "reps": reps, "min_sample_s": min_sample_s, "clock": args.clock}
    emit = lambda text: print(text, flush=True)  # noqa: E731
    emit(format_header(result) + f"\n- {header['suite']}\n")
    result["client"] = run_client(torch, max(3, reps // 2 + 1), args.clock)
    emit(format_client(result["client"]) + "\n\n" + GRID_HEAD)
    kw = dict(bs=(16,), hs=(128,)) if args.quick else {}
    result["grid"] = run_grid(torch, reps, args.clock, min_sample_s, emit=emit, progress=not args.no_progress, **kw)
    result["summary"] = summarize(result["client"], result["grid"])
    text = (format_header(result) + f"\n- {header['suite']}\n\n" + format_client(result["client"]) + "\n\n" + GRID_HEAD
            + "\n" + "\n".join(format_grid_row(r) for r in result["grid"]) + "\n\n" + format_summary(result["summary"])
            + "\n")
    print("\n" + format_summary(result["summary"]))
    if args.json:
        write_json(result, args.json)
    if args.save:
        save_results(result, text, args.save, results_basename(result) + "-cells")
    return 0
