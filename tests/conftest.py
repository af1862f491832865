"""Test-wide settings. The CPU kernels give a layer one thread unless its per-step work pays for a
barrier per step (csrc/cpu/stack.cpp, useful_threads); the tests' problems are small, so they set
FASTRNN_MIN_STEP_FLOPS=0 (read once, when the extension loads) to run the multi-threaded paths as
well. tests/kernels/test_threads.py checks the default heuristic in a process of its own.

After each test, torch.compile's caches are reset (when dynamo was loaded at all: 0.1 ms): the
compile tests compile the same fastrnn.nn code objects for many modules, and dynamo's per-code-object
recompile limit (8) would otherwise make a later fullgraph test fail for what earlier ones left."""
import os
import sys

os.environ.setdefault("FASTRNN_MIN_STEP_FLOPS", "0")


def pytest_runtest_teardown(item, nextitem):
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
