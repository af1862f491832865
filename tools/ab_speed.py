"""A short alternated A/B timing of two builds of fastrnn (each its own Python, e.g. its own
virtualenv) on a few representative cases, for a refactoring that must not cost speed.

    python tools/ab_speed.py --base /work/venv-base/bin/python --new /work/venv-new/bin/python --rounds 6

Each round runs one fresh process per build, base then new, alternating; a process warms up and
takes the median of several calls per case. The report is, per case, the median over rounds of
those medians and new/base. Not a benchmark suite (python -m fastrnn.bench is): it is for
telling "unchanged" from "slower" between two builds on the same machine at the same time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# (name, cell, T, B, I, H, training)
CASES = [(f"{cell} H256 B32 T100 {'train' if train else 'infer'}", cell, 100, 32, 256, 256, train)
         for cell in ("lstm", "gru", "rnn_tanh") for train in (False, True)]
CASES += [(f"{cell} H1024 B4 T1 infer", cell, 1, 4, 1024, 1024, False) for cell in ("lstm", "gru", "rnn_tanh")]
CASES += [(f"{cell} H256 B1 T100 train", cell, 100, 1, 256, 256, True) for cell in ("lstm", "gru", "rnn_tanh")]
CASES += [(f"lstm H256 B{B} T100 train", "lstm", 100, B, 256, 256, True) for B in (4, 8)]


# The default suite of `python -m fastrnn.bench` (bench/README.md), through the NumPy API: (H, B, T) per
# cell and mode, (1536, 4, 50) in inference only, and the 2-layer bidirectional LSTM in training.
SUITE_SIZES = [(256, 1, 100), (256, 32, 100), (512, 16, 50), (512, 64, 50), (1024, 32, 25), (128, 128, 200)]
SUITE = [(f"{cell} H{H} B{B} T{T} {'train' if train else 'infer'}", cell, T, B, H, H, train)
         for cell in ("lstm", "gru", "rnn_tanh") for train in (False, True) for H, B, T in SUITE_SIZES]
SUITE += [(f"{cell} H1536 B4 T50 infer", cell, 50, 4, 1536, 1536, False) for cell in ("lstm", "gru", "rnn_tanh")]
SUITE += [("lstm H256 B32 T100 L2 bidir train", "lstm", 100, 32, 256, 256, True)]
# fastrnn.nn modules (the torch side of the Python layers) and the decode step.
MODULE_CASES = ["nn.LSTM H256 B32 T100 train", "nn.LSTMCell H51 B97 step train", "PreparedCell lstm H512 B1 step"]


def selected(pattern, suite=False):
    cases = SUITE if suite else CASES
    return [c for c in cases if pattern in c[0]] + ([(n,) for n in MODULE_CASES if pattern in n] if suite else [])


CLOCK = time.perf_counter  # --clock cpu: time.process_time (robust to other load at --threads 1)


def _median_call(call, reps):
    for _ in range(3):
        call()
    times = []
    for _ in range(reps):
        t0 = CLOCK()
        call()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def _module_call(name):
    """A zero-argument call for one of MODULE_CASES."""
    import fastrnn

    if name.startswith("PreparedCell"):
        w = fastrnn.init_weights("lstm", 512, 512, dtype=np.float32, seed=1)
        step = fastrnn.PreparedCell("lstm", *w[0])
        x = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
        h = np.zeros((1, 512), np.float32)
        return lambda: step(x, h, h)
    import torch
    import fastrnn.nn as fnn

    torch.manual_seed(0)
    torch.set_num_threads(fastrnn.get_num_threads())  # the same threads as fastrnn's
    if name.startswith("nn.LSTMCell"):
        cell = fnn.LSTMCell(51, 51).double()
        x = torch.randn(97, 51, dtype=torch.float64)

        def step():
            h, c = cell(x)
            (h.sum() + c.sum()).backward()
        return step
    lstm = fnn.LSTM(256, 256)
    x = torch.randn(100, 32, 256)

    def seq():
        y, _ = lstm(x)
        y.sum().backward()
    return seq


def _array_dtype(name):
    """The NumPy dtype of --dtype: bfloat16 through ml_dtypes."""
    if name == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return np.dtype(name)


def measure(reps, threads, pattern, suite, dtype="float32"):
    """In the build under test: {case: median seconds of one call (forward, + backward in training)},
    the NumPy API's arrays (x, weights, dy) in `dtype`."""
    import fastrnn

    if threads:
        fastrnn.set_num_threads(threads)
    out = {}
    for case in selected(pattern, suite):
        if len(case) == 1:
            out[case[0]] = _median_call(_module_call(case[0]), reps)
            continue
        name, cell, T, B, I, H, train = case
        layers, bidir = (2, True) if " L2 bidir" in name else (1, False)
        rng = np.random.default_rng(0)
        w = fastrnn.init_weights(cell, I, H, layers, bidirectional=bidir, dtype=np.float32, seed=1)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dy = rng.standard_normal((T, B, H * (2 if bidir else 1))).astype(np.float32)
        if dtype != "float32":
            typ = _array_dtype(dtype)
            x, dy = x.astype(typ), dy.astype(typ)
            w = [tuple(a.astype(typ) for a in entry) for entry in w]

        def call():
            r = fastrnn.forward(cell, x, w, bidirectional=bidir, training=train)
            if train:
                fastrnn.backward(r.saved, dy)

        out[name] = _median_call(call, reps)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base")
    ap.add_argument("--new")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="fastrnn.set_num_threads (0: the default)")
    ap.add_argument("--cases", default="", help="only the cases whose name contains this")
    ap.add_argument("--suite", action="store_true",
                    help="the default suite of python -m fastrnn.bench (NumPy API) plus fastrnn.nn and decode cases")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time (with --threads 1, robust to other processes' load)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                    help="the NumPy API cases' arrays (bfloat16 needs ml_dtypes); the module cases stay as they are")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # a child's job
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.measure:
        print(json.dumps(measure(args.reps, args.threads, args.cases, args.suite, args.dtype)))
        return 0
    if not (args.base and args.new):
        ap.error("--base and --new are required")
    runs = {"base": [], "new": []}
    for _ in range(args.rounds):
        for tag, python in (("base", args.base), ("new", args.new)):
            r = subprocess.run([python, os.path.abspath(__file__), "--measure", "--reps", str(args.reps),
                                "--threads", str(args.threads), "--cases", args.cases, "--clock", args.clock, "--dtype", args.dtype]
                               + ["--suite"] * args.suite,
                               capture_output=True, text=True, check=True, cwd="/")
            runs[tag].append(json.loads(r.stdout))
    print(f"| case | base ms | new ms | new/base |\n|---|---|---|---|")
    for name, *_ in selected(args.cases, args.suite):
        b = statistics.median(r[name] for r in runs["base"]) * 1e3
        n = statistics.median(r[name] for r in runs["new"]) * 1e3
        print(f"| {name} | {b:.3f} | {n:.3f} | {n / b:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
