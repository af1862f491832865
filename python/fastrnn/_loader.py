"""Loads the compiled extension. The BLAS it links (the scipy-openblas32 wheel) is loaded first by
path, so the extension resolves it whatever its RPATH says (editable builds, unusual layouts)."""
import ctypes
import os

import scipy_openblas32

ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True)))

from . import _core  # noqa: E402

__all__ = ["_core"]
