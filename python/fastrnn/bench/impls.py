"""The implementations a case is timed on (fastrnn, the NumPy reference, torch.nn) and the check of
fastrnn's values against a baseline before anything is timed. Each implementation returns a
zero-argument callable (one timed call) and, once, the values it computes (for verification), as
float64 NumPy arrays keyed by name."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

import fastrnn
from fastrnn import reference
from fastrnn.cell_table import cell_info

from .cases import Case, Inputs


# A "gross mismatch": |fastrnn - baseline| / (1 + |baseline|) above this for outputs, or above this
# times max(1, max |baseline|) for gradients (sums of T*B float32 terms). This is a guard against
# timing a wrong kernel, not a precision test (tests/ does that): the --quick suite differs from
# torch.nn by at most ~1e-6 in outputs and ~5e-4 (absolute) in gradients, while a wrong term or a
# wrong weight is O(1).
GROSS_MISMATCH = 1e-2


class VerificationError(RuntimeError):
    """fastrnn's result differs grossly from torch.nn's or the reference's on a benchmark case."""


def _grads_dict(dx, dweights) -> Dict[str, np.ndarray]:
    out = {"dx": dx}
    for k, entry in enumerate(dweights):
        for name, g in zip(("dW_ih", "dW_hh", "db_ih", "db_hh"), entry):
            out[f"{name}[{k}]"] = g
    return out


def _api_impl(api, case: Case, inp: Inputs):
    """The case through ``api``.forward/backward, for fastrnn and fastrnn.reference alike (one API);
    decode as a one-step sequence, which re-validates the weights on every call."""
    cell, bidir = case.cell, case.bidirectional
    if case.mode == "decode":
        x3, h3, c3 = inp.x[None], inp.h0[None], inp.c0[None]

        def step():
            r = api.forward(case.cell, x3, inp.weights, h3, c3, training=False)  # the decode cases: LSTM
            return r.h_n[0], r.c_n[0]

        def values():
            h, c = step()
            return {"h": np.asarray(h), "c": np.asarray(c)}
        return step, values

    if case.mode == "inference":
        def run():
            return api.forward(cell, inp.x, inp.weights, bidirectional=bidir, training=False)

        def values():
            r = run()
            return {"output": r.output, "h_n": r.h_n, **({"c_n": r.c_n} if r.c_n is not None else {})}
        return run, values

    def train():
        r = api.forward(cell, inp.x, inp.weights, bidirectional=bidir, training=True)
        return r, api.backward(r.saved, inp.dy)

    def values():
        r, g = train()
        return {"output": r.output, **_grads_dict(g.dx, g.dweights)}
    return train, values


def fastrnn_impl(case: Case, inp: Inputs) -> Tuple[Callable[[], object], Callable[[], Dict[str, np.ndarray]]]:
    if case.mode == "decode":  # weights packed once, kept across calls
        prepared = fastrnn.PreparedCell(case.cell, *inp.weights[0], weight_dtype="float16" if case.half_weights else None)

        def step():
            return prepared(inp.x, inp.h0, inp.c0)

        def values():
            h, c = step()
            return {"h": np.asarray(h), "c": np.asarray(c)}
        return step, values
    return _api_impl(fastrnn, case, inp)


def reference_impl(case: Case, inp: Inputs):
    return _api_impl(reference, case, inp)


def torch_impl(torch, case: Case, inp: Inputs):
    """torch.nn with the same weights: nn.LSTM/GRU/RNN (oneDNN for the LSTM on CPU, ATen for the
    others), nn.LSTMCell for decode; torch.inference_mode() for inference and decode."""
    nn, info = torch.nn, cell_info(case.cell)
    D = 2 if case.bidirectional else 1
    if case.mode == "decode":
        module = getattr(nn, info.torch_module + "Cell")(case.I, case.H)
        names = [("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    else:
        extra = {"nonlinearity": info.nonlinearity} if info.nonlinearity else {}
        module = getattr(nn, info.torch_module)(case.I, case.H, case.layers, bidirectional=case.bidirectional, **extra)
        names = []
        for k in range(len(inp.weights)):
            layer, d = divmod(k, D)
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            names.append(tuple(n + suffix for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    params = dict(module.named_parameters())
    with torch.no_grad():
        for entry_names, entry in zip(names, inp.weights):
            for n, w in zip(entry_names, entry):
                params[n].copy_(torch.from_numpy(w))

    x = torch.from_numpy(inp.x)
    if case.mode == "decode":
        h0, c0 = torch.from_numpy(inp.h0), torch.from_numpy(inp.c0)

        def step():
            with torch.inference_mode():
                return module(x, (h0, c0))

        def values():
            h, c = step()
            return {"h": h.numpy(), "c": c.numpy()}
        return step, values

    if case.mode == "inference":
        def run():
            with torch.inference_mode():
                return module(x)

        def values():
            out, state = run()
            if info.carries_cell_state:
                return {"output": out.numpy(), "h_n": state[0].numpy(), "c_n": state[1].numpy()}
            return {"output": out.numpy(), "h_n": state.numpy()}
        return run, values

    xg = x.clone().requires_grad_(True)
    dy = torch.from_numpy(inp.dy)
    plist = [[params[n] for n in entry_names] for entry_names in names]

    def train():
        # Gradients are set to None, not accumulated: fastrnn returns fresh arrays every call too.
        xg.grad = None
        for p in module.parameters():
            p.grad = None
        out, _ = module(xg)
        out.backward(dy)
        return out

    def values():
        out = train()
        return {"output": out.detach().numpy(),
                **_grads_dict(xg.grad.numpy(), [tuple(p.grad.numpy() for p in entry) for entry in plist])}
    return train, values


def compare(actual: Dict[str, np.ndarray], expected: Dict[str, np.ndarray], case: Case, against: str) -> float:
    """Max abs difference over every quantity; raises VerificationError on a gross mismatch."""
    worst = 0.0
    for key, e in expected.items():
        if key not in actual:
            raise VerificationError(f"{case.name}: fastrnn returned no {key!r} to compare with {against}")
        a = np.asarray(actual[key], np.float64)
        e = np.asarray(e, np.float64)
        if a.shape != e.shape:
            raise VerificationError(f"{case.name}: {key} has shape {a.shape}, {against} gives {e.shape}")
        if not np.all(np.isfinite(a)):
            raise VerificationError(f"{case.name}: fastrnn's {key} has non-finite values")
        err = np.abs(a - e)
        diff = float(err.max()) if err.size else 0.0
        worst = max(worst, diff)
        if key.startswith("d"):
            bad = diff > GROSS_MISMATCH * max(1.0, float(np.abs(e).max()))
        else:
            bad = bool(np.any(err > GROSS_MISMATCH * (1.0 + np.abs(e))))
        if bad:
            raise VerificationError(f"{case.name}: fastrnn's {key} differs from {against}'s by up to {diff:.3g} "
                                    f"(gross-mismatch bound {GROSS_MISMATCH:g}, relative)")
    return worst
