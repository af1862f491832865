"""Where the microseconds of one cell step go: fastrnn.nn's cell (the lean path, fastrnn.ops.cell_step)
against torch.nn's, split into the module's checks, cell_step's checks and allocations, the
kernel call (_core.cell_forward / cell_backward, binding included), backward's Python body and
what remains of a training step (autograd's engine, the gradient accumulation into .grad, the
loss's sums). Medians of interleaved samples of this thread's CPU time on one thread, so that a
loaded machine disturbs the split as little as it can; the pieces are measured apart, so they add
up only roughly. Prints a markdown table.

    python tools/cell_step_profile.py lstm 97 51 51 float64      # cell B I H dtype
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

import fastrnn
import fastrnn.nn as fnn
from fastrnn import ops
from fastrnn._loader import _core
from fastrnn.cell_table import TABLE

CLOCK = time.thread_time_ns


def interleaved(fns, reps=30, inner=20):
    """median µs per call of each function, samples interleaved (alternating order)"""
    for f in fns.values():
        for _ in range(5):
            f()
    samples = {k: [] for k in fns}
    items = list(fns.items())
    for r in range(reps):
        for k, f in (items if r % 2 == 0 else items[::-1]):
            t = CLOCK()
            for _ in range(inner):
                f()
            samples[k].append((CLOCK() - t) / inner / 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(cell: str, B: int, I: int, H: int, dtype_name: str) -> None:
    torch.set_num_threads(1)
    fastrnn.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    f64 = dtype == torch.float64
    info = TABLE[cell]
    name, kw = info.torch_module + "Cell", ({"nonlinearity": info.nonlinearity} if info.nonlinearity else {})
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(I, H, **kw).to(dtype)
    fast = getattr(fnn, name)(I, H, **kw).to(dtype)
    fast.load_state_dict(ref.state_dict())
    lstm = info.carries_cell_state
    x = torch.randn(B, I, dtype=dtype)
    states = [torch.randn(B, H, dtype=dtype, requires_grad=True) for _ in range(2 if lstm else 1)]
    hx = tuple(states) if lstm else states[0]
    W = [fast.weight_ih, fast.weight_hh, fast.bias_ih, fast.bias_hh]
    c = states[1] if lstm else None
    cell_id = info.id
    outs = [torch.empty(B, H, dtype=dtype) for _ in range(2)]
    reserve = torch.empty(B * ops._cell_reserve_per_row(cell_id, H), dtype=dtype)
    ptrs = [w.data_ptr() for w in W]
    grads = [torch.empty(B, I, dtype=dtype)] + [torch.empty(B, H, dtype=dtype) for _ in range(2)] + \
        [torch.empty_like(w) for w in W]

    def kernel_forward(res):
        return lambda: _core.cell_forward(cell_id, f64, B, I, H, x.data_ptr(), states[0].data_ptr(),
                                          c.data_ptr() if lstm else 0, *ptrs, outs[0].data_ptr(),
                                          outs[1].data_ptr() if lstm else 0, res)
    kernel_forward(reserve.data_ptr())()
    dh = torch.ones(B, H, dtype=dtype)

    def kernel_backward():
        _core.cell_backward(cell_id, f64, B, I, H, x.data_ptr(), states[0].data_ptr(), c.data_ptr() if lstm else 0,
                            *ptrs, reserve.data_ptr(), dh.data_ptr(), dh.data_ptr() if lstm else 0, 0,
                            grads[1].data_ptr(), grads[2].data_ptr() if lstm else 0, *[g.data_ptr() for g in grads[3:]])

    def no_grad(f):
        def run():
            with torch.no_grad():
                f()
        return run

    def loss(out):
        return sum(o.sum() for o in out) if lstm else out.sum()
    n_alloc = 2 if lstm else 1
    fwd = interleaved({
        "torch": no_grad(lambda: ref(x, hx)), "fastrnn": no_grad(lambda: fast(x, hx)),
        "cell_step": no_grad(lambda: ops.cell_step(cell, x, states[0], c, *W)),
        "kernel": kernel_forward(0),
        "allocs": lambda: [torch.empty(B, H, dtype=dtype) for _ in range(n_alloc)],
        "no_grad": no_grad(lambda: None),
    })
    # backward alone: the same graph again (retain_graph), and its Python body called directly
    graphs = {"torch": loss(ref(x, hx)), "fastrnn": loss(fast(x, hx))}
    ctx = (fast(x, hx)[0] if lstm else fast(x, hx)).grad_fn
    ones = torch.ones(B, H, dtype=dtype)
    train = interleaved({
        "torch": lambda: loss(ref(x, hx)).backward(), "fastrnn": lambda: loss(fast(x, hx)).backward(),
        "torch fwd": lambda: ref(x, hx), "fastrnn fwd": lambda: fast(x, hx),
        "torch bwd": lambda: graphs["torch"].backward(retain_graph=True),
        "fastrnn bwd": lambda: graphs["fastrnn"].backward(retain_graph=True),
        "body": no_grad(lambda: ops._CellStep.backward(ctx, ones, ones if lstm else None)),
        "kernel fwd": kernel_forward(reserve.data_ptr()), "kernel bwd": kernel_backward,
        "allocs fwd": lambda: [torch.empty(B, H, dtype=dtype) for _ in range(n_alloc)] + [
            torch.empty(reserve.numel(), dtype=dtype)],
        "no_grad": no_grad(lambda: None),
    })
    bwd_body = train["body"] - train["no_grad"]
    rows = [
        ("forward (no grad): torch.nn.%s" % name, fwd["torch"]),
        ("forward (no grad): fastrnn.nn.%s" % name, fwd["fastrnn"]),
        ("  module: torch.nn's argument checks, parameter reads, no_grad", fwd["fastrnn"] - fwd["cell_step"]),
        ("  ops.cell_step: checks", fwd["cell_step"] - fwd["no_grad"] - fwd["kernel"] - fwd["allocs"]),
        (f"  outputs: {n_alloc} torch.empty", fwd["allocs"]),
        ("  _core.cell_forward (binding + kernel)", fwd["kernel"]),
        ("training step (forward + backward of the states' sum): torch.nn", train["torch"]),
        ("training step: fastrnn.nn", train["fastrnn"]),
        ("  forward with autograd (checks, Function, saves)", train["fastrnn fwd"] - train["kernel fwd"]
         - train["allocs fwd"]),
        (f"  forward outputs + reserve: {n_alloc + 1} torch.empty", train["allocs fwd"]),
        ("  _core.cell_forward with reserve", train["kernel fwd"]),
        ("  backward alone (the same graph again)", train["fastrnn bwd"]),
        ("    its Python body (saved tensors, gradient allocations)", bwd_body - train["kernel bwd"]),
        ("    _core.cell_backward (binding + kernel)", train["kernel bwd"]),
        ("    autograd's engine, .grad accumulation (weights, states), the loss's sums", train["fastrnn bwd"] - bwd_body),
        ("  (torch.nn: its forward with autograd)", train["torch fwd"]),
        ("  (torch.nn: its backward alone, engine and accumulation included)", train["torch bwd"]),
    ]
    print(f"| {cell} B={B} I={I} H={H} {dtype_name} | µs |\n|---|---|")
    for label, us in rows:
        print(f"| {label} | {us:.1f} |")


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) != 5:
        sys.exit(__doc__)
    main(a[0], int(a[1]), int(a[2]), int(a[3]), a[4])
