"""``get_worker_info()``: who am I, inside a DataLoader worker; torch's answers the same.

The worker loop (``workers/loop.py``) installs a :class:`WorkerInfo` before calling
``worker_init_fn`` and replaces it at every epoch (the seed changes per epoch); in the
main process :func:`get_worker_info` returns ``None``.

Libraries that shard by worker (HF datasets, webdataset, torchdata, litdata, streaming)
ask ``torch.utils.data.get_worker_info()``. So the worker publishes each epoch's identity
there too, as torch's own ``WorkerInfo`` (same id, num_workers, seed and dataset), and
seeds torch with the worker seed as torch's workers do. Where torch is not imported yet,
``loader/_on_import.py`` does both the moment it is, with the identity then current; a
worker nobody imports torch in never pays for it. Inside the workers of torch's own
DataLoader (accelerate runs ours through it), our :func:`get_worker_info` answers torch's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loader._on_import import when_imported

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
_TORCH_WORKER = "torch.utils.data._utils.worker"  # where torch keeps its worker's identity


def get_worker_info() -> WorkerInfo | None:
    """The current worker's :class:`WorkerInfo`, or ``None`` in the main process (in a
    worker of torch's own DataLoader: torch's ``WorkerInfo``)."""
    if _worker_info is not None:
        return _worker_info
    torch_worker = sys.modules.get(_TORCH_WORKER)
    return None if torch_worker is None else torch_worker.get_worker_info()


def _set_worker_info(info: WorkerInfo | None) -> None:
    global _worker_info
    _worker_info = info
    if info is None:
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        _publish_to_torch(torch)  # already seeded with the rest (workers/seeding.py)
    else:
        when_imported("torch", "worker identity", _torch_arrived)


def _torch_arrived(torch: Any) -> None:
    """torch was just imported in this worker: seed it as torch's workers are seeded."""
    if _worker_info is not None:
        torch.manual_seed(_worker_info.seed)
        _publish_to_torch(torch)


def _publish_to_torch(torch: Any) -> None:
    info = _worker_info
    torch_worker = sys.modules.get(_TORCH_WORKER)
    if torch_worker is None:  # torch imports it itself; this covers a partial import
        import importlib
        torch_worker = importlib.import_module(_TORCH_WORKER)
    torch_worker._worker_info = torch_worker.WorkerInfo(
        id=info.id, num_workers=info.num_workers, seed=info.seed, dataset=info.dataset)
