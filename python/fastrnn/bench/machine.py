"""The header of a benchmark run: what ran where (CPU, cores, affinity, threads, versions, commit),
and torch, imported only where the run asks for it."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import List, Tuple

import numpy as np

import fastrnn


def _affinity() -> int:
    """CPUs this process may run on (NumPy's BLAS threads by default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_model() -> Tuple[str, List[str]]:
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "avx2", "fma", "neon", "asimd") if f in flags]
    return model or platform.processor() or platform.machine() or "unknown", isa


def _git_commit() -> str:
    """HEAD of the checkout fastrnn was installed from, when that is the package's or the working
    directory's checkout (a repository holding python/fastrnn), else "unknown"."""
    for start in (os.path.dirname(os.path.abspath(fastrnn.__file__)), os.getcwd()):
        try:
            top = subprocess.run(["git", "-C", start, "rev-parse", "--show-toplevel"], capture_output=True,
                                 text=True, timeout=10)
            if top.returncode or not os.path.isdir(os.path.join(top.stdout.strip(), "python", "fastrnn")):
                continue
            head = subprocess.run(["git", "-C", start, "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", start, "diff", "--quiet", "HEAD"], timeout=10).returncode != 0
            return head + ("-dirty" if dirty else "") if head else "unknown"
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def make_header(threads: int, torch, torch_note: str) -> dict:
    model, isa = _cpu_model()
    return {
        "cpu": model, "isa": isa, "cpu_count": os.cpu_count(), "affinity": _affinity(), "threads": threads,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "fastrnn": fastrnn.__version__, "commit": _git_commit(), "numpy": np.__version__,
        # the instruction set the kernels were dispatched to at run time
        "fastrnn_cpu_isa": fastrnn._core.cpu_isa(),
        "torch": torch.__version__ if torch is not None else None, "torch_note": torch_note,
        "python": platform.python_version(), "platform": platform.platform(),
        # Thread and spin settings change the numbers: record the ones that were set.
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "FASTRNN_"))},
    }


def _import_torch(no_torch: bool):
    if no_torch:
        return None, "not used (--no-torch)"
    try:
        import torch
    except ImportError:
        return None, "not installed"
    except Exception as e:  # a broken install (e.g. OSError from a missing shared library)
        return None, f"not usable ({type(e).__name__}: {e})"
    return torch, "torch.nn on CPU (oneDNN LSTM, ATen GRU/RNN)"
