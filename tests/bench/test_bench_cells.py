"""The cell-stepping suite (fastrnn.bench.cells, ``python -m fastrnn.bench --suite cells``) on
tiny sizes: its grid verifies and times every cell and mode and formats its table; the client
model (pytorch/examples' time_sequence_prediction) gives torch.nn's loss and gradients with
fastrnn.nn's cells on a short slice of its data; and examples/time_sequence_prediction.py trains
it with L-BFGS (a few steps of the series, one L-BFGS step) for both implementations alike.
"""
import importlib.util
import os

import pytest

from helpers import EXAMPLES

torch = pytest.importorskip("torch")
cells = pytest.importorskip("fastrnn.bench.cells")


def test_grid_tiny():
    rows = cells.run_grid(torch, reps=1, clock="cpu", min_sample_s=0.0, cells=("rnn_relu", "lstm"), bs=(2,), hs=(4,),
                          dtypes=("float64",), progress=False)
    assert len(rows) == 2 * 2
    for r in rows:
        assert r["us"]["torch"] > 0 and r["us"]["fastrnn"] > 0 and r["max_rel_diff"] < 1e-4
        assert cells.format_grid_row(r).count("|") == 9
    s = cells.summarize(None, rows)
    assert s["training_cases"] == s["forward_cases"] == len(rows) // 2
    assert "Grid, training" in cells.format_summary(s)


def test_client_model_matches_torch_on_a_slice():
    input, target, test_input, _ = cells.client_data()
    assert input.shape == (97, 999) and test_input.shape == (3, 999)
    losses, grads = [], []
    for impl in ("torch", "fastrnn"):
        seq = cells.make_sequence(impl)
        losses.append(cells.client_closure(seq, input[:, :12], target[:, :12])().item())
        grads.append([p.grad for p in seq.parameters()])
        with torch.no_grad():
            assert seq(test_input[:, :5], future=3).shape == (3, 8)
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_example_trains_both_alike(monkeypatch):
    spec = importlib.util.spec_from_file_location("tsp", os.path.join(EXAMPLES, "time_sequence_prediction.py"))
    tsp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tsp)
    data = cells.client_data()
    monkeypatch.setattr(tsp, "client_data", lambda: tuple(t[:, :15] for t in data))
    import fastrnn
    threads = torch.get_num_threads(), fastrnn.get_num_threads()
    try:  # one thread: on shared cores a barrier waiting for a descheduled thread costs milliseconds
        results = [tsp.main(["--impl", impl, "--steps", "1", "--future", "4", "--threads", "1"])
                   for impl in ("torch", "fastrnn")]
    finally:
        torch.set_num_threads(threads[0])
        fastrnn.set_num_threads(threads[1])
    assert results[0]["loss"] < 0.5  # one L-BFGS step of up to 20 closures learns something
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    assert results[0]["test_loss"] == pytest.approx(results[1]["test_loss"], rel=1e-6)
