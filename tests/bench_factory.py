"""A small user dataset factory for ``python -m benchmarks --dataset bench_factory:factory``
(used by tests/test_benchmarks.py with ``tests/`` on PYTHONPATH)."""

from __future__ import annotations

import numpy as np

_LENGTH = 4096  # samples: enough batches for a --quick run at batch size 64


class SmallDataset:
    """Map-style: a 16x16 float32 array and an int label per sample."""

    def __init__(self) -> None:
        rng = np.random.default_rng(7)
        self.data = rng.standard_normal((_LENGTH, 16, 16)).astype(np.float32)

    def __len__(self) -> int:
        return _LENGTH

    def __getitem__(self, i: int) -> tuple:
        return self.data[i], i % 10


def factory() -> SmallDataset:
    return SmallDataset()
