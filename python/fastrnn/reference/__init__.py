"""fastrnn.reference: the slow, obvious float64 NumPy implementation that the fast kernels are
tested against (``forward`` / ``backward``, the signature of ``fastrnn.forward`` / ``backward``).
The layer and stack driver lives in :mod:`fastrnn.reference.stack`; this file re-exports it."""
from .stack import *  # noqa: F401,F403
from .stack import __all__  # noqa: F401
