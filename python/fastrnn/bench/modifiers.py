"""The training modifiers' benchmark (``python -m fastrnn.bench --modifiers``): a training
step (forward + backward of ``y.sum()``) of ``fastrnn.nn.LSTM`` / ``GRU`` with each modifier, against
the same module without it (the target is <= 1.1x) and against the plain-PyTorch loop a user writes
today for it (torch.nn.LSTMCell / GRUCell stepped in Python with the modifier's few lines: the
zoneout and recurrent-dropout loops, hooks for clipping, a state list for dilation; weight dropout
is torch.nn.LSTM / GRU on a masked W_hh, AWD-LSTM's WeightDrop, which stays fused). Median of
interleaved samples (timing.time_interleaved). Kept apart from the CPU suite so that the cell
variants' benchmark can live next to it. The COMBINATIONS rows time a modifier on one of
the fused LSTM variants against that variant alone (their "plain" column; no loop column:
the variants' plain-PyTorch loops are --variants' rows).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List

from fastrnn.cell_table import GRU, LSTM, cell_info

from .machine import make_header
from .report import results_basename, save_results, write_json
from .timing import time_interleaved

VARIANTS = {  # option name -> the keyword fastrnn.nn takes
    "zoneout": dict(zoneout=0.1),
    "recurrent_dropout": dict(recurrent_dropout=0.25),
    "weight_dropout": dict(weight_dropout=0.5),
    "grad_clip": dict(grad_clip=1.0),
    "dilation": dict(dilation=2),
}

# a modifier on a fused LSTM variant: name -> (the variant's options, the modifier's)
COMBINATIONS = {
    "peephole+zoneout": (dict(peephole=True), dict(zoneout=0.1, zoneout_cell=0.05)),
    "coupled+recurrent_dropout": (dict(coupled=True), dict(recurrent_dropout=0.25)),
    "cell_clip+grad_clip": (dict(cell_clip=3.0), dict(grad_clip=1.0)),
}


def _torch_loop_step(torch, mode: str, option: str, kw: dict, cell, layer, x):
    """One training step of the plain-PyTorch implementation a user writes for `option`."""
    F = torch.nn.functional
    T, B = x.shape[0], x.shape[1]
    H = cell.hidden_size
    if option == "weight_dropout":  # WeightDrop: the fused torch.nn layer on a masked W_hh
        weights = dict(layer.named_parameters())
        weights["weight_hh_l0"] = F.dropout(weights["weight_hh_l0"], kw["weight_dropout"], True)
        y, _ = torch.func.functional_call(layer, weights, (x,))
        y.sum().backward()
        return
    lstm = cell_info(mode).carries_cell_state  # the LSTM's equations, else the GRU's
    h = x.new_zeros(B, H)
    c = x.new_zeros(B, H) if lstm else None
    mask = None
    if option == "recurrent_dropout":
        keep = 1 - kw["recurrent_dropout"]
        mask = x.new_empty(B, H).bernoulli_(keep) / keep
    d = kw.get("dilation", 1)
    states = []
    ys = []
    for t in range(T):
        hp, cp = (states[t - d] if t >= d else (x.new_zeros(B, H), x.new_zeros(B, H) if lstm else None)) \
            if option == "dilation" else (h, c)
        if mask is not None:  # W_hh (m * h): the cell's own product, so its W_hh sees the masked h
            gi = F.linear(x[t], cell.weight_ih, cell.bias_ih)
            gh = F.linear(mask * hp, cell.weight_hh, cell.bias_hh)
            if lstm:
                i, f, g, o = (gi + gh).chunk(4, 1)
                c_new = torch.sigmoid(f) * cp + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
            else:
                ri, zi, ni = gi.chunk(3, 1)
                rh, zh, nh = gh.chunk(3, 1)
                r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
                h_new, c_new = (1 - z) * torch.tanh(ni + r * nh) + z * hp, None
        elif lstm:
            h_new, c_new = cell(x[t], (hp, cp))
        else:
            h_new, c_new = cell(x[t], hp), None
        if option == "zoneout":
            p = kw["zoneout"]
            dm = x.new_empty(B, H).bernoulli_(p)
            h_new = dm * hp + (1 - dm) * h_new
        if option == "grad_clip":
            C = kw["grad_clip"]
            h_new.register_hook(lambda g: g.clamp(-C, C))
            if lstm:
                c_new.register_hook(lambda g: g.clamp(-C, C))
        h, c = h_new, c_new
        states.append((h, c))
        ys.append(h)
    torch.stack(ys).sum().backward()


# (T, B, I, H): small and mid batches (the speed targets are for B <= 32) and one above
DEFAULT_SIZES = tuple((50, B, 256, 256) for B in (1, 8, 32, 64))


def run_variants(cells=(LSTM, GRU), sizes=DEFAULT_SIZES, reps: int = 5, min_sample_s: float = 0.05,
                 emit: Callable[[str], None] = print, cpu_time: bool = False) -> dict:
    """Times every modifier on every cell and size; returns {"header", "rows"} (ms, ratios).
    cpu_time: samples in the process's CPU time instead of wall time (for one thread on a loaded
    machine). fastrnn draws zoneout's and recurrent dropout's masks in its CPU kernels (one seed per
    call); the loops draw theirs with torch, as a user's loop does."""
    import torch

    import fastrnn.nn as fnn
    rows: List[dict] = []
    emit("| cell | T, B, I, H | option | plain fastrnn ms | with option ms | ratio | torch loop ms | speed-up vs loop |")
    emit("|---|---|---|---|---|---|---|---|")
    for mode in cells:
        name = cell_info(mode).torch_module
        cls, tcell, tlayer = getattr(fnn, name), getattr(torch.nn, name + "Cell"), getattr(torch.nn, name)
        for (T, B, I, H) in sizes:
            torch.manual_seed(0)
            x = torch.randn(T, B, I)
            plain = cls(I, H)
            fns: Dict[str, Callable[[], object]] = {}

            def step(m):
                def f():
                    m.zero_grad(set_to_none=True)
                    y, _ = m(x)
                    y.sum().backward()
                return f
            fns["plain"] = step(plain)
            cell, layer = tcell(I, H), tlayer(I, H)
            for option, kw in VARIANTS.items():
                m = cls(I, H, **kw)
                m.load_state_dict(plain.state_dict())
                fns[option] = step(m)

                def loop(option=option, kw=kw):
                    cell.zero_grad(set_to_none=True)
                    layer.zero_grad(set_to_none=True)
                    _torch_loop_step(torch, mode, option, kw, cell, layer, x)
                fns["loop:" + option] = loop
            for name, (variant, kw) in COMBINATIONS.items() if cell_info(mode).lstm_variants else ():
                alone = cls(I, H, **variant)
                both = cls(I, H, **variant, **kw)
                both.load_state_dict(alone.state_dict())
                fns["variant:" + name], fns[name] = step(alone), step(both)
            t = time_interleaved(fns, reps, min_sample_s, clock=time.process_time if cpu_time else time.perf_counter)
            base = t["plain"]["median_ms"]
            for option in VARIANTS:
                ms, loop_ms = t[option]["median_ms"], t["loop:" + option]["median_ms"]
                row = dict(cell=mode, T=T, B=B, I=I, H=H, option=option, plain_ms=base, option_ms=ms,
                           ratio=ms / base, loop_ms=loop_ms, speedup_vs_loop=loop_ms / ms)
                rows.append(row)
                emit(f"| {mode} | {T}, {B}, {I}, {H} | {option} | {base:.2f} | {ms:.2f} | {ms / base:.2f}x | "
                     f"{loop_ms:.2f} | {loop_ms / ms:.1f}x |")
            for name in COMBINATIONS if cell_info(mode).lstm_variants else ():
                alone_ms, ms = t["variant:" + name]["median_ms"], t[name]["median_ms"]
                rows.append(dict(cell=mode, T=T, B=B, I=I, H=H, option=name, plain_ms=alone_ms, option_ms=ms,
                                 ratio=ms / alone_ms, loop_ms=None, speedup_vs_loop=None))
                emit(f"| {mode} | {T}, {B}, {I}, {H} | {name} (vs {name.split('+')[0]} alone) | {alone_ms:.2f} | "
                     f"{ms:.2f} | {ms / alone_ms:.2f}x | — | — |")
    header = make_header(__import__("fastrnn").get_num_threads(), torch, "torch.nn cells stepped in Python")
    header.update(torch_threads=torch.get_num_threads(), reps=reps,
                  clock="process CPU time" if cpu_time else "wall", load_average=os.getloadavg())
    return {"header": header, "rows": rows}


def main_variants(args) -> int:
    """`python -m fastrnn.bench --modifiers`: print the table. --sizes HxBxT[xI] sets the sizes,
    --threads the threads of fastrnn and torch alike, --cpu-time the clock; --save DIR writes
    DIR/<date>-<machine>-modifiers-<threads>t.{json,md}, --json PATH the full result."""
    lines: List[str] = []

    def emit(text):
        lines.append(text)
        print(text, flush=True)
    if args.threads:
        import torch

        import fastrnn
        fastrnn.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    if args.sizes is not None:
        sizes = tuple((t, b, i, h) for h, b, t, i in args.sizes)
    else:
        sizes = ((20, 8, 128, 128),) if args.quick else DEFAULT_SIZES
    result = run_variants(sizes=sizes, reps=args.reps or (3 if args.quick else 5), emit=emit,
                          cpu_time=getattr(args, "cpu_time", False))
    h = result["header"]
    emit(f"\n{h['date_utc']}, {h['cpu']} ({h['fastrnn_cpu_isa']} kernels), fastrnn {h['threads']} / torch "
         f"{h['torch_threads']} threads, {h['clock']}, load average {', '.join(f'{v:.1f}' for v in h['load_average'])}, "
         f"median of {h['reps']} interleaved samples.")
    markdown = "\n".join(lines) + "\n"
    if args.save:
        save_results(result, markdown, args.save, f"{results_basename(result)}-modifiers-{h['threads']}t")
    if args.json:
        write_json(result, args.json)
    return 0

