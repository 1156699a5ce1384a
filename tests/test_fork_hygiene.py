"""What a forked worker inherits and what the parent keeps doing: the heap freeze during
an iterator's first epoch (workers/freeze.py), and no spinning BLAS server thread in a
worker (workers/threads.py)."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import psutil
import pytest

from loader import DataLoader
from loader.workers import freeze

from helpers import Sized

IDLE_S = 0.3  # how long an idle worker is watched after its first batch
START_CPU_S = 0.06  # a worker's CPU from fork to IDLE_S later: ~0.02 s; it was ~0.12 s
#                     while a re-created OpenBLAS server thread spun for 2^28 cycles


class Slow(Sized):
    def __getitem__(self, i):
        time.sleep(0.001)
        return np.full(4, i)


def test_the_parents_heap_is_frozen_for_the_first_epoch_only():
    gc.unfreeze()
    before = [[]]  # exists before iteration: frozen while the first epoch runs
    dl = DataLoader(Slow(16), batch_size=2, num_workers=2, persistent_workers=True)
    it = iter(dl)
    next(it)
    made = [[]]  # made during the epoch: in the collector's sight as ever
    seen = {id(o) for o in gc.get_objects()}  # the permanent generation is not listed
    assert gc.get_freeze_count() > 0 and freeze.holding(it)
    assert id(before) not in seen and id(made) in seen and id(it) in seen
    for _ in it:
        pass
    assert gc.get_freeze_count() == 0 and not freeze.holding(it)
    for _ in dl:  # later epochs of persistent workers do not freeze again
        assert gc.get_freeze_count() == 0
    dl.close()


def test_an_error_out_of_next_releases_the_freeze():
    class Fails(Sized):
        def __getitem__(self, i):
            raise ValueError("nope")

    gc.unfreeze()
    it = iter(DataLoader(Fails(8), batch_size=2, num_workers=2))
    with pytest.raises(ValueError):
        next(it)
    assert gc.get_freeze_count() == 0
    it.close()


def test_a_newer_iterator_takes_the_hold_and_closing_either_releases_it():
    gc.unfreeze()
    first = iter(DataLoader(Slow(8), batch_size=2, num_workers=1))
    second = iter(DataLoader(Slow(8), batch_size=2, num_workers=1))
    assert freeze.holding(second) and not freeze.holding(first)
    first.close()
    assert gc.get_freeze_count() > 0  # not the holder: nothing changes
    second.close()
    assert gc.get_freeze_count() == 0


def _worker_cpu_after_idle(pid: int) -> tuple[float, int]:
    proc = psutil.Process(pid)
    time.sleep(IDLE_S)
    return sum(proc.cpu_times()[:2]), proc.num_threads()


def test_an_idle_worker_burns_no_cpu_and_runs_no_blas_server():
    np.ones((64, 64)) @ np.ones((64, 64))  # the parent's OpenBLAS pool is up
    dl = DataLoader(Slow(4), batch_size=2, num_workers=1, persistent_workers=True)
    it = iter(dl)
    next(it)
    (pid,) = it.worker_pids
    cpu, threads = _worker_cpu_after_idle(pid)
    dl.close()
    assert cpu < START_CPU_S, f"the worker used {cpu:.3f} s of CPU since it started"
    assert threads <= 3  # itself and zmq's two (the spill path); no BLAS server


def test_blas_in_a_worker_still_works_on_one_thread():
    class MatMul(Sized):
        def __getitem__(self, i):
            a = np.full((200, 200), 1.0 + i)
            return (a @ a)[0, 0]

    got = [float(b[0]) for b in DataLoader(MatMul(4), batch_size=1, num_workers=2)]
    assert got == [200.0 * (1 + i) ** 2 for i in range(4)]


def test_workers_wake_close_to_their_timers():
    """Workers set a 1 us timer slack (Linux default: 50 us), so a dataset's sleeps and
    timeouts do not overshoot by the default slack each."""

    class Slack(Sized):
        def __getitem__(self, i):
            with open("/proc/self/timerslack_ns") as f:
                return int(f.read())

    got = [int(x) for b in DataLoader(Slack(4), batch_size=2, num_workers=2) for x in b]
    assert got == [1000] * 4
