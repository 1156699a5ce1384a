"""The floor under issue 12's tiny w=2 / w=0 bound, without our engine: ``python -m
benchmarks.floor``

```
 one process  fetch 256 tiny samples and default-collate them into new arrays, the batch
              before held until then: what num_workers=0 does
 two workers  two forked workers do the same, each collating straight into its own
              shared slots and publishing a counter; they work out their own batch ids,
              so the main process sends nothing, and it takes zero-copy views after a
              sched_yield spin on the counter: no tasks, messages, pickling, doorbells,
              stats or healing
─▶ samples/s of each (interleaved reps, medians and every rep), two / one
```

This is the most any design of Python processes gets here: what the engine adds per
batch (tasks, results, leases, bookkeeping) comes on top of it.
"""

from __future__ import annotations

import argparse
import mmap
import os
import signal
import statistics
import sys
import time
from typing import Callable

import numpy as np

from loader import collate
from loader.collate import collate_arrays

from .workloads import WORKLOADS

_SLOTS = 16  # per worker
_SLOT_BYTES = 8192  # a tiny batch is 3 KiB
_AHEAD = _SLOTS - 2  # batches a worker may publish beyond those the main released
_PUBLISHED, _RELEASED = 0, 8  # counter words per worker, a cache line apart


def _batch(dataset, batch_size: int, b: int):
    return collate_arrays([dataset[i] for i in range(b * batch_size, (b + 1) * batch_size)])


def _carver(buf: np.ndarray) -> Callable[[tuple, np.dtype], np.ndarray]:
    """An allocator for collate that carves its arrays from ``buf``, one after another."""
    used = [0]

    def carve(shape: tuple, dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        out = np.ndarray(shape, dtype, buffer=buf, offset=used[0])
        used[0] += (nbytes + 63) & ~63
        return out
    return carve


def tiny_one(seconds: float) -> float:
    """Samples/s of fetching and default-collating tiny batches here, into new arrays."""
    dataset, bs = WORKLOADS["tiny"].build("ours", 1 << 40), WORKLOADS["tiny"].batch_size
    user = [None]  # the batch the user holds until the next, as a training loop does
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        user[0] = _batch(dataset, bs, n)
        n += 1
    return n * bs / (time.perf_counter() - t0)


def _tiny_worker(k: int, workers: int, counters: np.ndarray, slots: list, dataset,
                 bs: int, parent: int) -> None:
    made = 0
    while True:
        while made - counters[k, _RELEASED] >= _AHEAD:
            if os.getppid() != parent:
                os._exit(0)
            os.sched_yield()
        collate.use_allocator(_carver(slots[made % _SLOTS]))
        _batch(dataset, bs, made * workers + k)
        made += 1
        counters[k, _PUBLISHED] = made


def tiny_two(seconds: float, workers: int = 2) -> float:
    dataset, bs = WORKLOADS["tiny"].build("ours", 1 << 40), WORKLOADS["tiny"].batch_size
    header = workers * 128
    mm = mmap.mmap(-1, header + workers * _SLOTS * _SLOT_BYTES)  # anonymous, shared on fork
    counters = np.frombuffer(mm, np.int64, count=workers * 16).reshape(workers, 16)
    slots = [[np.frombuffer(mm, np.uint8, _SLOT_BYTES, header + (k * _SLOTS + s) * _SLOT_BYTES)
              for s in range(_SLOTS)] for k in range(workers)]
    parent, pids = os.getpid(), []
    try:
        for k in range(workers):
            pid = os.fork()
            if pid == 0:
                try:
                    _tiny_worker(k, workers, counters, slots[k], dataset, bs, parent)
                finally:
                    os._exit(0)
            pids.append(pid)
        got, held, n = [0] * workers, None, 0
        user = [None]  # the batch handed out, kept until the next
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            k = n % workers
            while counters[k, _PUBLISHED] <= got[k]:
                os.sched_yield()
            slot = slots[k][got[k] % _SLOTS]
            user[0] = (slot[:bs * 4].view(np.float32), slot[1024:1024 + bs * 8].view(np.int64))
            got[k] += 1
            if held is not None:
                counters[held[0], _RELEASED] = held[1]  # the batch before goes back
            held, n = (k, got[k]), n + 1
        rate = n * bs / (time.perf_counter() - t0)
        expected = _batch(dataset, bs, n - 1)  # the views are the batches they should be
        if not all((a == b).all() for a, b in zip(user[0], expected)):
            raise AssertionError("the bare path handed out a wrong batch")
        return rate
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def measure(reps: int, seconds: float) -> tuple[list[float], list[float]]:
    one, two = [], []
    for _ in range(reps):  # interleaved: drift hits both alike
        one.append(tiny_one(seconds))
        two.append(tiny_two(seconds))
    return one, two


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args(argv)
    one, two = measure(args.reps, args.seconds)
    a, b = statistics.median(one), statistics.median(two)
    print(f"tiny, one process (num_workers=0's path): {a:,.0f} samples/s "
          f"(reps: {', '.join(f'{x:,.0f}' for x in one)})")
    print(f"tiny, bare two-worker path:                {b:,.0f} samples/s "
          f"(reps: {', '.join(f'{x:,.0f}' for x in two)})")
    print(f"two / one: {b / a:.2f} (issue 12 asks 1.5 of the loader itself)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
