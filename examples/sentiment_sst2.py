"""Sentiment classification on SST-2: "is this sentence positive or negative?" from a
bidirectional recurrent network's view of the whole sentence. embedding -> bidirectional LSTM (or
GRU, --cell) run over padded batches as a PackedSequence (so each sentence ends at its own length)
-> the last states of both directions and a max-pool over time -> linear -> 2 classes. Trained on
train.tsv (67k phrases and sentences) with Adam, evaluated on dev.tsv (the usual figure) and
test.tsv with the weights of the best dev epoch.

Runs with torch.nn's layers or fastrnn.nn's (--impl): the model is built with torch.nn and, for
fastrnn, converted with fastrnn.nn.convert, so both start from the same weights for a seed.

    python examples/sentiment_sst2.py --impl fastrnn              # ~82-85 % dev
    python examples/sentiment_sst2.py --impl torch --quick        # seconds, on a slice
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nlp_data  # noqa: E402  (examples/nlp_data.py)

QUICK = dict(train_limit=8000, epochs=3, emsize=32, hidden=32, batch_size=32, lr=5e-3)


class SentimentClassifier(nn.Module):
    def __init__(self, vocab_size: int, emsize: int, hidden: int, cell: str, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emsize, padding_idx=0)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(emsize, hidden, layers, bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(4 * hidden, 2)  # [last fwd; last bwd; max-pool fwd+bwd]

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids [T, B], lengths [B] -> logits [B, 2]."""
        emb = self.drop(self.embedding(ids))                           # [T, B, E]
        packed = pack_padded_sequence(emb, lengths, enforce_sorted=False)
        out, state = self.rnn(packed)
        h_n = state[0] if isinstance(state, tuple) else state          # [L*2, B, H]
        last = torch.cat([h_n[-2], h_n[-1]], dim=1)                    # [B, 2H]: each direction's final state
        padded, _ = pad_packed_sequence(out, padding_value=float("-inf"))  # [T, B, 2H]
        pooled = padded.max(dim=0).values                              # [B, 2H]
        return self.out(self.drop(torch.cat([last, pooled], dim=1)))


def encode(examples, vocab):
    return [vocab.encode(tokens) or [vocab.unk_id] for tokens, _ in examples], [label for _, label in examples]


def evaluate(model, ids, labels, batch_size: int):
    """Returns (accuracy, tokens/s) over a split, in eval mode without gradients."""
    model.eval()
    rate, correct = nlp_data.Throughput(), 0
    with torch.no_grad():
        for idx in nlp_data.batches(len(ids), batch_size, lengths=[len(s) for s in ids]):
            x, lengths = nlp_data.pad([ids[i] for i in idx])
            pred = model(x, lengths).argmax(dim=1)
            correct += int((pred == torch.tensor([labels[i] for i in idx])).sum())
            rate.add(int(lengths.sum()))
    return correct / len(ids), rate.rate


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    nlp_data.add_common_args(p, "sst2")
    p.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--emsize", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128, help="hidden units per direction")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training examples (0: all)")
    return nlp_data.parse_args(p, argv, QUICK)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    nlp_data.set_threads(args.threads)
    torch.manual_seed(args.seed)

    train = nlp_data.read_tsv_classification(os.path.join(args.data, "train.tsv"))
    dev = nlp_data.read_tsv_classification(os.path.join(args.data, "dev.tsv"))
    test = nlp_data.read_tsv_classification(os.path.join(args.data, "test.tsv"))
    if args.train_limit:
        train = train[: args.train_limit]
    vocab = nlp_data.Vocab.build(tokens for tokens, _ in train)
    (train_x, train_y), (dev_x, dev_y), (test_x, test_y) = (encode(s, vocab) for s in (train, dev, test))
    print(f"SST-2 {args.data}: train {len(train)}, dev {len(dev)}, test {len(test)}; vocabulary {len(vocab)}")

    model = SentimentClassifier(len(vocab), args.emsize, args.hidden, args.cell, args.layers, args.dropout)
    model = nlp_data.use_impl(model, args.impl)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"model: {args.impl} bidirectional {args.cell}, {args.layers} layer(s), emsize {args.emsize}, "
          f"hidden {args.hidden}; {sum(p.numel() for p in model.parameters())} parameters; "
          f"{torch.get_num_threads()} threads")

    def train_step(idx, step):
        x, lengths = nlp_data.pad([train_x[i] for i in idx])
        y = torch.tensor([train_y[i] for i in idx])
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x, lengths), y)
        loss.backward()
        optimizer.step()
        return loss.item(), int(lengths.sum())

    def evaluate_epoch():
        dev_acc, eval_rate = evaluate(model, dev_x, dev_y, args.batch_size)
        return dev_acc, dict(dev_acc=dev_acc, eval_tokens_per_s=eval_rate), dict(dev_acc=dev_acc)

    result = {"impl": args.impl, "cell": args.cell, "losses": [], "epochs": []}
    lengths = [len(s) for s in train_x]
    best = nlp_data.train_epochs(model, train_step, lengths, args, evaluate_epoch, result)
    test_acc, test_rate = evaluate(model, test_x, test_y, args.batch_size)
    share = nlp_data.training_share(model, train_step, lengths, args.batch_size, args.share_batches,
                                    result["epochs"][-1]["step"])
    result.update(dev_acc=best, test_acc=test_acc, test_tokens_per_s=test_rate, recurrent_share=share)
    print(nlp_data.report_line(f"result ({args.impl} {args.cell})", dev_acc=best, test_acc=test_acc,
                               train_tokens_per_s=round(result["train_tokens_per_s"]),
                               test_tokens_per_s=round(test_rate), recurrent_share=share))
    if args.plot:
        nlp_data.plot_curves(args.plot, {"training loss (per batch)": list(enumerate(result["losses"], 1))},
                             "batch", f"SST-2, {args.impl} bidirectional {args.cell}",
                             secondary={"dev accuracy": [(e["step"], e["dev_acc"]) for e in result["epochs"]]},
                             secondary_label="accuracy")
    return result


if __name__ == "__main__":
    main()
