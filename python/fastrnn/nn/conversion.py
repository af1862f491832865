"""``fastrnn.nn.convert(model)``: swaps the torch.nn recurrent modules inside a model for
fastrnn.nn's, sharing their Parameter objects."""
from __future__ import annotations

from typing import Optional

import torch

from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN


# ---- convert ------------------------------------------------------------------------------------------
def _converted(module: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The fastrnn equivalent of a torch.nn recurrent module (sharing its Parameter objects, so an
    optimizer built before keeps working), or None for any other module. Exact types only: a
    subclass may have changed forward."""
    t = type(module)
    nn = torch.nn
    if t in (nn.RNN, nn.LSTM, nn.GRU):
        args = (module.input_size, module.hidden_size, module.num_layers)
        kwargs = dict(bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                      bidirectional=module.bidirectional, device="meta")
        if t is nn.RNN:
            new = RNN(*args, nonlinearity=module.nonlinearity, **kwargs)
        elif t is nn.LSTM:
            new = LSTM(*args, proj_size=module.proj_size, **kwargs)
        else:
            new = GRU(*args, **kwargs)
    elif t in (nn.RNNCell, nn.LSTMCell, nn.GRUCell):
        args = (module.input_size, module.hidden_size, module.bias)
        if t is nn.RNNCell:
            new = RNNCell(*args, nonlinearity=module.nonlinearity, device="meta")
        else:
            new = (LSTMCell if t is nn.LSTMCell else GRUCell)(*args, device="meta")
    else:
        return None
    # Built on the meta device (no memory, no initialisation cost), then given the very parameters.
    names = [name for name, _ in new.named_parameters()]
    old = dict(module.named_parameters())
    if sorted(names) != sorted(old):
        raise ValueError(f"cannot convert {module!r}: parameters {sorted(old)} differ from the expected "
                         f"{sorted(names)}")
    for name in names:
        setattr(new, name, old[name])
    new.train(module.training)
    return new


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every torch.nn.RNN / LSTM / GRU / RNNCell / LSTMCell / GRUCell inside
    ``model`` (at any depth) with the fastrnn.nn equivalent, which uses the very same Parameter
    objects (same values, device, dtype; optimizers keep working) and the same training flag.
    Returns ``model``, or its replacement when ``model`` itself is one of those modules."""
    top = _converted(model)
    if top is not None:
        return top
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _converted(child)
            if new is not None:
                setattr(parent, name, new)
    return model
