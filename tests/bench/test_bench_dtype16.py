"""``python -m fastrnn.bench --dtype bfloat16 | float16`` (fastrnn/bench/dtype16.py): a tiny run of
each dtype prints the four-implementation table with its ratios and saves JSON/markdown named with
the dtype; a wrong 16-bit result stops the run before timing. Timings are not asserted."""
import json
import os

import numpy as np
import pytest

from fastrnn.bench import cli, dtype16

pytest.importorskip("ml_dtypes")
pytest.importorskip("torch")
TINY = ["--sizes", "tiny", "--cells", "lstm,gru", "--modes", "inference,training", "--reps", "1",
        "--min-sample-ms", "1", "--threads", "1", "--no-progress"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_tiny_run_prints_and_saves_the_ratios(dtype, tmp_path, capsys):
    assert cli.main(TINY + ["--dtype", dtype, "--save", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"torch.autocast('cpu', dtype=torch.{dtype})" in out and "16-bit vs own fp32" in out
    assert out.count("| lstm H=16 B=2 T=5 |") == 2 and out.count("| gru H=16 B=2 T=5 |") == 2
    saved = [f for f in os.listdir(tmp_path) if f.endswith(f"-{dtype}.json")]
    assert len(saved) == 1
    result = json.load(open(tmp_path / saved[0]))
    assert result["dtype"] == dtype and len(result["cases"]) == 4
    for case in result["cases"]:
        runs = case["torch_autocast_runs"]
        if runs.startswith("unavailable"):  # oneDNN's float16 LSTM, on CPUs without it
            assert dtype == "float16" and case["cell"] == "lstm"
            assert set(case["impls"]) == {"fastrnn16", "fastrnn32", "torch32"}
        else:
            assert runs == (dtype if case["cell"] == "lstm" else "float32")
            assert set(case["impls"]) == {"fastrnn16", "fastrnn32", "torch_autocast", "torch32"}
        assert set(case["speedup"]) == set(case["impls"]) - {"fastrnn16"}
        assert case["max_rel_diff_vs_float32"] < dtype16.GROSS_MISMATCH_16


def test_a_wrong_16bit_result_stops_the_run(monkeypatch, capsys):
    real = dtype16.B._api_impl

    def broken(api, case, inp):
        run, values = real(api, case, inp)
        if inp.x.dtype == np.float32:
            return run, values
        return run, lambda: {k: v.astype(np.float32) * 1.5 for k, v in values().items()}
    monkeypatch.setattr(dtype16.B, "_api_impl", staticmethod(broken))
    assert cli.main(TINY + ["--dtype", "bfloat16"]) == 1
    assert "VERIFICATION FAILED" in capsys.readouterr().err
