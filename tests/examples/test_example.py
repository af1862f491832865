"""Runs examples/word_language_model.py for a few batches on its default corpus (Python's own help
text), with torch.nn and with fastrnn.nn (when it imports), and checks that it learns: the test
perplexity is finite and well below the vocabulary size (a model that learned nothing scores about
the vocabulary size). With dropout off and the same seed, fastrnn.nn must track torch.nn's losses.
Also checks the --data layouts. A small model keeps each run to a second or two.
"""
import importlib.util
import math
import os

import pytest

from helpers import EXAMPLES

torch = pytest.importorskip("torch")  # the example is a PyTorch program

_PATH = os.path.join(EXAMPLES, "word_language_model.py")
_spec = importlib.util.spec_from_file_location("word_language_model", _PATH)
wlm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wlm)

SMALL = ["--epochs", "1", "--max-batches", "15", "--emsize", "32", "--nhid", "32", "--batch-size", "16",
         "--bptt", "20", "--log-interval", "0", "--seed", "3"]


def _fastrnn_nn_or_skip(impl):
    if impl == "fastrnn":
        pytest.importorskip("fastrnn.nn")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("impl", ["torch", "fastrnn"])
def test_learns_on_default_corpus(capsys, impl, cell):
    _fastrnn_nn_or_skip(impl)
    result = wlm.main(SMALL + ["--impl", impl, "--cell", cell])
    out = capsys.readouterr().out
    assert result["impl"] == impl and result["vocab_size"] > 1000
    ppl = result["test_ppl"]
    assert math.isfinite(ppl) and ppl < result["vocab_size"] / 4, (ppl, result["vocab_size"])
    assert math.isfinite(result["epochs"][0]["valid_ppl"]) and result["epochs"][0]["valid_ppl"] < result["vocab_size"]
    assert result["train_tokens_per_s"] > 0 and result["test_tokens_per_s"] > 0
    assert "test ppl" in out and "tokens/s" in out


def test_fastrnn_tracks_torch():
    pytest.importorskip("fastrnn.nn")
    args = SMALL + ["--dropout", "0", "--cell", "lstm", "--tied", "--emsize", "32"]
    ref = wlm.main(args + ["--impl", "torch"])
    mine = wlm.main(args + ["--impl", "fastrnn"])
    # Same seed, same initial weights, no dropout: only float32 summation order differs.
    assert mine["epochs"][0]["train_loss"] == pytest.approx(ref["epochs"][0]["train_loss"], rel=1e-3)
    assert mine["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-3)


def test_data_dir_layouts(tmp_path):
    lines = ["the cat sat on the mat", "a dog sat on a log", "the dog saw the cat"] * 20
    (tmp_path / "valid.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text("the cat saw a zebra\n" * 10)
    name, vocab, ids = wlm.load_corpus(str(tmp_path))
    assert "training on valid.txt" in name and set(ids) == {"train", "test"}
    assert ids["train"].numel() == sum(len(s.split()) + 1 for s in lines)  # one <eos> per line
    assert "zebra" not in vocab.index and ids["test"][4].item() == vocab.index["<unk>"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    name, vocab, ids = wlm.load_corpus(str(tmp_path))
    assert set(ids) == {"train", "valid", "test"} and name == str(tmp_path)


def test_same_initial_model_whatever_the_impl():
    # A stand-in for fastrnn.nn (any module with torch.nn's API): the example must start it from the
    # weights torch.nn draws for the seed, and leave the random stream as torch.nn does.
    import types
    shim = types.SimpleNamespace(LSTM=torch.nn.LSTM, GRU=torch.nn.GRU, RNN=torch.nn.RNN)
    for cell in ("lstm", "gru", "rnn_tanh"):
        torch.manual_seed(0)
        a = wlm.LanguageModel(torch.nn, cell, 50, 8, 8, 2, 0.0, False)
        torch.manual_seed(0)
        b = wlm.LanguageModel(shim, cell, 50, 8, 8, 2, 0.0, False)
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
