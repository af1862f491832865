"""fastrnn.nn with 16-bit types on the CPU: modules converted with ``.bfloat16()`` / ``.half()``
(outputs, states and every gradient in that dtype), and float32 modules under
``torch.autocast("cpu", dtype=torch.bfloat16 | torch.float16)`` (the op's AutocastCPU kernel casts
its inputs, so outputs are 16-bit and the float32 parameters get float32 gradients), eager and
under ``torch.compile(fullgraph=True)``. The truth is torch.nn in float64 on the same (16-bit
rounded) weights and inputs; each result must be within tests/tolerances.py's NN16 of it (relative
error of the whole array), and under autocast also close to torch.nn run under the same autocast
(torch's CPU autocast runs torch.nn.LSTM's oneDNN layer in the 16-bit type, GRU and RNN in float32;
oneDNN has no float16 LSTM on this CPU, where that comparison is left out).
"""
import copy

import pytest
import torch

import fastrnn.nn as fnn
from tolerances import NN16, relative_error

MODULES = {"lstm": (torch.nn.LSTM, fnn.LSTM, {}), "gru": (torch.nn.GRU, fnn.GRU, {}),
           "rnn_tanh": (torch.nn.RNN, fnn.RNN, {}), "rnn_relu": (torch.nn.RNN, fnn.RNN, {"nonlinearity": "relu"})}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def modules(cell, dtype, I=12, H=20, L=2, bidirectional=True):
    """(fastrnn.nn module, torch.nn float64 module with the same dtype-rounded weights, torch.nn in float32)."""
    torch_cls, fast_cls, extra = MODULES[cell]
    torch.manual_seed(0)
    fast = fast_cls(I, H, num_layers=L, bidirectional=bidirectional, **extra)
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(p.to(dtype).float())  # values every dtype holds exactly
    ref = torch_cls(I, H, num_layers=L, bidirectional=bidirectional, **extra).double()
    ref32 = torch_cls(I, H, num_layers=L, bidirectional=bidirectional, **extra)
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    ref32.load_state_dict(fast.state_dict())
    return fast, ref, ref32


def inputs(dtype, T=9, B=5, I=12):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g).to(dtype)
    dy = torch.randn(T, B, 2 * 20, generator=g).to(dtype)
    return x, dy


def run(module, x, dy, cast=None):
    """Output, final h and every parameter's gradient of a loss <y, dy>."""
    module.zero_grad()
    x = x.clone().requires_grad_(True)
    y, h = module(x)
    h = h[0] if isinstance(h, tuple) else h
    (y.to(dy.dtype) * dy).sum().backward()
    return [("output", y), ("h_n", h), ("dx", x.grad)] + [("d" + n, p.grad) for n, p in module.named_parameters()]


def row(dtype_name, cell):
    return dtype_name + ("-relu" if cell == "rnn_relu" else "")


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("cell", MODULES)
def test_module_in_16bit_dtype(cell, dtype_name):
    dtype = DTYPES[dtype_name]
    fast, ref, _ = modules(cell, dtype)
    fast = fast.to(dtype)
    x, dy = inputs(dtype)
    got = run(fast, x, dy)
    want = run(ref, x.double(), dy.double())
    for (name, a), (_, e) in zip(got, want):
        assert a.dtype == dtype, f"{name}: {a.dtype}"
        kind = "grad" if name.startswith("d") else "output"
        err = relative_error(a.detach().float().numpy(), e.detach().numpy())
        assert err <= NN16[row(dtype_name, cell)][kind], f"{cell} {dtype_name} {name}: {err:.3g}"


# torch.compile costs ~40 s a case here: compiled for one cell per dtype
AUTOCAST_CASES = [(cell, dtype, False) for cell in ("lstm", "gru") for dtype in DTYPES] + \
    [("lstm", "bfloat16", True), ("gru", "float16", True)]


@pytest.mark.parametrize("cell, dtype_name, compiled", AUTOCAST_CASES)
def test_module_under_cpu_autocast(cell, dtype_name, compiled):
    dtype = DTYPES[dtype_name]
    fast, ref, ref32 = modules(cell, dtype)
    x, dy = inputs(torch.float32)
    x = x.to(dtype).float()  # values autocast's casts keep exactly
    dy = dy.to(dtype)
    module = torch.compile(fast, fullgraph=True, dynamic=False) if compiled else fast
    with torch.autocast("cpu", dtype=dtype):
        got = run(module, x, dy)
        try:
            with_torch = run(ref32, x, dy)
        except RuntimeError:  # oneDNN has no float16 LSTM on CPUs without AVX512-FP16 (Zen 4 among them)
            assert cell == "lstm" and dtype == torch.float16
            with_torch = None
    want = run(ref, x.double(), dy.double())
    for (name, a), (_, t), (_, e) in zip(got, with_torch or got, want):
        # outputs in the autocast dtype, gradients in the float32 parameters' (and input's) dtype
        assert a.dtype == (dtype if name in ("output", "h_n") else torch.float32), f"{name}: {a.dtype}"
        kind = "grad" if name.startswith("d") else "output"
        tol = NN16[row(dtype_name, cell)][kind]
        assert relative_error(a.detach().float().numpy(), e.detach().numpy()) <= tol, name
        if with_torch is not None:
            assert relative_error(a.detach().float().numpy(), t.detach().float().numpy()) <= 2 * tol, name


def test_autocast_leaves_float32_outside_and_float64_alone():
    fast, _, _ = modules("lstm", torch.bfloat16)
    x, _ = inputs(torch.float32)
    assert fast(x)[0].dtype == torch.float32  # no autocast: the float32 kernels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x)[0].dtype == torch.bfloat16
        # a CUDA-only autocast leaves CPU calls alone
    with torch.autocast("cuda", dtype=torch.float16, enabled=False):
        assert fast(x)[0].dtype == torch.float32


def test_other_dtypes_name_the_input():
    fast = fnn.GRU(3, 4)
    with pytest.raises(TypeError, match="got input of dtype torch.int32"):
        torch.ops.fastrnn.rnn_forward(torch.zeros(2, 1, 3, dtype=torch.int32), list(fast._flat_weights), None, None,
                                      None, "gru", 4, 1, False, False)


LAYER_NORM_CASES = [(cls, dtype_name, how) for cls in ("LSTM", "GRU") for dtype_name in DTYPES
                    for how in ("module", "autocast")]


@pytest.mark.parametrize("cls, dtype_name, how", LAYER_NORM_CASES)
def test_layer_norm_in_16_bits_takes_the_fused_op(cls, dtype_name, how, monkeypatch):
    """layer_norm=True in 16 bits, a converted module (.bfloat16() / .half()) and a float32 one under
    CPU autocast, runs the fused op (the composed torch ops are not called), close to the same module
    in float64 on the same 16-bit-valued weights and inputs (NN16)."""
    from fastrnn.nn import _recurrence

    def composed(*args, **kwargs):
        raise AssertionError("the composed torch ops ran")

    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    fast = getattr(fnn, cls)(12, 20, num_layers=2, bidirectional=True, layer_norm=True)
    with torch.no_grad():
        for p in fast.parameters():  # away from the norm's init, in values every dtype holds exactly
            p.mul_(1.0 + 0.3 * torch.randn_like(p)).copy_(p.to(dtype).float())
    ref = copy.deepcopy(fast).double()
    x, dy = inputs(dtype)
    monkeypatch.setattr(_recurrence, "_composed_recurrence", composed)
    if how == "module":
        got = run(fast.to(dtype), x, dy)
    else:
        with torch.autocast("cpu", dtype=dtype):
            got = run(fast, x.float(), dy)
    want = run(ref, x.double(), dy.double())
    for (name, a), (_, e) in zip(got, want):
        in_dtype = how == "module" or name in ("output", "h_n")  # autocast: float32 parameters' gradients
        assert a.dtype == (dtype if in_dtype else torch.float32), f"{name}: {a.dtype}"
        kind = "grad" if name.startswith("d") else "output"
        err = relative_error(a.detach().float().numpy(), e.detach().numpy())
        assert err <= NN16[dtype_name][kind], f"{cls} {dtype_name} {how} {name}: {err:.3g}"


@pytest.mark.parametrize("autocast", [False, True], ids=["module", "autocast"])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_packed_sequence_in_16bit(cell, dtype_name, autocast):
    """A PackedSequence through the packed op in 16-bit (a converted module, or a float32 one under CPU
    autocast, whose kernel casts the packed data): outputs, h_n and gradients within NN16 of torch.nn
    in float64 on the same packed batch."""
    from torch.nn.utils.rnn import pack_padded_sequence
    dtype = DTYPES[dtype_name]
    fast, ref, _ = modules(cell, dtype)
    if not autocast:
        fast = fast.to(dtype)
    x, _ = inputs(dtype)
    lengths = torch.tensor([3, 9, 1, 6, 6])

    def run_packed(module, x, cast):
        module.zero_grad()
        x = x.clone().requires_grad_(True)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        with torch.autocast("cpu", dtype=dtype, enabled=cast):
            y, h = module(packed)
        h = h[0] if isinstance(h, tuple) else h
        g = torch.Generator().manual_seed(2)
        (y.data.to(torch.float64) * torch.randn(y.data.shape, generator=g, dtype=torch.float64)).sum().backward()
        return [("output", y.data), ("h_n", h), ("dx", x.grad)] + \
            [("d" + n, p.grad) for n, p in module.named_parameters()]

    got = run_packed(fast, x if not autocast else x.float(), autocast)
    want = run_packed(ref, x.double(), False)
    for (name, a), (_, e) in zip(got, want):
        kind = "grad" if name.startswith("d") else "output"
        err = relative_error(a.detach().float().numpy(), e.detach().numpy())
        assert err <= NN16[row(dtype_name, cell)][kind], f"{cell} {dtype_name} {name}: {err:.3g}"


PROJECTION_CASES = [(dtype_name, how) for dtype_name in DTYPES for how in ("module", "autocast")]


@pytest.mark.parametrize("dtype_name, how", PROJECTION_CASES)
def test_projection_in_16_bits_takes_the_fused_op(dtype_name, how, monkeypatch):
    """LSTM(proj_size=P) in 16 bits, converted (.bfloat16() / .half()) or float32 under CPU autocast,
    runs the fused op (the composed torch ops are not called): outputs, h_n [.., P] and every
    gradient (weight_hr's included) within NN16 of torch.nn.LSTM(proj_size=P) in float64 on the same
    16-bit-valued weights and inputs."""
    from fastrnn.nn import _recurrence

    def composed(*args, **kwargs):
        raise AssertionError("the composed torch ops ran")

    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    fast = fnn.LSTM(12, 20, num_layers=2, bidirectional=True, proj_size=7)
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(p.to(dtype).float())  # values every dtype holds exactly
    ref = torch.nn.LSTM(12, 20, num_layers=2, bidirectional=True, proj_size=7).double()
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, 12, generator=g).to(dtype)
    dy = torch.randn(9, 5, 2 * 7, generator=g).to(dtype)
    monkeypatch.setattr(_recurrence, "_composed_recurrence", composed)
    if how == "module":
        got = run(fast.to(dtype), x, dy)
    else:
        with torch.autocast("cpu", dtype=dtype):
            got = run(fast, x.float(), dy)
    want = run(ref, x.double(), dy.double())
    assert len(got) == len(want) and any(name.startswith("dweight_hr") for name, _ in got)
    for (name, a), (_, e) in zip(got, want):
        in_dtype = how == "module" or name in ("output", "h_n")  # autocast: float32 parameters' gradients
        assert a.dtype == (dtype if in_dtype else torch.float32), f"{name}: {a.dtype}"
        assert a.shape == e.shape, f"{name}: {a.shape}"
        kind = "grad" if name.startswith("d") else "output"
        err = relative_error(a.detach().float().numpy(), e.detach().numpy())
        assert err <= NN16[dtype_name][kind], f"proj {dtype_name} {how} {name}: {err:.3g}"
