"""``python -m fastrnn.bench``'s command line: the flags, and which suite they run."""
from __future__ import annotations

import argparse
import time
import sys
from typing import List, Optional, Sequence

from .cases import BENCH_CELLS, DEFAULT_CELLS, MODES, parse_sizes
from .decode import decode_suite_main
from .impls import VerificationError
from .report import (format_header, format_markdown, format_summary, results_basename, save_results, write_json,
                     write_plot)
from .suite import run
from .timing import GEMM_N
from .variants import (PROJECTION_TABLE_HEAD, format_projection_row, format_variant_row, run_variants, VARIANT_CASES,
                       VARIANT_SIZES, VARIANT_TABLE_HEAD)


def _csv(name: str, allowed: Sequence[str]):
    def parse(text: str) -> List[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{name}: expected a comma-separated subset of {', '.join(allowed)}, "
                                             f"got {text!r}")
        return items
    return parse


def _sizes_arg(text: str):
    try:
        return parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastrnn.bench", description=sys.modules[__package__].__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=_csv("--cells", BENCH_CELLS), default=list(DEFAULT_CELLS),
                        help=f"comma-separated cells (default {','.join(DEFAULT_CELLS)})")
    parser.add_argument("--sizes", type=_sizes_arg, default=None,
                        help="comma-separated HxBxT[xI] (I = H unless given), or default/quick/tiny; "
                             "default: the default suite")
    parser.add_argument("--modes", type=_csv("--modes", MODES), default=list(MODES),
                        help="comma-separated of inference,training,decode (default all)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="threads for fastrnn and torch alike (default fastrnn.get_num_threads())")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the GPU suite against cuDNN (fastrnn/bench/cuda.py)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="--device cuda: start no new case after this many seconds")
    parser.add_argument("--reps", type=_positive, default=None, help="timed samples per case (default 7, --quick 3)")
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: the three smaller sizes, no 1536 or bidirectional case, 3 samples")
    parser.add_argument("--no-torch", action="store_true", help="do not compare with torch.nn even if installed")
    parser.add_argument("--json", metavar="PATH", help="write the full result (header, peak, every sample) as JSON")
    parser.add_argument("--save", metavar="DIR",
                        help="write DIR/<date>-<machine>.json and .md (e.g. --save bench/results)")
    parser.add_argument("--plot", metavar="PATH", help="PNG bar chart of the speed-ups (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--gemm-size", type=_positive, default=GEMM_N,
                        help=f"n of the n^3 sgemm that measures the peak (default {GEMM_N})")
    parser.add_argument("--variants", action="store_true",
                        help="the cell variants' suite: each variant vs fastrnn's base cell and a "
                             "plain-PyTorch loop, and LSTM(proj_size) vs torch.nn, fastrnn's base LSTM and its old pure-torch "
                             "path (H=512 P=128, H=1024 P=256, B=32, T=100); --sizes HxBxT sets the sizes (the "
                             "projection's P = H/4), --save writes <name>-variants.*")
    parser.add_argument("--variant-cases", type=_csv("--variant-cases", [c[0] for c in VARIANT_CASES]), default=None,
                        help="--variants: only these cases (comma-separated names, e.g. 'lstm layer_norm,gru layer_norm')")
    parser.add_argument("--min-sample-ms", type=float, default=None,
                        help="shortest timed sample; short calls are repeated to fill it (default 50, --quick 20)")
    parser.add_argument("--suite", choices=("default", "decode", "cells"), default="default",
                        help="decode: the multi-layer generation step (2-layer LSTM/GRU, H 256/512/1024, "
                             "B 1/5/32: stepper vs torch.nn's cells and T = 1 calls); cells: fastrnn.nn's cells "
                             "stepped from Python vs torch.nn's (pytorch/examples' time_sequence_prediction, and "
                             "every cell at B 1/16/64, H 32/128/512, float32/float64; fastrnn/bench/cells.py); "
                             "--cells/--sizes/--modes do not apply")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="--suite cells: time this thread's CPU time (default; both libraries run on the calling "
                             "thread at --threads 1) or wall time")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="bfloat16 / float16: the 16-bit kernels vs fastrnn float32 and torch.nn under the same "
                             "CPU autocast (and torch.nn float32, labelled), fastrnn/bench/dtype16.py; --save writes "
                             "<name>-<dtype>.*")
    parser.add_argument("--modifiers", action="store_true",
                        help="the training modifiers' suite (zoneout, recurrent/weight dropout, grad_clip, dilation "
                             "on LSTM and GRU vs the plain cell and a plain-PyTorch loop; fastrnn/bench/modifiers.py)")
    parser.add_argument("--ragged", action="store_true",
                        help="the ragged-lengths suite: uniform, SST-2 and EWT batches as PackedSequences, fastrnn.nn "
                             "against its dense time, the ideal (live fraction x dense) and torch.nn's packed path, "
                             "LSTM and GRU, inference and training; fastrnn/bench/ragged.py")
    parser.add_argument("--cpu-time", action="store_true",
                        help="--ragged, --variants, --dtype: time samples in the process's CPU time (readable at --threads 1 "
                             "on a loaded machine)")
    parser.add_argument("--projection-only", action="store_true",
                        help="--variants: the projected LSTM's rows only (LSTM(proj_size) vs torch.nn, the base LSTM "
                             "and the composed torch ops)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="--ragged: the datasets' folder (default: ../shared/data from the checkout or cwd)")
    args = parser.parse_args(argv)
    if args.modifiers:
        from .modifiers import main_variants
        return main_variants(args)
    if args.suite == "cells":
        if args.device == "cuda":
            parser.error("--suite cells runs on the CPU")
        from .cells import main as cells_main
        return cells_main(args)
    if args.ragged:
        from .ragged import main_ragged
        return main_ragged(args)
    if args.suite == "decode":
        if args.device == "cuda":
            parser.error("--suite decode runs on the CPU (the stepper has no CUDA step kernel yet)")
        return decode_suite_main(args)

    if args.device == "cuda":  # the GPU suite: fastrnn.bench.cuda (needs torch with CUDA and a GPU)
        from . import cuda as bench_cuda
        return bench_cuda.main(args, parser)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib, which is not installed (pip install matplotlib, "
                         "or pip install 'fastrnn[bench]')")
    reps = args.reps or (3 if args.quick else 7)
    if args.dtype != "float32":
        from .dtype16 import format_markdown16, run_dtype
        try:
            result = run_dtype(args.dtype, args.cells, args.modes, args.sizes, args.threads, reps, args.quick,
                               args.no_torch, None if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                               emit=lambda text: print(text, flush=True), cpu_time=args.cpu_time)
        except VerificationError as e:
            print(f"fastrnn.bench: VERIFICATION FAILED: {e}", file=sys.stderr)
            return 1
        text = format_markdown16(result)
        print("\n" + text.rsplit("\n\n", 1)[-1])
        if args.save:
            save_results(result, text, args.save, results_basename(result) + "-" + args.dtype)
        return 0
    if args.variants:
        sizes = VARIANT_SIZES if args.sizes is None else [(h, b, t) for h, b, t, _ in args.sizes]
        try:
            result = run_variants(sizes, threads=args.threads, reps=args.reps or 5,
                                  min_sample_s=0.05 if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                                  emit=lambda text: print(text, flush=True), cases=args.variant_cases,
                                  clock=time.process_time if args.cpu_time else time.perf_counter,
                                  projection_only=args.projection_only)
        except VerificationError as e:
            print(f"fastrnn.bench: VERIFICATION FAILED: {e}", file=sys.stderr)
            return 1
        if args.save:
            table = "\n".join(format_variant_row(r) for r in result["variant_cases"])
            projection = "\n".join(format_projection_row(r) for r in result["projection_cases"])
            clock = (f"Samples timed in {result['clock']}; load average at the start "
                     f"{' / '.join(f'{v:.1f}' for v in result['load_average'])} (1 / 5 / 15 min).")
            text = (format_header(result) + "\n\n" + clock + "\n\n" + VARIANT_TABLE_HEAD + "\n" + table + "\n\n"
                    + PROJECTION_TABLE_HEAD + "\n" + projection + "\n")
            save_results(result, text, args.save, results_basename(result) + "-variants")
        return 0
    try:
        result = run(cells=args.cells, modes=args.modes, sizes=args.sizes, threads=args.threads, reps=reps,
                     quick=args.quick, no_torch=args.no_torch, progress=not args.no_progress,
                     min_sample_s=None if args.min_sample_ms is None else args.min_sample_ms / 1e3,
                     gemm_n=args.gemm_size, emit=lambda text: print(text, flush=True))
    except VerificationError as e:
        print(f"fastrnn.bench: VERIFICATION FAILED: {e}", file=sys.stderr)
        return 1

    text = format_markdown(result)  # what was printed above, plus the summary
    print(f"\n{format_summary(result)}")
    if args.json:
        write_json(result, args.json)
    if args.save:
        save_results(result, text, args.save, results_basename(result))
    if args.plot:
        write_plot(result, args.plot)
    return 0
