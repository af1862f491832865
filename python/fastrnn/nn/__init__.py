"""fastrnn.nn: drop-in replacements for torch.nn's recurrent modules (``RNN``, ``LSTM``, ``GRU``,
``RNNCell``, ``LSTMCell``, ``GRUCell``), ``convert(model)`` and truncated BPTT (``tbptt``,
``TBPTTWindow``). The modules live in :mod:`fastrnn.nn.layers`; this file only re-exports the
public names, so ``fastrnn.nn.LSTM`` keeps working wherever the code behind it lives."""
from .layers import *  # noqa: F401,F403
from .layers import __all__  # noqa: F401
