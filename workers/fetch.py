"""Fetch and collate one batch: the one piece of code that runs in a worker and in the
main process (``num_workers=0``) alike, so results do not depend on the worker count.

A fetcher turns what the sampler produced (a list of keys with auto-collation, one key
without it, or ``[None] * batch_size`` for an iterable dataset) into a collated batch.
An iterable fetcher raises ``StopIteration`` when its replica is exhausted. After each
call, ``fetch_s`` / ``collate_s`` hold the seconds spent in the dataset and in
``collate_fn``, and ``count`` the number of samples, for ``stats()`` and the autotuner.

Resume duties (``loader/state.py``) wrap a fetcher in a :class:`TrackedFetcher` only when
asked for: per-batch seeding, the dataset's (or its iterator's) ``state_dict()`` after
every N-th batch, and at creation, restoring a saved position (load the states, then
fetch and drop the batches made since they were taken). Without them a fetcher is the
plain one, and ``state`` is always None.
"""

from __future__ import annotations

import copy
from time import perf_counter
from typing import Any, Callable

__all__ = ["IterableFetcher", "MapFetcher", "TrackedFetcher", "end_state",
           "is_stateful", "make_fetcher"]


def is_stateful(obj: Any) -> bool:
    """Duck-typed ``loader.Stateful``: has both ``state_dict`` and ``load_state_dict``."""
    return callable(getattr(obj, "state_dict", None)) and \
        callable(getattr(obj, "load_state_dict", None))


class MapFetcher:
    """Batches of a map-style dataset: ``__getitems__`` when it has one, else per key."""

    __slots__ = ("_dataset", "_auto_collation", "_collate_fn", "_getitems", "fetch_s",
                 "collate_s", "count")
    state = None  # a plain fetcher never has a dataset state to report

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self._dataset = dataset
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._getitems = getattr(dataset, "__getitems__", None) if auto_collation else None
        self.fetch_s = self.collate_s = 0.0
        self.count = 0

    def fetch(self, index: Any, position: int = 0) -> Any:
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
    state = None

    def __init__(self, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool) -> None:
        self._iterator = iter(dataset)
        self._auto_collation = auto_collation
        self._collate_fn = collate_fn
        self._drop_last = drop_last
        self._ended = False
        self.fetch_s = self.collate_s = 0.0
        self.count = 0

    def fetch(self, index: Any, position: int = 0) -> Any:
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


class TrackedFetcher:
    """A fetcher with the resume duties around each batch.

    - ``seeder`` (``workers/seeding.py``'s BatchSeeder): reseeds before every batch.
    - ``every``: after every ``every``-th batch of this replica (and after its first),
      ``state`` holds the replica's entry: ``{"at": batches so far, "dataset": ...,
      "iterator": ..., "ended": ...}`` (the states of whichever is Stateful); otherwise
      ``state`` is None. ``every=0`` takes none.
    - ``restore``: a saved entry to start from and ``discard``, how many batches were
      made after it was taken (fetched again and dropped, so the replica stands exactly
      where it stood), with ``index``, what one batch of the replica is asked with.
    """

    __slots__ = ("_inner", "_dataset", "_iterable", "_seeder", "_every", "_worker_id",
                 "_stateful", "_capture", "batches", "state")

    def __init__(self, inner: Any, dataset: Any, iterable: bool, seeder: Any, every: int,
                 worker_id: int, first: int) -> None:
        self._inner, self._dataset, self._iterable = inner, dataset, iterable
        self._seeder, self._every, self._worker_id = seeder, every, worker_id
        self.batches = first  # batches this replica has made this epoch (its key)
        self.state = None
        stateful_ds = is_stateful(dataset)
        stateful_it = iterable and inner._iterator is not dataset and \
            is_stateful(inner._iterator)
        self._stateful = stateful_ds or stateful_it
        self._capture = every > 0 and self._stateful

    @property
    def fetch_s(self) -> float:
        return self._inner.fetch_s

    @property
    def collate_s(self) -> float:
        return self._inner.collate_s

    @property
    def count(self) -> int:
        return self._inner.count

    def fetch(self, index: Any, position: int = 0) -> Any:
        self.state = None
        seeder = self._seeder
        if seeder is not None:
            seeder.before((1, self._worker_id, self.batches) if self._iterable
                          else (0, position))
            try:
                batch = self._inner.fetch(index)
            finally:
                seeder.after()
        else:
            batch = self._inner.fetch(index)
        self.batches += 1
        if self._capture and (self.batches == 1 or self.batches % self._every == 0):
            self.state = self.capture()
        return batch

    def capture(self) -> dict | None:
        """This replica's entry now (the states are the user's objects, not copies), or
        None when neither the dataset nor its iterator is Stateful."""
        if not self._stateful:
            return None
        inner, dataset = self._inner, self._dataset
        if not self._iterable:
            return {"at": self.batches, "dataset": dataset.state_dict()}
        iterator = inner._iterator
        own = iterator is dataset
        return {"at": self.batches,
                "dataset": dataset.state_dict() if not own and is_stateful(dataset) else None,
                "iterator": iterator.state_dict() if is_stateful(iterator) else None,
                "ended": inner._ended}

    def discard(self, index: Any, count: int) -> None:
        """Fetch ``count`` batches and drop them (a replay); the replica may end."""
        for _ in range(count):
            self.fetch(index, 0)
        self.state = None


def end_state(dataset: Any) -> dict | None:
    """What a replica leaves for the next epoch of a persistent worker: the dataset's own
    state, when it is Stateful."""
    return {"dataset": dataset.state_dict()} if is_stateful(dataset) else None


def load_dataset_state(dataset: Any, entry: dict | None, copy_state: bool) -> None:
    """Load an entry's dataset state, if it has one (a copy where the entry is shared)."""
    if entry is not None and entry.get("dataset") is not None:
        state = entry["dataset"]
        dataset.load_state_dict(copy.deepcopy(state) if copy_state else state)


def make_fetcher(iterable: bool, dataset: Any, auto_collation: bool,
                 collate_fn: Callable, drop_last: bool, *, seeder: Any = None,
                 every: int = 0, worker_id: int = 0, restore: dict | None = None,
                 track: bool = False, copy_state: bool = False) -> Any:
    """The fetcher of one replica; tracked when seeding, capture or a restore asks for it.

    ``restore`` (see :class:`TrackedFetcher`): the dataset state is loaded before
    ``iter(dataset)``, the iterator's after it, then the replay. ``track`` asks for a
    TrackedFetcher anyway (the main process takes its entry when a state is taken).
    ``copy_state`` copies the states before loading them (the main process keeps them
    in its resume plan).
    """
    entry = restore.get("entry") if restore else None
    if not iterable:
        load_dataset_state(dataset, entry, copy_state)
        inner: Any = MapFetcher(dataset, auto_collation, collate_fn, drop_last)
    else:
        load_dataset_state(dataset, entry, copy_state)
        inner = IterableFetcher(dataset, auto_collation, collate_fn, drop_last)
        if entry is not None:
            if entry.get("iterator") is not None:
                state = entry["iterator"]
                inner._iterator.load_state_dict(copy.deepcopy(state) if copy_state else state)
            inner._ended = bool(entry.get("ended"))
    if seeder is None and not every and not restore and not track:
        return inner
    first = entry.get("at", 0) if entry is not None else 0
    tracked = TrackedFetcher(inner, dataset, iterable, seeder, every, worker_id, first)
    if restore and restore.get("discard"):
        try:
            tracked.discard(restore.get("index"), restore["discard"])
        except StopIteration:
            inner._ended = True  # the replica ended during the replay: it ends again
    return tracked
