"""Tests of the benchmark harness ``python -m fastrnn.bench`` (not of the kernels' speed): the FLOP
formula, size parsing, the suites' shape, a tiny end-to-end run with and without torch (a markdown
table on stdout and JSON with the keys the results files rely on), and that the verification step
stops a run whose fastrnn result is wrong. Tiny sizes, a small GEMM and short samples keep the whole
file to a few seconds; the timings themselves are not asserted (they mean nothing on CI).
"""
import json
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import bench

TINY = ["--sizes", "tiny", "--reps", "2", "--gemm-size", "64", "--min-sample-ms", "1", "--no-progress"]


def test_flops_formula():
    H, I, B, T = 7, 5, 3, 11
    for cell, G in (("lstm", 4), ("gru", 3), ("rnn_tanh", 1), ("rnn_relu", 1)):
        assert bench.flops(cell, I, H, B, T) == 2 * G * H * (I + H) * B * T
        assert bench.flops(cell, I, H, B, T, training=True) == 3 * 2 * G * H * (I + H) * B * T
    # 2 layers x 2 directions: layer 0 sees I, layer 1 sees the concatenated 2*H.
    expected = 2 * (2 * 4 * H * (I + H) * B * T) + 2 * (2 * 4 * H * (2 * H + H) * B * T)
    assert bench.flops("lstm", I, H, B, T, layers=2, bidirectional=True) == expected
    case = bench.Case("gru", H, B, T, I, "training")
    assert bench.case_flops(case) == 3 * 2 * 3 * H * (I + H) * B * T


def test_parse_sizes():
    assert bench.parse_sizes("512x16x50,256x1x100") == [(512, 16, 50, 512), (256, 1, 100, 256)]
    assert bench.parse_sizes(" 97x3x7x33 ") == [(97, 3, 7, 33)]
    assert bench.parse_sizes("tiny") == [(h, b, t, h) for h, b, t in bench.TINY_SIZES]
    assert bench.parse_sizes("quick,8x1x2") == [(h, b, t, h) for h, b, t in bench.QUICK_SIZES] + [(8, 1, 2, 8)]
    for bad in ("512x16", "0x1x1", "ax2x3", "1x2x3x4x5", ",", "-1x2x3"):
        with pytest.raises(ValueError, match="sizes"):
            bench.parse_sizes(bad)


def test_cli_rejects_bad_options(capsys):
    for argv, what in ((["--sizes", "512x16"], "HxBxT"), (["--cells", "lstm,xlstm"], "--cells"),
                       (["--modes", "fast"], "--modes"), (["--threads", "0"], "integer >= 1")):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code == 2
        assert what in capsys.readouterr().err


def test_cuda_device_without_gpu_is_refused_clearly(capsys):
    """Without a usable GPU, --device cuda stops (exit 2) with the reason (tests/bench/test_bench_cuda.py has the rest)."""
    from fastrnn.bench import cuda as bench_cuda
    reason = bench_cuda.unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is usable here: tests/bench/test_bench_cuda.py runs the GPU suite")
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", "cuda"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--device cuda: {reason}" in err and "Traceback" not in err
    if not fastrnn.cuda_available():
        assert "no CUDA kernels in this build" in err


def test_suites():
    default = bench.build_cases(bench.DEFAULT_CELLS, bench.MODES, None)
    # 3 cells x 6 sizes x 2 modes, the 1536 inference case per cell, the 2-layer bidirectional LSTM
    # (training) and the H=512, B=1 decode step, on float32- and on float16-stored weights.
    assert len(default) == 3 * 6 * 2 + 3 + 1 + 2
    assert bench.Case("lstm", 256, 32, 100, 256, "training", 2, True) in default
    assert bench.Case("lstm", 512, 1, 1, 512, "decode") in default
    assert bench.Case("lstm", 512, 1, 1, 512, "decode", half_weights=True) in default
    assert all(c.mode == "inference" for c in default if c.H == 1536)
    quick = bench.build_cases(bench.DEFAULT_CELLS, bench.MODES, None, quick=True)
    assert len(quick) == 3 * 3 * 2 + 2 and max(bench.case_flops(c) for c in quick) < \
        max(bench.case_flops(c) for c in default)
    custom = bench.build_cases(["gru"], ["training"], [(8, 2, 3, 5)])
    assert custom == [bench.Case("gru", 8, 2, 3, 5, "training")]


def _run_tiny(tmp_path, capsys, extra):
    path = tmp_path / "out.json"
    assert bench.main(TINY + ["--cells", "lstm,gru,rnn_tanh,rnn_relu", "--json", str(path)] + extra) == 0
    out = capsys.readouterr().out
    return out, json.loads(path.read_text())


@pytest.mark.parametrize("with_torch", [False, True], ids=["no-torch", "torch"])
def test_tiny_run(tmp_path, capsys, with_torch):
    if with_torch:
        pytest.importorskip("torch")
    out, result = _run_tiny(tmp_path, capsys, [] if with_torch else ["--no-torch"])
    assert "| case | mode | fastrnn ms (min–max) | GFLOP/s | % peak | µs/step |" in out
    assert "Geometric-mean speed-up over torch.nn" in out

    header = result["header"]
    for key in ("cpu", "cpu_count", "affinity", "threads", "date_utc", "fastrnn", "commit", "numpy", "torch",
                "gemm_peak_gflops", "gemm_peak_from"):
        assert key in header, key
    assert header["threads"] == fastrnn.get_num_threads()
    assert header["gemm_peak_gflops"] > 0
    assert (header["torch"] is not None) == with_torch
    assert set(result["peak"]["gflops"]) == ({"torch.mm"} if with_torch else {"numpy.matmul"})

    # 4 cells x 2 modes at the one tiny size, plus the LSTM decode step at that size.
    cases = result["cases"]
    assert [(c["cell"], c["mode"]) for c in cases] == \
        [(c, m) for m in ("inference", "training") for c in ("lstm", "gru", "rnn_tanh", "rnn_relu")] + \
        [("lstm", "decode")]
    assert out.count("\n| ") == len(cases) + 1  # one table row per case below the header row
    expected_impls = {"fastrnn", "reference"} | ({"torch"} if with_torch else set())
    for c in cases:
        assert set(c["impls"]) == expected_impls
        assert c["verified_against"] == ("torch.nn" if with_torch else "reference")
        assert 0 <= c["max_abs_diff"] < 1e-4
        assert c["flops"] == bench.case_flops(bench.Case(c["cell"], c["H"], c["B"], c["T"], c["I"], c["mode"]))
        for t in c["impls"].values():
            assert len(t["samples_ms"]) == 2
            assert t["min_ms"] <= t["median_ms"] <= t["max_ms"]
            assert t["gflops"] == pytest.approx(c["flops"] / (t["median_ms"] * 1e-3) / 1e9)
            assert t["pct_peak"] == pytest.approx(100 * t["gflops"] / header["gemm_peak_gflops"])
            assert t["us_per_step"] == pytest.approx(t["median_ms"] * 1e3 / c["T"])
        if with_torch:
            ratio = c["impls"]["torch"]["median_ms"] / c["impls"]["fastrnn"]["median_ms"]
            assert c["speedup_vs_torch"] == pytest.approx(ratio)
        else:
            assert c["speedup_vs_torch"] is None
    assert cases[-1]["decode_api"] == ("PreparedCell" if hasattr(fastrnn, "PreparedCell") else "lstm_forward(T=1)")
    summary = result["summary"]
    if with_torch:
        assert set(summary["geomean_speedup_vs_torch"]) == {"inference", "training", "decode"}
        assert summary["overall"] == pytest.approx(bench.geomean([c["speedup_vs_torch"] for c in cases]))
    else:
        assert summary["geomean_speedup_vs_torch"] == {} and summary["overall"] is None


def test_save_writes_results_pair(tmp_path, capsys):
    assert bench.main(TINY + ["--cells", "rnn_tanh", "--modes", "inference", "--no-torch",
                              "--save", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (js,), (md,) = list(tmp_path.glob("*.json")), list(tmp_path.glob("*.md"))
    assert js.stem == md.stem and js.stem[:4].isdigit() and js.stem.endswith(f"-{json.loads(js.read_text())['header']['affinity']}c")
    assert md.read_text() == out


@pytest.mark.parametrize("with_torch", [False, True], ids=["no-torch", "torch"])
@pytest.mark.parametrize("mode", ["inference", "training"])
def test_verification_catches_wrong_result(monkeypatch, capsys, with_torch, mode):
    if with_torch:
        pytest.importorskip("torch")
    real_forward = fastrnn.forward

    def wrong_forward(*args, **kwargs):  # one output element off by 0.5: a "wrong term"
        r = real_forward(*args, **kwargs)
        r.output[-1, 0, 0] += 0.5
        return r

    monkeypatch.setattr(fastrnn, "forward", wrong_forward)
    argv = TINY + ["--cells", "gru", "--modes", mode] + ([] if with_torch else ["--no-torch"])
    assert bench.main(argv) == 1
    err = capsys.readouterr().err
    assert "VERIFICATION FAILED" in err and "output" in err
    assert ("torch.nn" if with_torch else "reference") in err


def test_verification_catches_wrong_gradient(monkeypatch):
    real_backward = fastrnn.backward

    def wrong_backward(*args, **kwargs):
        g = real_backward(*args, **kwargs)
        g.dweights[0][1][0, 0] *= 2.0  # dW_hh of layer 0 off in one element
        return g

    monkeypatch.setattr(fastrnn, "backward", wrong_backward)
    with pytest.raises(bench.VerificationError, match=r"dW_hh\[0\]"):
        bench.run(cells=["lstm"], modes=["training"], sizes=[(16, 4, 8, 16)], reps=1, no_torch=True,
                  progress=False, min_sample_s=0.0, gemm_n=64)


def test_compare_records_max_abs_diff():
    case = bench.Case("lstm", 4, 1, 2, 4, "inference")
    e = {"output": np.zeros((2, 1, 4)), "h_n": np.ones((1, 1, 4))}
    a = {"output": np.full((2, 1, 4), 1e-5), "h_n": np.ones((1, 1, 4)) - 3e-5}
    assert bench.compare(a, e, case, "reference") == pytest.approx(3e-5)
    with pytest.raises(bench.VerificationError, match="non-finite"):
        bench.compare({**a, "h_n": np.full((1, 1, 4), np.nan)}, e, case, "reference")
    with pytest.raises(bench.VerificationError, match="shape"):
        bench.compare({**a, "h_n": np.ones((1, 4))}, e, case, "reference")


def test_plot_without_matplotlib_is_refused_up_front(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(SystemExit) as e:
        bench.main(TINY + ["--plot", "never.png"])
    assert e.value.code == 2 and "--plot needs matplotlib" in capsys.readouterr().err


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")  # optional: the [bench] extra
    pytest.importorskip("torch")  # the plot shows speed-ups over torch.nn
    path = tmp_path / "speedups.png"
    assert bench.main(TINY + ["--cells", "lstm", "--modes", "inference,decode", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_is_taken_at_the_benchmark_thread_count():
    torch = pytest.importorskip("torch")
    alone = bench.measure_peak(None, reps=1, threads=1, n=64)
    assert alone["peak_from"] == "numpy.matmul" and set(alone["gflops"]) == {"numpy.matmul"}
    assert alone["numpy_threads"] == "1"  # NumPy's OpenBLAS found and set to the thread count
    both = bench.measure_peak(torch, reps=1, threads=1, n=64)
    assert both["peak_from"] == "torch.mm" and set(both["gflops"]) == {"torch.mm"}
    assert both["peak_gflops"] == both["gflops"]["torch.mm"] > 0


def test_limit_numpy_blas_finds_numpy_openblas():
    assert bench.limit_numpy_blas(1) is True

def test_decode_suite(tmp_path, monkeypatch, capsys):
    """--suite decode on tiny sizes: every implementation timed, verified against torch.nn, and the
    results pair written; a stepper giving wrong states stops it."""
    torch = pytest.importorskip("torch")
    from fastrnn.bench import decode
    monkeypatch.setattr(decode, "DECODE_SUITE_H", (16,))
    monkeypatch.setattr(decode, "DECODE_SUITE_B", (1, 3))
    assert bench.main(["--suite", "decode", "--reps", "1", "--gemm-size", "64", "--min-sample-ms", "1",
                       "--no-progress", "--save", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| lstm | 16 | 3 |" in out and "| gru | 16 | 1 |" in out and "Geometric-mean speed-up" in out
    (saved,) = tmp_path.glob("*-decode.json")
    result = json.loads(saved.read_text())
    assert [(r["cell"], r["H"], r["B"]) for r in result["cases"]] == [("lstm", 16, 1), ("lstm", 16, 3),
                                                                       ("gru", 16, 1), ("gru", 16, 3)]
    for r in result["cases"]:
        assert set(r["us_per_step"]) == {"stepper", "stepper_f16", "fastrnn_module", "torch_cells", "torch_module"}
        assert r["max_abs_diff"] < 1e-5
        assert r["tokens_per_s"]["stepper"] == pytest.approx(r["B"] * 1e6 / r["us_per_step"]["stepper"])
    assert tmp_path.joinpath(saved.name.replace(".json", ".md")).read_text().startswith("# fastrnn benchmark")
    from fastrnn import _stepper
    real = _stepper.Stepper.__call__

    def doubled(self, x, state=None):  # a stepper whose new state is wrong
        y, new = real(self, x, state)
        return y, (new * 2 if isinstance(new, torch.Tensor) else tuple(t * 2 for t in new))
    monkeypatch.setattr(_stepper.Stepper, "__call__", doubled)
    assert bench.main(["--suite", "decode", "--reps", "1", "--gemm-size", "64", "--min-sample-ms", "1",
                       "--no-progress"]) == 1
    assert "VERIFICATION FAILED" in capsys.readouterr().err

def test_variants_suite_runs_and_saves(tmp_path):
    """--variants: every variant is verified against the plain-torch loop and timed
    against the base cell and the loop; --save writes <name>-variants.json/.md."""
    pytest.importorskip("torch")
    from fastrnn import bench
    rc = bench.main(["--variants", "--sizes", "8x2x3", "--reps", "1", "--min-sample-ms", "1", "--threads", "1",
                     "--save", str(tmp_path)])
    assert rc == 0
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert len(saved) == 2 and all(name.split(".")[0].endswith("-variants") for name in saved)
    result = json.loads((tmp_path / [n for n in saved if n.endswith(".json")][0]).read_text())
    rows = result["variant_cases"]
    assert len(rows) == 2 * len(bench.VARIANT_CASES)
    assert all(r["variant_over_base"] > 0 and r["loop_over_variant"] > 0 for r in rows)
    # the variants fastrnn.nn also runs as composed torch ops are timed against that path too
    composed = {r["name"] for r in rows if "composed_over_variant" in r}
    assert composed == {"gru reset_after=False", "lstm layer_norm", "gru layer_norm"}
    # the projected LSTM (P = H/4 with --sizes), inference and training, verified against torch.nn
    proj = result["projection_cases"]
    assert [(r["H"], r["P"], r["mode"]) for r in proj] == [(8, 2, "inference"), (8, 2, "training")]
    assert all(r["torch_over_fastrnn"] > 0 and r["fastrnn_over_base"] > 0 and r["old_over_fastrnn"] > 0 for r in proj)
    assert result["clock"] == "wall"


def test_variants_projection_only_in_cpu_time(tmp_path):
    """--variants --projection-only --cpu-time: the projected LSTM's rows alone, timed in the
    process's CPU time, which the saved table says."""
    pytest.importorskip("torch")
    from fastrnn import bench
    rc = bench.main(["--variants", "--projection-only", "--cpu-time", "--sizes", "8x2x3", "--reps", "1",
                     "--min-sample-ms", "1", "--threads", "1", "--save", str(tmp_path)])
    assert rc == 0
    result = json.loads(next(tmp_path.glob("*-variants.json")).read_text())
    assert result["variant_cases"] == [] and result["clock"] == "process CPU time"
    assert [(r["H"], r["P"], r["mode"]) for r in result["projection_cases"]] == [(8, 2, "inference"), (8, 2, "training")]
    assert "process CPU time" in next(tmp_path.glob("*-variants.md")).read_text()


def test_variants_suite_runs_the_named_cases_on_the_cpu_clock(tmp_path):
    """--variant-cases keeps the named cases only, --cpu-time times them in CPU time (recorded in the
    result), and an unknown name is refused by the argument parser."""
    pytest.importorskip("torch")
    from fastrnn import bench
    rc = bench.main(["--variants", "--variant-cases", "gru layer_norm,lstm layer_norm", "--cpu-time", "--sizes",
                     "8x2x3", "--reps", "1", "--min-sample-ms", "1", "--threads", "1", "--save", str(tmp_path)])
    assert rc == 0
    result = json.loads(next(tmp_path.glob("*-variants.json")).read_text())
    assert [(r["name"], r["mode"]) for r in result["variant_cases"]] == [
        ("lstm layer_norm", "inference"), ("lstm layer_norm", "training"),
        ("gru layer_norm", "inference"), ("gru layer_norm", "training")]
    assert result["clock"] == "process CPU time"
    with pytest.raises(SystemExit):
        bench.main(["--variants", "--variant-cases", "lstm layernorm"])


def test_modifiers_flag_runs_the_modifiers_suite(monkeypatch):
    """--modifiers runs fastrnn.bench.modifiers' suite; --variants stays the cell variants'."""
    pytest.importorskip("torch")
    from fastrnn import bench
    from fastrnn.bench import modifiers as bench_modifiers
    calls = []
    monkeypatch.setattr(bench_modifiers, "main_variants", lambda args: calls.append(args) or 0)
    assert bench.main(["--modifiers", "--quick", "--no-progress"]) == 0
    assert len(calls) == 1 and calls[0].modifiers and not calls[0].variants


def test_modifiers_suite_runs_and_saves(tmp_path):
    """--modifiers with --sizes, --threads and --cpu-time: every modifier's row on both cells, with
    positive times and ratios, saved as <date>-<machine>-modifiers-<threads>t.{json,md}."""
    torch = pytest.importorskip("torch")
    from fastrnn import bench
    threads = fastrnn.get_num_threads(), torch.get_num_threads()
    try:
        assert bench.main(["--modifiers", "--sizes", "8x2x3", "--threads", "1", "--cpu-time", "--reps", "1",
                           "--save", str(tmp_path)]) == 0
    finally:  # --threads sets both for the process
        fastrnn.set_num_threads(threads[0])
        torch.set_num_threads(threads[1])
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert len(saved) == 2 and saved[0].endswith("-modifiers-1t.json") and saved[1].endswith("-modifiers-1t.md")
    result = json.loads((tmp_path / saved[0]).read_text())
    assert result["header"]["clock"] == "process CPU time" and result["header"]["threads"] == 1
    from fastrnn.bench.modifiers import COMBINATIONS, VARIANTS
    rows = result["rows"]
    assert len(rows) == 2 * len(VARIANTS) + len(COMBINATIONS)
    assert all((r["T"], r["B"], r["H"]) == (3, 2, 8) and r["ratio"] > 0 for r in rows)
    assert all(r["speedup_vs_loop"] > 0 for r in rows if r["option"] in VARIANTS)
