"""A word-level language model (embedding -> multi-layer LSTM/GRU/RNN -> linear decoder, weights
optionally tied) trained with truncated backpropagation through time, runnable with torch.nn or with
fastrnn.nn (the drop-in layers) so that the two can be compared on the same data, from the same
initial weights (``--seed``), for perplexity and tokens/s. It follows PyTorch's own
word_language_model example: SGD with gradient-norm clipping, the hidden state carried across
batches but detached from the previous batch's graph, the learning rate divided by 4 when the
validation loss stops improving.

Data: ``--data DIR`` with train.txt / valid.txt / test.txt (whitespace-tokenised, one ``<eos>`` per
line, as in WikiText-2); if DIR has no train.txt it trains on valid.txt and evaluates on test.txt
(e.g. ``--data ../shared/data/wikitext-2``, whose train split is not shipped). Without ``--data``
it uses a corpus every Python install has: the text of Python's own help topics
(``pydoc_data.topics``, ~465k characters), split into words and punctuation and cut 80/10/10 into
train/valid/test. Words not seen in training become ``<unk>``.

tokens/s are for the whole model (embedding, recurrent layers, decoder and softmax, and in training
the backward and the SGD step), so the recurrent layers' own speed-up shows diluted; the losses of
the two implementations agree to float32 rounding when --dropout is 0 (tests/examples/test_example.py).

    python examples/word_language_model.py --impl torch --cell lstm --epochs 1
    python examples/word_language_model.py --impl fastrnn --cell gru --data ../shared/data/wikitext-2
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from typing import List, Optional, Sequence

import torch
import torch.nn as tnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nlp_data  # noqa: E402  (examples/nlp_data.py: vocabulary, reader, progress bar)

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def _pydoc_lines() -> List[str]:
    from pydoc_data.topics import topics
    return [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]


def _tokenize_plain(line: str) -> List[str]:
    # Python's help text is not pre-tokenised: split punctuation off the words ("value," -> "value" ",").
    return re.findall(r"\w+|[^\w\s]", line)


def load_corpus(data: Optional[str]):
    """Returns (name, vocabulary, {split: LongTensor of token ids}); valid may be missing."""
    if data is None:
        lines = _pydoc_lines()
        n = len(lines)
        cut1, cut2 = int(0.8 * n), int(0.9 * n)
        raw = {"train": lines[:cut1], "valid": lines[cut1:cut2], "test": lines[cut2:]}
        tokens = {k: [_tokenize_plain(line) for line in v] for k, v in raw.items()}
        name = "pydoc_data.topics (80/10/10)"
    else:
        def read(fname):
            return nlp_data.read_token_lines(os.path.join(data, fname))
        if os.path.exists(os.path.join(data, "train.txt")):
            tokens = {k: read(f"{k}.txt") for k in ("train", "valid", "test")}
            name = data
        else:  # e.g. the shared WikiText-2 copy, which ships only valid.txt and test.txt
            tokens = {"train": read("valid.txt"), "test": read("test.txt")}
            name = f"{data} (no train.txt: training on valid.txt, evaluating on test.txt)"
    vocab = nlp_data.Vocab(specials=("<unk>",), unk="<unk>")
    ids = {}
    for split in ("train", "valid", "test"):
        if split not in tokens:
            continue
        out = []
        for words in tokens[split]:
            for w in words + ["<eos>"]:
                out.append(vocab.add(w) if split == "train" else vocab.index.get(w, 0))
        ids[split] = torch.tensor(out, dtype=torch.long)
    return name, vocab, ids


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N] -> [N // batch_size, batch_size]: batch_size independent streams, time-major."""
    n = data.size(0) // batch_size
    if n < 2:
        raise ValueError(f"a split of {data.size(0)} tokens is too short for batch size {batch_size}")
    return data[: n * batch_size].view(batch_size, n).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int):
    n = min(bptt, source.size(0) - 1 - i)
    return source[i:i + n], source[i + 1:i + 1 + n].reshape(-1)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

def _make_rnn(nn, cell: str, ninp: int, nhid: int, nlayers: int, dropout: float):
    if cell == "lstm":
        return nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
    if cell == "gru":
        return nn.GRU(ninp, nhid, nlayers, dropout=dropout)
    return nn.RNN(ninp, nhid, nlayers, nonlinearity=cell.split("_")[1], dropout=dropout)


def rnn_module(nn, cell: str, ninp: int, nhid: int, nlayers: int, dropout: float):
    """The recurrent layer from ``nn`` (torch.nn or fastrnn.nn: the same API). It always starts
    from the weights torch.nn would draw (loaded through state_dict, with the random stream left as
    torch.nn leaves it), so both implementations train from the same initial model for a seed."""
    dropout = dropout if nlayers > 1 else 0.0  # torch warns about dropout on a single layer
    reference = _make_rnn(tnn, cell, ninp, nhid, nlayers, dropout)
    if nn is tnn:
        return reference
    with torch.random.fork_rng(devices=[]):
        module = _make_rnn(nn, cell, ninp, nhid, nlayers, dropout)
    module.load_state_dict(reference.state_dict())
    return module


class LanguageModel(tnn.Module):
    def __init__(self, nn, cell: str, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float,
                 tied: bool):
        super().__init__()
        self.cell, self.nhid, self.nlayers = cell, nhid, nlayers
        self.drop = tnn.Dropout(dropout)
        self.encoder = tnn.Embedding(ntoken, ninp)
        self.rnn = rnn_module(nn, cell, ninp, nhid, nlayers, dropout)
        self.decoder = tnn.Linear(nhid, ntoken)
        if tied:
            if nhid != ninp:
                raise ValueError(f"--tied needs --nhid equal to --emsize, got {nhid} and {ninp}")
            self.decoder.weight = self.encoder.weight
        initrange = 0.1
        tnn.init.uniform_(self.encoder.weight, -initrange, initrange)
        tnn.init.zeros_(self.decoder.bias)
        tnn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))  # [T, B, ninp]
        output, hidden = self.rnn(emb, hidden)  # [T, B, nhid]
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, batch_size: int):
        h = torch.zeros(self.nlayers, batch_size, self.nhid)
        return (h, h.clone()) if self.cell == "lstm" else h


def detach(hidden):
    """Truncated BPTT: keep the state's values, drop the previous batches' graph."""
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


# ------------------------------------------------------------------------------------------------
# Training and evaluation
# ------------------------------------------------------------------------------------------------

def evaluate(model, source: torch.Tensor, bptt: int, batch_size: int):
    """Returns (mean loss per token, tokens/s) over the whole split."""
    model.eval()
    total, count = 0.0, 0
    hidden = model.init_hidden(batch_size)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, bptt):
            data, targets = get_batch(source, i, bptt)
            output, hidden = model(data, hidden)
            total += tnn.functional.cross_entropy(output, targets, reduction="sum").item()
            count += targets.numel()
    return total / count, count / (time.perf_counter() - t0)


def train_epoch(model, source, args, lr: float, epoch: int, losses: Optional[List[float]] = None):
    """One pass (at most --max-batches batches); returns (mean training loss, tokens/s). Appends
    each batch's loss to ``losses`` when given; shows a progress bar when ``args.progress``."""
    model.train()
    hidden = model.init_hidden(args.batch_size)
    total, count, batches = 0.0, 0, 0
    log_total, log_count = 0.0, 0
    t0 = time.perf_counter()
    starts = range(0, source.size(0) - 1, args.bptt)
    if args.max_batches:
        starts = starts[: args.max_batches]
    bar = nlp_data.progress(starts, desc=f"epoch {epoch}", disable=not getattr(args, "progress", False))
    for i in bar:
        data, targets = get_batch(source, i, args.bptt)
        hidden = detach(hidden)
        model.zero_grad(set_to_none=True)
        output, hidden = model(data, hidden)
        loss = tnn.functional.cross_entropy(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
        n = targets.numel()
        total += loss.item() * n
        count += n
        log_total += loss.item() * n
        log_count += n
        batches += 1
        if losses is not None:
            losses.append(loss.item())
        rate = count / (time.perf_counter() - t0)
        bar.set_postfix_str(f"loss {total / count:.4f} | {rate:,.0f} tokens/s")
        if args.log_interval and batches % args.log_interval == 0:
            print(f"| epoch {epoch:3d} | batch {batches:5d} | lr {lr:6.3g} | loss {log_total / log_count:6.3f} | "
                  f"ppl {math.exp(log_total / log_count):9.1f} | {rate:8.0f} tokens/s", flush=True)
            log_total, log_count = 0.0, 0
    return total / count, count / (time.perf_counter() - t0)


def build_parser() -> argparse.ArgumentParser:
    """The options (examples/lm_wikitext2.py extends them)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=("torch", "fastrnn"), default="torch", help="torch.nn or fastrnn.nn layers")
    p.add_argument("--cell", choices=CELLS, default="lstm")
    p.add_argument("--data", default=None, help="directory with train.txt/valid.txt/test.txt (default: pydoc corpus)")
    p.add_argument("--emsize", type=int, default=200)
    p.add_argument("--nhid", type=int, default=200)
    p.add_argument("--nlayers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--tied", action="store_true", help="tie the decoder's weights to the embedding's")
    p.add_argument("--lr", type=float, default=5.0,
                   help="SGD learning rate (PyTorch's example uses 20, which overshoots early with a GRU)")
    p.add_argument("--clip", type=float, default=0.25, help="gradient-norm clipping")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-batches", type=int, default=0, help="at most this many training batches per epoch (0: all)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--eval-batch-size", type=int, default=10)
    p.add_argument("--bptt", type=int, default=35, help="truncated-BPTT length")
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--threads", type=int, default=None, help="threads for torch and fastrnn (default: theirs)")
    p.add_argument("--log-interval", type=int, default=50, help="batches between progress lines (0: none)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="start no new epoch after this many minutes of training (0: no limit)")
    p.add_argument("--max-eval-tokens", type=int, default=0,
                   help="evaluate on the first N tokens of valid/test (0: all)")
    return p


def parse_args(argv: Optional[Sequence[str]]):
    return build_parser().parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    return train_and_evaluate(parse_args(argv))[2]


def train_and_evaluate(args, losses: Optional[List[float]] = None):
    """Builds the corpus and model from ``args``, trains and evaluates; returns (model, vocabulary,
    result dict, {split: batchified ids}). Each training batch's loss is appended to ``losses``."""
    if args.impl == "fastrnn":
        try:
            import fastrnn.nn as nn
        except ImportError as e:
            sys.exit(f"--impl fastrnn needs fastrnn.nn (fastrnn installed, with torch): {e}")
    else:
        nn = tnn
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.impl == "fastrnn":
            import fastrnn
            fastrnn.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    name, vocab, ids = load_corpus(args.data)
    if args.max_eval_tokens:
        ids.update({k: v[: args.max_eval_tokens] for k, v in ids.items() if k != "train"})
    train = batchify(ids["train"], args.batch_size)
    valid = batchify(ids["valid"], args.eval_batch_size) if "valid" in ids else None
    test = batchify(ids["test"], args.eval_batch_size)
    model = LanguageModel(nn, args.cell, len(vocab), args.emsize, args.nhid, args.nlayers, args.dropout, args.tied)
    print(f"corpus {name}: vocabulary {len(vocab)}, tokens train {ids['train'].numel()}"
          + (f", valid {ids['valid'].numel()}" if valid is not None else "") + f", test {ids['test'].numel()}")
    print(f"model: {args.impl} {args.cell}, {args.nlayers} layers, emsize {args.emsize}, nhid {args.nhid}"
          f"{', tied' if args.tied else ''}; {sum(p.numel() for p in model.parameters())} parameters; "
          f"{torch.get_num_threads()} torch threads")

    lr, best = args.lr, None
    result = {"impl": args.impl, "cell": args.cell, "vocab_size": len(vocab), "epochs": []}
    t_start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        if args.max_minutes and time.perf_counter() - t_start > 60.0 * args.max_minutes:
            print(f"stopping: --max-minutes {args.max_minutes} reached")
            break
        train_loss, train_rate = train_epoch(model, train, args, lr, epoch, losses)
        entry = {"train_loss": train_loss, "train_tokens_per_s": train_rate}
        line = f"| end of epoch {epoch:3d} | train loss {train_loss:6.3f} | train {train_rate:8.0f} tokens/s"
        if valid is not None:
            val_loss, val_rate = evaluate(model, valid, args.bptt, args.eval_batch_size)
            entry.update(valid_loss=val_loss, valid_ppl=math.exp(val_loss), eval_tokens_per_s=val_rate)
            line += f" | valid ppl {math.exp(val_loss):9.2f} | eval {val_rate:8.0f} tokens/s"
            if best is not None and val_loss >= best:
                lr /= 4.0  # anneal when validation stops improving
            best = val_loss if best is None else min(best, val_loss)
        print(line, flush=True)
        result["epochs"].append(entry)
    test_loss, test_rate = evaluate(model, test, args.bptt, args.eval_batch_size)
    result.update(test_loss=test_loss, test_ppl=math.exp(test_loss), test_tokens_per_s=test_rate,
                  train_tokens_per_s=result["epochs"][-1]["train_tokens_per_s"] if result["epochs"] else None)
    print(f"| test ppl {math.exp(test_loss):9.2f} | test loss {test_loss:6.3f} | eval {test_rate:8.0f} tokens/s "
          f"| train {result['train_tokens_per_s'] or 0:8.0f} tokens/s ({args.impl} {args.cell})")
    return model, vocab, result, dict(train=train, valid=valid, test=test)


if __name__ == "__main__":
    main()
