"""Test-wide settings. The CPU kernels give a layer one thread unless its per-step work pays for a
barrier per step (csrc/cpu/stack.cpp, useful_threads); the tests' problems are small, so they set
FASTRNN_MIN_STEP_FLOPS=0 (read once, when the extension loads) to run the multi-threaded paths as
well. tests/kernels/test_threads.py checks the default heuristic in a process of its own."""
import os

os.environ.setdefault("FASTRNN_MIN_STEP_FLOPS", "0")
