"""fastrnn: fused RNN, LSTM and GRU kernels with forward and backpropagation through time.

The NumPy API (no PyTorch needed) is in :mod:`fastrnn.functional` and re-exported here; the
slow, obvious float64 implementation it is tested against is :mod:`fastrnn.reference`; drop-in
PyTorch modules are in :mod:`fastrnn.nn` (imported on demand, so ``import fastrnn`` never
imports torch).
"""
import numpy as np

from ._loader import _core
from .functional import (
    PreparedCell,
    backward,
    forward,
    gru_backward,
    gru_forward,
    init_weights,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from .types import CELLS, GATES, RNNGrads, RNNResult

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels (OpenMP and the BLAS) use."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_threads must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the CPU kernels use (default: the cores available to the process)."""
    return _core.get_num_threads()


def __getattr__(name: str):
    """``fastrnn.nn`` and ``fastrnn.generate`` (which import torch) load on first access, so that
    ``import fastrnn`` alone never imports torch."""
    if name in ("nn", "generate"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cuda_available() -> bool:
    """True when the extension was built with the CUDA kernels."""
    return bool(_core.built_with_cuda)


__all__ = [
    "CELLS", "GATES", "PreparedCell", "RNNGrads", "RNNResult", "backward", "cuda_available", "forward", "get_num_threads",
    "gru_backward", "gru_forward", "init_weights", "lstm_backward", "lstm_forward", "rnn_backward",
    "rnn_forward", "set_num_threads",
]
