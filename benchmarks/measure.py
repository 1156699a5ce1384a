"""What a run measures besides wall time: memory, CPU of other processes, batch sizes.

```
 MemorySampler thread ──every _RSS_INTERVAL_S──▶ RSS of main + workers (cheap: statm)
                      ──every _PSS_INTERVAL_S──▶ PSS/USS (smaps_rollup: a few ms each)
 runs.py ──sample_full() at the end of the timed loop──▶ one more PSS/USS sample
```

- Workers are found as psutil children of this process; multiprocessing's helper
  processes (resource tracker, forkserver) are not workers and are left out.
- The sampler thread burns main-process CPU; it keeps its own CPU time in ``cpu_s`` so
  runs can subtract it from the main-process CPU they report.
- Shutdown: ``stop()`` joins the thread (it waits at most one interval).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import psutil

__all__ = ["MemorySampler", "batch_len", "cpu_seconds", "is_helper", "machine_busy_s",
           "nbytes", "worker_processes"]

_RSS_INTERVAL_S = 0.05  # RSS sampling period: fine enough to catch short peaks, ~0.1% CPU
_PSS_INTERVAL_S = 1.0  # PSS/USS sampling period: reading smaps_rollup of a torch-sized
#                        process costs ~4 ms of kernel time, so at most a few % of a core
_CHILDREN_REFRESH_S = 0.25  # how often the sampler re-lists child processes (~2 ms each)
_HELPER_MARKERS = ("resource_tracker", "forkserver", "semaphore_tracker")  # not workers
_RAY_IDLE = "ray::IDLE"  # the title of a Ray worker process that runs nothing yet
_MB = 1024 * 1024

_helper_cache: dict[tuple[int, float], bool] = {}


def is_helper(proc: psutil.Process) -> bool:
    """Whether ``proc`` is a multiprocessing helper that lives until the interpreter exits,
    or an idle Ray worker process (Ray's own pool; it may later become an actor, so that
    answer is never cached)."""
    try:
        if proc.name().startswith(_RAY_IDLE):
            return True
        key = (proc.pid, proc.create_time())
    except psutil.Error:
        return False
    if key not in _helper_cache:
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            return False
        helper = any(marker in " ".join(cmdline) for marker in _HELPER_MARKERS)
        if not helper and cmdline == _own_cmdline():
            return False  # a fork, or a spawn before its exec: ask again next time
        _helper_cache[key] = helper
    return _helper_cache[key]


def _own_cmdline() -> list[str]:
    try:
        return psutil.Process().cmdline()
    except psutil.Error:
        return []


def worker_processes(exclude: frozenset | set = frozenset()) -> list[psutil.Process]:
    """Live (non-zombie) descendants of this process that are not helpers or ``exclude``."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for proc in children:
        try:
            if proc.pid in exclude or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if not is_helper(proc):
            out.append(proc)
    return out


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds of each process still alive, by pid."""
    out = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used so far (idle, I/O wait and
    hypervisor steal left out); less our own, it shows how busy the neighbours were."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def nbytes(obj: Any) -> int:
    """Payload bytes of a batch: array data, string lengths, 8 per Python number."""
    size = getattr(obj, "nbytes", None)
    if isinstance(size, int):
        return size
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):  # a torch tensor
        return obj.element_size() * obj.numel()
    if isinstance(obj, str):
        return len(obj.encode())
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, (int, float)):
        return 8
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def batch_len(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first leaf."""
    while True:
        if isinstance(batch, Mapping):
            if not batch:
                return 1
            batch = next(iter(batch.values()))
        elif isinstance(batch, (list, tuple)):
            if not batch:
                return 0
            if isinstance(batch[0], (str, bytes, int, float)):
                return len(batch)
            batch = batch[0]
        else:
            shape = getattr(batch, "shape", None)
            return int(shape[0]) if shape else 1


class MemorySampler(threading.Thread):
    """Peak memory of this process and its workers while a run is in progress."""

    def __init__(self) -> None:
        super().__init__(name="bench-memory-sampler", daemon=True)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._me = psutil.Process()
        self._procs: list[psutil.Process] = [self._me]
        self._next_children = 0.0
        self._next_full = 0.0
        self.cpu_s = 0.0  # CPU seconds this thread has used so far
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_uss = 0
        self.max_procs = 1
        self.full_kind = "pss"  # falls back to "uss" or "rss" where the OS lacks PSS

    def run(self) -> None:
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now >= self._next_children:
                self._next_children = now + _CHILDREN_REFRESH_S
                self._procs = [self._me] + worker_processes()
            self._sample_rss()
            if now >= self._next_full:
                self._next_full = now + _PSS_INTERVAL_S
                self._sample_full(self._procs)
            self.cpu_s = time.thread_time()
            self._stop_event.wait(_RSS_INTERVAL_S)
        self.cpu_s = time.thread_time()

    def _sample_rss(self) -> None:
        total = 0
        for proc in self._procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        with self._lock:
            self.peak_rss = max(self.peak_rss, total)
            self.max_procs = max(self.max_procs, len(self._procs))

    def _sample_full(self, procs: list[psutil.Process]) -> None:
        pss = uss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.AccessDenied:
                info = None
            except psutil.Error:
                continue
            rss = proc.memory_info().rss if info is None else info.rss
            p = getattr(info, "pss", None)
            u = getattr(info, "uss", None)
            if p is None:
                self.full_kind = "uss" if u is not None else "rss"
            pss += p if p is not None else (u if u is not None else rss)
            uss += u if u is not None else rss
        with self._lock:
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_uss = max(self.peak_uss, uss)

    def sample_full(self) -> None:
        """Take one PSS/USS sample now, from the calling thread (outside any timed span)."""
        self._sample_full([self._me] + worker_processes())
        self._sample_rss()

    def stop(self) -> dict:
        """Stop sampling; the peaks in MB."""
        self._stop_event.set()
        if self.is_alive():
            self.join()
        return {
            "peak_rss_mb": self.peak_rss / _MB,
            "peak_pss_mb": self.peak_pss / _MB,
            "peak_uss_mb": self.peak_uss / _MB,
            "memory_kind": self.full_kind,
            "max_processes": self.max_procs,
        }
