"""Pipeline statistics: where the time goes, and what limits throughput.

```
 user loop ──next()──▶ iterator ──receive──▶ workers: fetch │ collate │ encode (timing in
   consumer_s        main_s       wait_s                    each Result)
```

- A :class:`Recorder` belongs to a DataLoader and lives across its iterators, so it has
  the current epoch and the cumulative figures. Iterators feed it a few floats per batch.
- :meth:`Recorder.snapshot` returns :class:`LoaderStats`: batches and samples delivered,
  the main process's time waiting for data, its own overhead, the consumer's time between
  ``next()`` calls, per-worker busy time split into fetch / collate / encode (transfer),
  queue depths, CPU% and RSS per worker, and a one-line ``summary`` of the limiter.
- Self-healing counts (``loader/_healing.py``): worker restarts, stall warnings, and the
  samples ``on_error="skip"`` left out, each as (index, exception type name, message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

__all__ = ["EpochStats", "LoaderStats", "Recorder", "WorkerStats", "run_queue_s"]

_CONSUMER_BOUND = 0.10  # main waits less than this share of a batch's cycle: consumer-bound
_BUSY = 0.80  # workers busier than this share of the time are the limiter
_TOTAL_SKIPPED_KEPT = 10_000  # skipped samples listed in the all-epochs figures (the count
#                               stays exact): a bad dataset would otherwise grow it forever


@dataclass
class WorkerStats:
    """One worker's work in a period: busy = fetch + collate + encode."""

    batches: int = 0
    samples: int = 0
    fetch_s: float = 0.0
    collate_s: float = 0.0
    encode_s: float = 0.0
    cpu_s: float = 0.0
    pid: int | None = None
    cpu_percent: float | None = None  # cpu_s over the period's wall time
    rss: int | None = None  # bytes, read with psutil when the snapshot is taken

    @property
    def busy_s(self) -> float:
        return self.fetch_s + self.collate_s + self.encode_s

    def add(self, samples: int, fetch_s: float, collate_s: float, encode_s: float,
            cpu_s: float) -> None:
        self.batches += 1
        self.samples += samples
        self.fetch_s += fetch_s
        self.collate_s += collate_s
        self.encode_s += encode_s
        self.cpu_s += cpu_s


@dataclass
class EpochStats:
    """A period (one epoch, or everything so far) seen from the main process."""

    batches: int = 0
    samples: int = 0
    elapsed_s: float = 0.0  # from the period's first next() to now
    first_batch_s: float = 0.0  # the first next(): worker start-up, not counted below
    wait_s: float = 0.0  # main process blocked waiting for a worker's batch
    main_s: float = 0.0  # time inside next() not spent waiting (dispatch, decode, convert)
    consumer_s: float = 0.0  # time between next() calls: the training step
    depth_sum: int = 0  # outstanding tasks summed over next() calls, for the mean
    buffered_sum: int = 0  # reorder-buffer entries summed over next() calls
    workers: list[WorkerStats] = field(default_factory=list)
    restarts: int = 0  # dead or stuck workers replaced (worker_restarts)
    stalls: int = 0  # StallWarnings given (stall_warning_s)
    skips: int = 0  # samples left out (on_error="skip")
    skipped: list = field(default_factory=list)  # (index, exception type name, message)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mean_depth(self) -> float:
        return self.depth_sum / self.batches if self.batches else 0.0

    @property
    def mean_buffered(self) -> float:
        return self.buffered_sum / self.batches if self.batches else 0.0

    def worker_busy(self) -> float:
        """Mean share of wall time the workers spent busy (0..1)."""
        if not self.workers or self.elapsed_s <= 0:
            return 0.0
        return sum(w.busy_s for w in self.workers) / (len(self.workers) * self.elapsed_s)

    def limiter(self, num_workers: int) -> tuple[str, str]:
        """(what limits throughput, why), from this period's figures."""
        if self.batches < 2:
            return "nothing yet", "too few batches delivered"
        per = 1e3 / (self.batches - 1)  # the first batch is start-up, counted apart
        wait, main, consumer = self.wait_s * per, self.main_s * per, self.consumer_s * per
        cycle = wait + main + consumer
        if num_workers == 0:
            if consumer > main:
                return "consumer", (f"your loop takes {consumer:.2f} ms per batch, loading "
                                    f"{main:.2f} ms in the main process")
            return "main process", (f"loading takes {main:.2f} ms per batch in the main "
                                    "process (num_workers=0); workers would take it off")
        busy = self.worker_busy()
        if wait < _CONSUMER_BOUND * cycle:
            return "consumer", (f"batches are ready before they are asked for: your loop "
                                f"takes {consumer:.2f} ms per batch, the main process waits "
                                f"{wait:.2f} ms; more workers will not help")
        if busy >= _BUSY:
            return "workers", (f"the main process waits {wait:.2f} ms per batch while the "
                               f"{num_workers} workers are busy {busy:.0%} of the time: more "
                               "workers (if CPU allows) or cheaper samples would help")
        if main > wait:
            return "main process", (f"the main process spends {main:.2f} ms per batch on "
                                    f"its own work and workers are busy only {busy:.0%}")
        return "workers", (f"the main process waits {wait:.2f} ms per batch; workers are busy "
                           f"{busy:.0%} of the time, so they wait on something (I/O, "
                           "sleeps): more workers or a deeper prefetch would help")


@dataclass
class LoaderStats:
    """What ``stats()`` returns."""

    num_workers: int
    epoch: EpochStats
    total: EpochStats
    limiter: str
    reason: str
    autotune: dict[str, Any] | None = None  # what num_workers="auto" chose and why

    @property
    def skipped(self) -> list:
        """This epoch's skipped samples: (index, exception type name, message) each."""
        return self.epoch.skipped

    @property
    def restarts(self) -> int:
        """Workers replaced this epoch."""
        return self.epoch.restarts

    @property
    def stalls(self) -> int:
        """Stall warnings given this epoch."""
        return self.epoch.stalls

    @property
    def summary(self) -> str:
        e = self.epoch
        text = (f"{e.samples_per_s:,.0f} samples/s over {e.batches} batches with "
                f"{self.num_workers} workers; limited by the {self.limiter}: {self.reason}")
        healing = [f"{n} {one if n == 1 else many}" for n, one, many in (
            (e.restarts, "worker restart", "worker restarts"),
            (e.stalls, "stall warning", "stall warnings"),
            (e.skips, "sample skipped", "samples skipped")) if n]
        if healing:
            text += "; this epoch: " + ", ".join(healing)
        return text

    def __str__(self) -> str:
        return self.summary


class Recorder:
    """Collects the figures; every method is cheap enough to call once per batch."""

    def __init__(self) -> None:
        self.epoch = EpochStats()
        self.total = EpochStats()
        self._started: float | None = None
        self._total_started: float | None = None
        self._left_next: float | None = None
        self.pids: list[int | None] = []
        self.autotune: dict[str, Any] | None = None
        self.epochs = 0  # epochs started

    def start_epoch(self, num_workers: int, pids: list) -> None:
        self.epochs += 1
        self.epoch = EpochStats(workers=[WorkerStats() for _ in range(num_workers)])
        while len(self.total.workers) < num_workers:
            self.total.workers.append(WorkerStats())
        self.pids = pids  # the pool's own list: workers started later show up in it
        self._started = None
        self._left_next = None

    def resize(self, num_workers: int, pids: list) -> None:
        """The pool started, grew or shrank (num_workers="auto"): new pids."""
        for period in (self.epoch, self.total):
            while len(period.workers) < num_workers:
                period.workers.append(WorkerStats())
        self.pids = pids

    def entered(self) -> float:
        now = perf_counter()
        if self._started is None:
            self._started = now
            if self._total_started is None:
                self._total_started = now
        elif self._left_next is not None:
            gap = now - self._left_next
            self.epoch.consumer_s += gap
            self.total.consumer_s += gap
        return now

    def left(self, entered: float, waited: float, depth: int, buffered: int) -> None:
        now = perf_counter()
        self._left_next = now
        main = now - entered - waited
        first = self.epoch.batches == 0
        for period in (self.epoch, self.total):
            period.batches += 1
            if first:
                period.first_batch_s += now - entered
                continue
            period.wait_s += waited
            period.main_s += main
            period.depth_sum += depth
            period.buffered_sum += buffered

    def worker_result(self, worker_id: int, timing: tuple) -> None:
        self.epoch.workers[worker_id].add(*timing)
        self.total.workers[worker_id].add(*timing)
        self.epoch.samples += timing[0]
        self.total.samples += timing[0]

    def skip(self, items: list) -> None:
        """Samples left out of their batch: (index, exception type name, message) each."""
        self.epoch.skips += len(items)
        self.total.skips += len(items)
        self.epoch.skipped.extend(items)
        room = _TOTAL_SKIPPED_KEPT - len(self.total.skipped)
        if room > 0:
            self.total.skipped.extend(items[:room])

    def restarted(self) -> None:
        self.epoch.restarts += 1
        self.total.restarts += 1

    def stalled(self) -> None:
        self.epoch.stalls += 1
        self.total.stalls += 1

    def main_fetch(self, samples: int) -> None:
        """num_workers=0: the main process fetched and collated ``samples``."""
        self.epoch.samples += samples
        self.total.samples += samples

    def snapshot(self, num_workers: int) -> LoaderStats:
        now = perf_counter()
        epoch, total = _copy(self.epoch), _copy(self.total)
        if self._started is not None:
            epoch.elapsed_s = now - self._started
            total.elapsed_s = now - self._total_started
        _live(epoch, self.pids)
        _live(total, self.pids)
        limiter, reason = epoch.limiter(num_workers)
        return LoaderStats(num_workers, epoch, total, limiter, reason,
                           dict(self.autotune) if self.autotune else None)


def _copy(period: EpochStats) -> EpochStats:
    workers = [WorkerStats(**vars(w)) for w in period.workers]
    return EpochStats(**{**vars(period), "workers": workers, "skipped": list(period.skipped)})


def _live(period: EpochStats, pids: list) -> None:
    import psutil
    for w, pid in zip(period.workers, pids):
        w.pid = pid
        if period.elapsed_s > 0:
            w.cpu_percent = 100.0 * w.cpu_s / period.elapsed_s
        if pid is None:
            continue
        try:
            w.rss = psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            w.rss = None


def run_queue_s(pids: list) -> float:
    """Seconds these processes spent runnable but waiting for a CPU (Linux schedstat).

    Busy time that is neither CPU nor run-queue wait is real waiting (I/O, sleeps): the
    tuners use this to tell an oversubscribed CPU from workers that wait on storage.
    """
    total = 0
    for pid in pids:
        if pid is None:
            continue
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9
