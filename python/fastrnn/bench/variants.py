"""--variants: the cell variants against fastrnn's base cell, a plain-PyTorch loop and, for those
fastrnn.nn also runs as composed torch ops (reset_after=False, layer_norm), that path; and the
projected LSTM (proj_size) against torch.nn.LSTM(proj_size), fastrnn's base LSTM of the same H and
the composed torch ops fastrnn.nn runs where the kernels do not."""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, Sequence

import fastrnn
from fastrnn.cell_table import BY_TORCH_MODE, GRU, LSTM, cell_info

from .impls import GROSS_MISMATCH, VerificationError
from .machine import _import_torch, make_header
from .report import format_header, _ms
from .timing import time_interleaved


# ------------------------------------------------------------------------------------------------
# --variants: the cell variants against fastrnn's base cell and a plain-PyTorch loop
# ------------------------------------------------------------------------------------------------
VARIANT_SIZES = ((256, 8, 50), (256, 64, 50))  # (H, B, T), I = H: B <= 16 and B = 64


TINY_VARIANT_SIZES = ((8, 2, 3),)  # the harness's own test


_LSTM_MODULE, _GRU_MODULE = cell_info(LSTM).torch_module, cell_info(GRU).torch_module  # fastrnn.nn class names
VARIANT_CASES = (  # (name, module, options)
    ("lstm peephole", _LSTM_MODULE, dict(peephole=True)),
    ("lstm coupled", _LSTM_MODULE, dict(coupled=True)),
    ("lstm cell_clip", _LSTM_MODULE, dict(cell_clip=1.0)),
    ("lstm peephole+coupled+clip", _LSTM_MODULE, dict(peephole=True, coupled=True, cell_clip=1.0)),
    ("gru reset_after=False", _GRU_MODULE, dict(reset_after=False)),
    ("lstm layer_norm", _LSTM_MODULE, dict(layer_norm=True)),
    ("gru layer_norm", _GRU_MODULE, dict(layer_norm=True)),
)


def _torch_loop(torch, m, x):
    """What a user writes without fastrnn: the variant's step as a Python loop of torch ops over T,
    reading m's parameters (x [T, B, I] -> y [T, B, H]); the input projection hoisted."""
    F = torch.nn.functional
    w_ih, w_hh, b_ih, b_hh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
    H = m.hidden_size
    ln = getattr(m, "layer_norm", False)  # LN(v)*γ over the G*H row, then the bias
    has_c = BY_TORCH_MODE[m.mode].carries_cell_state  # the LSTM's equations, else the GRU's

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
            if not has_c:  # the GRU: the reset gate multiplies the normalised, gained n part plus b_hn
                r_i, z_i, n_i = xw[t].chunk(3, 1)
                r_h, z_h, n_h = gh.chunk(3, 1)
                r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
                h = (1 - z) * torch.tanh(n_i + r * n_h) + z * h
            else:
                a_i, a_f, a_g, a_o = (xw[t] + gh).chunk(4, 1)
                c = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
                h = torch.sigmoid(a_o) * torch.tanh(norm(c, m.ln_weight_c_l0, m.ln_bias_c_l0))
        elif not has_c:  # the GRU: reset before the hidden product
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


def _has_composed_path(m) -> bool:
    """The variants fastrnn.nn ran as composed torch ops before the fused kernels (and still does off
    the CPU): GRU(reset_after=False), layer_norm=True."""
    return not getattr(m, "reset_after", True) or getattr(m, "layer_norm", False)


def _composed(m, x):
    """fastrnn.nn's composed-torch-ops path for the module (its Python loop, autograd backward)."""
    from fastrnn.nn._composed import _composed_recurrence
    return _composed_recurrence(m.mode, x, m._weights(), None, None, None, m.hidden_size, m.num_layers,
                                m.bidirectional, None, not m.reset_after, m.layer_norm)


def _timed(torch, fn: Callable, training: bool) -> Callable[[], None]:
    """What a sample runs: fn() under no_grad (inference), or fn() and the backward of its output's
    sum (training; a module's output is (y, state))."""
    if not training:
        def infer():
            with torch.no_grad():
                fn()
        return infer

    def train():
        out = fn()
        (out[0] if isinstance(out, tuple) else out).sum().backward()
    return train


def run_variants(sizes=VARIANT_SIZES, threads: Optional[int] = None, reps: int = 5, min_sample_s: float = 0.05,
                 emit: Optional[Callable[[str], None]] = None, cases: Optional[Sequence[str]] = None,
                 clock: Callable[[], float] = time.perf_counter, projection_only: bool = False) -> dict:
    """Times each variant (fastrnn.nn, float32, one layer) against fastrnn's base cell of the same
    size and against ``_torch_loop``, interleaved in one process, in inference and training
    (forward + backward of y.sum()); the variants that also have a composed-torch-ops path
    (``_has_composed_path``) against that too; then the projected LSTM (``run_projection``).
    ``cases``: the VARIANT_CASES names to run (default all); ``clock``: the samples' clock
    (time.process_time: CPU time, readable at one thread on a loaded machine); projection_only: the
    projected LSTM's rows only. Returns the JSON-able result with per-case ratios."""
    torch, torch_note = _import_torch(False)
    if torch is None:
        raise RuntimeError(f"--variants needs torch ({torch_note})")
    import fastrnn.nn as fnn
    threads = threads or fastrnn.get_num_threads()
    fastrnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    result = {"header": make_header(threads, torch, torch_note), "reps": reps, "min_sample_s": min_sample_s,
              "clock": "process CPU time" if clock is time.process_time else "wall", "load_average": os.getloadavg(),
              "variant_cases": []}
    if emit:
        emit(format_header(result) + "\n\n" + VARIANT_TABLE_HEAD)
    for (H, B, T) in sizes:
        for name, module, opts in () if projection_only else VARIANT_CASES:
            if cases is not None and name not in cases:
                continue
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
                    return _timed(torch, fn, train)
                fns = {"variant": call(lambda: variant(x)), "base": call(lambda: base(x)),
                       "torch_loop": call(lambda: _torch_loop(torch, variant, x))}
                if _has_composed_path(variant):
                    fns["composed"] = call(lambda: _composed(variant, x))
                t = time_interleaved(fns, reps, min_sample_s, clock=clock)
                row = {"name": name, "mode": mode, "H": H, "B": B, "T": T, "times": t,
                       "variant_over_base": t["variant"]["median_ms"] / t["base"]["median_ms"],
                       "loop_over_variant": t["torch_loop"]["median_ms"] / t["variant"]["median_ms"]}
                if "composed" in t:
                    row["composed_over_variant"] = t["composed"]["median_ms"] / t["variant"]["median_ms"]
                result["variant_cases"].append(row)
                if emit:
                    emit(format_variant_row(row))
    projection_sizes = PROJECTION_SIZES if sizes is VARIANT_SIZES else [(H, max(1, H // 4), B, T) for H, B, T in sizes]
    result["projection_cases"] = run_projection(torch, projection_sizes, reps, min_sample_s, emit, clock)
    return result


# ------------------------------------------------------------------------------------------------
# the projected LSTM: fused (fastrnn.nn.LSTM(proj_size)) vs torch.nn.LSTM(proj_size) (ATen's
# unfused path on the CPU: oneDNN has no projection), vs fastrnn's base LSTM of the same H (what the
# projection costs on top), and vs fastrnn's pure-torch path of before (the composed torch ops
# fastrnn.nn still runs where the op cannot)
# ------------------------------------------------------------------------------------------------
PROJECTION_SIZES = ((512, 128, 32, 100), (1024, 256, 32, 100))  # (H, P, B, T), I = H


def run_projection(torch, sizes, reps: int, min_sample_s: float, emit: Optional[Callable[[str], None]] = None,
                   clock: Callable[[], float] = time.perf_counter) -> list:
    """Each (H, P, B, T): one layer, float32, inference and training (forward + backward of
    y.sum()), the four implementations interleaved; rows with the times and the ratios."""
    import fastrnn.nn as fnn
    from fastrnn.nn import _recurrence
    if emit:
        emit("\n" + PROJECTION_TABLE_HEAD)
    rows = []
    for (H, P, B, T) in sizes:
        torch.manual_seed(0)
        ref = torch.nn.LSTM(H, H, proj_size=P)
        fast = fnn.LSTM(H, H, proj_size=P)
        fast.load_state_dict(ref.state_dict())
        base = fnn.LSTM(H, H)  # the base cell, unprojected
        x = torch.randn(T, B, H)

        def composed():  # what fastrnn.nn.LSTM(proj_size) ran before the projection was fused
            return _recurrence._composed_recurrence("LSTM", x, fast._weights(), None, None, None, H, 1, False,
                                                    fast._cell)
        with torch.no_grad():
            y = fast(x)[0]
            err = max(float((y - ref(x)[0]).abs().max()), float((y - composed()[0]).abs().max()))
        if not err < GROSS_MISMATCH:
            raise VerificationError(f"lstm proj_size={P} H={H} B={B} T={T}: |fastrnn - torch.nn| = {err:.3g}")
        for mode in ("inference", "training"):
            def call(fn, train=mode == "training"):
                return _timed(torch, fn, train)
            fns = {"fastrnn": call(lambda: fast(x)), "torch": call(lambda: ref(x)), "base": call(lambda: base(x)),
                   "old": call(composed)}
            t = time_interleaved(fns, reps, min_sample_s, clock=clock)
            row = {"name": f"lstm proj_size={P}", "mode": mode, "H": H, "P": P, "B": B, "T": T, "times": t,
                   "torch_over_fastrnn": t["torch"]["median_ms"] / t["fastrnn"]["median_ms"],
                   "fastrnn_over_base": t["fastrnn"]["median_ms"] / t["base"]["median_ms"],
                   "old_over_fastrnn": t["old"]["median_ms"] / t["fastrnn"]["median_ms"]}
            rows.append(row)
            if emit:
                emit(format_projection_row(row))
    return rows


PROJECTION_TABLE_HEAD = ("| projected LSTM | mode | H | P | B | T | fastrnn ms | torch.nn ms | base cell ms "
                         "| old pure-torch ms | torch.nn / fastrnn | fastrnn / base | old / fastrnn |\n"
                         "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_projection_row(r: dict) -> str:
    t = r["times"]
    return (f"| {r['name']} | {r['mode']} | {r['H']} | {r['P']} | {r['B']} | {r['T']} | {_ms(t['fastrnn'])} "
            f"| {_ms(t['torch'])} | {_ms(t['base'])} | {_ms(t['old'])} | {r['torch_over_fastrnn']:.2f}x "
            f"| {r['fastrnn_over_base']:.2f}x | {r['old_over_fastrnn']:.1f}x |")


VARIANT_TABLE_HEAD = ("| variant | mode | H | B | T | variant ms | base cell ms | torch loop ms | composed ms "
                      "| variant / base | loop / variant | composed / variant |\n"
                      "|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_variant_row(r: dict) -> str:
    """A table row; "composed" (fastrnn.nn's composed torch ops) only where the variant has that path."""
    t = r["times"]
    composed = _ms(t["composed"]) if "composed" in t else "-"
    ratio = f"{r['composed_over_variant']:.1f}x" if "composed_over_variant" in r else "-"
    return (f"| {r['name']} | {r['mode']} | {r['H']} | {r['B']} | {r['T']} | {_ms(t['variant'])} | {_ms(t['base'])} "
            f"| {_ms(t['torch_loop'])} | {composed} | {r['variant_over_base']:.2f}x | {r['loop_over_variant']:.1f}x "
            f"| {ratio} |")
