"""Datasets and callables for the Ray tests. Ray's worker processes import this module by
name (``ray_helpers.with_tests_on_worker_path``), so it stays light: numpy and loader only, no
torch and no pytest, and an actor starts in a fraction of a second."""

from __future__ import annotations

import os
import random
import time

import numpy as np

from loader import IterableDataset, get_worker_info

SHAPE = (3, 64, 64)  # 12 KiB per sample: batches of 9+ go through Ray's object store
_init_marks: dict = {}  # set by mark_init in each worker process


def _worker_fields() -> dict:
    info = get_worker_info()
    if info is None:
        return {"wid": -1, "seed": -1, "epoch": -1, "rng": -1, "np": -1.0, "py": -1.0,
                "init": -1}
    return {"wid": info.id, "seed": info.seed, "epoch": info.epoch,
            "rng": int(info.rng.integers(1 << 30)), "np": float(np.random.random()),
            "py": random.random(), "init": _init_marks.get("id", -2)}


def mark_init(worker_id: int) -> None:
    """A worker_init_fn whose effect the samples show."""
    _init_marks["id"] = worker_id * 100


class Images:
    """``n`` samples: an image whose pixels derive from the index, and the worker's view
    of itself (id, seed, epoch, draws from every RNG it seeded, worker_init_fn's mark)."""

    def __init__(self, n: int, shape: tuple = SHAPE) -> None:
        self.n, self.shape = n, shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        image = (np.arange(np.prod(self.shape), dtype=np.int64).reshape(self.shape) + i) % 251
        return {"image": image.astype(np.uint8), "index": i, **_worker_fields()}


class Plain:
    """``n`` samples with no worker-dependent part: comparable with num_workers=0."""

    def __init__(self, n: int, shape: tuple = SHAPE) -> None:
        self.n, self.shape = n, shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        return np.full(self.shape, i % 256, np.uint8), np.float32(i) / 2, f"s{i}"


class Sharded(IterableDataset):
    """Samples ``range(n)`` split between the workers by ``get_worker_info``."""

    def __init__(self, n: int, shape: tuple = SHAPE) -> None:
        self.n, self.shape = n, shape

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, self.n, step):
            yield np.full(self.shape, i % 256, np.uint8), i, float(np.random.random())


class Replicated(IterableDataset):
    """``range(n)`` in every worker: each replica yields all of it, as in torch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        wid = -1 if info is None else info.id
        for i in range(self.n):
            yield i, wid


class FailAt:
    """Raises ``exc_type(f"bad index {i}")`` for the indices in ``bad``."""

    def __init__(self, n: int, bad: set, exc_type: type = ValueError) -> None:
        self.n, self.bad, self.exc_type = n, set(bad), exc_type

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i in self.bad:
            raise self.exc_type(f"bad index {i}")
        return i


class LocalError(Exception):
    """An exception the main process can import: it comes back as itself."""


class Slow:
    """Every sample at index >= ``from_index`` sleeps ``delay_s`` first."""

    def __init__(self, n: int, delay_s: float, from_index: int = 0) -> None:
        self.n, self.delay_s, self.from_index = n, delay_s, from_index

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i >= self.from_index:
            time.sleep(self.delay_s)
        return i


class Pids:
    """Each sample is the pid of the process that fetched it; the sample at ``gate_at``
    waits (at most ``limit_s``) for the file ``gate`` first, so a test can act on a
    worker while the epoch is running."""

    def __init__(self, n: int, gate: str = "", gate_at: int = -1, limit_s: float = 30.0):
        self.n, self.gate, self.gate_at, self.limit_s = n, gate, gate_at, limit_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        if i == self.gate_at:
            deadline = time.monotonic() + self.limit_s
            while not os.path.exists(self.gate) and time.monotonic() < deadline:
                time.sleep(0.01)
        return i, os.getpid()


class TorchInfo:
    """Each sample asks ``torch.utils.data.get_worker_info()``, importing torch only here
    (as a library that shards by worker would), so the worker meets torch late."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        import torch.utils.data as tud
        info = tud.get_worker_info()
        ours = get_worker_info()
        return (i, info.id, info.num_workers, info.seed, ours.seed,
                info.dataset is ours.dataset)


class ExitAt:
    """The worker that fetches index ``at`` exits at once (``os._exit``)."""

    def __init__(self, n: int, at: int) -> None:
        self.n, self.at = n, at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == self.at:
            os._exit(3)
        return i
