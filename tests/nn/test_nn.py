"""fastrnn.nn against torch.nn: the same weights (loaded through state_dict) and inputs give the same
outputs, final states and gradients (of the input, the initial states and every parameter), over
every cell x layers {1, 2} x uni/bidirectional x input form (batched, batch_first, unbatched,
unbatched with batch_first, PackedSequence, no hx) x dtype, LSTM with proj_size, and the cells. The
truth is torch.nn run in float64 on the same data (float32 inputs cast up), so a float32 comparison
measures fastrnn's own rounding, with the tolerances of tests/tolerances.py. Also: constructor
signatures, parameter names and order, state_dict both ways, the same exception types as torch for
bad input, dropout between layers, and convert() on a nested model.
"""
import inspect
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn.nn as fnn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402
from helpers import (CELL_PAIRS as CELLS, FORMS, LAYER_PAIRS as MODULES, PARITY_LENGTHS as LENGTHS,  # noqa: E402
                     PARITY_SIZES, TORCH_DTYPES as DTYPES, check_cell_parity, check_parity, pair)
T, B, I, H, P = PARITY_SIZES  # P: proj_size


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bidirectional", (False, True), ids=("uni", "bi"))
@pytest.mark.parametrize("num_layers", (1, 2))
@pytest.mark.parametrize("cell", tuple(MODULES))
def test_parity(cell, num_layers, bidirectional, form, dtype):
    check_parity(cell, num_layers, bidirectional, form, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layers_bi", ((1, False), (2, True)), ids=("1uni", "2bi"))
def test_parity_lstm_proj(layers_bi, form, dtype):
    check_parity("lstm", layers_bi[0], layers_bi[1], form, dtype, proj_size=P)


@pytest.mark.parametrize("form", ("batched", "packed"))
@pytest.mark.parametrize("cell", tuple(MODULES))
def test_parity_no_bias(cell, form):
    check_parity(cell, 2, True, form, torch.float64, bias=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ("batched", "unbatched", "no_hx"))
@pytest.mark.parametrize("bias", (True, False))
@pytest.mark.parametrize("cell", tuple(CELLS))
def test_cell_parity(cell, bias, form, dtype):
    check_cell_parity(cell, bias, form, dtype)


def test_cell_sequence_equals_module():
    """Stepping LSTMCell over time gives LSTM's outputs (the two paths share one op)."""
    torch.manual_seed(0)
    cell, lstm = fnn.LSTMCell(I, H, dtype=torch.float64), fnn.LSTM(I, H, dtype=torch.float64)
    lstm.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = c = torch.zeros(B, H, dtype=torch.float64)
    ys = []
    for t in range(T):
        h, c = cell(x[t], (h, c))
        ys.append(h)
    y, (hn, cn) = lstm(x)
    torch.testing.assert_close(torch.stack(ys), y, rtol=0, atol=1e-14)
    torch.testing.assert_close(c, cn[0], rtol=0, atol=1e-14)


# ---- API surface ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"))
def test_constructor_signature(name):
    torch_sig = inspect.signature(getattr(torch.nn, name).__init__)
    fast_sig = inspect.signature(getattr(fnn, name).__init__)
    if name in ("RNN", "LSTM", "GRU"):
        # torch.nn's RNN/LSTM/GRU take *args, **kwargs; their documented signature is the overload /
        # docstring. Compare with the documented order and defaults.
        expected = {
            "RNN": "input_size hidden_size num_layers=1 nonlinearity='tanh' bias=True batch_first=False dropout=0.0 "
                   "bidirectional=False device=None dtype=None",
            "LSTM": "input_size hidden_size num_layers=1 bias=True batch_first=False dropout=0.0 bidirectional=False "
                    "proj_size=0 device=None dtype=None",
            "GRU": "input_size hidden_size num_layers=1 bias=True batch_first=False dropout=0.0 bidirectional=False "
                   "device=None dtype=None",
        }[name].split()
    else:
        expected = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                    for p in list(torch_sig.parameters.values())[1:]]
    # torch.nn's parameters, in its order; fastrnn's own options (the cell variants, the
    # training modifiers) follow them, keyword-only, so no positional call changes meaning
    params = list(fast_sig.parameters.values())[1:]
    got = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
           for p in params if p.kind != inspect.Parameter.KEYWORD_ONLY]
    assert got == expected
    # beyond torch.nn's: the training modifiers, keyword-only, off by default
    modifier_names = ("zoneout", "zoneout_cell", "recurrent_dropout", "weight_dropout", "grad_clip", "dilation")
    extra = {p.name: p.default for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name in modifier_names}
    if name in ("RNN", "LSTM", "GRU"):
        modifiers = {"zoneout": 0.0, "recurrent_dropout": 0.0, "weight_dropout": 0.0, "grad_clip": None,
                     "dilation": 1}
        assert extra == ({**modifiers, "zoneout_cell": 0.0} if name == "LSTM" else modifiers)
    else:
        assert extra == {}


@pytest.mark.parametrize("name,args,kwargs", [
    ("RNN", (I, H, 2, "relu", False, True, 0.5, True), {}),
    ("LSTM", (I, H, 2, False, True, 0.25, True, P), {}),
    ("GRU", (I, H), {"num_layers": 3, "bidirectional": True}),
    ("RNNCell", (I, H, False, "relu"), {}),
    ("LSTMCell", (I, H, False), {}),
    ("GRUCell", (I, H), {}),
])
def test_same_parameters_repr_and_state_dict_both_ways(name, args, kwargs):
    """Positional arguments mean the same thing; parameter names, shapes, order, repr and init range
    match torch.nn; state_dicts load both ways (strict) and give the same outputs."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **kwargs)
    fast = getattr(fnn, name)(*args, **kwargs)
    assert repr(fast) == repr(ref)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    bound = 1 / np.sqrt(H)
    for p in fast.parameters():
        assert p.abs().max() <= bound and p.std() > bound / 4  # U(-1/sqrt(H), 1/sqrt(H))
    fast.reset_parameters()
    if hasattr(fast, "flatten_parameters"):
        fast.flatten_parameters()
        assert [n for n, _ in fast.named_parameters()] == [n for n in ref.state_dict()]
    fast.load_state_dict(ref.state_dict())
    ref.eval(), fast.eval()  # no dropout
    x = torch.randn((B, I) if "Cell" in name else (T, B, I))
    out_ref, out = ref(x), fast(x)
    torch.testing.assert_close(out, out_ref, atol=1e-6, rtol=1e-5)
    # and back: perturb fastrnn's weights, load them into torch.nn
    with torch.no_grad():
        for p in fast.parameters():
            p.mul_(0.5)
    ref.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(x), ref(x), atol=1e-6, rtol=1e-5)
    if "Cell" not in name:
        assert [[p.shape for p in ps] for ps in fast.all_weights] == [[p.shape for p in ps] for ps in ref.all_weights]


# ---- errors: the same exception types as torch.nn --------------------------------------------------------
def _same_error(make_ref, make_fast, call):
    ref, fast = make_ref(), make_fast()
    with pytest.raises(Exception) as e_ref:
        call(ref)
    with pytest.raises(Exception) as e_fast:
        call(fast)
    assert type(e_fast.value) is type(e_ref.value), (e_fast.value, e_ref.value)
    return str(e_fast.value)


@pytest.mark.parametrize("name", ("RNN", "LSTM", "GRU"))
@pytest.mark.parametrize("case", ("input_4d", "input_size", "hx_shape", "hx_dim", "unbatched_hx_dim", "dtype",
                                  "packed_hx_size"))
def test_module_errors_match_torch(name, case):
    lstm = name == "LSTM"

    def hx(*shape):
        return (torch.zeros(shape), torch.zeros(shape)) if lstm else torch.zeros(shape)

    calls = {
        "input_4d": lambda m: m(torch.zeros(T, B, I, 1)),
        "input_size": lambda m: m(torch.zeros(T, B, I + 1)),
        "hx_shape": lambda m: m(torch.zeros(T, B, I), hx(1, B + 1, H)),
        "hx_dim": lambda m: m(torch.zeros(T, B, I), hx(B, H)),
        "unbatched_hx_dim": lambda m: m(torch.zeros(T, I), hx(1, 1, H)),
        "dtype": lambda m: m(torch.zeros(T, B, I, dtype=torch.float64)),
        "packed_hx_size": lambda m: m(pack_padded_sequence(torch.zeros(T, B, I), torch.tensor(LENGTHS),
                                                            enforce_sorted=False), hx(1, B, H + 1)),
    }
    assert _same_error(lambda: getattr(torch.nn, name)(I, H), lambda: getattr(fnn, name)(I, H), calls[case])


@pytest.mark.parametrize("name", ("RNNCell", "LSTMCell", "GRUCell"))
@pytest.mark.parametrize("case", ("input_3d", "hx_3d", "input_size", "hx_batch", "hx_size", "dtype", "hx_dtype"))
def test_cell_errors_match_torch(name, case):
    lstm = name == "LSTMCell"

    def hx(*shape, dtype=torch.float32):
        h = torch.zeros(shape, dtype=dtype)
        return (h, h) if lstm else h

    calls = {
        "input_3d": lambda m: m(torch.zeros(1, B, I)),
        "hx_3d": lambda m: m(torch.zeros(B, I), hx(1, B, H)),
        "input_size": lambda m: m(torch.zeros(B, I + 1)),
        "hx_batch": lambda m: m(torch.zeros(B, I), hx(B + 1, H)),
        "hx_size": lambda m: m(torch.zeros(B, I), hx(B, H + 1)),
        "dtype": lambda m: m(torch.zeros(B, I, dtype=torch.float64)),
        "hx_dtype": lambda m: m(torch.zeros(B, I), hx(B, H, dtype=torch.float64)),
    }
    _same_error(lambda: getattr(torch.nn, name)(I, H), lambda: getattr(fnn, name)(I, H), calls[case])


@pytest.mark.parametrize("kwargs", [dict(dropout=1.5), dict(dropout=True), dict(bias=1), dict(batch_first=None),
                                    dict(hidden_size=0), dict(hidden_size=2.0), dict(input_size=0),
                                    dict(num_layers=0), dict(nonlinearity="sigmoid")])
def test_constructor_errors_match_torch(kwargs):
    full = {"input_size": I, "hidden_size": H, **kwargs}
    for name in ("RNN",) if "nonlinearity" in kwargs else ("RNN", "LSTM", "GRU"):
        _same_error(lambda: torch.nn, lambda: fnn, lambda ns, name=name: getattr(ns, name)(**full))


def test_constructor_errors_proj_size():
    for kwargs in (dict(proj_size=-1), dict(proj_size=H)):
        with pytest.raises(ValueError):
            torch.nn.LSTM(I, H, **kwargs)
        with pytest.raises(ValueError):
            fnn.LSTM(I, H, **kwargs)


def test_mixed_dtypes_are_refused():
    # float16 / bfloat16 run the 16-bit kernels (tests/nn/test_nn_16bit.py); an input whose dtype is
    # not the parameters' is refused as torch.nn refuses it, naming both
    m = fnn.LSTM(I, H, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"input dtype \(torch.bfloat16\) does not match weight dtype \(torch.float16\)"):
        m(torch.zeros(T, B, I, dtype=torch.bfloat16))
    cell = fnn.GRUCell(I, H, dtype=torch.bfloat16)
    with pytest.raises((TypeError, ValueError, RuntimeError), match=r"float16"):
        cell(torch.zeros(B, I, dtype=torch.float16))


# ---- dropout --------------------------------------------------------------------------------------------
def test_dropout_warning_matches_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fnn.LSTM(I, H, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fnn.GRU(I, H, num_layers=2, dropout=0.5)


@pytest.mark.parametrize("cell", ("lstm", "gru"))
def test_dropout_between_layers(cell):
    """dropout=1 zeroes every layer's output but the last one's input: deterministic, so equal to
    torch.nn's; in eval mode dropout is off and outputs equal torch.nn's without dropout; with
    p=0.5 in training mode two calls differ (dropout is applied) and gradients flow."""
    torch_cls, fast_cls, _ = MODULES[cell]
    ref, fast = pair(torch_cls, fast_cls, torch.float64, input_size=I, hidden_size=H, num_layers=3,
                     bidirectional=True, dropout=1.0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for train in (True, False):
        ref.train(train), fast.train(train)
        torch.testing.assert_close(fast(x)[0], ref(x)[0], atol=1e-12, rtol=0)
    fast.train().dropout = 0.5
    x.requires_grad_()
    y1, y2 = fast(x)[0], fast(x)[0]
    assert not torch.allclose(y1, y2)
    y1.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in fast.parameters())


# ---- convert ----------------------------------------------------------------------------------------------
class _Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(I, I), torch.nn.LSTM(I, H, 2, bidirectional=True))
        self.blocks = torch.nn.ModuleList([torch.nn.GRU(2 * H, H, batch_first=True),
                                           torch.nn.Sequential(torch.nn.RNN(H, H, nonlinearity="relu"))])
        self.cells = torch.nn.ModuleDict({"lstm": torch.nn.LSTMCell(H, H), "gru": torch.nn.GRUCell(H, H),
                                          "rnn": torch.nn.RNNCell(H, H, bias=False)})

    def forward(self, x):
        y, _ = self.encoder(x)
        y, _ = self.blocks[0](y.transpose(0, 1))
        y, h = self.blocks[1][0](y.transpose(0, 1))
        h, c = self.cells["lstm"](h[0])
        return y, self.cells["rnn"](self.cells["gru"](h, c))


def test_convert_nested_model():
    torch.manual_seed(0)
    model = _Nested().double().eval()
    model.cells.train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    before = model(x)
    params = dict(model.named_parameters())
    assert fnn.convert(model) is model
    kinds = {name: type(m) for name, m in model.named_modules()}
    assert kinds["encoder.1"] is fnn.LSTM and kinds["blocks.0"] is fnn.GRU and kinds["blocks.1.0"] is fnn.RNN
    assert kinds["cells.lstm"] is fnn.LSTMCell and kinds["cells.gru"] is fnn.GRUCell
    assert kinds["cells.rnn"] is fnn.RNNCell and kinds["encoder.0"] is torch.nn.Linear
    assert model.blocks[1][0].nonlinearity == "relu" and model.blocks[0].batch_first
    assert not model.encoder[1].training and model.cells["gru"].training
    # the very same Parameter objects (an optimizer made before convert keeps working)
    assert all(p is params[n] for n, p in model.named_parameters()) and len(params) == len(list(model.parameters()))
    after = model(x)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    lone = torch.nn.GRU(I, H)
    assert type(fnn.convert(lone)) is fnn.GRU


def test_import_fastrnn_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, fastrnn; assert 'torch' not in sys.modules, 'import fastrnn imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
