"""Times the projected LSTM (proj_size) through the NumPy API at one thread in process CPU time:
float32 of two builds alternated (A/B, for a change that must not cost speed), and the 16-bit
kernels against float32 in one build. What bench/results/*-projection-16bit.md reports.

    python tools/projection_speed.py --base /work/venv-base/bin/python --new /work/venv-new/bin/python --rounds 4
    python tools/projection_speed.py --dtypes        # this build: float32 vs bfloat16 vs float16

Each case (H = 512, P = 128, I = 512, T = 50, B = 1, 16, 32, 64; inference, and forward + backward)
is the median of 7 samples of >= 50 ms; A/B runs one fresh process per build and round, base then
new, and reports the median over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

H, P, I, T, BATCHES = 512, 128, 512, 50, (1, 16, 32, 64)


def _median_ms(fn, reps: int = 7, min_s: float = 0.05) -> float:
    fn()
    samples = []
    for _ in range(reps):
        n, t0 = 0, time.process_time()
        while time.process_time() - t0 < min_s:
            fn()
            n += 1
        samples.append((time.process_time() - t0) / n * 1e3)
    return statistics.median(samples)


def measure(dtype_names) -> dict:
    """{case: median ms} for the projected LSTM in each dtype, in this process's fastrnn."""
    import numpy as np
    import fastrnn
    fastrnn.set_num_threads(1)
    dtypes = {"float32": np.float32, "float16": np.float16}
    if "bfloat16" in dtype_names:
        import ml_dtypes
        dtypes["bfloat16"] = ml_dtypes.bfloat16
    rng, out = np.random.default_rng(0), {}
    for B in BATCHES:
        for name in dtype_names:
            dt = dtypes[name]
            w = [tuple(a.astype(dt) for a in e) for e in fastrnn.init_weights("lstm", I, H, proj_size=P)]
            x = rng.standard_normal((T, B, I)).astype(dt)
            dy = rng.standard_normal((T, B, P)).astype(dt)

            def train():
                fastrnn.backward(fastrnn.forward("lstm", x, w, training=True, proj_size=P).saved, dy)
            out[f"B{B} {name} infer"] = _median_ms(lambda: fastrnn.forward("lstm", x, w, training=False, proj_size=P))
            out[f"B{B} {name} train"] = _median_ms(train)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base")
    ap.add_argument("--new")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dtypes", action="store_true", help="float32 vs bfloat16 vs float16 in this build")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # a child's job: comma-separated dtypes
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure.split(","))))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if args.dtypes:
        r = measure(["float32", "bfloat16", "float16"])
        print("| B | mode | float32 ms | bfloat16 ms | float32 / bfloat16 | float16 ms | float32 / float16 |")
        print("|---|---|---|---|---|---|---|")
        for B in BATCHES:
            for mode in ("infer", "train"):
                f, b, h = (r[f"B{B} {d} {mode}"] for d in ("float32", "bfloat16", "float16"))
                print(f"| {B} | {mode} | {f:.2f} | {b:.2f} | {f / b:.2f}x | {h:.2f} | {f / h:.2f}x |")
        return
    runs = {"base": [], "new": []}
    for _ in range(args.rounds):
        for name, py in (("base", args.base), ("new", args.new)):
            o = subprocess.run([py, os.path.abspath(__file__), "--measure", "float32"], env=env, capture_output=True,
                               text=True, cwd="/", check=True)
            runs[name].append(json.loads(o.stdout.strip().splitlines()[-1]))
    print("| case (float32) | base ms | new ms | new / base |")
    print("|---|---|---|---|")
    for case in runs["base"][0]:
        b, n = (statistics.median(r[case] for r in runs[k]) for k in ("base", "new"))
        print(f"| {case} | {b:.3f} | {n:.3f} | {n / b:.3f} |")


if __name__ == "__main__":
    main()
    sys.exit(0)
