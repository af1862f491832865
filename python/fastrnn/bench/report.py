"""The CPU suite's output: the header, the Markdown table and summary, the plot, and the results'
file names."""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Optional


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


def save_results(result: dict, markdown: str, directory: str, name: str) -> None:
    """``--save``: <directory>/<name>.json (the full results) and <name>.md (the report), and a line
    on stderr naming them."""
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, name)
    write_json(result, base + ".json")
    with open(base + ".md", "w") as f:
        f.write(markdown)
    print(f"saved {base}.json and {base}.md", file=sys.stderr)


def write_json(result: dict, path: str) -> None:
    """``--json``: the full results."""
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def results_basename(result: dict) -> str:
    """<date>-<machine> for bench/results/: the date, a slug of the CPU model, the instruction set the
    kernels ran with (virtual machines often show one model name for different CPUs) and the core
    count."""
    h = result["header"]
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|cpu|@.*", "", h["cpu"].lower())).strip("-")
    isa = h.get("fastrnn_cpu_isa")
    return f"{h['date_utc'][:10]}-{slug or 'cpu'}{'-' + isa if isa else ''}-{h['affinity']}c"
