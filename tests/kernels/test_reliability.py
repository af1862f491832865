"""Regression tests of the kernels' reliability: results under an OpenMP team smaller than
requested, NaN through ReLU, NaN in the padding past `lengths`, tanh's relative accuracy near zero
for every cell (forward and backward, against the float64 reference and next to torch's own error),
PreparedCell outputs overlapping inputs, saved arrays changed between forward and backward, fork
safety (plain fork and DataLoader workers, in subprocesses with a timeout so that a hang fails),
the torch.nn contract (empty batch, meta device, exception types, forward-mode AD and torch.func,
torch.jit.trace), fastrnn.empty_cache(), determinism and the error messages. Each test failed
before its fix. Subprocesses are used where the setting must be in place before the extension
loads (OMP_THREAD_LIMIT, OMP_DYNAMIC) or where a failure is a hang or an out-of-memory.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn.types import CELLS, GATES
from helpers import TESTS_DIR, assert_all_close, digest, make_problem, named, run
from tolerances import SMALL_VALUES_RELATIVE

def _python(script: str, *args, env=None, timeout=240):
    """Runs `script` in a fresh interpreter (tests/ on sys.path); returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1])\n" + textwrap.dedent(script),
                           TESTS_DIR, *args], env=full_env, capture_output=True, text=True, timeout=timeout)


# ---- 1. an OpenMP team smaller than requested ---------------------------------------------------------
TEAM_SCRIPT = """
import hashlib
import numpy as np
import fastrnn
from fastrnn import reference
from helpers import assert_all_close, make_problem, named, run
from helpers import digest
fastrnn.set_num_threads(int(sys.argv[2]))
digests = []
for cell, bidirectional in (("lstm", False), ("gru", True), ("rnn_tanh", True), ("rnn_relu", False)):
    # H = 256 in 16 panels of 16 units: every thread gets a share at 4 threads
    p = make_problem(cell, np.float32, 2, bidirectional, 5, 8, 24, 256, ragged=True, seed=1)
    fast = named(*run(fastrnn, p))
    assert_all_close(fast, named(*run(reference, p)), np.float32)
    digests.append(digest(fast))
print("digest", hashlib.sha256("".join(digests).encode()).hexdigest())
"""


def _teamdigest(threads: int, env: dict) -> str:
    r = _python(TEAM_SCRIPT, str(threads), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split("digest ")[1].strip()


@pytest.mark.parametrize("limit, requested", [(1, 4), (2, 4)])
def test_smaller_team_than_requested(limit, requested):
    """OMP_THREAD_LIMIT caps the team below set_num_threads(): results must match the reference and be
    bitwise those of a run that requested what was granted (the same split of the units)."""
    limited = _teamdigest(requested, {"OMP_THREAD_LIMIT": str(limit)})
    assert limited == _teamdigest(limit, {}), "results differ from a run requesting the granted threads"


def test_dynamic_team_size():
    """OMP_DYNAMIC lets the runtime grant any team size up to the request."""
    _teamdigest(4, {"OMP_DYNAMIC": "true"})


def test_smaller_team_fastrnn_nn_matches_torch():
    r = _python("""
        import torch, fastrnn, fastrnn.nn
        fastrnn.set_num_threads(4)
        # torch.nn's own LSTM is 0.36 off under OMP_THREAD_LIMIT=1 at its default thread count
        # (torch 2.13 here), right when asked for the one thread it gets
        torch.set_num_threads(1)
        torch.manual_seed(0)
        ref = torch.nn.LSTM(64, 256, bidirectional=True)
        fast = fastrnn.nn.LSTM(64, 256, bidirectional=True)
        fast.load_state_dict(ref.state_dict())
        x = torch.randn(10, 32, 64, requires_grad=True)
        y_ref, y = ref(x)[0], fast(x)[0]
        (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        print("errors", float((y - y_ref).abs().max()), float((g - g_ref).abs().max()))
        """, env={"OMP_THREAD_LIMIT": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    errors = [float(v) for v in r.stdout.split("errors ")[1].split()]
    assert max(errors) < 1e-4, f"fastrnn.nn vs torch.nn under OMP_THREAD_LIMIT=1: {errors}"


# ---- 3. ReLU propagates NaN as torch does -------------------------------------------------------------
def test_relu_nan_and_inf_like_torch():
    torch = pytest.importorskip("torch")
    import fastrnn.nn
    torch.manual_seed(0)
    ref = torch.nn.RNN(4, 24, num_layers=2, nonlinearity="relu").double()
    fast = fastrnn.nn.RNN(4, 24, num_layers=2, nonlinearity="relu").double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, 8, 4, dtype=torch.float64)
    x[2, 1, 0] = float("nan")
    x[3, 4, 1] = float("inf")  # inf * weights of both signs: +-inf, and inf - inf = NaN further on
    x[3, 4, 2] = float("-inf")
    outs = []
    for m in (ref, fast):
        xi = x.clone().requires_grad_(True)
        y, hn = m(xi)
        (y.sum() + hn.sum()).backward()
        outs.append((y.detach(), hn.detach(), xi.grad, [p.grad for p in m.parameters()]))
    (y_r, hn_r, dx_r, dw_r), (y_f, hn_f, dx_f, dw_f) = outs
    assert torch.isnan(y_r).any() and any(torch.isnan(g).any() for g in dw_r)  # the case tests something
    for name, a, b in [("output", y_f, y_r), ("h_n", hn_f, hn_r), ("dx", dx_f, dx_r)] + \
                      [(f"grad {i}", a, b) for i, (a, b) in enumerate(zip(dw_f, dw_r))]:
        assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{name}: NaN positions differ from torch.nn"
        assert torch.equal(torch.isinf(a), torch.isinf(b)), f"{name}: Inf positions differ from torch.nn"
        finite = torch.isfinite(b)
        assert torch.allclose(a[finite], b[finite], rtol=1e-10, atol=1e-12), name


def test_relu_nan_numpy_api():
    x = np.zeros((1, 2, 1), np.float32)
    x[0, 0, 0] = np.nan
    w = [(np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32))]
    res = fastrnn.rnn_forward(x, w, nonlinearity="relu", training=True)
    assert np.isnan(res.output[0, 0, 0]) and res.output[0, 1, 0] == 0
    # torch's threshold_backward passes the gradient where the output is NaN, zeroes it where <= 0
    grads = fastrnn.rnn_backward(res.saved, np.ones_like(res.output))
    assert np.isnan(grads.dweights[0][0]).all()  # dW = dG^T x holds NaN * 1
    assert grads.dx[0, 1, 0] == 0 and grads.dx[0, 0, 0] == 1
    # and the reference agrees, NaN for NaN
    p = make_problem("rnn_relu", np.float64, 2, True, 5, 6, 3, 7, ragged=True, seed=2)
    p["x"][1, 2, 0] = np.nan
    p["dy"][3, 4, 1] = np.nan
    fast, ref = named(*run(fastrnn, p)), named(*run(reference, p))
    for name, value in fast.items():
        if value is not None:
            np.testing.assert_array_equal(np.isnan(value), np.isnan(ref[name]), err_msg=name)
            finite = ~np.isnan(ref[name])
            np.testing.assert_allclose(value[finite], ref[name][finite], rtol=1e-12, atol=1e-12, err_msg=name)


# ---- 4. NaN / Inf in the padding past lengths ---------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_values_do_not_reach_gradients(cell, bidirectional):
    p = make_problem(cell, np.float32, 2, bidirectional, 7, 20, 9, 16, ragged=True, seed=11)
    clean = named(*run(fastrnn, p))
    x, dy = p["x"].copy(), p["dy"].copy()
    T = x.shape[0]
    for b, n in enumerate(p["lengths"]):
        x[n:, b] = np.nan
        x[n:T:2, b] = np.inf
        dy[n:, b] = np.nan  # the incoming gradient's padding too
    dirty = named(*run(fastrnn, p, x=x, dy=dy))
    for name, value in clean.items():
        if value is not None:
            np.testing.assert_array_equal(dirty[name], value, err_msg=f"{name} depends on the padding of x")


# ---- 5. tanh (and the cells) accurate in relative terms near zero ------------------------------------
def _relative_error(actual, expected):
    expected = np.asarray(expected, np.float64)
    return np.abs(np.asarray(actual, np.float64) - expected) / np.abs(expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_relative_accuracy_everywhere(dtype):
    """rnn_tanh with W_ih = 1, W_hh = 0, no bias: h = tanh(x) elementwise, for |x| from 4 times the
    smallest denormal to 20, and +-0. Error in units of the last place of the result."""
    info = np.finfo(dtype)
    mags = np.concatenate([np.geomspace(info.smallest_subnormal * 4 if hasattr(info, "smallest_subnormal") else info.tiny,
                                        1e-3, 400), np.linspace(1e-3, 20, 400)]).astype(dtype)
    values = np.concatenate([mags, -mags, np.array([0.0, -0.0], dtype)])
    x = values.reshape(1, -1, 1)
    w = [(np.ones((1, 1), dtype), np.zeros((1, 1), dtype))]
    h = fastrnn.rnn_forward(x, w).output.ravel()
    exact = np.tanh(values.astype(np.float64))
    nonzero = exact != 0
    ulps = np.abs(h[nonzero].astype(np.float64) - exact[nonzero]) / np.spacing(np.abs(exact[nonzero]).astype(dtype))
    assert ulps.max() <= 4, f"tanh off by {ulps.max():.1f} ulp at x = {values[nonzero][np.argmax(ulps)]!r}"
    # tanh keeps -0, but the pre-activation gi + gh = -0 + (+0) is already +0 (as in torch)
    assert h[values == 0].tolist() == [0.0, 0.0]


def _small_problem(cell, dtype, scale, seed):
    """Activations of about `scale`: x ~ scale, no bias, zero initial states, so every cell's h
    (and the LSTM's c) is O(scale); the gradients of the weights are O(scale) too."""
    p = make_problem(cell, dtype, 1, False, 5, 8, 12, 16, bias=False, with_state=False, seed=seed)
    p["x"] = (p["x"] * scale).astype(dtype)
    return p


def _median_relative_errors(values: dict, expected: dict) -> dict:
    out = {}
    for name, e in expected.items():
        if e is None or name in ("dh0", "dc0", "dx"):  # O(1): the kernels' tolerance tests cover them
            continue
        e = np.asarray(e, np.float64)
        keep = e != 0
        out[name] = float(np.median(_relative_error(np.asarray(values[name])[keep], e[keep])))
    return out


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-3, 1e-7, 1e-15])
def test_small_values_relative_accuracy(cell, dtype, scale):
    """Outputs h_n, c_n and the weight gradients at activations of `scale`, against the float64
    reference, by the median elementwise relative error. With the old tanh the float32 median was
    2e-3 to 8e-2 at 1e-7 (and 1 at 1e-15: zeros); torch's float32 is at ~1e-7."""
    p = _small_problem(cell, dtype, scale, seed=int(-np.log10(scale)))
    fast = named(*run(fastrnn, p))
    ref = named(*run(reference, p))
    tol = SMALL_VALUES_RELATIVE[np.dtype(dtype).name]
    for name, err in _median_relative_errors(fast, ref).items():
        assert err <= tol, f"{name} at scale {scale:g}: median relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_small_values_as_accurate_as_torch(cell):
    """The same comparison for torch.nn's float32 on the same inputs: fastrnn stays within a few
    times torch's own median relative error (its GEMMs sum in another order)."""
    torch = pytest.importorskip("torch")
    import fastrnn.nn
    p = _small_problem(cell, np.float32, 1e-7, seed=3)
    ref = named(*run(reference, p))
    mode = {"rnn_tanh": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell]
    torch_module = getattr(torch.nn, mode)(12, 16, bias=False)
    with torch.no_grad():
        torch_module.weight_ih_l0.copy_(torch.from_numpy(p["weights"][0][0]))
        torch_module.weight_hh_l0.copy_(torch.from_numpy(p["weights"][0][1]))
    results = {}
    for impl, module in (("torch", torch_module), ("fastrnn", fastrnn.nn.convert(torch_module))):
        module.zero_grad()
        x = torch.from_numpy(p["x"]).requires_grad_(True)
        y, state = module(x)
        hn = state[0] if cell == "lstm" else state
        loss = (y * torch.from_numpy(p["dy"])).sum() + (hn * torch.from_numpy(p["dhn"])).sum()
        if cell == "lstm":
            loss = loss + (state[1] * torch.from_numpy(p["dcn"])).sum()
        loss.backward()
        got = {"output": y, "h_n": hn, "dweights[0].dw_ih": module.weight_ih_l0.grad,
               "dweights[0].dw_hh": module.weight_hh_l0.grad}
        results[impl] = _median_relative_errors({k: v.detach().numpy() for k, v in got.items()},
                                                {k: ref[k] for k in got})
    for name, err in results["fastrnn"].items():
        assert err <= max(4 * results["torch"][name], 2 ** -23), \
            f"{name}: fastrnn median relative error {err:.3g}, torch.nn {results['torch'][name]:.3g}"


# ---- 6. PreparedCell(out=...) must not overlap its inputs ---------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_prepared_cell_refuses_overlapping_outputs(cell):
    B, H = 3, 8
    w = fastrnn.init_weights(cell, H, H, seed=0)[0]  # I == H, so that x-sized views fit the outputs
    step = fastrnn.PreparedCell(cell, *w)
    rng = np.random.default_rng(0)
    buf = rng.standard_normal((8 * B, H)).astype(np.float32)  # every array below is a row block of it
    rows = lambda r: buf[r:r + B]
    x, h, c = rows(0), rows(2 * B), rows(4 * B)
    lstm = cell == "lstm"
    free = np.empty((B, H), np.float32)
    cases = {"h_out is x": (x, free), "h_out overlaps h by a row": (rows(3 * B - 1), free),
             "h_out overlaps x by a row": (rows(B - 1), free)}
    if lstm:
        cases.update({"ping-pong buffers swapped": (c, h), "c_out overlaps c": (free, rows(4 * B + 1)),
                      "c_out overlaps x": (free, rows(1)), "h_out overlaps c_out": (rows(6 * B), rows(6 * B + 1))})
    for what, out in cases.items():
        with pytest.raises(ValueError, match="overlaps"):
            step(x, h, c, out=out) if lstm else step(x, h, out=out[:1])
    # separate arrays, adjacent ones included, still work and equal the call without out=
    out = (rows(6 * B), rows(7 * B)) if lstm else (rows(6 * B),)
    got = step(x, h, c, out=out) if lstm else (step(x, h, out=out),)
    want = step(x, h, c) if lstm else (step(x, h),)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# ---- 8. fork safety --------------------------------------------------------------------------------
def test_plain_fork_after_use():
    r = _python("""
        import os
        import numpy as np
        import fastrnn
        fastrnn.set_num_threads(2)
        w = fastrnn.init_weights("lstm", 16, 64, seed=0)
        x = np.random.default_rng(0).standard_normal((8, 16, 16)).astype(np.float32)
        before = fastrnn.lstm_forward(x, w).output  # the parent's OpenMP pool now exists
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(fastrnn.lstm_forward(x, w).output, before) or np.allclose(
                fastrnn.lstm_forward(x, w).output, before, atol=1e-6)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """, timeout=60)
    assert r.returncode == 0 and "child 0" in r.stdout, r.stdout + r.stderr


def test_dataloader_fork_workers():
    r = _python("""
        import torch, fastrnn, fastrnn.nn
        fastrnn.set_num_threads(2)
        torch.manual_seed(0)
        gru = fastrnn.nn.GRU(8, 64)
        x = torch.randn(5, 16, 8)
        with torch.no_grad():
            want = gru(x)[0]  # the parent runs it first

        class Data(torch.utils.data.Dataset):
            def __len__(self):
                return 4

            def __getitem__(self, i):
                with torch.no_grad():
                    return gru(x)[0]

        loader = torch.utils.data.DataLoader(Data(), batch_size=None, num_workers=2,
                                             multiprocessing_context="fork", timeout=60)
        got = list(loader)
        print("ok", len(got), max(float((g - want).abs().max()) for g in got))
        """, timeout=120)
    assert r.returncode == 0 and "ok 4" in r.stdout, r.stdout + r.stderr
    assert float(r.stdout.split()[-1]) < 1e-5


# ---- 10. empty_cache -------------------------------------------------------------------------------
def test_empty_cache_releases_scratch_memory():
    r = _python("""
        import numpy as np
        import fastrnn
        from helpers import rss_bytes
        fastrnn.set_num_threads(2)
        T, B, I, H = 100, 64, 64, 256
        w = fastrnn.init_weights("gru", I, H, seed=0)
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        res = fastrnn.gru_forward(x, w, training=True)
        grads = fastrnn.gru_backward(res.saved, np.ones_like(res.output))
        del res, grads
        cached = fastrnn._core.scratch_cache_bytes()
        before = rss_bytes()
        fastrnn.empty_cache()
        print("result", cached, fastrnn._core.scratch_cache_bytes(), before - rss_bytes())
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    cached, left, dropped = (int(v) for v in r.stdout.split("result ")[1].split())
    assert cached > 8 * 2**20, f"only {cached} bytes were cached: the test tests nothing"
    assert left == 0, f"{left} bytes still cached after empty_cache()"
    assert dropped > cached // 2, f"RSS dropped by {dropped} bytes after freeing {cached}"


def test_scratch_cache_cap_from_environment():
    r = _python("""
        import numpy as np
        import fastrnn
        w = fastrnn.init_weights("gru", 64, 256, seed=0)
        x = np.random.default_rng(0).standard_normal((100, 64, 64)).astype(np.float32)
        fastrnn.gru_forward(x, w, training=True)
        print("cached", fastrnn._core.scratch_cache_bytes())
        """, env={"FASTRNN_SCRATCH_CACHE_MB": "0"})
    assert r.returncode == 0 and "cached 0" in r.stdout, r.stdout + r.stderr


def test_thread_cache_freed_at_thread_end_and_pool_caches_emptied():
    import threading
    p = make_problem("gru", np.float32, 1, False, 100, 64, 64, 256, seed=0)
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)  # only the Python thread's own cache (libgomp ends pool threads lazily)
        fastrnn.empty_cache()
        worker = threading.Thread(target=lambda: run(fastrnn, p))
        worker.start()
        worker.join()
        # Its cache is freed as the thread ends: thread-local destructors run in pthread_exit,
        # which may come just after join() returns, so wait for it (up to 10 s).
        import time
        deadline = time.monotonic() + 10
        while fastrnn._core.scratch_cache_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fastrnn._core.scratch_cache_bytes() == 0
        fastrnn.set_num_threads(2)  # the OpenMP pool thread keeps a cache of its own
        run(fastrnn, p)
        assert fastrnn._core.scratch_cache_bytes() > 0
        fastrnn.empty_cache()
        assert fastrnn._core.scratch_cache_bytes() == 0
    finally:
        fastrnn.set_num_threads(before)


def test_training_reserve_memory_is_kept_for_the_next_call():
    # A training call's reserve (NumPy API and the torch op alike) lies in memory the scratch cache
    # takes back when the reserve is freed, so the next call of that size runs on the same block
    # instead of freshly mapped pages; what the block held before changes no result.
    torch = pytest.importorskip("torch")
    import fastrnn.ops  # noqa: F401  (registers torch.ops.fastrnn)
    T, B, I, H = 50, 16, 8, 64  # an LSTM reserve of 6 values per unit and row: 1.2 MB, above the cache's 1 MB
    p = make_problem("lstm", np.float32, 1, False, T, B, I, H, seed=3)
    x, w = p["x"], p["weights"]
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(1)
        fastrnn.empty_cache()
        first = fastrnn.forward("lstm", x, w, training=True)
        block, nbytes = first.saved.reserve.ctypes.data, first.saved.reserve.nbytes
        assert nbytes >= 2**20, "the reserve is below the cache's smallest block: the test tests nothing"
        expected = digest(named(first, fastrnn.backward(first.saved, p["dy"])))
        del first
        assert fastrnn._core.scratch_cache_bytes() >= nbytes
        again = fastrnn.forward("lstm", x, w, training=True)
        assert again.saved.reserve.ctypes.data == block, "the freed reserve's block was not reused"
        assert digest(named(again, fastrnn.backward(again.saved, p["dy"]))) == expected
        del again
        tx, tw = torch.from_numpy(x), [torch.from_numpy(a) for a in w[0]]
        y, hn, cn, reserve = torch.ops.fastrnn.rnn_forward(tx, tw, None, None, None, "lstm", H, 1, False, True)
        assert reserve.data_ptr() == block and reserve.shape[:2] == (T, B) and reserve.dtype == torch.float32
        plain = fastrnn.forward("lstm", x, w)
        for got, want in ((y, plain.output), (hn, plain.h_n), (cn, plain.c_n)):
            np.testing.assert_array_equal(got.numpy(), want)
        del reserve
        assert fastrnn._core.scratch_cache_bytes() >= nbytes
        fastrnn.empty_cache()
        assert fastrnn._core.scratch_cache_bytes() == 0
    finally:
        fastrnn.set_num_threads(before)


# ---- 11. determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2])
def test_same_thread_count_is_bitwise_deterministic(threads):
    before = fastrnn.get_num_threads()
    try:
        fastrnn.set_num_threads(threads)
        for cell in CELLS:
            p = make_problem(cell, np.float32, 2, True, 9, 20, 11, 48, ragged=True, seed=5)
            first = digest(named(*run(fastrnn, p)))
            assert digest(named(*run(fastrnn, p))) == first, f"{cell}: two runs on {threads} threads differ"
    finally:
        fastrnn.set_num_threads(before)


# ---- 12. clear errors (the C++ side) -----------------------------------------------------------------
def test_out_of_memory_names_size_and_buffer():
    r = _python("""
        import resource
        import numpy as np
        import fastrnn
        fastrnn.set_num_threads(1)
        T, B, I, H = 400, 64, 1, 1024  # the input projections alone: T*B*4*H*4 bytes = 400 MiB
        w = fastrnn.init_weights("lstm", I, H, seed=0)
        x = np.zeros((T, B, I), np.float32)
        fastrnn.lstm_forward(x[:2], w)  # load everything before the limit
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.RLIM_INFINITY))
        try:
            fastrnn.lstm_forward(x, w)
        except MemoryError as e:
            print("message:", e)
        """)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"allocating {400 * 64 * 4 * 1024 * 4} bytes for the input projections" in r.stdout, r.stdout


# ---- 2. forward-mode AD and torch.func through fastrnn.nn ---------------------------------------------
def _module_pair(mode, **kwargs):
    torch = pytest.importorskip("torch")
    import fastrnn.nn
    torch.manual_seed(0)
    ref = getattr(torch.nn, mode)(4, 6, **kwargs).double()
    fast = getattr(fastrnn.nn, mode)(4, 6, **kwargs).double()
    fast.load_state_dict(ref.state_dict())
    return torch, ref, fast


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("mode, kwargs", [("GRU", dict(num_layers=2, bidirectional=True)), ("LSTM", {}),
                                          ("RNN", dict(nonlinearity="relu")), ("LSTMCell", {}), ("GRUCell", {})])
def test_torch_func_transforms_match_torch_nn(mode, kwargs):
    torch, ref, fast = _module_pair(mode, **kwargs)
    x = torch.randn((3, 2, 4) if "Cell" not in mode else (2, 4), dtype=torch.float64)
    v = torch.randn_like(x)
    results = {}
    for impl, m in (("torch", ref), ("fastrnn", fast)):
        f = lambda x: _first(m(x))
        results[impl] = dict(
            jvp=torch.func.jvp(f, (x,), (v,))[1],
            jacfwd=torch.func.jacfwd(f)(x),
            grad=torch.func.grad(lambda x: f(x).square().sum())(x),
            jacrev=torch.func.jacrev(f)(x))
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(x, v)
            results[impl]["forward_ad"] = torch.autograd.forward_ad.unpack_dual(f(dual)).tangent
    for name, want in results["torch"].items():
        got = results["fastrnn"][name]
        assert want.abs().max() > 0
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-11), f"{name}: max error {(got - want).abs().max()}"


def test_ops_refuse_forward_ad_and_transforms_clearly():
    torch = pytest.importorskip("torch")
    from fastrnn import ops
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    w = [torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)]
    args = (w, None, None, None, "rnn_tanh", 6, 1, False, True)
    for call in (ops.run_forward, torch.ops.fastrnn.rnn_forward):
        with torch.autograd.forward_ad.dual_level():
            with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
                call(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x)), *args)
    for call in (ops.run_forward, torch.ops.fastrnn.rnn_forward):
        with pytest.raises(NotImplementedError, match="torch.func transforms"):
            torch.func.grad(lambda x: call(x, *args)[0].sum())(x)
        with pytest.raises(NotImplementedError, match="torch.func transforms"):
            torch.func.jvp(lambda x: call(x, *args)[0], (x,), (x,))
        with pytest.raises(NotImplementedError, match="torch.func transforms"):
            torch.func.vmap(lambda x: call(x, *args)[0])(x.unsqueeze(0))


# ---- 7. in-place changes between forward and backward -------------------------------------------------
@pytest.mark.parametrize("eager", [True, False])
@pytest.mark.parametrize("what", ["input", "weight"])
def test_in_place_change_before_backward_raises_like_torch(eager, what, monkeypatch):
    """torch's version counters see it (ctx.save_for_backward): the same RuntimeError as torch.nn.
    (torch.nn with batch_first copies the input and does not raise for it; fastrnn.nn raises.)"""
    torch, ref, fast = _module_pair("LSTM")
    from fastrnn import ops
    monkeypatch.setattr(ops, "_EAGER_PATH", eager)
    import fastrnn.nn
    batch_first = fastrnn.nn.LSTM(4, 6, batch_first=True).double()
    for impl, m in (("torch", ref), ("fastrnn", fast), ("fastrnn batch_first", batch_first)):
        x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        xin = x * 1  # a non-leaf, which may be changed in place
        y = m(xin)[0].sum()
        with torch.no_grad():
            (xin if what == "input" else m.weight_hh_l0).add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()


# ---- 9. the torch.nn contract ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_empty_batch_and_meta_like_torch(mode):
    torch, ref, fast = _module_pair(mode)
    cell = "Cell" in mode
    x = torch.randn((0, 4) if cell else (5, 0, 4), dtype=torch.float64, requires_grad=True)
    outs = [m(x) for m in (ref, fast)]
    for a, b in zip(torch.utils._pytree.tree_leaves(outs[0]), torch.utils._pytree.tree_leaves(outs[1])):
        assert a.shape == b.shape and a.dtype == b.dtype
    _first(outs[1]).sum().backward()  # empty gradients, no error
    import fastrnn.nn
    meta = getattr(fastrnn.nn, mode)(4, 6, device="meta")
    want = getattr(torch.nn, mode)(4, 6, device="meta")(torch.empty((2, 4) if cell else (5, 2, 4), device="meta"))
    got = meta(torch.empty((2, 4) if cell else (5, 2, 4), device="meta"))
    for a, b in zip(torch.utils._pytree.tree_leaves(want), torch.utils._pytree.tree_leaves(got)):
        assert b.device.type == "meta" and a.shape == b.shape


def test_exception_types_like_torch():
    torch = pytest.importorskip("torch")
    import fastrnn.nn
    cases = {
        "T = 0": lambda nn: nn.LSTM(4, 3)(torch.randn(0, 2, 4)),
        "GRU hx of another dtype": lambda nn: nn.GRU(4, 3)(torch.randn(5, 2, 4), torch.zeros(1, 2, 3, dtype=torch.float64)),
        "LSTM hx 1-tuple": lambda nn: nn.LSTM(4, 3)(torch.randn(5, 2, 4), (torch.zeros(1, 2, 3),)),
        "num_layers = 0": lambda nn: nn.GRU(4, 3, num_layers=0),
    }
    for what, case in cases.items():
        with pytest.raises(Exception) as want:
            case(torch.nn)
        with pytest.raises(Exception) as got:
            case(fastrnn.nn)
        assert type(got.value) is type(want.value), f"{what}: {got.value!r} vs torch.nn's {want.value!r}"


def test_jit_trace_check_save_load(tmp_path):
    torch = pytest.importorskip("torch")
    import fastrnn.nn
    torch.manual_seed(0)
    model = torch.nn.Sequential(fastrnn.nn.GRU(4, 6, num_layers=2))
    x = torch.randn(5, 3, 4)
    traced = torch.jit.trace(model, x, check_inputs=[(torch.randn(7, 2, 4),)])  # the check must pass
    torch.jit.save(traced, tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    x2 = torch.randn(6, 2, 4, requires_grad=True)
    y_loaded, y_eager = loaded(x2)[0], model(x2)[0]
    assert torch.allclose(y_loaded, y_eager, atol=1e-6)
    (g,) = torch.autograd.grad(y_loaded.sum(), x2)  # the loaded graph trains as well
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x2)
    assert torch.allclose(g, g_eager, atol=1e-6)


# ---- 12. clear errors (the Python side) --------------------------------------------------------------
def test_error_messages():
    with pytest.raises(ValueError, match=r"num_threads must be <= 2147483647 \(OpenMP takes a C int\), got 2147483648"):
        fastrnn.set_num_threads(2**31)
    w = fastrnn.init_weights("gru", 4, 8, seed=0)
    step = fastrnn.PreparedCell("gru", *w[0])
    with pytest.raises(TypeError, match=r"x must have dtype float32 \(the dtype of the prepared weights\), got float64"):
        step(np.zeros((2, 4)))
    x = np.zeros((3, 2, 4), np.float32)
    with pytest.raises(TypeError, match=r"weights\[0\]\[2\] \(b_ih, layer 0, forward\) must be a numpy array of "
                                         r"shape \(24,\), got None"):
        fastrnn.gru_forward(x, [(w[0][0], w[0][1], None, w[0][3])])


def test_error_deleted_parameter_and_zero_layers():
    torch = pytest.importorskip("torch")
    import fastrnn.nn
    from fastrnn import ops
    m = fastrnn.nn.GRU(4, 3)
    del m.weight_hh_l0
    with pytest.raises(AttributeError, match="'GRU' object has no attribute 'weight_hh_l0'"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="num_layers must be greater than zero"):
        ops.run_forward(torch.randn(2, 2, 4), [], None, None, None, "gru", 3, 0, False, False)
