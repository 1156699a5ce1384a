"""Faults: one table of crash cases, plus the main process dying, abandoned iterators,
timeouts and shared-memory shortages.

Every case runs in a child interpreter under a hard time limit, so a hang fails the test
instead of freezing the suite, and the child's worker pids are checked to be gone after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from helpers import shm_held_by_others

CHILD_LIMIT_S = 60  # a child interpreter that runs longer than this has hung
GONE_WITHIN_S = 5.0  # how soon a worker must be gone after its main process is

PRELUDE = textwrap.dedent("""
    import ctypes, json, os, signal, sys, threading, time
    import numpy as np
    from loader import DataLoader, IterableDataset, get_worker_info

    def report(**fields):
        print("REPORT " + json.dumps(fields), flush=True)

    def fault(how):
        if how == "raise":
            raise ValueError("boom from user code")
        if how == "segfault":
            ctypes.string_at(0)
        if how == "exit":
            os._exit(3)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "sigbus":
            os.kill(os.getpid(), signal.SIGBUS)
""")


def run_child(body: str, *, limit: float = CHILD_LIMIT_S, env: dict | None = None,
              start_new_session: bool = False) -> tuple[subprocess.CompletedProcess, list]:
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=limit, env={**os.environ, **(env or {})},
                          start_new_session=start_new_session)
    reports = [json.loads(line[len("REPORT "):]) for line in proc.stdout.splitlines()
               if line.startswith("REPORT ")]
    return proc, reports


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + GONE_WITHIN_S
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    assert not alive, f"worker processes survived: {alive}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------- the table

WHERE = {
    # where the fault happens -> (dataset/loader set-up code, the loader expression)
    "getitem": ("""
        class DS:
            def __len__(self): return 16
            def __getitem__(self, i):
                if i == 5: fault(HOW)
                return np.full(4, i)
        """, "DataLoader(DS(), batch_size=2, num_workers=2)"),
    "getitems": ("""
        class DS:
            def __len__(self): return 16
            def __getitem__(self, i): return i
            def __getitems__(self, idx):
                if 5 in idx: fault(HOW)
                return list(idx)
        """, "DataLoader(DS(), batch_size=2, num_workers=2)"),
    "iter": ("""
        class DS(IterableDataset):
            def __iter__(self):
                if get_worker_info().id == 1: fault(HOW)
                return iter(range(8))
        """, "DataLoader(DS(), batch_size=2, num_workers=2)"),
    "collate": ("""
        def collate(batch):
            if 5 in batch: fault(HOW)
            return np.array(batch)
        class DS:
            def __len__(self): return 16
            def __getitem__(self, i): return i
        """, "DataLoader(DS(), batch_size=2, num_workers=2, collate_fn=collate)"),
    "worker_init_fn": ("""
        def init(worker_id):
            if worker_id == 1: fault(HOW)
        class DS:
            def __len__(self): return 16
            def __getitem__(self, i): return i
        """, "DataLoader(DS(), batch_size=2, num_workers=2, worker_init_fn=init)"),
}

HOW = {
    # how -> (exception type name, message regex)
    "raise": ("ValueError", r"Caught ValueError in DataLoader worker process \d"),
    "segfault": ("WorkerError",
                 r"DataLoader worker \(pid \d+\) is killed by signal: Segmentation fault"),
    "exit": ("WorkerError",
             r"DataLoader worker \(pid \d+\) exited unexpectedly with exit code 3"),
    "sigkill": ("WorkerError", r"is killed by signal: Killed.*out-of-memory"),
    "sigbus": ("WorkerError", r"is killed by signal: Bus error.*shared memory"),
}

CASES = [(w, h) for w in WHERE for h in HOW]

@pytest.mark.parametrize("where,how", CASES, ids=[f"{w}-{h}" for w, h in CASES])
def test_crash_table(where, how):
    setup, make = WHERE[where]
    body = textwrap.dedent(setup).replace("HOW", repr(how)) + f"""
loader = {make}
it = iter(loader)
pids = list(it.worker_pids)
errors, batches = [], 0
t0 = time.monotonic()
while True:
    try:
        next(it)
        batches += 1
    except StopIteration:
        break
    except Exception as exc:
        errors.append((type(exc).__name__, str(exc), round(time.monotonic() - t0, 3)))
        if type(exc).__name__ == "WorkerError":
            break
report(pids=pids, errors=errors, batches=batches)
"""
    proc, reports = run_child(body)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = reports
    assert result["errors"], f"no error surfaced; stderr: {proc.stderr[-2000:]}"
    exc_type, pattern = HOW[how]
    name, message, elapsed = result["errors"][0]
    assert name == exc_type, message
    import re
    assert re.search(pattern, message, re.S), message
    if how == "raise":
        assert "boom from user code" in message  # the worker's traceback travels along
        if where in ("getitem", "getitems", "collate"):
            assert "While fetching indices [4, 5]" in message
            assert len(result["errors"]) == 1 and result["batches"] == 7  # iteration goes on
    else:
        assert "worker" in message and str(result["pids"][0])[:1]  # names the worker
    assert elapsed < 3.0, f"took {elapsed}s to surface"
    print(f"\nfault {where}/{how}: {name} after {elapsed:.3f} s")  # shown with -s
    assert_gone(result["pids"])


def test_unpicklable_result_is_an_error_not_a_hang():
    proc, reports = run_child("""
class DS:
    def __len__(self): return 4
    def __getitem__(self, i): return threading.Lock()
it = iter(DataLoader(DS(), batch_size=2, num_workers=1, collate_fn=lambda b: b))
pids = list(it.worker_pids)
try:
    next(it)
    report(pids=pids, error=None)
except TypeError as exc:
    report(pids=pids, error=str(exc))
""")
    (result,) = reports
    assert result["error"] and "cannot pickle '_thread.lock' object" in result["error"]
    assert "could not send its batch to the main process" in result["error"]
    assert_gone(result["pids"])


# ---------------------------------------------------------------------------- main dies

HOLD = """
class DS:
    def __len__(self): return 10**6
    def __getitem__(self, i):
        time.sleep(0.01)
        return np.zeros(1000)
loader = DataLoader(DS(), batch_size=4, num_workers=2, persistent_workers=True)
it = iter(loader)
next(it)
report(pids=list(it.worker_pids))
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_main_killed_takes_workers_with_it(sig):
    shm_before = set(os.listdir("/dev/shm"))
    code = PRELUDE + textwrap.dedent(HOLD) + "\ntime.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        pids = json.loads(line[len("REPORT "):])["pids"]
        assert all(_alive(p) for p in pids)
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert_gone(pids)
    new = set(os.listdir("/dev/shm")) - shm_before
    assert not new - shm_held_by_others(new, {os.getpid()})


def test_ctrl_c_exits_cleanly_without_worker_tracebacks():
    code = PRELUDE + textwrap.dedent(HOLD) + "\nfor _ in it: pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        pids = json.loads(line[len("REPORT "):])["pids"]
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    assert stderr.count("Traceback") == 1, stderr  # the main process's, and only that
    assert "KeyboardInterrupt" in stderr
    assert_gone(pids)


def test_exception_unwinding_the_loop_exits_promptly():
    """torch's test_large_sampler_indices: raise while holding the iterator."""
    t0 = time.monotonic()
    proc, reports = run_child("""
class DS:
    def __len__(self): return 10**7
    def __getitem__(self, i): return 0
loader = DataLoader(DS(), batch_size=40960, num_workers=2)
it = iter(loader)
report(pids=list(it.worker_pids))
for batch in it:
    raise RuntimeError("My Error")
""", limit=60)
    assert proc.returncode == 1 and "RuntimeError: My Error" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert_gone(reports[0]["pids"])


# ---------------------------------------------------------------------------- abandoning


def _resources() -> tuple[int, int, int]:
    me = psutil.Process()
    return len(os.listdir("/proc/self/fd")), me.num_threads(), len(me.children(recursive=True))


def test_hundred_abandoned_iterators_leave_nothing():
    import gc

    import numpy as np

    from loader import DataLoader

    class DS:
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return np.full(20000, i, dtype=np.float64)  # 160 kB: batches use slots

    gc.collect()
    before = _resources()
    shm_before = set(os.listdir("/dev/shm"))
    persistent = DataLoader(DS(), batch_size=4, num_workers=1, persistent_workers=True)
    for round_ in range(25):
        for batch in DataLoader(DS(), batch_size=4, num_workers=2):  # break
            break
        it = iter(DataLoader(DS(), batch_size=4, num_workers=1))  # del
        next(it)
        del it
        it = iter(DataLoader(DS(), batch_size=4, num_workers=1))  # a reference cycle
        holder = {"it": it}
        holder["self"] = holder
        next(it)
        del it, holder
        it = iter(persistent)  # a new iter() mid-epoch on persistent workers
        next(it)
        next(it)
    persistent.close()
    del persistent, it, batch
    gc.collect()
    deadline = time.monotonic() + 10
    def settled():
        return all(now <= then for now, then in zip(_resources(), before))
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.1)
        gc.collect()
    assert settled(), (before, _resources())
    new = set(os.listdir("/dev/shm")) - shm_before
    assert not new - shm_held_by_others(new, {os.getpid()})


def test_new_iter_mid_epoch_on_persistent_workers_gives_a_full_epoch():
    import numpy as np

    from loader import DataLoader
    ds = np.arange(40)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    it = iter(loader)
    next(it)
    next(it)
    assert np.concatenate(list(iter(loader))).tolist() == list(range(40))
    loader.close()


# ---------------------------------------------------------------------------- timeout


def test_timeout_names_the_stuck_worker_and_its_stack():
    proc, reports = run_child("""
class DS:
    def __len__(self): return 8
    def __getitem__(self, i):
        if i == 4:
            time.sleep(60)
        return i
it = iter(DataLoader(DS(), batch_size=2, num_workers=2, timeout=1))
pids = list(it.worker_pids)
next(it); next(it)
t0 = time.monotonic()
try:
    next(it)
    report(pids=pids, error=None)
except RuntimeError as exc:
    report(pids=pids, error=str(exc), elapsed=time.monotonic() - t0)
""")
    (result,) = reports
    error = result["error"]
    assert error.startswith("DataLoader timed out after 1 seconds")
    assert "indices [4, 5]" in error and "from worker 0" in error
    assert "time.sleep" in error or "__getitem__" in error  # the worker's stack
    assert result["elapsed"] < 4
    assert_gone(result["pids"])


# ---------------------------------------------------------------------------- memory


def test_shared_memory_shortage_is_reported_before_workers_start():
    proc, reports = run_child("""
import loader.ipc.capacity, psutil
loader.ipc.capacity.available_bytes = lambda: 4096
before = len(psutil.Process().children())
try:
    iter(DataLoader(np.zeros((8, 4)), batch_size=4, num_workers=2))
    report(error=None)
except MemoryError as exc:
    report(error=str(exc), started=len(psutil.Process().children()) - before)
""")
    (result,) = reports
    assert "only 4096 bytes are available" in result["error"]
    assert "/dev/shm's size does not matter" in result["error"]
    assert result["started"] == 0


def test_a_batch_too_big_for_memory_is_a_clear_error():
    proc, reports = run_child("""
import loader.ipc.capacity
loader.ipc.capacity.available_bytes = lambda: 16 << 20  # enough to start, not for 32 MiB batches
class DS:
    def __len__(self): return 8
    def __getitem__(self, i): return np.zeros(8 << 20, np.uint8)
it = iter(DataLoader(DS(), batch_size=4, num_workers=1))
pids = list(it.worker_pids)
try:
    next(it)
    report(pids=pids, error=None)
except MemoryError as exc:
    report(pids=pids, error=str(exc), type=type(exc).__name__)
""")
    (result,) = reports
    assert result["error"], proc.stderr[-2000:]
    assert "needs 33554432 bytes of shared memory for a batch" in result["error"]
    assert f"only {16 << 20} bytes are available" in result["error"]
    assert_gone(result["pids"])


def test_a_tiny_dev_shm_does_not_matter():
    """Docker's 64 MB /dev/shm: slots are memfds, so even a 64 kB /dev/shm is fine."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs root and mount namespaces")
    code = PRELUDE + textwrap.dedent("""
class DS:
    def __len__(self): return 32
    def __getitem__(self, i): return np.full((1024, 1024), i, np.uint8)  # 1 MiB samples
total = 0
for batch in DataLoader(DS(), batch_size=8, num_workers=2):
    total += int(batch[:, 0, 0].sum())
report(total=total)
""")
    script = f"mount -t tmpfs -o size=64k tmpfs /dev/shm && exec {sys.executable} -c \"$0\""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, code], capture_output=True,
                          text=True, timeout=CHILD_LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"total": 496' in proc.stdout


# ---------------------------------------------------------------------------- threads


def test_blas_threads_capped_in_workers_and_overridable():
    body = """
from loader.workers.threads import blas_threads
class DS:
    def __len__(self): return 2
    def __getitem__(self, i): return blas_threads() or 0
out = [int(x) for b in DataLoader(DS(), batch_size=1, num_workers=2) for x in b]
report(main=blas_threads(), workers=out)
"""
    _, (capped,) = run_child(body)
    assert capped["workers"] == [1, 1]
    env = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    _, (chosen,) = run_child(body, env=env)
    assert chosen["workers"] == [2, 2]  # the user's setting wins


# ---------------------------------------------------------------------------- soak


@pytest.mark.slow
def test_soak_fifty_epochs_memory_and_fds_flat():
    """50 epochs of 32 batches of 9.6 MB: RSS of the main process and of each worker, and
    the main's descriptors, must not grow after warm-up (run with -m slow -s)."""
    import numpy as np

    from loader import DataLoader

    class DS:
        def __init__(self):
            self.images = np.random.default_rng(0).integers(0, 255, (64, 3, 224, 224),
                                                             dtype=np.uint8)

        def __len__(self):
            return 2048

        def __getitem__(self, i):
            return self.images[i % 64], i

    loader = DataLoader(DS(), batch_size=64, num_workers=2, persistent_workers=True)
    me = psutil.Process()
    samples = {}
    for epoch in range(50):
        for x, y in loader:
            assert x.shape == (64, 3, 224, 224) and int(y[-1]) - int(y[0]) == 63
        if epoch in (4, 49):
            workers = [psutil.Process(p) for p in loader._iterator.worker_pids]
            samples[epoch] = (me.memory_info().rss, [w.memory_info().rss for w in workers],
                              len(os.listdir("/proc/self/fd")))
    loader.close()
    (main5, workers5, fds5), (main50, workers50, fds50) = samples[4], samples[49]
    print(f"\nsoak: main RSS {main5 / 2**20:.0f} -> {main50 / 2**20:.0f} MiB, workers "
          f"{[round(w / 2**20) for w in workers5]} -> {[round(w / 2**20) for w in workers50]} "
          f"MiB, fds {fds5} -> {fds50}")
    assert fds50 == fds5
    assert main50 < main5 + (16 << 20)
    for before, after in zip(workers5, workers50):
        assert after < before + (16 << 20)
