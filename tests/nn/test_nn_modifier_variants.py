"""fastrnn.nn's training modifiers combined with the cell variants: LSTM with
peephole / coupled / cell_clip (the fused op), GRU(reset_after=False), LSTM/GRU(layer_norm=True)
and LSTM(proj_size) (composed torch ops), each with zoneout, zoneout_cell, recurrent_dropout,
weight_dropout, grad_clip and dilation.

Against a plain-torch loop of the same equations (``helpers.torch_modified_loop``) given the same
masks, re-drawn from the same seed in fastrnn.nn's documented order (weight masks, then the seed
of the kernels' masks, or the recurrent mask, zoneout of h, zoneout of c: helpers.nn_drawn_masks); outputs, final states and every gradient. Also: eval mode draws
nothing and applies the eval formula, a fixed seed reproduces a run and the masks differ between
calls, p = 0 is bit-identical to the variant alone, torch.compile(fullgraph=True).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn.nn as fnn  # noqa: E402
from helpers import nn_drawn_masks, torch_modified_loop  # noqa: E402

I, H = 3, 4
# (class, options): the fused LSTM variants, then the composed paths
VARIANTS = [("LSTM", dict(peephole=True)), ("LSTM", dict(coupled=True, cell_clip=0.3)),
            ("LSTM", dict(peephole=True, coupled=True, cell_clip=0.3)), ("LSTM", dict(layer_norm=True)),
            ("GRU", dict(layer_norm=True)), ("GRU", dict(reset_after=False)), ("LSTM", dict(proj_size=2)),
            ("LSTM", dict(proj_size=3, peephole=True, cell_clip=0.3))]
VARIANT_IDS = [c + "-" + "-".join(o) for c, o in VARIANTS]
MODIFIERS = [dict(grad_clip=0.05), dict(recurrent_dropout=0.4), dict(weight_dropout=0.4), dict(zoneout=0.3),
             dict(dilation=[2, 3]),
             dict(zoneout=0.2, recurrent_dropout=0.3, weight_dropout=0.2, grad_clip=0.1, dilation=[3, 1])]
MODIFIER_IDS = ["clip", "recurrent", "weight", "zoneout", "dilation", "all"]
# fastrnn.nn's parameter names -> torch_modified_loop's keys
_KEYS = {"weight_ih": "w_ih", "weight_hh": "w_hh", "bias_ih": "b_ih", "bias_hh": "b_hh", "weight_ch": "w_ch",
         "weight_hr": "w_hr", "ln_weight_ih": "ln_ih", "ln_weight_hh": "ln_hh", "ln_weight_c": "ln_c_w",
         "ln_bias_c": "ln_c_b"}


def make_module(cls, opts, mods, num_layers=2, bidirectional=True, seed=123):
    torch.manual_seed(seed)
    if cls == "LSTM" and mods.get("zoneout"):  # the LSTM zones out c too
        mods = dict(mods, zoneout_cell=0.25)
    m = getattr(fnn, cls)(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=torch.float64, **opts,
                          **mods)
    with torch.no_grad():  # wider weights (a clip of 0.3 acts somewhere), the layer norm's vectors perturbed
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.mul_(2.0)
    return m


def entries(m, weight_masks=None):
    """The module's parameters per layer and direction as torch_modified_loop's dicts (W_hh times
    the weight-dropout mask where given)."""
    out = []
    for k, names in enumerate(m._all_weights):
        e = {_KEYS[n.rsplit("_l", 1)[0]]: getattr(m, n) for n in names}
        e.setdefault("b_ih", None)
        e.setdefault("b_hh", None)
        if weight_masks is not None:
            e["w_hh"] = e["w_hh"] * weight_masks[k]
        out.append(e)
    return out


def loop_options(m):
    return dict(peephole=getattr(m, "peephole", False), coupled=getattr(m, "coupled", False),
                cell_clip=getattr(m, "cell_clip", None), reset_after=m.reset_after, layer_norm=m.layer_norm)


def plain_run(m, x, lengths, masks, eval_mode=False):
    """torch_modified_loop on m's parameters with the given masks (eval: zoneout d = p everywhere)."""
    T_, B_ = x.shape[0], x.shape[1]
    L, D = m.num_layers, 2 if m.bidirectional else 1
    P = m.proj_size or m.hidden_size
    masks = dict(masks)
    if eval_mode:
        if m.zoneout:
            masks["zoneout"] = torch.full((L * D, T_, B_, P), m.zoneout, dtype=torch.float64)
        if getattr(m, "zoneout_cell", 0):
            masks["zoneout_cell"] = torch.full((L * D, T_, B_, m.hidden_size), m.zoneout_cell, dtype=torch.float64)
    e = entries(m, masks.pop("weight_masks", None))
    h0 = torch.zeros(L * D, B_, P, dtype=torch.float64)
    c0 = torch.zeros(L * D, B_, m.hidden_size, dtype=torch.float64) if m.mode == "LSTM" else None
    return torch_modified_loop(torch, m.mode.lower(), x, e, h0, c0, lengths, m.bidirectional, grad_clip=m.grad_clip,
                               dilation=m.dilation, **loop_options(m), **masks)


def check_against_plain_torch(cls, opts, mods, packed):
    m = make_module(cls, opts, mods)
    T_, B_ = 6, 4
    x = torch.randn(T_, B_, I, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 3]) if packed else None
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.manual_seed(99)
    out, state = m(inp)
    y = out if lengths is None else pad_packed_sequence(out, total_length=T_)[0]
    torch.manual_seed(99)
    masks = nn_drawn_masks(torch, m, T_, B_)
    # packed input: fastrnn.nn draws its masks for the length-sorted batch
    perm = None if lengths is None else torch.sort(lengths, descending=True)[1]
    xs = x if perm is None else x[:, perm]
    y_ref, hn_ref, cn_ref = plain_run(m, xs, None if lengths is None else lengths[perm], masks)
    if perm is not None:
        inv = torch.argsort(perm)
        y_ref, hn_ref = y_ref[:, inv], hn_ref[:, inv]
        cn_ref = None if cn_ref is None else cn_ref[:, inv]
    hn, cn = state if cls == "LSTM" else (state, None)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hn, hn_ref, rtol=1e-12, atol=1e-12)
    if cls == "LSTM":
        torch.testing.assert_close(cn, cn_ref, rtol=1e-12, atol=1e-12)
    g = 3 * torch.randn_like(y)  # large enough that grad_clip's clamp acts
    params = list(m.parameters())
    loss = lambda y_, hn_, cn_: (y_ * g).sum() + hn_.sum() + (0 if cn_ is None else cn_.sum())
    got = torch.autograd.grad(loss(y, hn, cn), [x] + params)
    want = torch.autograd.grad(loss(y_ref, hn_ref, cn_ref), [x] + params)
    for (name, _), a, b in zip([("x", None)] + list(m.named_parameters()), got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=lambda s: f"d{name}: {s}")
    return m, got


@pytest.mark.parametrize("mods", MODIFIERS, ids=MODIFIER_IDS)
@pytest.mark.parametrize("cls,opts", VARIANTS, ids=VARIANT_IDS)
def test_matches_plain_torch_given_the_same_masks(cls, opts, mods):
    check_against_plain_torch(cls, opts, mods, packed=False)


@pytest.mark.parametrize("cls,opts", VARIANTS, ids=VARIANT_IDS)
def test_matches_plain_torch_packed(cls, opts):
    check_against_plain_torch(cls, opts, MODIFIERS[-1], packed=True)


def test_grad_clip_acts_on_every_variant():
    """Without the clamp the gradients differ (the composed paths' hooks and the fused cells act)."""
    for cls, opts in VARIANTS:
        m = make_module(cls, opts, dict(grad_clip=0.02))
        x = torch.randn(6, 3, I, dtype=torch.float64)
        g = 5 * torch.randn(6, 3, 2 * (m.proj_size or H), dtype=torch.float64)
        clipped = torch.autograd.grad((m(x)[0] * g).sum(), list(m.parameters()))
        m.grad_clip = None
        plain = torch.autograd.grad((m(x)[0] * g).sum(), list(m.parameters()))
        assert max(float((a - b).abs().max()) for a, b in zip(clipped, plain)) > 1e-3, (cls, opts)


@pytest.mark.parametrize("cls,opts", VARIANTS, ids=VARIANT_IDS)
def test_eval_draws_no_mask_and_applies_the_eval_formula(cls, opts):
    m = make_module(cls, opts, dict(zoneout=0.3, recurrent_dropout=0.5, weight_dropout=0.5)).eval()
    x = torch.randn(5, 3, I, dtype=torch.float64)
    state = torch.get_rng_state()
    with torch.no_grad():
        y, _ = m(x)
    assert torch.equal(state, torch.get_rng_state())
    with torch.no_grad():
        y_ref, _, _ = plain_run(m, x, None, {}, eval_mode=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,opts", VARIANTS, ids=VARIANT_IDS)
def test_fixed_seed_reproduces_and_masks_differ_between_calls(cls, opts):
    m = make_module(cls, opts, dict(zoneout=0.3, recurrent_dropout=0.3, weight_dropout=0.3), num_layers=1,
                    bidirectional=False)
    x = torch.randn(6, 4, I, dtype=torch.float64)
    torch.manual_seed(5)
    y1, _ = m(x)
    g1 = torch.autograd.grad(y1.sum(), list(m.parameters()))
    torch.manual_seed(5)
    y2, _ = m(x)
    g2 = torch.autograd.grad(y2.sum(), list(m.parameters()))
    assert torch.equal(y1, y2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    y3, _ = m(x)  # the generator moved on: other masks
    assert (y3 - y1).abs().max() > 1e-4


@pytest.mark.parametrize("cls,opts", VARIANTS, ids=VARIANT_IDS)
def test_p_zero_is_bit_identical_to_the_variant_alone(cls, opts):
    plain = make_module(cls, opts, {})
    zero = make_module(cls, opts, dict(zoneout=0.0, recurrent_dropout=0.0, weight_dropout=0.0, dilation=1))
    zero.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, I, dtype=torch.float64, requires_grad=True)
    y1, y2 = plain(x)[0], zero(x)[0]
    assert torch.equal(y1, y2)
    for a, b in zip(torch.autograd.grad(y1.sum(), [x] + list(plain.parameters())),
                    torch.autograd.grad(y2.sum(), [x] + list(zero.parameters()))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls,opts,mods", [
    ("LSTM", dict(peephole=True, coupled=True), dict(grad_clip=0.01, dilation=2)),  # the fused op
    ("GRU", dict(layer_norm=True), dict(grad_clip=0.01)),  # composed: hooks under compile
    ("LSTM", dict(layer_norm=True), dict(zoneout=0.3, zoneout_cell=0.2)),  # composed, eval formula
    ("GRU", dict(reset_after=False), dict(recurrent_dropout=0.5)),
    ("LSTM", dict(proj_size=2), dict(zoneout=0.3, weight_dropout=0.4)),
], ids=["peephole-coupled-clip-dilation", "gru-layer_norm-clip", "layer_norm-zoneout", "reset_before-recurrent", "proj-zoneout-weight"])
def test_torch_compile_fullgraph(cls, opts, mods):
    """torch.compile(fullgraph=True) gives the eager results: training with grad_clip (gradients
    compared; the fused op, and the composed path's hooks), the composed paths with masks in eval
    mode (no mask drawn: deterministic)."""
    torch.manual_seed(0)
    m = getattr(fnn, cls)(I, 6, num_layers=2, bidirectional=True, dtype=torch.float64, **opts, **mods)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 3, I, dtype=torch.float64, requires_grad=True)
    if "grad_clip" in mods:
        y1, _ = m(x)
        g1 = torch.autograd.grad(y1.sum() * 5, [x] + list(m.parameters()))
        y2, _ = compiled(x)
        g2 = torch.autograd.grad(y2.sum() * 5, [x] + list(m.parameters()))
        torch.testing.assert_close(y1, y2)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)
    else:
        m.eval()
        torch.testing.assert_close(compiled(x)[0], m(x)[0])


def test_repr_lists_both():
    m = fnn.LSTM(I, H, peephole=True, proj_size=2, zoneout=0.1, grad_clip=1.0)
    r = repr(m)
    assert "peephole=True" in r and "proj_size=2" in r and "zoneout=0.1" in r and "grad_clip=1.0" in r
