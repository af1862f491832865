"""The benchmark's cases: the suite's cells, modes and sizes, a case's FLOPs (the formula in
:mod:`fastrnn.bench`), ``--sizes`` parsing, and the seeded inputs every implementation of a case
gets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

import fastrnn
from fastrnn.cell_table import GRU, LSTM, RNN_RELU, RNN_TANH
from fastrnn.types import GATES


MODES = ("inference", "training", "decode")


BENCH_CELLS = (LSTM, GRU, RNN_TANH, RNN_RELU)


DEFAULT_CELLS = (LSTM, GRU, RNN_TANH)


DEFAULT_SIZES = ((256, 1, 100), (256, 32, 100), (512, 16, 50), (512, 64, 50), (1024, 32, 25), (128, 128, 200))


INFERENCE_ONLY_SIZES = ((1536, 4, 50),)  # the default suite times this one in inference only


QUICK_SIZES = ((256, 1, 100), (256, 32, 100), (512, 16, 50))


TINY_SIZES = ((16, 2, 5),)  # the harness's own tests: every code path in well under a second


BIDIR_CASE = (256, 32, 100)  # the suite's 2-layer bidirectional LSTM, training


DECODE_HB = (512, 1)  # the suite's LSTM decode step: H, B


@dataclass(frozen=True)
class Case:
    cell: str
    H: int
    B: int
    T: int  # 1 for decode
    I: int
    mode: str  # one of MODES
    layers: int = 1
    bidirectional: bool = False
    half_weights: bool = False  # decode only: PreparedCell(..., weight_dtype="float16")

    @property
    def name(self) -> str:
        shape = f"{self.cell} H={self.H} B={self.B} T={self.T}"
        if self.I != self.H:
            shape += f" I={self.I}"
        if self.layers > 1 or self.bidirectional:
            shape += f" {self.layers}L{'x2dir' if self.bidirectional else ''}"
        if self.half_weights:
            shape += " float16-weights"
        return f"{shape} {self.mode}"


def flops(cell: str, I: int, H: int, B: int, T: int, layers: int = 1, bidirectional: bool = False,
          training: bool = False) -> float:
    """Forward FLOPs, sum over layers and directions of 2*G*H*(I_l+H)*B*T; training counts 3x
    (the backward is two GEMMs of the forward's size: dX/dh and dW)."""
    G, D = GATES[cell], 2 if bidirectional else 1
    total = 0.0
    for layer in range(layers):
        I_l = I if layer == 0 else D * H
        total += D * 2.0 * G * H * (I_l + H) * B * T
    return 3.0 * total if training else total


def case_flops(case: Case) -> float:
    return flops(case.cell, case.I, case.H, case.B, case.T, case.layers, case.bidirectional,
                 training=case.mode == "training")


def parse_sizes(text: str) -> List[Tuple[int, int, int, int]]:
    """"512x16x50,256x1x100" -> [(H, B, T, I), ...] with I = H unless a 4th field gives it
    ("HxBxTxI"); the names "default", "quick" and "tiny" stand for those suites' sizes."""
    out: List[Tuple[int, int, int, int]] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        preset = {"default": DEFAULT_SIZES, "quick": QUICK_SIZES, "tiny": TINY_SIZES}.get(item)
        if preset is not None:
            out.extend((h, b, t, h) for h, b, t in preset)
            continue
        parts = item.split("x")
        if len(parts) not in (3, 4) or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"sizes: expected HxBxT or HxBxTxI with positive integers (e.g. 512x16x50), got {item!r}")
        H, B, T = (int(p) for p in parts[:3])
        out.append((H, B, T, int(parts[3]) if len(parts) == 4 else H))
    if not out:
        raise ValueError(f"sizes: no size given in {text!r}")
    return out


def build_cases(cells: Sequence[str], modes: Sequence[str], sizes: Optional[Sequence[Tuple[int, int, int, int]]],
                quick: bool = False) -> List[Case]:
    """The default suite (sizes None), the quick suite, or every cell x size x mode of ``sizes``
    (decode then runs at each size's H and B)."""
    cases: List[Case] = []
    suite = sizes is None
    if suite:
        sizes = [(h, b, t, h) for h, b, t in (QUICK_SIZES if quick else DEFAULT_SIZES)]
    for mode in ("inference", "training"):
        if mode not in modes:
            continue
        for cell in cells:
            for H, B, T, I in sizes:
                cases.append(Case(cell, H, B, T, I, mode))
            if suite and mode == "inference" and not quick:
                cases.extend(Case(cell, H, B, T, H, mode) for H, B, T in INFERENCE_ONLY_SIZES)
    if suite and not quick and "training" in modes and LSTM in cells:
        H, B, T = BIDIR_CASE
        cases.append(Case(LSTM, H, B, T, H, "training", layers=2, bidirectional=True))
    if "decode" in modes and LSTM in cells:
        decode_sizes = [(DECODE_HB[0], DECODE_HB[1], 1, DECODE_HB[0])] if suite else \
            sorted({(H, B, 1, I) for H, B, _, I in sizes})
        cases.extend(Case(LSTM, H, B, 1, I, "decode") for H, B, _, I in decode_sizes)
        if suite:  # the same step on float16-stored weights
            cases.extend(Case(LSTM, H, B, 1, I, "decode", half_weights=True) for H, B, _, I in decode_sizes)
    return cases


@dataclass
class Inputs:
    x: np.ndarray  # [T, B, I] (decode: [B, I])
    weights: list  # L*D tuples (w_ih, w_hh, b_ih, b_hh)
    dy: Optional[np.ndarray]  # [T, B, D*H] for training
    h0: Optional[np.ndarray] = None  # decode: [B, H]
    c0: Optional[np.ndarray] = None


def make_inputs(case: Case, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    weights = fastrnn.init_weights(case.cell, case.I, case.H, case.layers, bidirectional=case.bidirectional,
                                   seed=seed)
    D = 2 if case.bidirectional else 1
    if case.mode == "decode":
        x = rng.standard_normal((case.B, case.I), dtype=np.float32)
        h0 = rng.uniform(-0.5, 0.5, (case.B, case.H)).astype(np.float32)
        c0 = rng.uniform(-0.5, 0.5, (case.B, case.H)).astype(np.float32)
        return Inputs(x, weights, None, h0, c0)
    x = rng.standard_normal((case.T, case.B, case.I), dtype=np.float32)
    dy = rng.standard_normal((case.T, case.B, D * case.H), dtype=np.float32) if case.mode == "training" else None
    return Inputs(x, weights, dy)
