"""How much of the benchmark's plain-PyTorch loop of a layer-normalised cell (fastrnn.bench.variants
._torch_loop) is its GEMMs: times the loop, the same products alone (torch.mm on the loop's shapes:
the input projection once and one recurrent product per step; in training also dL/dh_{t-1} and the
dW_hh share per step, as autograd runs them, and dW_ih, dX once) and fastrnn.nn's fused layer, in
one process, in CPU time, one thread. What it answers: how far the loop can be from fastrnn at all,
since fastrnn runs the same FLOPs.

    OMP_NUM_THREADS=1 python tools/loop_gemm_split.py lstm 256 1,16,64 50
"""
import statistics
import sys
import time

import torch

import fastrnn
import fastrnn.nn as fnn
from fastrnn.bench.variants import _torch_loop


def median_ms(call, reps=5, min_s=0.1):
    call()
    call()
    samples = []
    for _ in range(reps):
        t0, n = time.process_time(), 0
        while True:
            call()
            n += 1
            if time.process_time() - t0 > min_s:
                break
        samples.append((time.process_time() - t0) / n * 1e3)
    return statistics.median(samples)


def main(cell, H, batches, T):
    torch.set_num_threads(1)
    fastrnn.set_num_threads(1)
    G = 4 if cell == "lstm" else 3
    for B in batches:
        torch.manual_seed(0)
        m = (fnn.LSTM if cell == "lstm" else fnn.GRU)(H, H, layer_norm=True)
        x = torch.randn(T, B, H, requires_grad=True)
        w_ih, w_hh = m.weight_ih_l0.detach(), m.weight_hh_l0.detach()
        h, dg = torch.randn(B, H), torch.randn(B, G * H)                           # [B, H], [B, G*H]
        X, DG = x.detach().reshape(T * B, H), torch.randn(T * B, G * H)            # [T*B, I], [T*B, G*H]

        def gemm_inference():
            torch.mm(X, w_ih.t())
            for _ in range(T):
                torch.mm(h, w_hh.t())

        def gemm_training():
            gemm_inference()
            dw_hh = torch.zeros(G * H, H)
            for _ in range(T):
                torch.mm(dg, w_hh)
                dw_hh.add_(torch.mm(dg.t(), h))
            torch.mm(DG.t(), X)
            torch.mm(DG, w_ih)

        def no_grad(f):
            def run():
                with torch.no_grad():
                    f()
            return run

        cases = {
            "inference": (no_grad(lambda: _torch_loop(torch, m, x)), gemm_inference, no_grad(lambda: m(x))),
            "training": (lambda: _torch_loop(torch, m, x).sum().backward(), gemm_training,
                         lambda: m(x)[0].sum().backward()),
        }
        for mode, (loop, gemms, fused) in cases.items():
            L, Gm, F = median_ms(loop), median_ms(gemms), median_ms(fused)
            print(f"| {cell} | {mode} | {H} | {B} | {T} | {L:.3g} | {Gm:.3g} ({100 * Gm / L:.0f} %) | {L - Gm:.3g} | "
                  f"{F:.3g} | {L / F:.2f}x | {Gm / F:.2f}x |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4]))
