"""The masks a seed gives, in NumPy: the same Philox4x32-10 stream the CPU kernels draw their
zoneout and recurrent-dropout masks from (csrc/philox.h), so that a seeded kernel call can be
compared with the explicit-mask path (the reference, the kernels given arrays) bit for bit.

The stream: element j of batch row b at step t of stream s (s = l*D + d, layer and direction, plus
the call's first stream) is word j % 4 of Philox4x32-10 at counter (j // 4, b, t, 4*s + kind) under
key (seed mod 2^32, seed // 2^32 mod 2^32): one evaluation gives four neighbouring units. kind 0 is
zoneout's d of h at step t, kind 1 its d of c, kind 2 recurrent dropout's m (t = 0); b is the batch
row as the caller passes it. u = (word >> 8) / 2^24, and Bernoulli(p) is u < p (exactly: word >> 8
< ceil(p * 2^24)); m is 0 where that draw is 1, else 1/(1-p).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

__all__ = ["philox4x32_10", "seeded_masks"]

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LOW = np.uint64(0xFFFFFFFF)
_ZONEOUT_H, _ZONEOUT_C, _RECURRENT = 0, 1, 2  # the kinds of mask


def philox4x32_10(counter: np.ndarray, key: Tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of counters [..., 4] (uint32) under key (k0, k1): [..., 4] uint32 words."""
    c = [np.asarray(counter[..., i], np.uint64) for i in range(4)]
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0, p1 = _M0 * c[0], _M1 * c[2]  # 32 x 32 -> 64-bit products (exact in uint64)
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & _LOW,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & _LOW]
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return np.stack([w.astype(np.uint32) for w in c], axis=-1)


def _threshold(p: float) -> int:
    """ceil(p * 2^24): Bernoulli(p) is word >> 8 < it (p * 2^24 is exact in float64)."""
    return int(math.ceil(min(max(float(p), 0.0), 1.0) * 16777216.0))


def _draws(seed: int, stream: np.ndarray, kind: int, T: int, B: int, H: int, p: float) -> np.ndarray:
    """Bernoulli(p) of every (stream, t, b, j) of one kind of mask: [S, T, B, H] bool."""
    Q = -(-H // 4)
    s, t, b, q = np.meshgrid(np.asarray(stream, np.int64), np.arange(T), np.arange(B), np.arange(Q), indexing="ij")
    counter = np.stack([q, b, t, 4 * s + kind], axis=-1).astype(np.uint64) & _LOW
    seed = int(seed) % 2**64
    words = philox4x32_10(counter, (seed & 0xFFFFFFFF, seed >> 32))  # [S, T, B, Q, 4]: unit 4q + w
    units = words.reshape(words.shape[:3] + (4 * Q,))[..., :H]
    return (units >> 8) < _threshold(p)


def seeded_masks(seed: int, num_streams: int, T: int, B: int, H: int, *, zoneout: float = 0.0,
                 zoneout_cell: float = 0.0, recurrent_dropout: float = 0.0, dtype=np.float64,
                 stream: int = 0) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """The masks a seeded training forward draws, materialised: (recurrent_mask [S, B, H] with
    values 0 and 1/(1-p), zoneout_h [S, T, B, H] and zoneout_c [S, T, B, H] of 0 and 1), each None
    where its p is 0. S = num_streams = num_layers * num_directions (index l*D + d); ``stream`` is
    the first one's generator stream (the kernels' mask_seed stream). ``seed``: an int (mod 2^64)."""
    dtype = np.dtype(dtype)
    streams = stream + np.arange(num_streams)
    recurrent = zone_h = zone_c = None
    if recurrent_dropout > 0:
        dropped = _draws(seed, streams, _RECURRENT, 1, B, H, recurrent_dropout)[:, 0]
        recurrent = np.where(dropped, dtype.type(0), dtype.type(1.0 / (1.0 - recurrent_dropout))).astype(dtype)
    if zoneout > 0:
        zone_h = _draws(seed, streams, _ZONEOUT_H, T, B, H, zoneout).astype(dtype)
    if zoneout_cell > 0:
        zone_c = _draws(seed, streams, _ZONEOUT_C, T, B, H, zoneout_cell).astype(dtype)
    return recurrent, zone_h, zone_c
