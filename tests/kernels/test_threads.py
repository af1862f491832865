"""Threading behaviour of the CPU kernels: concurrent forward/backward calls from several Python
threads give the results of the same calls run alone (no shared scratch state); the GIL is released
while a kernel runs (another Python thread keeps running, measured as the longest pause it sees
during the call, not as a timing threshold on the kernel); set_num_threads / get_num_threads round
trip and 1 vs 2 threads agree to tolerance; and repeated forward+backward calls do not grow the
process's resident memory once warmed up.
"""
import gc
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastrnn
from helpers import TESTS_DIR, make_problem, named, rss_bytes, run
from tolerances import assert_close


@pytest.fixture
def restore_threads():
    before = fastrnn.get_num_threads()
    yield before
    fastrnn.set_num_threads(before)
    assert fastrnn.get_num_threads() == before


# Different cells, dtypes, shapes, layouts and lengths, so concurrent calls share nothing but the library.
JOBS = [
    dict(cell="lstm", dtype=np.float32, num_layers=2, bidirectional=True, T=12, B=8, I=16, H=32, ragged=True),
    dict(cell="gru", dtype=np.float64, num_layers=1, bidirectional=True, T=20, B=5, I=7, H=24, batch_first=True),
    dict(cell="rnn_tanh", dtype=np.float32, num_layers=3, bidirectional=False, T=9, B=16, I=33, H=40, ragged=True),
    dict(cell="rnn_relu", dtype=np.float64, num_layers=2, bidirectional=True, T=15, B=3, I=5, H=17, bias=False),
    dict(cell="lstm", dtype=np.float64, num_layers=1, bidirectional=False, T=30, B=12, I=64, H=64, ragged=True),
    dict(cell="gru", dtype=np.float32, num_layers=3, bidirectional=True, T=7, B=9, I=20, H=48, ragged=True),
]


def _problem(job, seed):
    job = dict(job)
    return make_problem(job.pop("cell"), job.pop("dtype"), job.pop("num_layers"), job.pop("bidirectional"),
                        job.pop("T"), job.pop("B"), job.pop("I"), job.pop("H"), seed=seed, **job)


def test_concurrent_calls_equal_calls_alone():
    problems = [_problem(job, seed) for seed, job in enumerate(JOBS)]
    alone = [named(*run(fastrnn, p)) for p in problems]
    order = [i % len(problems) for i in range(4 * len(problems))]  # each problem 4 times, interleaved
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: named(*run(fastrnn, problems[i])), order))
    for i, got in zip(order, results):
        for name, value in got.items():
            assert_close(value, alone[i][name], problems[i]["dtype"], f"{name} (job {i}, concurrent)")


def _long_call_problem():
    """A single-layer LSTM forward taking at least ~0.2 s (T doubled until it does)."""
    B, I, H = 32, 256, 256
    w = fastrnn.init_weights("lstm", I, H, seed=0)
    T = 25
    while True:
        x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        t0 = time.perf_counter()
        fastrnn.forward("lstm", x, w)
        if time.perf_counter() - t0 >= 0.2 or T >= 6400:
            return x, w
        T *= 2


def test_gil_is_released_during_kernels(restore_threads):
    fastrnn.set_num_threads(1)  # leave a core for the Python thread
    x, w = _long_call_problem()
    stamps = []  # perf_counter() of each iteration of the Python thread
    done = threading.Event()

    def python_work():
        while not done.is_set():
            stamps.append(time.perf_counter())

    intervals = []  # (what, start, end) of each kernel call

    def kernels():
        t0 = time.perf_counter()
        res = fastrnn.forward("lstm", x, w, training=True)
        intervals.append(("forward", t0, time.perf_counter()))
        dy = np.ones_like(res.output)
        t0 = time.perf_counter()
        fastrnn.backward(res.saved, dy)
        intervals.append(("backward", t0, time.perf_counter()))

    other = threading.Thread(target=python_work)
    other.start()
    try:
        time.sleep(0.01)
        kernels()
    finally:
        done.set()
        other.join()
    assert len(intervals) == 2
    for what, t0, t1 in intervals:
        inside = np.array([s for s in stamps if t0 <= s <= t1] + [t1])
        assert len(inside) > 1, f"the Python thread made no progress during {what} ({t1 - t0:.3f} s)"
        pauses = np.diff(np.concatenate([[t0], inside]))
        # With the GIL held, the Python thread would pause for the whole kernel; released, it only
        # waits on the interpreter's switch interval (5 ms) and the OS scheduler.
        assert pauses.max() < 0.5 * (t1 - t0), (
            f"during {what} ({t1 - t0:.3f} s) the Python thread paused {pauses.max():.3f} s: GIL not released?")


def test_set_get_num_threads_and_results_agree(restore_threads):
    p = make_problem("lstm", np.float32, 2, True, 16, 24, 32, 64, ragged=True, seed=3)
    results = {}
    for n in (1, 2):
        fastrnn.set_num_threads(n)
        assert fastrnn.get_num_threads() == n
        results[n] = named(*run(fastrnn, p))
    for name, value in results[2].items():
        assert_close(value, results[1][name], np.float32, f"{name} (2 threads vs 1)")


def test_no_memory_growth():
    # Each call allocates ~2 MB (reserve, outputs, gradients, scratch), so a leak of any per-call
    # buffer would grow RSS by hundreds of MB over 200 calls; 4 MB allows for allocator noise.
    fastrnn.set_num_threads(1)  # one thread: fast on a shared machine; the leak check is the same
    p = make_problem("lstm", np.float32, 2, True, 20, 16, 32, 64, ragged=True, seed=4)
    q = make_problem("gru", np.float64, 1, True, 10, 8, 16, 32, batch_first=True, seed=5)

    def calls(n):
        for _ in range(n):
            named(*run(fastrnn, p))
            named(*run(fastrnn, q))
            fastrnn.forward("rnn_tanh", p["x"][..., :1], fastrnn.init_weights("rnn_tanh", 1, 8, seed=0))

    calls(30)
    gc.collect()
    before = rss_bytes()
    calls(200)
    gc.collect()
    growth = rss_bytes() - before
    assert growth < 4 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over 200 forward+backward calls"


def test_default_thread_heuristic_matches_reference():
    """Without the tests' FASTRNN_MIN_STEP_FLOPS=0 (conftest.py), small layers run on one thread and
    large ones on several; both must still be right. Runs in a fresh process (read at load)."""
    import subprocess
    script = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from helpers import assert_all_close, make_problem, named, run
import fastrnn
from fastrnn import reference
fastrnn.set_num_threads(2)
# one thread; two; one per direction
for cell, H, B, bidirectional in (("gru", 8, 2, False), ("lstm", 64, 16, False), ("rnn_tanh", 200, 4, True)):
    p = make_problem(cell, np.float32, 1, bidirectional, 6, B, 10, H, ragged=True)
    assert_all_close(named(*run(fastrnn, p)), named(*run(reference, p)), np.float32)
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_MIN_STEP_FLOPS"}
    r = subprocess.run([sys.executable, "-c", script, TESTS_DIR], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_openmp_settings_are_left_as_found():
    """Both directions run side by side, each with its own team when there are threads for it;
    the nested parallelism that needs is switched on for that region only. Left on, it is shared
    with every other OpenMP user in the process (torch.nn.GRU ran 8x slower after fastrnn). A
    fresh process, so that what importing fastrnn does is seen too."""
    import subprocess
    script = r"""
import ctypes, sys
import numpy as np
gomp = ctypes.CDLL("libgomp.so.1")
before = gomp.omp_get_max_active_levels()
sys.path.insert(0, sys.argv[1])
import fastrnn
from fastrnn import reference
from helpers import assert_all_close, make_problem, named, run
assert gomp.omp_get_max_active_levels() == before, "changed by import"
p = make_problem("gru", np.float32, 2, True, 5, 4, 6, 40, ragged=True)
for threads in (2, 4):  # one thread per direction; two per direction (nested teams)
    fastrnn.set_num_threads(threads)
    assert_all_close(named(*run(fastrnn, p)), named(*run(reference, p)), np.float32)
    assert gomp.omp_get_max_active_levels() == before, f"changed by a call on {threads} threads"
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", script, TESTS_DIR],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
