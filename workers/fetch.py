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

Resume duties (``loader/state.py``) wrap a fetcher in a :class:`TrackedFetcher` only when
asked for: per-batch seeding, the replica's entry (``workers/replica.py``'s capture, plus
batches made and the end flag) after every N-th batch, and at creation, restoring a saved
position (the states loaded, then the batches made since they were taken fetched again
and dropped). Without them a fetcher is the plain one.
"""

from __future__ import annotations

import copy
from time import perf_counter
from typing import Any, Callable

from loader.workers import replica

__all__ = ["BatchSkipped", "IterableFetcher", "MapFetcher", "ON_ERROR", "TrackedFetcher",
           "end_state", "load_dataset_state", "make_fetcher"]

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


class SkippingMapFetcher(MapFetcher):
    """``on_error="skip"``: samples whose fetch raises are left out of their batch."""

    __slots__ = ()

    def fetch(self, index: Any, position: int = 0) -> Any:
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

    def fetch(self, index: Any, position: int = 0) -> Any:
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

    def fetch(self, index: Any, position: int = 0) -> Any:
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


class TrackedFetcher:
    """A fetcher with the resume duties around each batch.

    - ``seeder`` (``workers/seeding.py``'s BatchSeeder): reseeds before every batch, keyed
      by the batch's position (map-style) or this replica's batch count (iterable).
    - ``every``: after every ``every``-th batch of this replica (and after its first),
      ``entry`` holds the replica's entry: ``{"at": batches so far, "dataset": ...,
      "iterator": ..., "position": samples drawn, "ended": ...}`` (the states of whichever
      is Stateful); otherwise ``entry`` is None. ``every=0`` takes none.
    - ``first``: batches this replica made before (a restored one goes on counting).
    """

    __slots__ = ("_inner", "_dataset", "_iterable", "_seeder", "_every", "_worker_id",
                 "_stateful", "_capture", "batches", "entry")

    def __init__(self, inner: Any, dataset: Any, iterable: bool, seeder: Any, every: int,
                 worker_id: int, first: int) -> None:
        self._inner, self._dataset, self._iterable = inner, dataset, iterable
        self._seeder, self._every, self._worker_id = seeder, every, worker_id
        self.batches = first
        self.entry = None
        stateful_ds = replica.is_stateful(dataset)
        stateful_it = iterable and inner._iterator is not dataset and \
            replica.is_stateful(inner._iterator)
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

    @property
    def skipped(self) -> list:
        return self._inner.skipped

    @skipped.setter
    def skipped(self, value: list) -> None:
        self._inner.skipped = value

    def fetch(self, index: Any, position: int = 0) -> Any:
        self.entry = None
        seeder = self._seeder
        if seeder is not None:
            seeder.before((1, self._worker_id, self.batches) if self._iterable
                          else (0, position))
        try:
            batch = self._inner.fetch(index)
        except BatchSkipped:
            self.batches += 1  # the replica made it, empty
            raise
        finally:
            if seeder is not None:
                seeder.after()
        self.batches += 1
        if self._capture and (self.batches == 1 or self.batches % self._every == 0):
            self.entry = self.capture()
        return batch

    def capture(self) -> dict | None:
        """This replica's entry now (the states are the user's objects, not copies), or
        None when neither the dataset nor its iterator is Stateful."""
        if not self._stateful:
            return None
        if not self._iterable:
            return {"at": self.batches, "dataset": self._dataset.state_dict()}
        inner = self._inner
        entry = replica.capture(self._dataset, inner._iterator, inner.position)
        entry["at"], entry["ended"] = self.batches, inner._ended
        return entry

    def state(self) -> dict | None:
        """The replica's position for a replacement worker (``worker_restarts``): the
        entry just taken when there is one, so ``state_dict()`` runs once per batch."""
        return self.entry if self.entry is not None else self.capture()

    def discard(self, index: Any, count: int) -> None:
        """Fetch ``count`` batches and drop them (a replay); the replica may end."""
        for _ in range(count):
            try:
                self.fetch(index, 0)
            except BatchSkipped:
                pass
        self.entry = None


def end_state(dataset: Any) -> dict | None:
    """What a replica leaves for the next epoch of a persistent worker: the dataset's own
    state, when it is Stateful."""
    return {"dataset": dataset.state_dict()} if replica.is_stateful(dataset) else None


def load_dataset_state(dataset: Any, entry: dict | None, copy_state: bool) -> None:
    """Load an entry's dataset state, if it has one (a copy where the entry is shared)."""
    if entry is not None and entry.get("dataset") is not None:
        state = entry["dataset"]
        dataset.load_state_dict(copy.deepcopy(state) if copy_state else state)


def make_fetcher(iterable: bool, dataset: Any, auto_collation: bool, collate_fn: Callable,
                 drop_last: bool, on_error: str = "raise", state: dict | None = None, *,
                 seeder: Any = None, every: int = 0, worker_id: int = 0,
                 restore: dict | None = None, track: bool = False,
                 copy_state: bool = False) -> Any:
    """The fetcher for this dataset kind and ``on_error`` mode.

    ``state`` restores an iterable replica's position (a replacement worker). ``restore``
    (a resume, ``loader/state.py``): ``entry`` to start from, loaded as a replacement's
    ``state`` is (dataset state before ``iter(dataset)``, the iterator's after), then
    ``discard`` batches asked with ``index`` fetched again and dropped. ``seeder``,
    ``every``, ``track`` (a TrackedFetcher anyway: the main process takes its entry when
    a state is taken) and ``copy_state`` (copy states before loading them: the main
    process keeps them) as for :class:`TrackedFetcher`.
    """
    skip = on_error == "skip"
    entry = restore.get("entry") if restore else state
    if copy_state and entry is not None:
        entry = copy.deepcopy(entry)
    if iterable:
        cls = SkippingIterableFetcher if skip else IterableFetcher
        if entry is not None and "position" not in entry:
            entry = {**entry, "position": 0}
        inner: Any = cls(dataset, auto_collation, collate_fn, drop_last, entry)
        if entry is not None:
            inner._ended = bool(entry.get("ended"))
    else:
        load_dataset_state(dataset, entry, copy_state=False)
        inner = (SkippingMapFetcher if skip else MapFetcher)(dataset, auto_collation,
                                                            collate_fn, drop_last)
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
