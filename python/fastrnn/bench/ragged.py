"""The ragged-lengths suite (``python -m fastrnn.bench --ragged``): how close a batch of ragged
sequences gets to paying for its live rows only. For each batch (lengths uniform in [1, T], and
real batches of SST-2 sentences and UD English-EWT sentences from ../shared/data) and each cell
(LSTM, GRU) in inference and in training (forward + backward of the summed output), it times

- fastrnn dense: ``fastrnn.nn`` on the padded [T, B, I] batch without lengths (every row, every step);
- fastrnn packed: ``fastrnn.nn`` on the batch as a PackedSequence;
- ideal: (sum of lengths / (T*B)) x fastrnn dense, the time if only live rows cost anything;
- torch.nn packed: ``torch.nn.LSTM`` / ``GRU`` on the same PackedSequence;
- pad/unpack: pad_packed_sequence + pack_padded_sequence on the same sizes, the round trip that
  fastrnn.nn paid around the kernels before they took the packed data (what a padded path costs);

interleaved (bench.time_interleaved, medians), and reports packed / ideal (target <= 1.15) and
torch.nn packed / fastrnn packed (target > 1). Real batches are consecutive sentences of the
files (SST-2's dev.tsv, EWT's dev .conllu), read with the examples' loaders (examples/nlp_data.py)
when run from a checkout, else counted the same way by sentence_lengths.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from .timing import time_interleaved


def _default_data_dir() -> str:
    """../shared/data beside the checkout: from the working directory (the repository root), else
    from this file's place in a checkout (python/fastrnn/bench/)."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(os.getcwd(), os.pardir, "shared", "data"),
                  os.path.join(here, os.pardir, os.pardir, os.pardir, os.pardir, "shared", "data")]
    for path in candidates:
        if os.path.isdir(path):
            return os.path.normpath(path)
    return os.path.normpath(candidates[0])


def _nlp_data():
    """examples/nlp_data.py as a module when the bench runs from a checkout (the installed package
    has no examples/), else None."""
    path = os.path.join(os.getcwd(), "examples", "nlp_data.py")
    if not os.path.exists(path):
        return None
    import importlib.util
    spec = importlib.util.spec_from_file_location("_fastrnn_bench_nlp_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sentence_lengths(data_dir: str, dataset: str) -> Optional[List[int]]:
    """Token counts of the sentences of SST-2's dev.tsv ("sst2") or EWT's dev set ("ewt"), in file
    order, read with the examples' loaders (read_tsv_classification, read_conllu) when at hand, else
    counted the same way here (whitespace tokens; CoNLL-U lines with an integer ID); None when the
    file is absent."""
    path = os.path.join(data_dir, "sst2", "dev.tsv") if dataset == "sst2" else \
        os.path.join(data_dir, "ud-english-ewt", "en_ewt-ud-dev.conllu")
    if not os.path.exists(path):
        return None
    nlp = _nlp_data()
    if nlp is not None:
        read = nlp.read_tsv_classification if dataset == "sst2" else nlp.read_conllu
        return [len(tokens) for tokens, _ in read(path)]
    with open(path, encoding="utf-8") as f:
        if dataset == "sst2":
            next(f)  # header: label<TAB>sentence
            return [len(line.rstrip("\n").split("\t", 1)[-1].split()) for line in f if line.strip()]
        lengths, n = [], 0
        for line in f:
            line = line.strip()
            if not line:
                if n:
                    lengths.append(n)
                n = 0
            elif not line.startswith("#") and line.split("\t", 1)[0].isdigit():
                n += 1
        if n:
            lengths.append(n)
        return lengths


def batches(data_dir: str, T_uniform: int = 100, B: int = 64, seed: int = 0) -> Dict[str, np.ndarray]:
    """name -> lengths [B] of the benchmark's batches (the real ones where the data is present)."""
    rng = np.random.default_rng(seed)
    out = {f"uniform[1,{T_uniform}]": rng.integers(1, T_uniform + 1, B)}
    for name in ("sst2", "ewt"):
        lengths = sentence_lengths(data_dir, name)
        if lengths:
            start = len(lengths) // 3  # a batch from the middle of the file, not its first lines
            out[f"{name} (dev, {B} sentences)"] = np.maximum(1, np.array(lengths[start:start + B]))
    return out


def run_ragged(cells=("lstm", "gru"), size=(256, 256), B: int = 64, reps: int = 5, min_sample_s: float = 0.05,
               data_dir: Optional[str] = None, modes=("inference", "training"),
               emit: Callable[[str], None] = print, cpu_time: bool = False) -> dict:
    """Times every batch x cell x mode; returns {"header", "rows"} (ms and the two ratios).
    cpu_time: samples in the process's CPU time instead of wall time (for one thread on a loaded
    machine, where wall time counts the other loads' share of the cores)."""
    import torch
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

    import fastrnn
    import fastrnn.nn as fnn
    data_dir = data_dir or _default_data_dir()
    I, H = size
    rows: List[dict] = []
    emit("| batch | T, B | live fraction | cell | mode | fastrnn dense ms | ideal ms | fastrnn packed ms | "
         "packed / ideal | torch.nn packed ms | torch.nn / fastrnn | pad/unpack ms |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, lengths in batches(data_dir, B=B).items():
        T = int(lengths.max())
        live = float(lengths.sum()) / (T * B)
        torch.manual_seed(0)
        x = torch.randn(T, B, I)
        packed = pack_padded_sequence(x, torch.as_tensor(lengths), enforce_sorted=False)
        for cell in cells:
            tcls, fcls = {"lstm": (torch.nn.LSTM, fnn.LSTM), "gru": (torch.nn.GRU, fnn.GRU)}[cell]
            ref = tcls(I, H)
            fast = fcls(I, H)
            fast.load_state_dict(ref.state_dict())
            for mode in modes:
                train = mode == "training"

                def call(module, inp):
                    def f():
                        if train:
                            module.zero_grad(set_to_none=True)
                            out, _ = module(inp)
                            (out.data if hasattr(out, "batch_sizes") else out).sum().backward()
                        else:
                            with torch.no_grad():
                                module(inp)
                    return f
                def round_trip():
                    padded, lens = pad_packed_sequence(PackedSequence(packed.data, packed.batch_sizes))
                    pack_padded_sequence(torch.zeros(padded.shape[0], B, H), lens)
                fns = {"dense": call(fast, x), "packed": call(fast, packed), "torch": call(ref, packed),
                       "round_trip": round_trip}
                t = time_interleaved(fns, reps, min_sample_s, clock=time.process_time if cpu_time else time.perf_counter)
                dense, mine, theirs, trip = (t[k]["median_ms"] for k in ("dense", "packed", "torch", "round_trip"))
                ideal = live * dense
                row = dict(batch=name, T=T, B=B, I=I, H=H, live_fraction=live, cell=cell, mode=mode, dense_ms=dense,
                           ideal_ms=ideal, packed_ms=mine, packed_over_ideal=mine / ideal, torch_packed_ms=theirs,
                           torch_over_fastrnn=theirs / mine, pad_unpack_ms=trip,
                           samples={k: t[k]["samples_ms"] for k in t})
                rows.append(row)
                emit(f"| {name} | {T}, {B} | {live:.2f} | {cell} | {mode} | {dense:.2f} | {ideal:.2f} | {mine:.2f} | "
                     f"{mine / ideal:.2f}x | {theirs:.2f} | {theirs / mine:.2f}x | {trip:.2f} |")
    header = dict(date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.processor() or platform.machine(),
                  isa=fastrnn._core.cpu_isa(), torch=torch.__version__,
                  torch_threads=torch.get_num_threads(), fastrnn_threads=fastrnn.get_num_threads(), reps=reps,
                  I=I, H=H, B=B, clock="process CPU time" if cpu_time else "wall", load_average=os.getloadavg())
    return {"header": header, "rows": rows}


def main_ragged(args) -> int:
    """`python -m fastrnn.bench --ragged`: print the table; --save DIR writes <date>-ragged.{json,md}."""
    import json
    lines: List[str] = []

    def emit(text):
        lines.append(text)
        print(text, flush=True)
    if args.threads:
        import torch

        import fastrnn
        fastrnn.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    size = (64, 64) if args.quick else (256, 256)
    B = 16 if args.quick else 64
    result = run_ragged(size=size, B=B, reps=args.reps or (3 if args.quick else 5),
                        data_dir=getattr(args, "data", None), emit=emit,
                        min_sample_s=0.01 if args.quick else 0.05, cpu_time=getattr(args, "cpu_time", False))
    emit(f"\n{result['header']}")
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        base = os.path.join(args.save, time.strftime("%Y-%m-%d") + "-ragged")
        with open(base + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0
