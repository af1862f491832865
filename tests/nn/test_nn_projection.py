"""fastrnn.nn.LSTM(proj_size=P) on the fused CPU op (the layer's parity with torch.nn in every
input form is tests/nn/test_nn.py's check_parity; torch.compile is in test_nn_compile.py, DDP in
test_nn_ddp.py): here, that the CPU path really is the op and never the composed torch ops, with
the cell variants too, and PackedSequence inputs (sorted and unsorted); that bfloat16 runs the op
too; that the composed path the op cannot serve (forward-mode AD) agrees with the op or with torch.nn;
gradcheck in float64; dropout between projected layers; convert() of a torch.nn.LSTM(proj_size); which
calls run fused on which device (CUDA's fused path itself: tests/cuda/test_nn_cuda.py).
"""
import pytest

torch = pytest.importorskip("torch")

import fastrnn.nn as fnn  # noqa: E402
import fastrnn.nn._recurrence as recurrence  # noqa: E402
from helpers import assert_torch_close, to_numpy  # noqa: E402
import tolerances  # noqa: E402

T, B, I, H, P = 6, 3, 4, 7, 3


def _inputs(dtype=torch.float64, L=2, D=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=dtype, requires_grad=True)
    h0 = torch.randn(L * D, B, P, generator=g, dtype=dtype, requires_grad=True)
    c0 = torch.randn(L * D, B, H, generator=g, dtype=dtype, requires_grad=True)
    return x, h0, c0


@pytest.fixture
def no_composed(monkeypatch):
    """Make the composed torch path fail loudly: whatever passes ran on the fused op."""
    def refuse(*args, **kwargs):
        raise AssertionError("the composed torch path ran where the fused op should have")
    monkeypatch.setattr(recurrence, "_composed_recurrence", refuse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_runs_the_fused_op(no_composed, dtype):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=P, dtype=torch.float64)
    fast = fnn.LSTM(I, H, 2, bidirectional=True, proj_size=P, dtype=dtype)
    fast.load_state_dict(ref.state_dict())  # same names and shapes, weight_hr_l{k}{suffix} included
    x, h0, c0 = _inputs(dtype)
    x64, h064, c064 = (t.detach().double().requires_grad_() for t in (x, h0, c0))
    y, (hn, cn) = fast(x, (h0, c0))
    y_ref, (hn_ref, cn_ref) = ref(x64, (h064, c064))
    (y.sum() + hn.pow(2).sum() + cn.pow(3).sum()).backward()
    (y_ref.sum() + hn_ref.pow(2).sum() + cn_ref.pow(3).sum()).backward()
    assert hn.shape == (4, B, P) and cn.shape == (4, B, H) and y.shape == (T, B, 2 * P)
    for name, a, e in (("output", y, y_ref), ("h_n", hn, hn_ref), ("c_n", cn, cn_ref), ("dx", x.grad, x64.grad),
                       ("dh0", h0.grad, h064.grad), ("dc0", c0.grad, c064.grad)):
        assert_torch_close(to_numpy(a), to_numpy(e), dtype, name)
    ref_params = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        assert_torch_close(to_numpy(p.grad), to_numpy(ref_params[name].grad), dtype, "d" + name)


@pytest.mark.parametrize("options", [dict(peephole=True), dict(coupled=True), dict(cell_clip=0.5),
                                     dict(peephole=True, coupled=True, cell_clip=0.5), dict(grad_clip=0.05),
                                     dict(peephole=True, cell_clip=0.5, grad_clip=0.05),
                                     dict(grad_clip=0.05, weight_dropout=0.3)],
                         ids=["peephole", "coupled", "clip", "all", "grad_clip", "peep-clip-grad_clip",
                              "grad_clip-weight_dropout"])
def test_variants_with_projection_run_the_op_and_match_the_composed_path(no_composed, monkeypatch, options):
    """The fused op (composed path refused) against the composed torch ops (the op refused) on the
    same module and inputs: outputs, states and every gradient, float64; with grad_clip (the
    training modifier the projected kernels run; the composed path clamps with tensor hooks) and
    weight dropout (the same masks: the same torch seed before each run)."""
    torch.manual_seed(1)
    m = fnn.LSTM(I, H, 2, bidirectional=True, proj_size=P, dtype=torch.float64, **options)
    with torch.no_grad():  # wider weights so that a clip of 0.5 is active
        for p in m.parameters():
            p.mul_(3)

    def run():
        m.zero_grad()
        x, h0, c0 = _inputs()
        torch.manual_seed(7)  # weight dropout's masks
        y, (hn, cn) = m(x, (h0, c0))
        (y.sum() + hn.pow(2).sum() + cn.pow(3).sum()).backward()
        return [y, hn, cn, x.grad, h0.grad, c0.grad] + [p.grad.clone() for p in m.parameters()]

    fused = run()
    if "grad_clip" in options:  # the clip is active: without it the gradients differ
        m.grad_clip = None
        assert not torch.allclose(run()[3], fused[3])
        m.grad_clip = options["grad_clip"]
    monkeypatch.undo()
    composed_calls = []
    real = recurrence._composed_recurrence
    monkeypatch.setattr(recurrence, "_composed_recurrence", lambda *a, **k: composed_calls.append(1) or real(*a, **k))
    monkeypatch.setattr(recurrence, "_kernels_cannot_serve", lambda *a: True)
    composed = run()
    assert composed_calls
    if "cell_clip" in options:
        assert fused[2].abs().max().item() == pytest.approx(0.5)
    for k, (a, e) in enumerate(zip(fused, composed)):
        assert_torch_close(to_numpy(a), to_numpy(e), torch.float64, f"{'d' if k > 2 else ''}value {k}")


def test_gradcheck_float64():
    torch.manual_seed(2)
    m = fnn.LSTM(3, 5, 2, bidirectional=True, proj_size=2, peephole=True, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())
    names = [n for n, _ in m.named_parameters()]

    def f(x, h0, c0, *ps):
        out = torch.func.functional_call(m, dict(zip(names, ps)), (x, (h0, c0)))
        y, (hn, cn) = out
        return y, hn, cn
    assert torch.autograd.gradcheck(f, (x, h0, c0, *[p.detach().requires_grad_() for p in params]))


def test_forward_ad_composed_path_matches_the_op():
    """Forward-mode AD runs the composed torch ops (the op has no jvp); its tangent equals the
    op's central difference along the same direction (float64)."""
    torch.manual_seed(4)
    m = fnn.LSTM(I, H, 1, proj_size=P, dtype=torch.float64)
    x, h0, c0 = (t.detach() for t in _inputs(L=1, D=1))
    v = torch.randn_like(x)
    _, tangent = torch.func.jvp(lambda x: m(x, (h0, c0))[0], (x,), (v,))
    eps = 1e-6
    with torch.no_grad():
        numeric = (m(x + eps * v, (h0, c0))[0] - m(x - eps * v, (h0, c0))[0]) / (2 * eps)
    torch.testing.assert_close(tangent, numeric, rtol=1e-6, atol=1e-8)


def test_dropout_between_projected_layers():
    """Training-mode dropout runs one op call per layer on the P-wide outputs; eval mode equals
    torch.nn.LSTM(proj_size, dropout) in eval mode."""
    torch.manual_seed(5)
    ref = torch.nn.LSTM(I, H, 3, dropout=0.5, proj_size=P, dtype=torch.float64)
    fast = fnn.LSTM(I, H, 3, dropout=0.5, proj_size=P, dtype=torch.float64)
    fast.load_state_dict(ref.state_dict())
    x = _inputs(L=3, D=1)[0].detach()
    y, (hn, cn) = fast(x)
    assert y.shape == (T, B, P) and hn.shape == (3, B, P) and cn.shape == (3, B, H)
    y.sum().backward()
    assert all(p.grad is not None for p in fast.parameters())
    ref.eval()
    fast.eval()
    torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)


def test_convert_keeps_the_projection(no_composed):
    torch.manual_seed(6)
    ref = torch.nn.LSTM(I, H, 2, proj_size=P, batch_first=True, dtype=torch.float64)
    fast = fnn.convert(torch.nn.Sequential(ref))[0]
    assert isinstance(fast, fnn.LSTM) and fast.proj_size == P
    x = torch.randn(B, T, I, dtype=torch.float64)
    torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_runs_the_fused_op(no_composed, enforce_sorted):
    """A PackedSequence (sorted: the kernels run each step's live rows only; unsorted: the stack
    sorts the batch) through a stacked bidirectional projected LSTM on the fused op, against
    torch.nn.LSTM(proj_size) on the same packed input: data, h_n, c_n and every gradient (float64)."""
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(7)
    ref = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=P, dtype=torch.float64)
    fast = fnn.LSTM(I, H, 2, bidirectional=True, proj_size=P, dtype=torch.float64)
    fast.load_state_dict(ref.state_dict())
    lengths = torch.tensor([T, T - 2, 1]) if enforce_sorted else torch.tensor([2, T, 1])
    x, h0, c0 = _inputs()
    x64, h064, c064 = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    out, (hn, cn) = fast(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), (h0, c0))
    out_ref, (hn_ref, cn_ref) = ref(pack_padded_sequence(x64, lengths, enforce_sorted=enforce_sorted), (h064, c064))
    (out.data.sum() + hn.pow(2).sum() + cn.pow(3).sum()).backward()
    (out_ref.data.sum() + hn_ref.pow(2).sum() + cn_ref.pow(3).sum()).backward()
    assert out.data.shape == (int(lengths.sum()), 2 * P)
    for name, a, e in (("output", out.data, out_ref.data), ("h_n", hn, hn_ref), ("c_n", cn, cn_ref),
                       ("dx", x.grad, x64.grad), ("dh0", h0.grad, h064.grad), ("dc0", c0.grad, c064.grad)):
        assert_torch_close(to_numpy(a), to_numpy(e), torch.float64, name)
    ref_params = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        assert_torch_close(to_numpy(p.grad), to_numpy(ref_params[name].grad), torch.float64, "d" + name)


def test_bfloat16_runs_the_fused_op(monkeypatch):
    """A bfloat16 LSTM(proj_size) runs the 16-bit kernels (the composed torch ops are refused here),
    close to torch.nn.LSTM(proj_size) in float64 on the same bfloat16-valued weights and input
    (tests/tolerances.py's NN16; tests/nn/test_nn_16bit.py checks every gradient too)."""
    from fastrnn.nn import _recurrence
    torch.manual_seed(8)
    fast = fnn.LSTM(I, H, 1, proj_size=P).to(torch.bfloat16)
    ref = torch.nn.LSTM(I, H, 1, proj_size=P, dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})

    def refuse(*args, **kwargs):
        raise AssertionError("the composed torch ops ran a 16-bit projected LSTM")
    monkeypatch.setattr(_recurrence, "_composed_recurrence", refuse)
    x = _inputs(L=1, D=1)[0].detach().to(torch.bfloat16)
    y, (hn, cn) = fast(x)
    assert y.dtype == torch.bfloat16 and y.shape == (T, B, P) and hn.shape == (1, B, P) and cn.shape == (1, B, H)
    with torch.no_grad():
        y_ref = ref(x.double())[0]
    assert tolerances.relative_error(y.detach().double().numpy(), y_ref.numpy()) <= tolerances.NN16["bfloat16"]["output"]


def test_which_projected_calls_run_fused():
    """The routing of LSTM(proj_size) calls, checked without a GPU on stand-ins that say only their
    device and dtype (tests/cuda/test_nn_cuda.py runs the CUDA case for real): fused on the CPU and
    on CUDA in every dtype, on the CPU with grad_clip too; composed torch ops with a masking modifier
    (recurrent dropout, zoneout), with grad_clip on CUDA, and on other devices."""
    import types

    def composed(device, dtype, modified=False, masked=None):
        x = types.SimpleNamespace(device=torch.device(device), dtype=dtype, size=lambda dim: (T, B, I)[dim])
        return recurrence._composed_needed(x, None, None, [], False, False, modified, f"lstm+proj_size={P}", P,
                                           masked=masked)

    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        assert not composed("cpu", dtype) and not composed("cuda", dtype), dtype
        assert composed("cuda", dtype, modified=True) and composed("cpu", dtype, modified=True)
        assert not composed("cpu", dtype, modified=True, masked=False), dtype  # grad_clip alone
        assert composed("cuda", dtype, modified=True, masked=False), dtype
    assert composed("mps", torch.float32)
