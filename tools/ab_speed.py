"""A short alternated A/B timing of two builds of fastrnn (each its own Python, e.g. its own
virtualenv) on a few representative cases, for a refactoring that must not cost speed (issue 12).

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


def selected(pattern):
    return [c for c in CASES if pattern in c[0]]


def measure(reps, threads, pattern):
    """In the build under test: {case: median seconds of one call (forward, + backward in training)}."""
    import fastrnn

    if threads:
        fastrnn.set_num_threads(threads)
    out = {}
    for name, cell, T, B, I, H, train in selected(pattern):
        rng = np.random.default_rng(0)
        w = fastrnn.init_weights(cell, I, H, dtype=np.float32, seed=1)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        dy = rng.standard_normal((T, B, H)).astype(np.float32)

        def call():
            r = fastrnn.forward(cell, x, w, training=train)
            if train:
                fastrnn.backward(r.saved, dy)

        for _ in range(3):
            call()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base")
    ap.add_argument("--new")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=0, help="fastrnn.set_num_threads (0: the default)")
    ap.add_argument("--cases", default="", help="only the cases whose name contains this")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # a child's job
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.reps, args.threads, args.cases)))
        return 0
    if not (args.base and args.new):
        ap.error("--base and --new are required")
    runs = {"base": [], "new": []}
    for _ in range(args.rounds):
        for tag, python in (("base", args.base), ("new", args.new)):
            r = subprocess.run([python, os.path.abspath(__file__), "--measure", "--reps", str(args.reps),
                                "--threads", str(args.threads), "--cases", args.cases],
                               capture_output=True, text=True, check=True, cwd="/")
            runs[tag].append(json.loads(r.stdout))
    print(f"{'case':32s} {'base ms':>9s} {'new ms':>9s} {'new/base':>9s}")
    for name, *_ in selected(args.cases):
        b = statistics.median(r[name] for r in runs["base"]) * 1e3
        n = statistics.median(r[name] for r in runs["new"]) * 1e3
        print(f"{name:32s} {b:9.3f} {n:9.3f} {n / b:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
