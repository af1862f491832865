"""Tests of the GPU benchmark harness (``python -m fastrnn.bench --device cuda``, fastrnn/bench_cuda.py),
not of the kernels' speed: the suite's shape (the GPU suite's sizes), the refusal without a GPU (exit 2
with the reason, no traceback), and — on the CPU, with CUDA events replaced by a host clock — the
very code that builds the two modules, checks fastrnn against torch.nn, times and formats a case,
so that the first run on a GPU cannot fail on a slip in it. On a GPU, a tiny end-to-end run.
"""
import json
import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastrnn import bench  # noqa: E402
from fastrnn.bench import cuda as bench_cuda  # noqa: E402
from fastrnn.bench import Case  # noqa: E402

GPU_REASON = bench_cuda.unavailable_reason()


def test_gpu_suite_has_the_issues_sizes():
    cells = ("lstm", "gru", "rnn_tanh")
    full = bench_cuda.build_gpu_cases(cells, bench.MODES, None)
    # DeepBench: 3 H x 4 B; small batches: 2 H x 3 B; the long sequence; per cell and GPU mode.
    assert len(full) == (3 * 4 + 2 * 3 + 1) * 3 * 2
    assert {c.mode for c in full} == {"inference", "training"}
    for cell in cells:
        for H in (512, 1024, 2048):
            for B in (16, 32, 64, 128):
                assert Case(cell, H, B, 50 if H == 512 else 25, H, "training") in full
        for B in (1, 4, 8):
            assert Case(cell, 1024, B, 50, 1024, "inference") in full
        assert Case(cell, 768, 16, 1024, 768, "training") in full
    assert all(25 <= c.T <= 50 for c in full if c.B >= 16 and c.T != 1024)
    quick = bench_cuda.build_gpu_cases(cells, ("training", "decode"), None, quick=True)
    assert len(quick) == 3 * 3 + 2 and all(c.mode == "training" for c in quick)
    assert Case("lstm", 2048, 128, 25, 2048, "training") in quick and Case("lstm", 768, 16, 1024, 768, "training") in quick
    assert bench_cuda.build_gpu_cases(["gru"], ["training", "decode"], [(8, 2, 3, 5)]) == [Case("gru", 8, 2, 3, 5, "training")]


@pytest.mark.skipif(GPU_REASON is None, reason="a GPU is usable here")
def test_without_gpu_the_cli_refuses_with_the_reason(capsys):
    for extra in ([], ["--quick", "--max-seconds", "5"]):
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cuda", "--no-progress"] + extra)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert GPU_REASON in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="no CUDA"):
        bench_cuda.run(quick=True)


def test_cli_refuses_what_the_gpu_suite_does_not_do(capsys, monkeypatch):
    monkeypatch.setattr(bench_cuda, "unavailable_reason", lambda no_torch=False: None)  # as if a GPU were here
    for argv, what in ((["--modes", "decode"], "times the modes inference, training"),
                       (["--plot", "x.png"], "--plot draws the CPU suite only")):
        with pytest.raises(SystemExit) as e:
            bench.main(["--device", "cuda"] + argv)
        assert e.value.code == 2 and what in capsys.readouterr().err


class _HostEvent:
    """torch.cuda.Event's timing interface on the host clock (the CPU stand-in for the tests)."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


@pytest.fixture
def host_events(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)


@pytest.mark.parametrize("mode", bench_cuda.GPU_MODES)
@pytest.mark.parametrize("cell", bench.BENCH_CELLS)
def test_case_on_cpu_checks_times_and_formats(cell, mode, host_events):
    case = Case(cell, 6, 3, 4, 5, mode)
    row = bench_cuda.run_case(torch, case, torch.device("cpu"), reps=2, min_sample_s=0.001, peak_tflops=1.0)
    assert "error" not in row, row.get("error")
    assert row["max_abs_diff"] < 1e-5  # fastrnn.nn and torch.nn agree on the CPU too
    assert set(row["impls"]) == {"fastrnn", "torch"}
    for t in row["impls"].values():
        assert len(t["samples_ms"]) == 2 and t["min_ms"] <= t["median_ms"] <= t["max_ms"]
        assert t["tflops"] > 0 and t["us_per_step"] == pytest.approx(t["median_ms"] * 1e3 / case.T)
    assert row["speedup_vs_torch"] == pytest.approx(row["impls"]["torch"]["median_ms"] / row["impls"]["fastrnn"]["median_ms"])
    assert bench_cuda.format_row(row).count("|") == bench_cuda.TABLE_HEAD.splitlines()[0].count("|")


def test_verification_failure_is_reported_not_timed(host_events, monkeypatch):
    real = bench_cuda.timed_calls

    def wrong_for_fastrnn(torch_, case, inp, module, device):
        run, values = real(torch_, case, inp, module, device)
        if type(module).__module__.startswith("fastrnn"):
            return run, lambda: {k: v + 1.0 for k, v in values().items()}
        return run, values
    monkeypatch.setattr(bench_cuda, "timed_calls", wrong_for_fastrnn)
    row = bench_cuda.run_case(torch, Case("gru", 6, 3, 4, 5, "training"), torch.device("cpu"), 2, 0.001, 1.0)
    assert row["error"].startswith("VERIFICATION FAILED") and row["impls"] == {} and row["speedup_vs_torch"] is None
    assert "VERIFICATION FAILED" in bench_cuda.format_row(row)


def test_rates_and_markdown(host_events):
    rates = bench_cuda.measure_rates(torch, torch.device("cpu"), n=32, reps=2)
    assert set(rates["tflops"]) == {"fp32", "tf32", "bf16"} and all(v > 0 for v in rates["tflops"].values())
    rows = [bench_cuda.run_case(torch, Case("lstm", 6, 3, 4, 5, m), torch.device("cpu"), 2, 0.001, 1.0)
            for m in bench_cuda.GPU_MODES]
    rows.append({**rows[0], "impls": {}, "speedup_vs_torch": None, "error": "RuntimeError: CUDA error: an illegal memory access"})
    header = {"gpu": "NVIDIA H200", "capability": "9.0", "sms": 132, "memory_gib": 139.8, "driver": "580.159.04",
              "torch": torch.__version__, "torch_cuda": "13.0", "cudnn": 91000, "cudnn_allow_tf32": True,
              "matmul_allow_tf32": False, "fastrnn_gemm": "cuBLAS 13.1.0 (libcublas.so.13)",
              "fastrnn_cuda_runtime": bench_cuda._cuda_version(13000), "cuda_driver_api": bench_cuda._cuda_version(13000),
              "date_utc": "2026-12-01 10:00:00 UTC", "fastrnn": "0.1.0", "commit": "abc",
              "numpy": np.__version__, "python": "3.12.3", "platform": "Linux"}
    result = {"header": header, "peak": rates, "reps": 2, "min_sample_s": 0.001, "cases": rows, "max_seconds": 60.0,
              "cases_not_run": 4}
    result["summary"] = bench.summarize(rows)
    text = bench_cuda.format_markdown(result)
    assert "large products: cuBLAS 13.1.0" in text and "(CUDA 13.0); fastrnn built with CUDA 13.0" in text
    assert "NVIDIA H200" in text and "driver 580.159.04" in text and "CUDA 13.0" in text and "cuDNN 91000" in text
    assert text.count("\n| lstm H=6 B=3 T=4 I=5 |") == 3
    assert "Geometric-mean speed-up over cuDNN: inference" in text
    assert "1 case(s) failed" in text and "4 case(s) not run: the --max-seconds cap (60 s)" in text
    assert bench_cuda.results_basename(result, quick=True) == "2026-12-01-nvidia-h200-quick"
    json.dumps(result)  # the JSON the CLI writes


@pytest.mark.cuda
@pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))
def test_tiny_run_on_gpu(tmp_path, capsys):
    path = tmp_path / "gpu.json"
    code = bench.main(["--device", "cuda", "--sizes", "16x2x5,33x3x4x7", "--cells", "lstm,gru,rnn_tanh,rnn_relu",
                       "--reps", "2", "--min-sample-ms", "1", "--gemm-size", "256", "--no-progress", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(path.read_text())
    assert result["header"]["gpu"] and result["header"]["torch_cuda"]
    assert len(result["cases"]) == 4 * 2 * 2 and result["cases_not_run"] == 0
    for r in result["cases"]:
        assert "error" not in r and r["speedup_vs_torch"] > 0 and r["max_abs_diff"] < 1e-3
    assert "| fastrnn µs (min–max) |" in out and "Geometric-mean speed-up over cuDNN" in out


@pytest.mark.parametrize("name", ["lstm peephole", "lstm zoneout", "gru zoneout", "gru reset_after=False",
                                  "lstm peephole + zoneout + grad_clip", "lstm layer_norm", "gru layer_norm"])
def test_extra_case_on_cpu_checks_times_and_formats(name, host_events):
    """The quick run's EXTRAS rows (variants and modifiers against fastrnn's base cell) run on the
    CPU too: checked against the CPU kernels in float64, timed, formatted."""
    spec = next(e for e in bench_cuda.EXTRAS if e[0] == name)
    row = bench_cuda.run_extra(torch, *spec, torch.device("cpu"), reps=2, min_sample_s=0.001, size=(6, 3, 4))
    assert "error" not in row, row.get("error")
    assert row["max_abs_diff"] < 1e-5 and set(row["impls"]) == {"fastrnn", "base"}
    assert row["ratio_vs_baseline"] == pytest.approx(row["impls"]["fastrnn"]["median_ms"] / row["impls"]["base"]["median_ms"])
    line = bench_cuda.format_extra_row(row)
    assert line.count("|") == bench_cuda.EXTRAS_HEAD.splitlines()[0].count("|") and "fastrnn fp32 base cell" in line
    text = bench_cuda.format_extras({"extras": [row, {**row, "impls": {}, "error": "VERIFICATION FAILED: x"}],
                                     "extras_not_run": 2})
    assert "LSTM variants, training modifiers, 16-bit storage" in text and "VERIFICATION FAILED" in text
    assert "2 extra case(s) not run" in text


def test_extra_projection_case_on_cpu(host_events):
    """The quick run's ``lstm proj`` row (fastrnn.nn.LSTM(proj_size) against torch.nn.LSTM(proj_size)):
    checked against the CPU kernels in float64, both timed (at H = 160 > its P = 128, on the CPU)."""
    spec = next(e for e in bench_cuda.EXTRAS if e[0] == "lstm proj")
    row = bench_cuda.run_extra(torch, *spec, torch.device("cpu"), reps=2, min_sample_s=0.001, size=(160, 2, 3))
    assert "error" not in row, row.get("error")
    assert row["max_abs_diff"] < 1e-5 and set(row["impls"]) == {"fastrnn", "cudnn"} and row["ratio_vs_baseline"] > 0
    assert "cuDNN float32" in bench_cuda.format_extra_row(row)


def test_extras_cover_the_cuda_features():
    """Every LSTM variant option, layer norm (both cells), every in-kernel modifier, the projection
    and both 16-bit dtypes have a row."""
    options = {k for _, _, kw, _, _ in bench_cuda.EXTRAS for k in kw}
    assert {"peephole", "coupled", "cell_clip", "reset_after", "layer_norm", "recurrent_dropout", "zoneout",
            "grad_clip", "proj_size"} <= options
    assert {c for _, c, kw, _, _ in bench_cuda.EXTRAS if kw.get("layer_norm")} == {"lstm", "gru"}
    assert {d for _, _, kw, d, b in bench_cuda.EXTRAS if b == "cudnn" and not kw} == {"bfloat16", "float16"}


@pytest.mark.parametrize("mode", bench_cuda.GPU_MODES)
def test_persistent_row_on_cpu_checks_times_and_formats(mode, host_events):
    """The quick run's persistent table (per-step, persistent and cuDNN) runs on the CPU too (both
    fastrnn paths are then the CPU kernels): checked against torch.nn, timed, formatted; the switch
    is restored afterwards."""
    before = os.environ.get(bench_cuda.PERSISTENT_SWITCH)
    row = bench_cuda.run_persistent_row(torch, 6, 3, mode, torch.device("cpu"), reps=2, min_sample_s=0.001, T=4)
    assert os.environ.get(bench_cuda.PERSISTENT_SWITCH) == before
    assert "error" not in row, row.get("error")
    assert row["max_abs_diff"] < 1e-5 and set(row["impls"]) == {"per-step", "persistent", "torch"}
    assert row["persistent_vs_per_step"] == pytest.approx(
        row["impls"]["per-step"]["median_ms"] / row["impls"]["persistent"]["median_ms"])
    assert row["plan"]["runs"] is False and row["plan"]["reason"]
    line = bench_cuda.format_persistent_row(row)
    assert line.count("|") == bench_cuda.PERSISTENT_HEAD.splitlines()[0].count("|") and "per-step: " in line
    planned = {**row, "plan": {"runs": True, "blocks": 128, "units": 8, "k_slices": 8, "smem_bytes": 160 * 1024}}
    assert "128 blocks x 8 units, 8 K slices, 160 KiB" in bench_cuda.format_persistent_row(planned)
    text = bench_cuda.format_persistent({"persistent": [row, {**row, "impls": {}, "error": "VERIFICATION FAILED: x"}],
                                         "persistent_not_run": 3})
    assert "Persistent small-batch forward" in text and "VERIFICATION FAILED" in text
    assert "3 persistent case(s) not run" in text


def test_persistent_sizes_cover_the_crossover():
    """B in {1, 4, 8} x H in {256, 512, 1024} at T = 100 in inference, and a few training rows."""
    inference = {(H, B) for H, B, mode in bench_cuda.PERSISTENT_SIZES if mode == "inference"}
    assert inference == {(H, B) for H in (256, 512, 1024) for B in (1, 4, 8)} and bench_cuda.PERSISTENT_T == 100
    assert 0 < sum(mode == "training" for _, _, mode in bench_cuda.PERSISTENT_SIZES) <= 3
