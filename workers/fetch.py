"""Fetch and collate one batch: the one piece of code that runs in a worker and in the
main process (``num_workers=0``) alike, so results do not depend on the worker count.

A fetcher turns what the sampler produced (a list of keys with auto-collation, one key
without it, or ``[None] * batch_size`` for an iterable dataset) into a collated batch.
An iterable fetcher raises ``StopIteration`` when its replica is exhausted.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["IterableFetcher", "MapFetcher", "make_fetcher"]


class MapFetcher:
    """Batches of a map-style dataset: ``__getitems__`` when it has one, else per key."""

    __slots__ = ("_dataset", "_auto_collation", "_collate_fn", "_getitems")

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self._dataset = dataset
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._getitems = getattr(dataset, "__getitems__", None) if auto_collation else None

    def fetch(self, index: Any) -> Any:
        if not self._auto_collation:
            return self._collate_fn(self._dataset[index])
        if self._getitems:
            data = self._getitems(index)
        else:
            dataset = self._dataset
            data = [dataset[i] for i in index]
        return self._collate_fn(data)


class IterableFetcher:
    """Batches from one replica of an iterable dataset; ``iter()`` is called on creation."""

    __slots__ = ("_iterator", "_auto_collation", "_collate_fn", "_drop_last", "_ended")

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self._iterator = iter(dataset)
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._drop_last = drop_last
        self._ended = False

    def fetch(self, index: Any) -> Any:
        if self._ended:
            raise StopIteration
        if not self._auto_collation:
            return self._collate_fn(next(self._iterator))
        data = []
        for _ in index:
            try:
                data.append(next(self._iterator))
            except StopIteration:
                self._ended = True
                break
        if not data or (self._drop_last and len(data) < len(index)):
            raise StopIteration
        return self._collate_fn(data)


def make_fetcher(iterable: bool, dataset: Any, auto_collation: bool,
                 collate_fn: Callable, drop_last: bool) -> MapFetcher | IterableFetcher:
    cls = IterableFetcher if iterable else MapFetcher
    return cls(dataset, auto_collation, collate_fn, drop_last)
