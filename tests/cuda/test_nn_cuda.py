"""fastrnn.nn on CUDA tensors against torch.nn in float64 on the CPU (the truth test_nn.py uses, with
the same helpers and tolerances): outputs, final states and the gradients of the input, the
initial states and every parameter, over every cell x layers {1, 2} x uni/bidirectional x input
form (batched, no hx, batch_first, unbatched, PackedSequence with ragged lengths) x float32/float64,
no bias, the LSTM's proj_size (fused in the CUDA kernels; float32/float64 and bfloat16) and the
cells; then sizes that cross the CUDA kernels' tile edges, determinism, a non-default stream, and
the device errors torch.nn raises. Every test is
marked ``cuda`` and skips with one reason without a GPU (or without a CUDA build of fastrnn or
torch); on a GPU, cuda/gpu_check.sh runs this file.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.nn as fnn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402
from helpers import (CELL_PAIRS as CELLS, FORMS, LAYER_PAIRS as MODULES, PARITY_SIZES,  # noqa: E402
                     TORCH_DTYPES as DTYPES, assert_torch_close as assert_close, check_cell_parity, check_parity)

P = PARITY_SIZES[4]  # proj_size


def _skip_reason():
    if not fastrnn.cuda_available():
        return "fastrnn was built without CUDA (FASTRNN_WITH_CUDA=OFF or no nvcc)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    if fastrnn._core.cuda.device_count() == 0:
        return "fastrnn's CUDA runtime sees no device"
    return None


SKIP = _skip_reason()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(SKIP is not None, reason=str(SKIP))]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bidirectional", (False, True), ids=("uni", "bi"))
@pytest.mark.parametrize("num_layers", (1, 2))
@pytest.mark.parametrize("cell", tuple(MODULES))
def test_parity_on_cuda(cell, num_layers, bidirectional, form, dtype):
    check_parity(cell, num_layers, bidirectional, form, dtype, device="cuda")


@pytest.mark.parametrize("form", ("batched", "packed"))
@pytest.mark.parametrize("cell", tuple(MODULES))
def test_parity_no_bias_on_cuda(cell, form):
    check_parity(cell, 2, True, form, torch.float64, bias=False, device="cuda")


@pytest.mark.parametrize("form", ("batched", "packed"))
@pytest.mark.parametrize("layers_bi", ((1, False), (2, True)), ids=("1uni", "2bi"))
def test_parity_lstm_proj_on_cuda(layers_bi, form):
    check_parity("lstm", layers_bi[0], layers_bi[1], form, torch.float32, proj_size=P, device="cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ("batched", "unbatched", "no_hx"))
@pytest.mark.parametrize("bias", (True, False))
@pytest.mark.parametrize("cell", tuple(CELLS))
def test_cell_parity_on_cuda(cell, bias, form, dtype):
    check_cell_parity(cell, bias, form, dtype, device="cuda")


# Sizes that cross the kernels' tiles (16 units x 16 rows per step block, K staged 32 at a time,
# 64 x 64 GEMM tiles): B > 16, I > 64, H > 32 and not a multiple of 16, T*B > 64.
LARGER = dict(T=9, B=21, I=70, H=33)


def _train(module, x, lengths, dy_seed):
    """Packed forward + backward with fixed random output weights; (y, states, x.grad, param grads)."""
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, h = module(packed)
    states = tuple(h) if isinstance(h, tuple) else (h,)
    g = torch.Generator().manual_seed(dy_seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t)).sum() for t in (y.data,) + states)
    loss.backward()
    return y.data, states, x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cell", tuple(MODULES))
def test_larger_sizes_ragged_two_layers_bidirectional(cell, dtype):
    torch_cls, fast_cls, extra = MODULES[cell]
    T, B, I, H = LARGER["T"], LARGER["B"], LARGER["I"], LARGER["H"]
    torch.manual_seed(5)
    ref = torch_cls(I, H, 2, bidirectional=True, dtype=dtype, **extra)
    fast = fast_cls(I, H, 2, bidirectional=True, dtype=dtype, **extra)
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.double(), fast.cuda()
    lengths = torch.tensor([T, 1] + list(np.random.default_rng(3).integers(1, T + 1, B - 2)))
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(dtype)
    x_ref, x_gpu = x.clone().double().requires_grad_(), x.clone().cuda().requires_grad_()
    expected, got = _train(ref, x_ref, lengths, 6), _train(fast, x_gpu, lengths, 6)
    assert_close(got[0].detach().cpu().numpy(), expected[0].detach().numpy(), dtype, "output")
    for k, (a, e) in enumerate(zip(got[1], expected[1])):
        assert_close(a.detach().cpu().numpy(), e.detach().numpy(), dtype, ("h_n", "c_n")[k])
    assert_close(got[2].cpu().numpy(), expected[2].numpy(), dtype, "dx")
    for name, grad in got[3].items():
        assert_close(grad.cpu().numpy(), expected[3][name].numpy(), dtype, "d" + name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lstm_proj_runs_the_cuda_kernels(dtype, monkeypatch):
    """fastrnn.nn.LSTM(proj_size) on CUDA tensors runs the fused op on the CUDA kernels, not composed
    torch ops (which are made to fail here), and matches torch.nn.LSTM(proj_size) in float64 at the
    tile-crossing sizes (P = 20 across the 16-unit tiles), packed with ragged lengths, two layers,
    bidirectional; two runs bitwise equal."""
    from fastrnn.nn import _recurrence

    def composed(*args, **kwargs):
        raise AssertionError("LSTM(proj_size) on CUDA ran composed torch ops")

    monkeypatch.setattr(_recurrence, "_composed_recurrence", composed)
    T, B, I, H, P_ = LARGER["T"], LARGER["B"], LARGER["I"], LARGER["H"], 20
    torch.manual_seed(10)
    ref = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=P_, dtype=dtype)
    fast = fnn.LSTM(I, H, 2, bidirectional=True, proj_size=P_, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.double(), fast.cuda()
    lengths = torch.tensor([T, 1] + list(np.random.default_rng(11).integers(1, T + 1, B - 2)))
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(12), dtype=torch.float64).to(dtype)
    x_ref, x_gpu = x.clone().double().requires_grad_(), x.clone().cuda().requires_grad_()
    expected, got = _train(ref, x_ref, lengths, 13), _train(fast, x_gpu, lengths, 13)
    assert_close(got[0].detach().cpu().numpy(), expected[0].detach().numpy(), dtype, "output")
    for k, (a, e) in enumerate(zip(got[1], expected[1])):
        assert a.shape[-1] == (P_, H)[k]
        assert_close(a.detach().cpu().numpy(), e.detach().numpy(), dtype, ("h_n", "c_n")[k])
    assert_close(got[2].cpu().numpy(), expected[2].numpy(), dtype, "dx")
    assert "weight_hr_l1_reverse" in got[3]
    for name, grad in got[3].items():
        assert_close(grad.cpu().numpy(), expected[3][name].numpy(), dtype, "d" + name)
    first = [got[2].clone()] + [g.clone() for g in got[3].values()]
    x_gpu.grad = None
    fast.zero_grad(set_to_none=True)
    again = _train(fast, x_gpu, lengths, 13)
    for a, b in zip(first, [again[2]] + list(again[3].values())):
        assert torch.equal(a, b), "two runs differ"


def test_lstm_proj_bfloat16_on_cuda(monkeypatch):
    """A bfloat16 LSTM(proj_size) on CUDA runs the fused 16-bit kernels (float32 state between steps)
    and stays within tests/tolerances.py's cuda-bfloat16 row of the same module on the CPU in float64."""
    from fastrnn.nn import _recurrence
    from tolerances import assert_close as assert_close_np

    def composed(*args, **kwargs):
        raise AssertionError("LSTM(proj_size) in bfloat16 on CUDA ran composed torch ops")

    monkeypatch.setattr(_recurrence, "_composed_recurrence", composed)
    torch.manual_seed(14)
    cpu = fnn.LSTM(8, 12, 2, bidirectional=True, proj_size=5, dtype=torch.float64)
    with torch.no_grad():
        for q in cpu.parameters():
            q.copy_(q.to(torch.bfloat16).double())
    gpu = fnn.LSTM(8, 12, 2, bidirectional=True, proj_size=5).to(device="cuda", dtype=torch.bfloat16)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(6, 4, 8, dtype=torch.float64).to(torch.bfloat16)

    def run(module, x):
        x = x.clone().requires_grad_(True)
        y, (h, c) = module(x)
        (y.sum() + (h * h).sum() + c.sum()).backward()
        return [y, h, c, x.grad] + [q.grad for q in module.parameters()]

    expected, got = run(cpu, x.double()), run(gpu, x.cuda())
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == torch.bfloat16
        assert_close_np(a.detach().float().cpu().double().numpy(), e.detach().numpy(), "cuda-bfloat16",
                        "output" if i < 3 else "d")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gru_reset_before_on_cuda_matches_cpu(dtype):
    """fastrnn.nn.GRU(reset_after=False) on CUDA tensors runs the CUDA kernels (torch.nn has no such
    GRU: the truth is the same module on the CPU kernels in float64), at the tile-crossing sizes,
    packed with ragged lengths, two layers, bidirectional; and two runs bitwise equal."""
    T, B, I, H = LARGER["T"], LARGER["B"], LARGER["I"], LARGER["H"]
    torch.manual_seed(6)
    ref = fnn.GRU(I, H, 2, bidirectional=True, reset_after=False, dtype=dtype)
    fast = fnn.GRU(I, H, 2, bidirectional=True, reset_after=False, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    ref, fast = ref.double(), fast.cuda()
    lengths = torch.tensor([T, 1] + list(np.random.default_rng(7).integers(1, T + 1, B - 2)))
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(8), dtype=torch.float64).to(dtype)
    x_ref, x_gpu = x.clone().double().requires_grad_(), x.clone().cuda().requires_grad_()
    expected, got = _train(ref, x_ref, lengths, 9), _train(fast, x_gpu, lengths, 9)
    assert_close(got[0].detach().cpu().numpy(), expected[0].detach().numpy(), dtype, "output")
    assert_close(got[1][0].detach().cpu().numpy(), expected[1][0].detach().numpy(), dtype, "h_n")
    assert_close(got[2].cpu().numpy(), expected[2].numpy(), dtype, "dx")
    for name, grad in got[3].items():
        assert_close(grad.cpu().numpy(), expected[3][name].numpy(), dtype, "d" + name)
    first = [got[2].clone()] + [g.clone() for g in got[3].values()]
    x_gpu.grad = None
    fast.zero_grad(set_to_none=True)
    again = _train(fast, x_gpu, lengths, 9)
    for a, b in zip(first, [again[2]] + list(again[3].values())):
        assert torch.equal(a, b), "two runs differ"


def test_deterministic_and_on_a_side_stream():
    """Two runs are bitwise equal, also when the module runs on a stream other than the default
    (the kernels are queued on torch's current stream)."""
    torch.manual_seed(0)
    lstm = fnn.LSTM(12, 24, 2, bidirectional=True).cuda()
    x = torch.randn(7, 5, 12, device="cuda", requires_grad=True)

    def once():
        x.grad = None
        lstm.zero_grad(set_to_none=True)
        y, (h, c) = lstm(x)
        (y.square().sum() + h.sum() + c.sum()).backward()
        return [t.detach().clone() for t in (y, h, c, x.grad, *(p.grad for p in lstm.parameters()))]

    first, second = once(), once()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        third = once()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for a, b, c in zip(first, second, third):
        assert torch.equal(a, b), "two runs differ"
        assert torch.equal(a, c), "a run on a side stream differs"


def test_device_mismatch_is_torchs_error():
    """A CPU input into a CUDA module, or CUDA states into it with a CPU input: RuntimeError, as torch.nn."""
    gru = fnn.GRU(4, 5).cuda()
    with pytest.raises(RuntimeError):
        gru(torch.randn(3, 2, 4))
    with pytest.raises(RuntimeError):
        gru(torch.randn(3, 2, 4, device="cuda"), torch.zeros(1, 2, 5))
    cell = fnn.LSTMCell(4, 5).cuda()
    with pytest.raises(RuntimeError):
        cell(torch.randn(2, 4))
