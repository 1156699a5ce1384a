"""Fetch and collate one batch: the one piece of code that runs in a worker and in the
main process (``num_workers=0``) alike, so results do not depend on the worker count.

A fetcher turns what the sampler produced (a list of keys with auto-collation, one key
without it, or ``[None] * batch_size`` for an iterable dataset) into a collated batch.
An iterable fetcher raises ``StopIteration`` when its replica is exhausted. After each
call, ``fetch_s`` / ``collate_s`` hold the seconds spent in the dataset and in
``collate_fn``, and ``count`` the number of samples, for ``stats()`` and the autotuner.

``on_error="skip"`` picks the skipping fetchers: a sample whose fetch raises is left out
and listed in ``skipped`` as (index, exception type name, message); a batch with no good
sample raises :class:`BatchSkipped`. A ``__getitems__`` that raises is retried one key at
a time (``__getitems__([key])``) to find the bad samples. For an IterableDataset the index
is the sample's position in the replica. ``collate_fn`` errors are never skipped.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Callable

from loader.workers import replica

__all__ = ["BatchSkipped", "IterableFetcher", "MapFetcher", "ON_ERROR", "make_fetcher"]

ON_ERROR = ("raise", "skip")  # the values DataLoader(on_error=...) accepts
_MESSAGE_CHARS = 500  # of a skipped sample's exception message kept for stats().skipped


class BatchSkipped(Exception):
    """Every sample of the batch raised (``on_error="skip"``); ``skipped`` lists them."""

    def __init__(self, skipped: list) -> None:
        super().__init__(f"all {len(skipped)} samples of the batch were skipped")
        self.skipped = skipped


def _skip_entry(index: Any, exc: BaseException) -> tuple:
    return (index, type(exc).__name__, str(exc)[:_MESSAGE_CHARS])


class MapFetcher:
    """Batches of a map-style dataset: ``__getitems__`` when it has one, else per key."""

    __slots__ = ("_dataset", "_auto_collation", "_collate_fn", "_getitems", "fetch_s",
                 "collate_s", "count", "skipped")

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self._dataset = dataset
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._getitems = getattr(dataset, "__getitems__", None) if auto_collation else None
        self.fetch_s = self.collate_s = 0.0
        self.count = 0
        self.skipped: list = []

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


class SkippingMapFetcher(MapFetcher):
    """``on_error="skip"``: samples whose fetch raises are left out of their batch."""

    __slots__ = ()

    def fetch(self, index: Any) -> Any:
        t0 = perf_counter()
        skipped = self.skipped = []
        if not self._auto_collation:
            try:
                data = self._dataset[index]
            except Exception as exc:
                skipped.append(_skip_entry(index, exc))
                raise BatchSkipped(skipped) from None
        else:
            if not hasattr(index, "__len__"):
                index = list(index)  # a batch sampler's iterator: it may be read twice
            if self._getitems:
                try:
                    data = self._getitems(index)
                except Exception:
                    getitems = self._getitems
                    data = self._each(index, lambda key: getitems([key])[0])
            else:
                data = self._each(index, self._dataset.__getitem__)
            if not data:
                raise BatchSkipped(skipped)
        self.count = len(data) if self._auto_collation else 1
        t1 = perf_counter()
        batch = self._collate_fn(data)
        self.fetch_s, self.collate_s = t1 - t0, perf_counter() - t1
        return batch

    def _each(self, index: Any, get: Callable) -> list:
        data = []
        for key in index:
            try:
                data.append(get(key))
            except Exception as exc:
                self.skipped.append(_skip_entry(key, exc))
        return data


class IterableFetcher:
    """Batches from one replica of an iterable dataset; ``iter()`` is called on creation,
    after restoring ``state`` (a replaced worker's position, ``workers/replica.py``)."""

    __slots__ = ("_dataset", "_iterator", "_auto_collation", "_collate_fn", "_drop_last",
                 "_ended", "fetch_s", "collate_s", "count", "skipped", "position")

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool, state: dict | None = None) -> None:
        self._dataset = dataset
        if state is not None:
            replica.restore_dataset(dataset, state)
        self._iterator = iter(dataset)
        if state is not None:
            replica.restore_iterator(self._iterator, state)
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._drop_last = drop_last
        self._ended = False
        self.fetch_s = self.collate_s = 0.0
        self.count = 0
        self.skipped: list = []
        self.position = state["position"] if state is not None else 0  # samples drawn

    def state(self) -> dict | None:
        """Where the replica is now (None: it cannot say); see ``workers/replica.py``."""
        return replica.capture(self._dataset, self._iterator, self.position)

    def fetch(self, index: Any) -> Any:
        if self._ended:
            raise StopIteration
        t0 = perf_counter()
        if not self._auto_collation:
            data = next(self._iterator)
            self.position += 1
            self.count = 1
        else:
            data = []
            for _ in index:
                try:
                    data.append(next(self._iterator))
                except StopIteration:
                    self._ended = True
                    break
            self.position += len(data)
            if not data or (self._drop_last and len(data) < len(index)):
                raise StopIteration
            self.count = len(data)
        t1 = perf_counter()
        batch = self._collate_fn(data)
        self.fetch_s, self.collate_s = t1 - t0, perf_counter() - t1
        return batch


class SkippingIterableFetcher(IterableFetcher):
    """``on_error="skip"``: a sample whose ``next()`` raises is left out (a generator that
    raised has ended, so its replica ends there; an iterator object may go on)."""

    __slots__ = ()

    def fetch(self, index: Any) -> Any:
        if self._ended:
            raise StopIteration
        t0 = perf_counter()
        skipped = self.skipped = []
        data: list = []
        wanted = len(index) if self._auto_collation else 1
        for _ in range(wanted):
            position = self.position
            try:
                sample = next(self._iterator)
            except StopIteration:
                self._ended = True
                break
            except Exception as exc:
                self.position += 1
                skipped.append(_skip_entry(position, exc))
                continue
            self.position += 1
            data.append(sample)
        if self._ended and (not data or (self._drop_last and
                                         len(data) + len(skipped) < wanted)):
            raise StopIteration
        if not data:
            raise BatchSkipped(skipped)
        self.count = len(data)
        t1 = perf_counter()
        batch = self._collate_fn(data if self._auto_collation else data[0])
        self.fetch_s, self.collate_s = t1 - t0, perf_counter() - t1
        return batch


def make_fetcher(iterable: bool, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool, on_error: str = "raise",
                 state: dict | None = None) -> MapFetcher | IterableFetcher:
    """The fetcher for this dataset kind and ``on_error`` mode; ``state`` restores an
    iterable replica's position."""
    skip = on_error == "skip"
    if iterable:
        cls = SkippingIterableFetcher if skip else IterableFetcher
        return cls(dataset, auto_collation, collate_fn, drop_last, state)
    return (SkippingMapFetcher if skip else MapFetcher)(dataset, auto_collation, collate_fn,
                                                        drop_last)
