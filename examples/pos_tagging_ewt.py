"""Part-of-speech tagging on UD English EWT: one output per word, the lectures' sequence-labelling
task. word embedding (+ each word's characters read by a small bidirectional LSTM, so unseen words
still get a useful vector) -> 2-layer bidirectional LSTM over the ragged sentences (a
PackedSequence with their lengths) -> per-token linear + softmax over the 17 UPOS tags.

The shared copy has no training split (see its README): this trains on en_ewt-ud-dev.conllu less
a held-out tenth (--holdout, for the learning curve and the choice of epoch) and reports UPOS
accuracy on en_ewt-ud-test.conllu with the weights of the best held-out epoch. With --data DIR
holding en_ewt-ud-train.conllu as well, it trains on that and holds out the dev file instead.

Runs with torch.nn's layers or fastrnn.nn's (--impl): the model is built with torch.nn and, for
fastrnn, converted with fastrnn.nn.convert, so both start from the same weights for a seed.

    python examples/pos_tagging_ewt.py --impl fastrnn            # ~89-91 % test UPOS
    python examples/pos_tagging_ewt.py --impl torch --quick      # seconds, on a slice
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nlp_data  # noqa: E402  (examples/nlp_data.py)

QUICK = dict(train_limit=300, eval_limit=300, epochs=4, emsize=32, char_emsize=16, char_hidden=16, hidden=32,
             batch_size=16, lr=1e-2)


class Tagger(nn.Module):
    def __init__(self, n_words: int, n_chars: int, n_tags: int, emsize: int, char_emsize: int, char_hidden: int,
                 hidden: int, layers: int, dropout: float):
        super().__init__()
        self.words = nn.Embedding(n_words, emsize, padding_idx=0)
        self.char_hidden = char_hidden
        if char_hidden:
            self.chars = nn.Embedding(n_chars, char_emsize, padding_idx=0)
            self.char_rnn = nn.LSTM(char_emsize, char_hidden, bidirectional=True)
        self.rnn = nn.LSTM(emsize + 2 * char_hidden, hidden, layers, bidirectional=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, n_tags)

    def char_features(self, chars: torch.Tensor, char_lengths: torch.Tensor) -> torch.Tensor:
        """chars [C, W] (the characters of the W distinct forms in the batch), char_lengths [W]
        -> [W, 2*char_hidden]: the last states of both directions."""
        packed = pack_padded_sequence(self.chars(chars), char_lengths, enforce_sorted=False)
        _, (h_n, _) = self.char_rnn(packed)                              # [2, W, Hc]
        return torch.cat([h_n[0], h_n[1]], dim=1)

    def forward(self, words, lengths, chars=None, char_lengths=None, form_index=None):
        """words [T, B] word ids, lengths [B]; with character features also chars [C, W],
        char_lengths [W] and form_index [T, B] (which of the W forms each token is)
        -> logits [T, B, n_tags] (rows past a sentence's length are zeros' projection: mask them)."""
        x = self.words(words)                                            # [T, B, E]
        if self.char_hidden:
            x = torch.cat([x, self.char_features(chars, char_lengths)[form_index]], dim=2)
        packed = pack_padded_sequence(self.drop(x), lengths, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, total_length=words.size(0))    # [T, B, 2H]
        return self.out(self.drop(out))


class Batcher:
    """Turns sentences (lists of forms) into the model's tensors: word ids from the training
    vocabulary (lower-cased), and the characters of each distinct form in the batch."""

    def __init__(self, word_vocab: nlp_data.Vocab, char_vocab: nlp_data.Vocab, tag_vocab: nlp_data.Vocab):
        self.word_vocab, self.char_vocab, self.tag_vocab = word_vocab, char_vocab, tag_vocab

    def __call__(self, sentences: List[List[str]], tags: Optional[List[List[str]]] = None, word_dropout: float = 0.0):
        words, lengths = nlp_data.pad([self.word_vocab.encode([w.lower() for w in s]) for s in sentences])
        if word_dropout:
            # Unknown-word practice: a few training tokens become <unk>, so its embedding learns something.
            drop = (torch.rand(words.shape) < word_dropout) & (words != 0)
            words = words.masked_fill(drop, self.word_vocab.unk_id)
        forms = sorted({w for s in sentences for w in s})
        position = {w: i for i, w in enumerate(forms)}
        chars, char_lengths = nlp_data.pad([self.char_vocab.encode(list(w)) for w in forms])
        form_index = torch.zeros(words.shape, dtype=torch.long)          # [T, B]
        for b, s in enumerate(sentences):
            form_index[: len(s), b] = torch.tensor([position[w] for w in s])
        batch = dict(words=words, lengths=lengths, chars=chars, char_lengths=char_lengths, form_index=form_index)
        targets = nlp_data.pad([self.tag_vocab.encode(t) for t in tags], pad_id=-100)[0] if tags else None
        return batch, targets                                            # targets [T, B], -100 past the end


def evaluate(model, batcher, sentences, batch_size: int):
    """Returns (token accuracy, tokens/s) over sentences [(forms, tags)], without gradients."""
    model.eval()
    rate, correct = nlp_data.Throughput(), 0
    with torch.no_grad():
        for idx in nlp_data.batches(len(sentences), batch_size, lengths=[len(s) for s, _ in sentences]):
            batch, targets = batcher([sentences[i][0] for i in idx], [sentences[i][1] for i in idx])
            pred = model(**batch).argmax(dim=2)
            mask = targets != -100
            correct += int((pred[mask] == targets[mask]).sum())
            rate.add(int(mask.sum()))
    return correct / rate.tokens, rate.rate


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    nlp_data.add_common_args(p, "ud-english-ewt")
    p.add_argument("--emsize", type=int, default=100)
    p.add_argument("--char-emsize", type=int, default=32)
    p.add_argument("--char-hidden", type=int, default=32, help="character LSTM units per direction (0: no characters)")
    p.add_argument("--hidden", type=int, default=128, help="tagger LSTM units per direction")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.33)
    p.add_argument("--word-dropout", type=float, default=0.05, help="share of training tokens replaced by <unk>")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--holdout", type=float, default=0.1, help="share of the training file held out (no train split)")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training sentences (0: all)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N held-out/test sentences (0: all)")
    return nlp_data.parse_args(p, argv, QUICK)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    nlp_data.set_threads(args.threads)
    torch.manual_seed(args.seed)

    train_file = os.path.join(args.data, "en_ewt-ud-train.conllu")
    dev = nlp_data.read_conllu(os.path.join(args.data, "en_ewt-ud-dev.conllu"))
    test = nlp_data.read_conllu(os.path.join(args.data, "en_ewt-ud-test.conllu"))
    if os.path.exists(train_file):
        train, held = nlp_data.read_conllu(train_file), dev
    else:
        cut = len(dev) - int(round(args.holdout * len(dev)))
        train, held = dev[:cut], dev[cut:]
    if args.train_limit:
        train = train[: args.train_limit]
    if args.eval_limit:
        held, test = held[: args.eval_limit], test[: args.eval_limit]
    word_vocab = nlp_data.Vocab.build([w.lower() for w in s] for s, _ in train)
    char_vocab = nlp_data.Vocab.build(list(w) for s, _ in train for w in s)
    tag_vocab = nlp_data.Vocab.build((t for _, t in train), specials=(), unk=None)
    batcher = Batcher(word_vocab, char_vocab, tag_vocab)
    n_train_tokens = sum(len(s) for s, _ in train)
    print(f"UD EWT {args.data}: train {len(train)} sentences ({n_train_tokens} tokens), held out {len(held)}, "
          f"test {len(test)}; {len(word_vocab)} words, {len(char_vocab)} characters, {len(tag_vocab)} tags")

    model = Tagger(len(word_vocab), len(char_vocab), len(tag_vocab), args.emsize, args.char_emsize,
                   args.char_hidden, args.hidden, args.layers, args.dropout)
    model = nlp_data.use_impl(model, args.impl)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"model: {args.impl} {args.layers}-layer bidirectional LSTM, hidden {args.hidden}, emsize {args.emsize}, "
          f"char LSTM {args.char_hidden}; {sum(p.numel() for p in model.parameters())} parameters; "
          f"{torch.get_num_threads()} threads")

    def train_step(idx, step):
        batch, targets = batcher([train[i][0] for i in idx], [train[i][1] for i in idx], args.word_dropout)
        optimizer.zero_grad(set_to_none=True)
        logits = model(**batch)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(2)), targets.view(-1), ignore_index=-100)
        loss.backward()
        optimizer.step()
        return loss.item(), int(batch["lengths"].sum())

    def evaluate_epoch():
        held_acc, eval_rate = evaluate(model, batcher, held, args.batch_size)
        return held_acc, dict(heldout_acc=held_acc, eval_tokens_per_s=eval_rate), dict(heldout_upos=held_acc)

    result = {"impl": args.impl, "losses": [], "epochs": [], "n_tags": len(tag_vocab)}
    lengths = [len(s) for s, _ in train]
    best = nlp_data.train_epochs(model, train_step, lengths, args, evaluate_epoch, result)
    test_acc, test_rate = evaluate(model, batcher, test, args.batch_size)
    share = nlp_data.training_share(model, train_step, lengths, args.batch_size, args.share_batches,
                                    result["epochs"][-1]["step"])
    result.update(heldout_acc=best, test_acc=test_acc, test_tokens_per_s=test_rate, recurrent_share=share)
    print(nlp_data.report_line(f"result ({args.impl})", heldout_upos=best, test_upos=test_acc,
                               train_tokens_per_s=round(result["train_tokens_per_s"]),
                               test_tokens_per_s=round(test_rate), recurrent_share=share))
    if args.plot:
        nlp_data.plot_curves(args.plot, {"training loss (per batch)": list(enumerate(result["losses"], 1))},
                             "batch", f"UD EWT UPOS tagging, {args.impl}",
                             secondary={"held-out UPOS accuracy": [(e["step"], e["heldout_acc"])
                                                                   for e in result["epochs"]]},
                             secondary_label="accuracy")
    return result


if __name__ == "__main__":
    main()
