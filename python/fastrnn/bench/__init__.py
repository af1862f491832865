"""``python -m fastrnn.bench``: times fastrnn against torch.nn (when torch imports) and the NumPy
reference (small cases only) in ONE process, and reports each case as milliseconds, GFLOP/s, a
percentage of the machine's fp32 GEMM peak measured in the same run, the speed-up over torch.nn and
microseconds per time step. Numbers from one process on one machine are only comparable with each
other, so everything the verdict needs is measured here: the baseline, the peak and the header that
says what ran where (CPU, cores, threads, versions, commit).

Method: per case, each implementation is first checked against torch.nn (or the reference) once,
then warmed up, then timed interleaved (A B C, B C A, ... so that drift in clock speed or in the
neighbours' load hits every implementation alike), ``--reps`` samples each; a sample is a block of
calls long enough (``min_sample_s``) for the clock's resolution not to matter, divided by its call
count. The table gives the median with min-max; read a ratio as real only when the ranges do not
overlap. Forward FLOPs are ``sum over layers and directions of 2*G*H*(I_l+H)*B*T`` (G = 4 LSTM,
3 GRU, 1 RNN; I_l = I for layer 0, D*H after); training (forward + backward, all gradients)
counts 3x that. See bench/README.md for how to read the output.

Where things are: ``cases.py`` (cells, modes, sizes, FLOPs, inputs), ``impls.py`` (fastrnn, the
reference, torch.nn; verification), ``timing.py`` (interleaved timing, the GEMM peak),
``machine.py`` (the run's header), ``suite.py`` (the CPU suite), ``report.py`` (its table, summary
and plot), ``variants.py`` (--variants), ``decode.py`` (--suite decode), ``modifiers.py``
(--modifiers), ``cuda.py`` (--device cuda), ``cli.py`` (the flags); ``__main__.py`` runs ``main``.
This file re-exports the names scripts and tests use.
"""
from .cases import (BENCH_CELLS, DEFAULT_CELLS, DEFAULT_SIZES, MODES, QUICK_SIZES, TINY_SIZES, Case, Inputs,
                    build_cases, case_flops, flops, make_inputs, parse_sizes)
from .cli import main
from .impls import VerificationError, compare, fastrnn_impl, reference_impl, torch_impl
from .report import format_markdown, format_row, format_summary, format_table, results_basename
from .suite import geomean, run, run_case, summarize
from .timing import GEMM_N, limit_numpy_blas, measure_peak, time_interleaved
from .variants import VARIANT_CASES, run_variants

__all__ = [
    "BENCH_CELLS", "DEFAULT_CELLS", "DEFAULT_SIZES", "GEMM_N", "MODES", "QUICK_SIZES", "TINY_SIZES", "VARIANT_CASES",
    "Case", "Inputs", "VerificationError", "build_cases", "case_flops", "compare", "fastrnn_impl", "flops",
    "format_markdown", "format_row", "format_summary", "format_table", "geomean", "limit_numpy_blas", "main",
    "make_inputs", "measure_peak", "parse_sizes", "reference_impl", "results_basename", "run", "run_case",
    "run_variants", "summarize", "time_interleaved", "torch_impl",
]
