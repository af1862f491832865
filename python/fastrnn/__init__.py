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


_MAX_THREADS = 2**31 - 1  # the C int OpenMP takes


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels (OpenMP and the BLAS) use.

    In a child made by ``fork()`` (e.g. a fork-started DataLoader worker) the kernels run on one
    thread: the parent's OpenMP thread pool does not exist there, and a parallel region would wait
    for it forever. Call this in the child only if it will not reuse the parent's pool."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_threads must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    if n > _MAX_THREADS:
        raise ValueError(f"num_threads must be <= {_MAX_THREADS} (OpenMP takes a C int), got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the CPU kernels use (default: the cores available to the process)."""
    return _core.get_num_threads()


def empty_cache() -> None:
    """Free the scratch memory the CPU kernels keep for later calls, on every thread (the OpenMP
    pool's included), as ``torch.cuda.empty_cache()`` does for torch's GPU memory. Each thread keeps
    freed buffers of 1 MB or more, up to 256 MB per thread (the environment variable
    FASTRNN_SCRATCH_CACHE_MB sets that cap when the extension loads; 0 keeps nothing), so that
    the next call does not map and clear them again; a thread's cache is freed when it ends."""
    _core.empty_cache()


def cuda_available() -> bool:
    """True when the extension was built with the CUDA kernels."""
    return bool(_core.built_with_cuda)


__all__ = [
    "CELLS", "GATES", "PreparedCell", "RNNGrads", "RNNResult", "backward", "cuda_available", "empty_cache", "forward",
    "get_num_threads",
    "gru_backward", "gru_forward", "init_weights", "lstm_backward", "lstm_forward", "rnn_backward",
    "rnn_forward", "set_num_threads",
]
