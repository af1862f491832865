"""What fastrnn.nn's layers and cells share about the cell options: their checks,
init="identity", the layer norm's initialisation and the options' part of ``extra_repr``."""
from __future__ import annotations


import torch
from torch import Tensor
from torch.nn import init


def _identity_init(w_ih: Tensor, w_hh: Tensor, *biases: Tensor) -> None:
    """init="identity" (IRNN; Le, Jaitly & Hinton 2015): every H x H gate block of W_hh the identity,
    biases zero, W_ih ~ N(0, 0.001^2). Other parameters (peepholes) keep their uniform draw."""
    with torch.no_grad():
        H = w_hh.size(1)
        w_hh.copy_(torch.eye(H, dtype=w_hh.dtype, device=w_hh.device).repeat(w_hh.size(0) // H, 1))
        init.normal_(w_ih, 0.0, 0.001)
        for b in biases:
            b.zero_()


def _check_layer_norm(layer_norm, peephole=False, coupled=False, cell_clip=None) -> None:
    """layer_norm is a bool and (for now) not combined with the pointwise LSTM variants."""
    if not isinstance(layer_norm, bool):
        raise TypeError(f"layer_norm must be a bool, got {type(layer_norm).__name__}")
    if layer_norm and (peephole or coupled or cell_clip is not None):
        raise ValueError("layer_norm=True does not combine with peephole, coupled or cell_clip (got "
                         f"peephole={peephole!r}, coupled={coupled!r}, cell_clip={cell_clip!r})")


def _layer_norm_init(m: torch.nn.Module) -> None:
    """The layer norm's gains ones and the cell norm's bias zeros (the parameters named ln_*)."""
    with torch.no_grad():
        for name, p in m.named_parameters(recurse=False):
            if name.startswith("ln_weight"):
                p.fill_(1.0)
            elif name.startswith("ln_bias"):
                p.zero_()


def _variant_repr(m) -> str:
    """The issue-14 options that differ from the defaults, for extra_repr."""
    s = ""
    for name, default in (("peephole", False), ("coupled", False), ("cell_clip", None), ("reset_after", True),
                          ("layer_norm", False), ("init", "uniform")):
        value = getattr(m, name, default)
        if value != default:
            s += f", {name}={value!r}"
    return s


def _check_reset_and_layer_norm(reset_after: bool, layer_norm) -> None:
    if layer_norm is True and not reset_after:
        raise ValueError("layer_norm=True does not combine with reset_after=False (the layer-normalised GRU "
                         "applies the reset gate after the normalised hidden product)")
