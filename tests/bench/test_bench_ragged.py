"""The ragged-lengths suite of the benchmark (``python -m fastrnn.bench --ragged``,
fastrnn/bench/ragged.py): its batches (uniform lengths, and SST-2 / EWT sentence lengths that match
the examples' readers), one tiny run with every row and ratio filled in, and the CLI flag. The
timings themselves are not asserted (they mean nothing on CI).
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastrnn import bench  # noqa: E402
from fastrnn.bench import ragged  # noqa: E402
from helpers import DATA, data_or_skip, example  # noqa: E402


def test_sentence_lengths_match_the_examples_readers():
    nlp = example("nlp_data")
    sst2 = data_or_skip("sst2", "dev.tsv")
    ewt = data_or_skip("ud-english-ewt", "en_ewt-ud-dev.conllu")
    for dataset, path, read in (("sst2", os.path.join(sst2, "dev.tsv"), nlp.read_tsv_classification),
                                ("ewt", os.path.join(ewt, "en_ewt-ud-dev.conllu"), nlp.read_conllu)):
        expected = [len(tokens) for tokens, _ in read(path)]
        assert ragged.sentence_lengths(DATA, dataset) == expected
        cwd = os.getcwd()
        try:  # without a checkout in the working directory: the bench's own counting
            os.chdir(os.path.dirname(path))
            assert ragged.sentence_lengths(DATA, dataset) == expected
        finally:
            os.chdir(cwd)


def test_batches_without_data_are_the_uniform_one(tmp_path):
    got = ragged.batches(str(tmp_path), T_uniform=20, B=8)
    assert list(got) == ["uniform[1,20]"]
    lengths = got["uniform[1,20]"]
    assert lengths.shape == (8,) and lengths.min() >= 1 and lengths.max() <= 20


def test_tiny_run_fills_every_row():
    data_or_skip("sst2", "dev.tsv")
    result = ragged.run_ragged(size=(8, 8), B=4, reps=1, min_sample_s=0.0005, data_dir=DATA, emit=lambda s: None,
                               cpu_time=True)
    rows = result["rows"]
    assert len(rows) == 3 * 2 * 2  # batches x cells x modes
    for row in rows:
        assert 0 < row["live_fraction"] <= 1
        assert np.isclose(row["ideal_ms"], row["live_fraction"] * row["dense_ms"])
        assert np.isclose(row["packed_over_ideal"], row["packed_ms"] / row["ideal_ms"])
        assert np.isclose(row["torch_over_fastrnn"], row["torch_packed_ms"] / row["packed_ms"])
        assert row["pad_unpack_ms"] > 0
    assert result["header"]["isa"] in ("baseline", "avx2", "avx512", "avx512_bf16")
    assert result["header"]["clock"] == "process CPU time"
    json.dumps(result)  # what --save writes


def test_ragged_flag_runs_the_ragged_suite(monkeypatch):
    calls = []
    monkeypatch.setattr(ragged, "main_ragged", lambda args: calls.append(args) or 0)
    assert bench.main(["--ragged", "--quick", "--no-progress"]) == 0
    assert len(calls) == 1 and calls[0].ragged
