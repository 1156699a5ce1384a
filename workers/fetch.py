"""Fetch and collate one batch: the one piece of code that runs in a worker and in the
main process (``num_workers=0``) alike, so results do not depend on the worker count.

A fetcher turns what the sampler produced (a list of keys with auto-collation, one key
without it, or ``[None] * batch_size`` for an iterable dataset) into a collated batch.
An iterable fetcher raises ``StopIteration`` when its replica is exhausted. After each
call, ``fetch_s`` / ``collate_s`` hold the seconds spent in the dataset and in
``collate_fn``, and ``count`` the number of samples, for ``stats()`` and the autotuner.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Callable

__all__ = ["IterableFetcher", "MapFetcher", "make_fetcher"]


class MapFetcher:
    """Batches of a map-style dataset: ``__getitems__`` when it has one, else per key."""

    __slots__ = ("_dataset", "_auto_collation", "_collate_fn", "_getitems", "fetch_s",
                 "collate_s", "count")

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self._dataset = dataset
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._getitems = getattr(dataset, "__getitems__", None) if auto_collation else None
        self.fetch_s = self.collate_s = 0.0
        self.count = 0

    def fetch(self, index: Any) -> Any:
        t0 = perf_counter()
        if not self._auto_collation:
            data = self._dataset[index]
            self.count = 1
        else:
            if self._getitems:
                data = self._getitems(index)
            else:
                dataset = self._dataset
                data = [dataset[i] for i in index]
            self.count = len(data)  # a batch sampler may yield iterators, without len()
        t1 = perf_counter()
        batch = self._collate_fn(data)
        self.fetch_s, self.collate_s = t1 - t0, perf_counter() - t1
        return batch


class IterableFetcher:
    """Batches from one replica of an iterable dataset; ``iter()`` is called on creation."""

    __slots__ = ("_iterator", "_auto_collation", "_collate_fn", "_drop_last", "_ended",
                 "fetch_s", "collate_s", "count")

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self._iterator = iter(dataset)
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._drop_last = drop_last
        self._ended = False
        self.fetch_s = self.collate_s = 0.0
        self.count = 0

    def fetch(self, index: Any) -> Any:
        if self._ended:
            raise StopIteration
        t0 = perf_counter()
        if not self._auto_collation:
            data = next(self._iterator)
            self.count = 1
        else:
            data = []
            for _ in index:
                try:
                    data.append(next(self._iterator))
                except StopIteration:
                    self._ended = True
                    break
            if not data or (self._drop_last and len(data) < len(index)):
                raise StopIteration
            self.count = len(data)
        t1 = perf_counter()
        batch = self._collate_fn(data)
        self.fetch_s, self.collate_s = t1 - t0, perf_counter() - t1
        return batch


def make_fetcher(iterable: bool, dataset: Any, auto_collation: bool,
                 collate_fn: Callable, drop_last: bool) -> MapFetcher | IterableFetcher:
    cls = IterableFetcher if iterable else MapFetcher
    return cls(dataset, auto_collation, collate_fn, drop_last)
