"""The backend seam: the local pool implements the interface the iterator drives."""

from __future__ import annotations

import pytest

from loader import DataLoader
from loader.workers.backend import WorkerBackend, make_backend
from loader.workers.pool import WorkerPool


def test_local_pool_is_a_worker_backend():
    dl = DataLoader(list(range(8)), batch_size=2, num_workers=2)
    it = iter(dl)
    try:
        assert isinstance(it._pool, WorkerPool)
        assert isinstance(it._pool, WorkerBackend)
        assert [b.tolist() for b in it] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    finally:
        it.close()


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="worker_backend should be one of"):
        make_backend("nope")
