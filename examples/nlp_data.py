"""The small data, vocabulary and measuring toolkit the NLP examples share (sentiment_sst2.py,
pos_tagging_ewt.py, translate_multi30k.py, word_language_model.py), so that each example reads
top to bottom as model + training loop: readers for the standard file formats (GLUE's TSV,
CoNLL-U, parallel text one sentence per line, whitespace-tokenised token streams), a ``Vocab``,
padding and batching with lengths, a progress bar (tqdm when installed, else a one-line own one),
a learning-curve PNG writer (matplotlib), the choice of implementation (torch.nn, or the same
model converted to fastrnn.nn: same parameters, so the same initial weights for a seed), and
the epoch loop the classification, tagging and translation examples share (``train_epochs``), and
``RecurrentShare``, which measures the share of a training step's time spent in the recurrent
layers (by replaying their calls alone; see its docstring for the method).

Not part of the fastrnn package: examples/ is put on sys.path by the scripts that import it.
"""
from __future__ import annotations

import collections
import copy
import math
import os
import random
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

DATA_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                                          "shared", "data"))
"""``<repo>/../shared/data``: where the project keeps the datasets (each folder has a README)."""

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"


def default_data(name: str) -> str:
    """``<repo>/../shared/data/<name>``, the default ``--data`` of the examples."""
    return os.path.join(DATA_ROOT, name)


def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (pass --data DIR with the dataset's files)")
    return open(path, encoding="utf8")


# ------------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------------

def read_tsv_classification(path: str) -> List[Tuple[List[str], int]]:
    """GLUE-style ``label<TAB>sentence`` with a header line (SST-2's train/dev/test.tsv; the
    column order is read from the header, whose label column is ``label``). Returns
    [(tokens, label)]; sentences are split on whitespace (the files are pre-tokenised)."""
    with _open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if "label" not in header or len(header) != 2:
            raise ValueError(f"{path}: expected a header 'label<TAB>sentence' (2 columns), got {header}")
        li = header.index("label")
        out = []
        for n, line in enumerate(f, 2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 2:
                raise ValueError(f"{path}:{n}: expected 2 tab-separated columns, got {len(cols)}")
            out.append((cols[1 - li].split(), int(cols[li])))
    return out


def read_conllu(path: str, column: int = 3) -> List[Tuple[List[str], List[str]]]:
    """CoNLL-U (Universal Dependencies): one token per line, 10 tab-separated columns, blank line
    between sentences, ``#`` comments. Returns [(forms, tags)] with tags from ``column`` (3 =
    UPOS). Multi-word token lines (ID ``1-2``) and empty nodes (ID ``1.1``) are skipped, as UD's
    own evaluation of UPOS does."""
    sentences, forms, tags = [], [], []
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                if forms:
                    sentences.append((forms, tags))
                forms, tags = [], []
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise ValueError(f"{path}:{n}: expected 10 tab-separated CoNLL-U columns, got {len(cols)}")
            if "-" in cols[0] or "." in cols[0]:
                continue
            forms.append(cols[1])
            tags.append(cols[column])
    if forms:
        sentences.append((forms, tags))
    return sentences


def read_parallel(src_path: str, tgt_path: str) -> List[Tuple[List[str], List[str]]]:
    """Two aligned text files, one pre-tokenised sentence per line (Multi30k's train.de/train.en).
    Returns [(source tokens, target tokens)]."""
    with _open(src_path) as fs, _open(tgt_path) as ft:
        src, tgt = fs.read().splitlines(), ft.read().splitlines()
    if len(src) != len(tgt):
        raise ValueError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: not aligned")
    return [(s.split(), t.split()) for s, t in zip(src, tgt)]


def read_token_lines(path: str) -> List[List[str]]:
    """A whitespace-tokenised text (WikiText-2's valid.txt/test.txt), its non-empty lines as token
    lists."""
    with _open(path) as f:
        return [line.split() for line in f if line.strip()]


# ------------------------------------------------------------------------------------------------
# Vocabulary, padding, batching
# ------------------------------------------------------------------------------------------------

class Vocab:
    """Token <-> id. The ``specials`` come first (ids 0, 1, ...); unknown tokens map to ``unk``
    (when it is one of the specials). ``index`` (dict) and ``words`` (list) are public."""

    def __init__(self, specials: Sequence[str] = (PAD, UNK), unk: Optional[str] = UNK) -> None:
        self.index: Dict[str, int] = {}
        self.words: List[str] = []
        for s in specials:
            self.add(s)
        self.unk_id = self.index.get(unk) if unk is not None else None

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_freq: int = 1, max_size: Optional[int] = None,
              specials: Sequence[str] = (PAD, UNK), unk: Optional[str] = UNK) -> "Vocab":
        """The tokens seen at least ``min_freq`` times, most frequent first (ties: first seen)."""
        counts = collections.Counter(t for tokens in token_lists for t in tokens)
        vocab = cls(specials, unk)
        for word, c in counts.most_common(max_size):
            if c >= min_freq:
                vocab.add(word)
        return vocab

    def add(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, tokens: Sequence[str]) -> List[int]:
        if self.unk_id is None:
            return [self.index[t] for t in tokens]
        return [self.index.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int], stop: Optional[int] = None, skip: Sequence[int] = ()) -> List[str]:
        """Tokens of ``ids`` up to (not including) the first ``stop``, leaving out ``skip``."""
        out = []
        for i in ids:
            i = int(i)
            if stop is not None and i == stop:
                break
            if i not in skip:
                out.append(self.words[i])
        return out


def pad(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists -> (ids [T, B] time-major, padded with ``pad_id``; lengths [B] int64)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((int(lengths.max()), len(seqs)), pad_id, dtype=torch.long)
    for b, s in enumerate(seqs):
        out[: len(s), b] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


def batches(n: int, batch_size: int, shuffle: bool = False, seed: Optional[int] = None,
            lengths: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Index lists covering range(n) in batches of ``batch_size``. With ``lengths``, examples of
    similar length share a batch (sorted within pools of 50 batches, less padding, the usual
    "bucketing"); ``shuffle`` then shuffles the batch order (and the pools' contents) with ``seed``."""
    rng = random.Random(seed)
    order = list(range(n))
    if shuffle:
        rng.shuffle(order)
    if lengths is not None:
        pool = 50 * batch_size
        order = [i for p in range(0, n, pool) for i in sorted(order[p:p + pool], key=lambda i: lengths[i])]
    out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if shuffle:
        rng.shuffle(out)
    return out


# ------------------------------------------------------------------------------------------------
# Implementation choice (torch.nn or fastrnn.nn)
# ------------------------------------------------------------------------------------------------

def use_impl(model: torch.nn.Module, impl: str) -> torch.nn.Module:
    """``model`` (built from torch.nn layers) as is for ``impl == "torch"``; for ``"fastrnn"`` its
    recurrent layers swapped for fastrnn.nn's by ``fastrnn.nn.convert``, which keeps the very
    Parameters: both start from the weights torch.nn drew for the seed, and the random stream is
    left as torch.nn left it (the replacements are built on the meta device)."""
    if impl == "torch":
        return model
    if impl != "fastrnn":
        raise ValueError(f"impl must be 'torch' or 'fastrnn', got {impl!r}")
    try:
        import fastrnn.nn
    except ImportError as e:
        sys.exit(f"--impl fastrnn needs fastrnn.nn (fastrnn installed, with torch): {e}")
    return fastrnn.nn.convert(model)


def set_threads(n: Optional[int]) -> None:
    """Threads for torch and fastrnn (``None``: leave their defaults)."""
    if n:
        torch.set_num_threads(n)
        try:
            import fastrnn
            fastrnn.set_num_threads(n)
        except ImportError:
            pass


def recurrent_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The recurrent layers in ``model`` (torch.nn's or fastrnn.nn's RNN/LSTM/GRU and cells)."""
    names = {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}
    return [m for m in model.modules() if type(m).__name__ in names]


# ------------------------------------------------------------------------------------------------
# Progress, curves, timing
# ------------------------------------------------------------------------------------------------

class _OwnBar:
    """tqdm's subset the examples use, drawn on one line of stderr (for installs without tqdm)."""

    def __init__(self, iterable, total=None, desc="", disable=False):
        self.iterable, self.total, self.desc, self.disable = iterable, total, desc, disable
        self.n, self.postfix, self._last = 0, "", 0.0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.perf_counter()
            if not self.disable and (now - self._last > 0.2 or self.n == self.total):
                self._last = now
                total = f"/{self.total}" if self.total else ""
                sys.stderr.write(f"\r{self.desc}: {self.n}{total} {self.postfix}")
                sys.stderr.flush()
        if not self.disable:
            sys.stderr.write("\n")

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s


def progress(iterable, total: Optional[int] = None, desc: str = "", disable: bool = False):
    """A progress bar over ``iterable`` (tqdm if installed, else a one-line own one), on stderr;
    call ``.set_postfix_str("loss ... | ... tokens/s")`` on it as training goes."""
    try:
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, mininterval=0.5)
    except ImportError:
        return _OwnBar(iterable, total=total, desc=desc, disable=disable)


class Deadline:
    """``expired()`` once ``minutes`` have passed since construction (never for 0)."""

    def __init__(self, minutes: float) -> None:
        self.end = time.perf_counter() + 60.0 * minutes if minutes else math.inf

    def expired(self) -> bool:
        return time.perf_counter() > self.end


class Throughput:
    """Tokens per second over the calls of ``add`` (time taken from construction or ``reset``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0, self.tokens, self.loss_sum, self.loss_count = time.perf_counter(), 0, 0.0, 0

    def add(self, tokens: int, loss: Optional[float] = None) -> None:
        self.tokens += tokens
        if loss is not None:
            self.loss_sum += loss * tokens
            self.loss_count += tokens

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1)

    def postfix(self) -> str:
        return f"loss {self.loss:.4f} | {self.rate:,.0f} tokens/s"


def plot_curves(path: str, curves: Dict[str, Sequence[Tuple[float, float]]], xlabel: str, title: str,
                ylabel: str = "loss", secondary: Optional[Dict[str, Sequence[Tuple[float, float]]]] = None,
                secondary_label: str = "") -> None:
    """A learning-curve PNG: each of ``curves`` (name -> [(x, y)]) on the left axis, each of
    ``secondary`` (e.g. accuracy, BLEU) on a right axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, pts in curves.items():
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for k, (name, pts) in enumerate(secondary.items()):
            if pts:
                ax2.plot(*zip(*pts), linestyle="--", marker="o", color=f"C{len(curves) + k}", label=name)
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _map_tensors(obj, fn):
    """``obj`` (tensor, PackedSequence, tuple/list of them, None, other) with ``fn`` applied to
    every tensor (a PackedSequence's ``data`` only; its index tensors are kept)."""
    from torch.nn.utils.rnn import PackedSequence
    if isinstance(obj, PackedSequence):
        return PackedSequence(fn(obj.data), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    return obj


def _float_tensors(obj) -> List[torch.Tensor]:
    out: List[torch.Tensor] = []
    _map_tensors(obj, lambda t: out.append(t) if t.is_floating_point() else None)
    return out


class RecurrentShare:
    """The share of a step's time spent in the recurrent layers, measured by replay.

    Method: ``with share.record(): <one training (or inference) step>`` times the whole step
    (forward, loss, backward, optimizer) and, through forward hooks on the model's recurrent
    modules, keeps a detached copy of every call's arguments (the inputs, with their
    ``requires_grad``, PackedSequences and initial states included). ``replay()`` then times
    those calls alone, in the same order, on the same tensors: forward, and in training a
    backward from random output gradients into the inputs and the weights. Timing inside the
    step instead (hooks around backward) would not work for torch.nn, whose CPU LSTM/GRU backward
    is many autograd nodes interleaved with the rest of the graph. The step's own gradients are
    left as the step made them. Both timings are wall clock on
    the CPU, where every call is synchronous; the share is the sum over the recorded steps of
    replay time over step time. The replay runs after the step with warm caches, so it may
    slightly underestimate the layers' time inside the step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = recurrent_modules(model)
        self.calls: List[Tuple[torch.nn.Module, tuple, bool]] = []
        self.step_seconds = 0.0
        self.replay_seconds = 0.0
        self.replayed_calls = 0

    def record(self):
        share = self

        class _Recording:
            def __enter__(self):
                def hook(module, args):
                    copy = _map_tensors(args, lambda t: t.detach().clone().requires_grad_(t.requires_grad)
                                        if t.is_floating_point() else t)
                    share.calls.append((module, copy, torch.is_grad_enabled()))
                self.handles = [m.register_forward_pre_hook(hook) for m in share.modules]
                self.start = len(share.calls)
                self.t0 = time.perf_counter()
                return share

            def __exit__(self, *exc):
                share.step_seconds += time.perf_counter() - self.t0
                for h in self.handles:
                    h.remove()
                calls, share.calls = share.calls[self.start:], share.calls[:self.start]
                share.replay_seconds += share._replay(calls)
                return False

        return _Recording()

    def _replay(self, calls) -> float:
        gen = torch.Generator().manual_seed(0)
        # The step's own weight gradients are put aside and given back after the replay's.
        params = [p for m in self.modules for p in m.parameters()]
        step_grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        # Output gradients drawn before the clock starts: one forward without timing gives their shapes.
        prepared = []
        for module, args, grad in calls:
            with torch.no_grad():
                outs = _float_tensors(module(*args))
            grads = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs] if grad else None
            prepared.append((module, args, grad, grads))
        t0 = time.perf_counter()
        for module, args, grad, grads in prepared:
            with torch.set_grad_enabled(grad):
                outs = _float_tensors(module(*args))
                if grad:
                    pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
                    if pairs:
                        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        seconds = time.perf_counter() - t0
        self.replayed_calls += len(prepared)
        for p, g in zip(params, step_grads):
            p.grad = g
        return seconds

    @property
    def share(self) -> float:
        """Recurrent layers' seconds / step seconds over what was recorded (nan if nothing was)."""
        return self.replay_seconds / self.step_seconds if self.step_seconds else math.nan


def train_epochs(model: torch.nn.Module, train_step: Callable, lengths: Sequence[int], args,
                 evaluate_epoch: Callable, result: dict) -> float:
    """The training loop the classification, tagging and translation examples share.

    For each epoch (``args.epochs``, or until ``args.max_minutes``): batches of similar lengths in a
    shuffled order seeded by ``args.seed + epoch`` (``args.batch_size``; ``lengths`` are the training
    examples' lengths), ``train_step(idx, step) -> (loss, tokens)`` on each, then ``evaluate_epoch()
    -> (score, fields, shown)``: the score to keep the best state by (higher is better), the epoch's
    fields for ``result["epochs"]`` (with ``eval_tokens_per_s``) and the metrics to print. Appends
    every batch's loss to ``result["losses"]``, sets ``result["train_tokens_per_s"]`` (the epochs'
    mean), loads the best epoch's state_dict into ``model`` and returns its score."""
    best, best_state, step = -math.inf, None, 0
    deadline = Deadline(args.max_minutes)
    for epoch in range(1, args.epochs + 1):
        model.train()
        rate = Throughput()
        order = batches(len(lengths), args.batch_size, shuffle=True, seed=args.seed + epoch, lengths=lengths)
        bar = progress(order, desc=f"epoch {epoch}", disable=args.no_progress)
        for idx in bar:
            loss, tokens = train_step(idx, step)
            result["losses"].append(loss)
            rate.add(tokens, loss)
            step += 1
            bar.set_postfix_str(rate.postfix())
            if deadline.expired():
                break
        score, fields, shown = evaluate_epoch()
        result["epochs"].append(dict(step=step, train_loss=rate.loss, train_tokens_per_s=rate.rate, **fields))
        print(report_line(f"epoch {epoch}", train_loss=rate.loss, **shown, train_tokens_per_s=round(rate.rate),
                          eval_tokens_per_s=round(fields["eval_tokens_per_s"])))
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
        if deadline.expired():
            print(f"stopping: --max-minutes {args.max_minutes} reached")
            break
    model.load_state_dict(best_state)
    result["train_tokens_per_s"] = sum(e["train_tokens_per_s"] for e in result["epochs"]) / len(result["epochs"])
    return best


def training_share(model: torch.nn.Module, train_step: Callable, lengths: Sequence[int], batch_size: int,
                   n_batches: int, step: int) -> float:
    """The recurrent layers' share of ``n_batches`` training steps (``RecurrentShare``), on the first
    batches of a fixed-seed order, each run as ``train_step(idx, step)``."""
    share = RecurrentShare(model)
    model.train()
    for idx in batches(len(lengths), batch_size, shuffle=True, seed=0, lengths=lengths)[:n_batches]:
        with share.record():
            train_step(idx, step)
    return share.share


def report_line(name: str, **values) -> str:
    """``name: key value | key value ...`` with floats at 4 significant digits."""
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()]
    return f"{name}: " + " | ".join(parts)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def add_common_args(p, dataset: str) -> None:
    """The options every example takes: --impl, --data, --quick, --plot, --seed, --threads,
    --no-progress, --max-minutes, --share-batches."""
    p.add_argument("--impl", choices=("torch", "fastrnn"), default="torch",
                   help="recurrent layers from torch.nn or fastrnn.nn (same initial weights for a seed)")
    p.add_argument("--data", default=default_data(dataset),
                   help=f"dataset directory (default: <repo>/../shared/data/{dataset})")
    p.add_argument("--quick", action="store_true", help="a run of seconds on a slice of the data, small model")
    p.add_argument("--plot", default=None, metavar="PATH", help="write the learning curve to this PNG")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="threads for torch and fastrnn (default: theirs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop training after this many minutes, mid-epoch (0: no limit); that epoch is still evaluated")
    p.add_argument("--share-batches", type=int, default=5,
                   help="training batches replayed after training to measure the recurrent layers' share")


def parse_args(p, argv: Optional[Sequence[str]], quick: dict):
    """``p.parse_args(argv)``; with ``--quick``, parsed again over the example's ``quick`` defaults, so
    that options given on the command line still win over them."""
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**quick)
        args = p.parse_args(argv)
    return args
