"""Bit-for-bit comparison of two builds of fastrnn on the kernel test matrix.

A refactoring of the kernels that must not change behaviour is checked by running the old
and the new build, each in its own process (each its own Python, e.g. its own virtualenv), on the
SAME saved inputs and comparing every output byte for byte: forward outputs (training and
inference), final states, the reserve, every gradient, and PreparedCell steps. The matrix follows
tests/kernels/test_kernels.py and tests/kernels/test_isa.py: every cell, float32 and float64, 1-3 layers, one and
two directions, equal and ragged lengths, with and without h0/c0 and bias, T*B below and above 16
rows (packed weights / few rows through the BLAS / few rows through rows_gemm.h from 2 MB of
weights), odd sizes such as 97, 1 and 2 threads with FASTRNN_MIN_STEP_FLOPS=0 (so that small
problems run multi-threaded), and every instruction set the CPU supports (FASTRNN_CPU_ISA).

    python tools/bitwise_compare.py --base /work/venv-base/bin/python --new /work/venv-new/bin/python

exits 0 when every array of every case and ISA is bitwise equal, else prints the differing ones and
exits 1. Not a test (it needs two builds); tests/ does not collect it.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile

import numpy as np

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
ISAS = ("baseline", "avx2", "avx512", "avx512_bf16")  # avx512_bf16: float32/64 run the avx512 kernels

# (T, B, I, H, layers, bidirectional, ragged, with_state, bias): the shapes of test_kernels.py
SHAPES = [
    (6, 4, 5, 7, 1, False, False, True, True),
    (6, 4, 5, 7, 2, True, True, True, True),
    (6, 4, 5, 7, 3, True, True, False, True),
    (5, 3, 4, 5, 3, False, True, True, False),
    (1, 3, 4, 5, 2, True, True, True, True),       # one step, T*B < 16: few rows (BLAS)
    (5, 1, 4, 5, 2, True, False, True, True),
    (5, 3, 4, 1, 2, True, True, True, True),       # one hidden unit
    (1, 1, 1, 1, 1, False, False, True, True),
    (3, 2, 97, 97, 2, True, True, True, True),     # odd, T*B < 16
    (3, 6, 97, 97, 2, True, True, True, True),     # odd, T*B >= 16: packed
    (2, 97, 3, 4, 2, True, True, True, True),      # odd batch
    (40, 4, 8, 16, 2, True, True, True, True),     # longer sequences
    (4, 17, 33, 64, 2, True, False, True, True),
    (7, 11, 600, 20, 2, True, True, True, True),   # wide input: several row blocks of x
    (60, 64, 24, 48, 1, False, True, True, True),  # the input projection in several chunks
]


def few_rows_large(cell):
    """T*B < 16 with weights >= 2 MB (rows_gemm.h's kernels), as test_few_rows_large_weights."""
    H = 663 if GATES[cell] == 1 else 361
    return [(T, B, 131, H, 2, True, True, True, True) for T, B in ((2, 3), (1, 7), (1, 2))]


def cases():
    """Every (name, cell, dtype, shape) of the matrix."""
    for cell, dtype in itertools.product(CELLS, ("float32", "float64")):
        for k, shape in enumerate(SHAPES + few_rows_large(cell)):
            yield f"{cell}-{dtype}-{k}", cell, dtype, shape


def make_inputs(path):
    """Draws every case's inputs once (seeded) and saves them to `path` (.npz)."""
    arrays = {}
    for name, cell, dtype, (T, B, I, H, L, bi, ragged, with_state, bias) in cases():
        rng = np.random.default_rng(len(arrays))  # a seed per case
        D = 2 if bi else 1
        G = GATES[cell]
        k = 1.0 / np.sqrt(H)
        scale = 0.25 if I > 100 else 1.0
        arrays[f"{name}/x"] = (rng.standard_normal((T, B, I)) * scale).astype(dtype)
        arrays[f"{name}/dy"] = rng.standard_normal((T, B, D * H)).astype(dtype)
        for layer in range(L):
            in_size = I if layer == 0 else D * H
            for d in range(D):
                shapes = [(G * H, in_size), (G * H, H)] + ([(G * H,), (G * H,)] if bias else [])
                for n, s in enumerate(shapes):
                    arrays[f"{name}/w{layer * D + d}_{n}"] = rng.uniform(-k, k, s).astype(dtype)
        state = (L * D, B, H)
        if with_state:
            arrays[f"{name}/h0"] = (0.5 * rng.standard_normal(state)).astype(dtype)
            if cell == "lstm":
                arrays[f"{name}/c0"] = (0.5 * rng.standard_normal(state)).astype(dtype)
        arrays[f"{name}/dhn"] = rng.standard_normal(state).astype(dtype)
        if cell == "lstm":
            arrays[f"{name}/dcn"] = rng.standard_normal(state).astype(dtype)
        if ragged:
            lengths = rng.integers(1, T + 1, B)
            lengths[0] = T
            if B > 1:
                lengths[-1] = 1
            rng.shuffle(lengths)
            arrays[f"{name}/lengths"] = lengths
    np.savez(path, **arrays)


def run_build(inputs, out):
    """In the build under test (this process's fastrnn): every case at 1 and 2 threads -> `out`."""
    import fastrnn
    from fastrnn import _core

    src = np.load(inputs)
    got = {}
    for threads in (1, 2):
        _core.set_num_threads(threads)
        for name, cell, dtype, (T, B, I, H, L, bi, ragged, with_state, bias) in cases():
            g = lambda key: src[f"{name}/{key}"] if f"{name}/{key}" in src.files else None  # noqa: E731
            D = 2 if bi else 1
            n = 4 if bias else 2
            weights = [tuple(src[f"{name}/w{k}_{i}"] for i in range(n)) for k in range(L * D)]
            kw = dict(lengths=g("lengths"), bidirectional=bi)
            p = f"{threads}/{name}"
            out_t = fastrnn.forward(cell, g("x"), weights, g("h0"), g("c0"), training=True, **kw)
            out_i = fastrnn.forward(cell, g("x"), weights, g("h0"), g("c0"), training=False, **kw)
            got[f"{p}/y"], got[f"{p}/hn"] = out_t.output, out_t.h_n
            got[f"{p}/y_inference"], got[f"{p}/hn_inference"] = out_i.output, out_i.h_n
            if out_t.c_n is not None:
                got[f"{p}/cn"], got[f"{p}/cn_inference"] = out_t.c_n, out_i.c_n
            got[f"{p}/reserve"] = out_t.saved.reserve
            grads = fastrnn.backward(out_t.saved, g("dy"), g("dhn"), g("dcn"))
            got[f"{p}/dx"], got[f"{p}/dh0"] = grads.dx, grads.dh0
            if grads.dc0 is not None:
                got[f"{p}/dc0"] = grads.dc0
            for k, dw in enumerate(grads.dweights):
                for i, a in enumerate(dw):
                    got[f"{p}/dw{k}_{i}"] = a
            if L == 1 and not bi:  # one prepared step from h0 (or zeros)
                h = g("h0")[0] if with_state else np.zeros((B, H), dtype)
                c = (g("c0")[0] if with_state else np.zeros((B, H), dtype)) if cell == "lstm" else None
                for wd in (None, "float16") if dtype == "float32" else (None,):
                    step = fastrnn.PreparedCell(cell, *weights[0], **({"weight_dtype": wd} if wd else {}))
                    r = step(g("x")[0], h, c) if c is not None else (step(g("x")[0], h),)
                    for i, a in enumerate(r):
                        got[f"{p}/prepared{wd or ''}_{i}"] = a
    np.savez(out, **got)


def supported_isas(python):
    best = subprocess.run([python, "-c", "from fastrnn import _core; print(_core.cpu_isa())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    return ISAS[:ISAS.index(best) + 1]  # a build without the bf16 switch says "avx512" for avx512_bf16 too


def compare(a_path, b_path):
    """Names of the arrays that differ (bytes, shape or dtype) or exist in one file only."""
    a, b = np.load(a_path), np.load(b_path)
    bad = sorted(set(a.files) ^ set(b.files))
    for k in sorted(set(a.files) & set(b.files)):
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            bad.append(k)
    return bad, len(a.files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="the Python of the reference build")
    ap.add_argument("--new", help="the Python of the build under test")
    ap.add_argument("--run", nargs=2, metavar=("INPUTS", "OUT"), help=argparse.SUPPRESS)  # a child's job
    args = ap.parse_args()
    if args.run:
        return run_build(*args.run)
    if not (args.base and args.new):
        ap.error("--base and --new are required")
    # the best the newer build knows: a base build that predates "avx512_bf16" runs its best for it
    isas = supported_isas(args.new)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        make_inputs(inputs)
        for isa in isas:
            env = dict(os.environ, FASTRNN_CPU_ISA=isa, FASTRNN_MIN_STEP_FLOPS="0")
            outs = []
            for tag, python in (("base", args.base), ("new", args.new)):
                out = os.path.join(tmp, f"{tag}-{isa}.npz")
                # run from the temporary directory, so that neither child imports a source tree's fastrnn
                subprocess.run([python, os.path.abspath(__file__), "--run", inputs, out], env=env, check=True, cwd=tmp)
                outs.append(out)
            bad, n = compare(*outs)
            print(f"{isa}: {n} arrays, {len(bad)} differ" + (": " + ", ".join(bad[:20]) if bad else ""))
            failed = failed or bool(bad)
    print("bitwise equal" if not failed else "DIFFERENCES FOUND")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
