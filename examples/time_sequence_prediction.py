"""A faithful copy of pytorch/examples' ``time_sequence_prediction`` (train.py and
generate_sine_wave.py), runnable with torch.nn or with fastrnn.nn's cells swapped in by
``fastrnn.nn.convert``, from the same initial weights: two ``LSTMCell``s (1 -> 51 -> 51) and a
``Linear(51, 1)`` stepped from Python over 999 time steps of 97 sine waves (B = 97, float64),
trained with L-BFGS (lr 0.8) to predict each wave's next value, then asked to continue 3 test waves
1000 steps past their end. It is the client that motivated fastrnn's lean single-step path for
cells: every step is four cell calls (two forward, two backward) of a small problem, where the
Python glue around a kernel counts as much as the kernel (``python -m fastrnn.bench --suite cells``
times one L-BFGS closure of this model).

The model (``Sequence``) and the data (generated as generate_sine_wave.py does: numpy seed 2,
T = 20, L = 1000, N = 100, so no download or file is needed) live in ``fastrnn.bench.cells``,
which the benchmark times; this script is train.py's training loop around them (seeds 0).

    python examples/time_sequence_prediction.py --impl fastrnn --steps 2
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

from fastrnn.bench.cells import client_data, make_sequence


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=("torch", "fastrnn"), default="torch")
    parser.add_argument("--steps", type=int, default=15, help="L-BFGS steps (train.py's default 15)")
    parser.add_argument("--future", type=int, default=1000, help="steps predicted past the test waves' end")
    parser.add_argument("--threads", type=int, default=None, help="torch's and fastrnn's thread count")
    args = parser.parse_args(argv)
    if args.threads:
        import fastrnn
        torch.set_num_threads(args.threads)
        fastrnn.set_num_threads(args.threads)
    np.random.seed(0)
    input, target, test_input, test_target = client_data()
    seq = make_sequence(args.impl)  # train.py: torch.manual_seed(0), Sequence().double()
    criterion = nn.MSELoss()
    optimizer = optim.LBFGS(seq.parameters(), lr=0.8)
    losses, test_losses, closure_s = [], [], []
    t0 = time.perf_counter()
    for i in range(args.steps):
        step_losses = []

        def closure():
            optimizer.zero_grad()
            out = seq(input)
            loss = criterion(out, target)
            step_losses.append(loss.item())
            loss.backward()
            return loss
        t = time.perf_counter()
        optimizer.step(closure)
        closure_s.append((time.perf_counter() - t) / max(1, len(step_losses)))
        losses.append(step_losses[-1])
        with torch.no_grad():  # begin to predict, no need to track gradient here
            pred = seq(test_input, future=args.future)
            test_losses.append(criterion(pred[:, :-args.future], test_target).item())
        print(f"step {i}: loss {losses[-1]:.6g}  test loss {test_losses[-1]:.6g}  ({len(step_losses)} closures, "
              f"{closure_s[-1] * 1e3:.0f} ms each)", flush=True)
    result = dict(impl=args.impl, steps=args.steps, loss=losses[-1] if losses else None,
                  test_loss=test_losses[-1] if test_losses else None, seconds=time.perf_counter() - t0,
                  ms_per_closure=1e3 * float(np.median(closure_s)) if closure_s else None)
    print("result", result)
    return result


if __name__ == "__main__":
    main()
