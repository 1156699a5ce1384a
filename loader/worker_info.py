"""``get_worker_info()``: who am I, inside a DataLoader worker.

The worker loop (``workers/loop.py``) installs a :class:`WorkerInfo` before calling
``worker_init_fn`` and replaces it at every epoch (the seed changes per epoch); in the
main process :func:`get_worker_info` returns ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["WorkerInfo", "get_worker_info"]


@dataclass(frozen=True)
class WorkerInfo:
    """Read-only facts about the current worker.

    ``id`` (0 .. num_workers-1), ``num_workers``, ``seed`` (``base_seed + id``; ``random``
    and torch are seeded with it), ``dataset`` (this process's copy), ``rng`` (a
    ``numpy.random.Generator`` private to this worker and epoch) and ``epoch`` (0 for the
    first iteration of a loader, then 1, 2, ... with persistent workers).
    """

    id: int
    num_workers: int
    seed: int
    dataset: Any
    rng: np.random.Generator | None = field(default=None, repr=False)
    epoch: int = 0
    worker_method: str = "multiprocessing"


_worker_info: WorkerInfo | None = None


def get_worker_info() -> WorkerInfo | None:
    """The current worker's :class:`WorkerInfo`, or ``None`` in the main process."""
    return _worker_info


def _set_worker_info(info: WorkerInfo | None) -> None:
    global _worker_info
    _worker_info = info
