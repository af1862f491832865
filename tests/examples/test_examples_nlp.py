"""Runs the NLP examples (SST-2 sentiment, UD EWT tagging, Multi30k translation, WikiText-2
language model) in --quick mode on slices of the real data in ../shared/data, with torch.nn and
with fastrnn.nn, and checks that each learns (its loss falls, its metric is well above chance)
and that, with dropout off and the same seed, fastrnn.nn's per-batch loss curve is torch.nn's to
float32 rounding (tolerances.EXAMPLE_LOSS_CURVE: the first 15 batches closely, the
whole run's mean loosely, as float32 differences grow along a run). Also unit tests of the shared readers,
vocabulary, batching and share measurement (examples/nlp_data.py), and of the translation
model's step function against its one-call teacher forcing and fastrnn.generate's decoders.
Each example run happens once per session (tests/helpers.py caches it).
"""
import math
import os

import pytest

torch = pytest.importorskip("torch")  # the examples are PyTorch programs

import helpers as ex  # noqa: E402
import tolerances  # noqa: E402
from tolerances import EXAMPLE_LOSS_CURVE  # noqa: E402

IMPLS = ["torch", "fastrnn"]
COMMON = ["--quick", "--no-progress", "--dropout", "0", "--share-batches", "2", "--threads", "1"]


def _learned(losses, n=10, margin=0.1):
    first, last = ex.head_tail_means(losses, n)
    assert last < first - margin, f"training loss did not fall: first {n} batches {first:.4f}, last {n} {last:.4f}"


def _tracks(name, args):
    ref = ex.run_example(name, args + ["--impl", "torch"])
    mine = ex.run_example(name, args + ["--impl", "fastrnn"])
    a, b = mine["losses"], ref["losses"]
    assert len(a) == len(b) >= 20, (len(a), len(b))
    n = EXAMPLE_LOSS_CURVE["batches"]
    diff = ex.max_relative_difference(a[:n], b[:n])
    tolerances.observed[("example-loss-curve", name + " " + " ".join(args[-7:]))] = (diff, f"first {n} batches")
    assert diff <= EXAMPLE_LOSS_CURVE["rtol"], f"{name}: first {n} losses differ by {diff:.3g} (relative) at worst"
    assert sum(a) / len(a) == pytest.approx(sum(b) / len(b), rel=EXAMPLE_LOSS_CURVE["mean_rtol"])
    return ref, mine


# ---- SST-2 ---------------------------------------------------------------------------------------
def _sst2_args():
    return ["--data", ex.data_or_skip("sst2", "train.tsv", "dev.tsv", "test.tsv")] + COMMON


@pytest.mark.parametrize("impl", IMPLS)
def test_sentiment_sst2_learns(impl):
    r = ex.run_example("sentiment_sst2", _sst2_args() + ["--impl", impl])
    _learned(r["losses"])
    # chance is ~50 % (dev is 51 % positive); the quick run reaches ~65-70 %
    assert r["dev_acc"] > 0.6 and r["test_acc"] > 0.6, (r["dev_acc"], r["test_acc"])
    assert r["train_tokens_per_s"] > 0 and r["recurrent_share"] > 0


def test_sentiment_sst2_fastrnn_tracks_torch():
    ref, mine = _tracks("sentiment_sst2", _sst2_args())
    assert mine["dev_acc"] == pytest.approx(ref["dev_acc"], abs=0.02)


# ---- UD EWT POS tagging --------------------------------------------------------------------------
def _ewt_args():
    return ["--data", ex.data_or_skip("ud-english-ewt", "en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu")] + COMMON


@pytest.mark.parametrize("impl", IMPLS)
def test_pos_tagging_ewt_learns(impl):
    r = ex.run_example("pos_tagging_ewt", _ewt_args() + ["--impl", impl])
    _learned(r["losses"], margin=0.5)
    # the most frequent tag (NOUN) is ~17 % of tokens; the quick run reaches ~65-70 %
    assert r["n_tags"] == 17 and r["test_acc"] > 0.5, r["test_acc"]
    assert r["recurrent_share"] > 0


def test_pos_tagging_ewt_fastrnn_tracks_torch():
    ref, mine = _tracks("pos_tagging_ewt", _ewt_args())
    assert mine["test_acc"] == pytest.approx(ref["test_acc"], abs=0.02)


# ---- Multi30k translation ------------------------------------------------------------------------
def _multi30k_args(attention):
    files = [f"{s}.{l}" for s in ("train", "val", "test_2016_flickr") for l in ("de", "en")]
    pytest.importorskip("sacrebleu")
    pytest.importorskip("fastrnn.generate")
    return ["--data", ex.data_or_skip("multi30k", *files), "--attention", attention] + COMMON


@pytest.mark.parametrize("attention", ["none", "luong"])
@pytest.mark.parametrize("impl", IMPLS)
def test_translate_multi30k_learns(impl, attention):
    r = ex.run_example("translate_multi30k", _multi30k_args(attention) + ["--impl", impl])
    _learned(r["losses"], margin=0.5)
    assert r["epochs"][-1]["val_loss"] < r["epochs"][0]["val_loss"]
    # A model that learned nothing scores BLEU 0 (no 4-gram in common); the quick runs reach 2-9.
    assert r["test_bleu_greedy"] > 0.5 and r["test_bleu_beam"] > 0.5, (r["test_bleu_greedy"], r["test_bleu_beam"])
    assert all(e["greedy"] and e["beam"] for e in r["examples"])


@pytest.mark.parametrize("attention", ["none", "luong"])
def test_translate_multi30k_fastrnn_tracks_torch(attention):
    _tracks("translate_multi30k", _multi30k_args(attention))


# ---- WikiText-2 language model -------------------------------------------------------------------
def _wikitext_args():
    return ["--data", ex.data_or_skip("wikitext-2", "valid.txt", "test.txt")] + COMMON


@pytest.mark.parametrize("impl", IMPLS)
def test_lm_wikitext2_learns_and_writes(impl):
    pytest.importorskip("fastrnn.generate")
    r = ex.run_example("lm_wikitext2", _wikitext_args() + ["--impl", impl])
    _learned(r["losses"], margin=1.0)
    # A model that learned nothing has a perplexity of about the vocabulary's size (13,777).
    assert math.isfinite(r["test_ppl"]) and r["test_ppl"] < r["vocab_size"] / 4, (r["test_ppl"], r["vocab_size"])
    assert len(r["generated"]) == 3 and all(text.split() for text in r["generated"].values()), r["generated"]
    assert r["recurrent_share"] > 0


def test_lm_wikitext2_fastrnn_tracks_torch():
    pytest.importorskip("fastrnn.generate")
    ref, mine = _tracks("lm_wikitext2", _wikitext_args())
    # the test loss comes after the whole run, so it drifts apart like the run's mean loss (EXAMPLE_LOSS_CURVE)
    assert mine["test_loss"] == pytest.approx(ref["test_loss"], rel=EXAMPLE_LOSS_CURVE["mean_rtol"])


# ---- nlp_data ------------------------------------------------------------------------------------
def test_readers(tmp_path):
    nlp_data = ex.example("nlp_data")
    (tmp_path / "a.tsv").write_text("sentence\tlabel\nit is good\t1\nbad .\t0\n")
    assert nlp_data.read_tsv_classification(str(tmp_path / "a.tsv")) == [(["it", "is", "good"], 1), (["bad", "."], 0)]
    (tmp_path / "b.tsv").write_text("label\tsentence\n1\tfine\textra\n")
    with pytest.raises(ValueError, match="b.tsv:2: expected 2"):
        nlp_data.read_tsv_classification(str(tmp_path / "b.tsv"))
    row = "\t".join
    (tmp_path / "c.conllu").write_text("\n".join([
        "# sent_id = 1", row(["1-2", "don't", "_", "_", "_", "_", "_", "_", "_", "_"]),
        row(["1", "do", "do", "AUX", "VBP", "_", "0", "root", "_", "_"]),
        row(["2", "n't", "not", "PART", "RB", "_", "1", "advmod", "_", "_"]),
        row(["2.1", "x", "x", "X", "X", "_", "_", "_", "_", "_"]), "",
        row(["1", "Hi", "hi", "INTJ", "UH", "_", "0", "root", "_", "_"]), ""]))
    assert nlp_data.read_conllu(str(tmp_path / "c.conllu")) == [(["do", "n't"], ["AUX", "PART"]), (["Hi"], ["INTJ"])]
    (tmp_path / "s.de").write_text("ein hund\nzwei\n")
    (tmp_path / "s.en").write_text("a dog\n")
    with pytest.raises(ValueError, match="not aligned"):
        nlp_data.read_parallel(str(tmp_path / "s.de"), str(tmp_path / "s.en"))
    (tmp_path / "s.en").write_text("a dog\ntwo\n")
    assert nlp_data.read_parallel(str(tmp_path / "s.de"), str(tmp_path / "s.en")) == [
        (["ein", "hund"], ["a", "dog"]), (["zwei"], ["two"])]
    with pytest.raises(FileNotFoundError, match="--data"):
        nlp_data.read_token_lines(str(tmp_path / "missing.txt"))


def test_vocab_pad_batches():
    nlp_data = ex.example("nlp_data")
    v = nlp_data.Vocab.build([["b", "a", "b"], ["c", "b", "a"]], min_freq=2)
    assert v.words == ["<pad>", "<unk>", "b", "a"] and v.encode(["a", "z"]) == [3, 1]
    assert v.decode([2, 3, 0, 2], stop=0) == ["b", "a"] and v.decode([2, 0, 3], skip=(0,)) == ["b", "a"]
    ids, lengths = nlp_data.pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 8], [6, 0], [7, 0]] and lengths.tolist() == [3, 1]
    lens = [(7 * i) % 13 + 1 for i in range(103)]
    for shuffle in (False, True):
        b = nlp_data.batches(103, 10, shuffle=shuffle, seed=3, lengths=lens)
        assert sorted(i for idx in b for i in idx) == list(range(103)) and max(map(len, b)) == 10
    assert nlp_data.batches(103, 10, shuffle=True, seed=3) == nlp_data.batches(103, 10, shuffle=True, seed=3)


def test_recurrent_share_replays_the_recurrent_calls():
    nlp_data = ex.example("nlp_data")
    torch.manual_seed(0)
    rnn, head = torch.nn.LSTM(8, 16), torch.nn.Linear(16, 3)
    model = torch.nn.ModuleList([rnn, head])
    x = torch.randn(5, 4, 8, requires_grad=True)

    def step():
        model.zero_grad(set_to_none=True)
        y, _ = rnn(x)
        h, _ = rnn(y[:, :, :8])  # two calls of the same layer in one step
        head(h).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    expected = step()
    share = nlp_data.RecurrentShare(model)
    assert share.modules == [rnn] and math.isnan(share.share)
    with share.record():
        got = step()
    assert share.replayed_calls == 2 and share.step_seconds > 0 and share.replay_seconds > 0
    assert share.calls == [] and share.share > 0
    # the replay's own backward leaves the step's gradients as they were
    for g, e, p in zip(got, expected, model.parameters()):
        assert torch.equal(g, e) and torch.equal(p.grad, e)


# ---- translation model: one step vs one call, decoders -------------------------------------------
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", ["none", "luong", "bahdanau"])
@pytest.mark.parametrize("impl", IMPLS)
def test_seq2seq_step_matches_teacher_forcing(impl, attention, cell):
    pytest.importorskip("fastrnn.generate")
    from fastrnn import generate
    nlp_data, mt = ex.example("nlp_data"), ex.example("translate_multi30k")
    if impl == "fastrnn":
        pytest.importorskip("fastrnn.nn")
    torch.manual_seed(0)
    model = nlp_data.use_impl(mt.Seq2Seq(23, 19, 8, 12, cell, attention, 0.0), impl).eval()
    src = torch.randint(4, 23, (7, 5))
    src_lengths = torch.tensor([7, 3, 5, 1, 6])
    src[3:, 1] = src[5:, 2] = src[1:, 3] = src[6:, 4] = mt.PAD_ID
    tgt_in = torch.randint(4, 19, (6, 5))
    with torch.no_grad():
        state = model.encode(src, src_lengths)
        one_call = model.teacher_forced(tgt_in, state)                               # [T, N, V]
        stepped = torch.stack([logits for logits in _steps(model, state, tgt_in)])
        assert one_call.shape == (6, 5, 19)
        torch.testing.assert_close(stepped, one_call, rtol=1e-5, atol=1e-5)
        # beam search with one hypothesis is greedy decoding, through the state's reordering
        g = generate.greedy(model.step, state, mt.BOS_ID, 9, eos=mt.EOS_ID)
        b = generate.beam_search(model.step, state, mt.BOS_ID, 9, mt.EOS_ID, 1)
        assert torch.equal(b.tokens[:, 0], g.tokens)
        b4 = generate.beam_search(model.step, state, mt.BOS_ID, 9, mt.EOS_ID, 4, nbest=4)
        assert b4.tokens.shape == (5, 4, 9) and bool(torch.isfinite(b4.scores[:, 0]).all())


def _steps(model, state, tgt_in):
    for t in range(tgt_in.size(0)):
        logits, state = model.step(tgt_in[t], state)
        yield logits
