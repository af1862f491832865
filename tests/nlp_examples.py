"""Helpers shared by the tests of the NLP examples (examples/sentiment_sst2.py, pos_tagging_ewt.py,
translate_multi30k.py, lm_wikitext2.py): load an example as a module, find the project's datasets
at ``<repo>/../shared/data`` (skipping, with the reason, where a dataset is absent), and run an
example's ``main`` once per argument list for the whole session, so several tests can check one
run without paying for it twice.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
EXAMPLES = os.path.join(REPO, "examples")
DATA = os.path.normpath(os.path.join(REPO, os.pardir, "shared", "data"))

_modules: dict = {}
_runs: dict = {}


def example(name: str):
    """examples/<name>.py as a module (examples/ put on sys.path for its nlp_data import)."""
    if name not in _modules:
        if EXAMPLES not in sys.path:
            sys.path.insert(0, EXAMPLES)
        spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[name] = module
    return _modules[name]


def data_or_skip(dataset: str, *files: str) -> str:
    """<repo>/../shared/data/<dataset>, or skip the test saying which file is missing."""
    path = os.path.join(DATA, dataset)
    for f in files:
        if not os.path.exists(os.path.join(path, f)):
            pytest.skip(f"dataset file {os.path.join(path, f)} is absent (CI has ../shared/data beside the clone)")
    return path


def run(name: str, args) -> dict:
    """``examples/<name>.main(args)``, cached by (name, args) for the session."""
    if args and "fastrnn" in args:
        pytest.importorskip("fastrnn.nn")
    key = (name, tuple(args))
    if key not in _runs:
        _runs[key] = example(name).main(list(args))
    return _runs[key]


def head_tail_means(losses, n: int):
    """Mean of the first ``n`` and of the last ``n`` per-batch losses."""
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def max_relative_difference(a, b) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
