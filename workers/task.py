"""What every worker engine does with one task, whatever carries it: the per-epoch state
(seeds, ``get_worker_info()``, ``worker_init_fn``, the fetcher), the fetch-and-encode step
and the loader's error contract. A local worker process (``workers/loop.py``) and a Ray
actor (``workers/ray_actor.py``) both run exactly this, so they produce the same batches
from the same seeds and report failures the same way.

```
 engine ──(epoch, batch_id, indices)──▶ EpochState.precheck ──▶ a reply without fetching
                                         │ (stale, start-up failure, replica never started)
                                         ▼
                                        fetch_and_encode(writer) ──▶ (note, reply)
     note: a BatchNote (skipped samples, replica position) or None, sent before the reply
     reply: Encoded(kind, payload, ...) | Failure | IterEnd | EmptyBatch
```

- ``Failure`` carries the pickled exception type, its traceback text and the indices, so
  the main process rebuilds "Caught ValueError in DataLoader worker process 2" with the
  user's own type (``loader/errors.py``).
- A ``StopIteration`` from a map-style dataset is an error, as in torch; from an iterable
  replica it ends that replica (``IterEnd``), after which the worker answers nothing more
  for the epoch.
- ``on_error="skip"``: samples that raise are left out and listed in the note; a batch with
  none left is an ``EmptyBatch``. With restarts on (``track_state``), a Stateful replica's
  position after each batch rides in the note too.
"""

from __future__ import annotations

import os
import pickle
import traceback
from time import perf_counter, thread_time
from typing import Any, NamedTuple

from loader import collate
from loader.ipc import codec
from loader.ipc.messages import BatchNote, EmptyBatch, Failure, IterEnd
from loader.worker_info import WorkerInfo, _set_worker_info
from loader.workers.fetch import BatchSkipped, end_state, load_dataset_state, make_fetcher
from loader.workers.seeding import BatchSeeder, seed_worker

__all__ = ["SKIP", "Encoded", "EpochState", "RunningTotals", "batch_note", "failure",
           "fetch_and_encode"]

SKIP = object()  # precheck's "no reply at all": a stale task, or a replica already ended


class Encoded(NamedTuple):
    """A batch encoded into the writer's current slot, and what it cost."""
    kind: int  # ipc/codec.py: LAYOUT, PICKLE or INBAND
    payload: Any
    spans: tuple
    timing: tuple  # (samples, fetch_s, collate_s, encode_s, cpu_s): RunningTotals.add
    entry: Any = None  # the replica's resume entry after this batch, when one was taken


class RunningTotals:
    """A worker's totals since it started, as every Result carries them (``timing``):
    (batches, samples, fetch_s, collate_s, encode_s, cpu_s, pid). The main process keeps
    the latest per worker instead of adding per batch (loader/stats.py); the pid tells a
    replacement's totals from its predecessor's."""

    __slots__ = ("_sums", "_pid")

    def __init__(self) -> None:
        self._sums = [0, 0, 0.0, 0.0, 0.0, 0.0]
        self._pid = os.getpid()

    def add(self, timing: tuple) -> tuple:
        """Count one batch's ``Encoded.timing`` (samples, fetch_s, collate_s, encode_s,
        cpu_s); the new totals."""
        sums = self._sums
        sums[0] += 1
        sums[1] += timing[0]
        sums[2] += timing[1]
        sums[3] += timing[2]
        sums[4] += timing[3]
        sums[5] += timing[4]
        return (*sums, self._pid)


class EpochState:
    """One worker's state for one epoch: seeds and worker info installed, ``worker_init_fn``
    run (first epoch only), the fetcher made (an iterable replica restored to
    ``replica_state`` when given; per-batch seeding when ``spec.seeding`` says so), and any
    start-up failure kept for the reply to the epoch's first task. ``spec`` needs
    ``worker_id``, ``num_workers``, ``dataset``, ``worker_init_fn``, ``iterable``,
    ``auto_collation``, ``collate_fn``, ``drop_last``, ``on_error``, ``track_state``,
    ``seeding`` and ``snapshot_every``.

    A resume's ``restore`` marked ``epoch_start`` (a persistent worker's dataset as the
    last epoch left it) is loaded before seeding, as that dataset was when its worker was
    reseeded; any other (a position inside the epoch) after ``worker_init_fn``, where it
    was taken."""

    def __init__(self, spec: Any, epoch: int, base_seed: int, run_init: bool,
                 replica_state: dict | None = None, seed_epoch: int = 0,
                 restore: Any = None) -> None:
        self.epoch = epoch
        self.ended = False
        self.fetcher = None
        self.init_error: Failure | None = None
        self.worker_id = spec.worker_id
        self.iterable = spec.iterable
        self.track_state = spec.track_state
        self.dataset = spec.dataset
        if restore is not None and restore.get("epoch_start"):
            try:
                load_dataset_state(spec.dataset, restore.get("entry"), copy_state=False)
            except Exception as exc:
                self.init_error = failure(exc, epoch, -1, spec.worker_id, None)
            restore = None
        seed, rng = seed_worker(base_seed, spec.worker_id)
        _set_worker_info(WorkerInfo(id=spec.worker_id, num_workers=spec.num_workers, seed=seed,
                                    dataset=spec.dataset, rng=rng, epoch=epoch))
        if run_init and spec.worker_init_fn is not None:
            try:
                spec.worker_init_fn(spec.worker_id)
            except Exception as exc:  # reported as the reply to this epoch's first task
                self.init_error = failure(exc, epoch, -1, spec.worker_id, None)
        seeder = BatchSeeder(base_seed, seed_epoch, rng, keep_user_state=False) \
            if spec.seeding == "per_batch" else None
        try:
            self.fetcher = make_fetcher(spec.iterable, spec.dataset, spec.auto_collation,
                                        spec.collate_fn, spec.drop_last, spec.on_error,
                                        replica_state, seeder=seeder,
                                        every=spec.snapshot_every, worker_id=spec.worker_id,
                                        restore=restore)
        except Exception as exc:  # an IterableDataset's __iter__ (or a restore) raised
            self.init_error = self.init_error or failure(exc, epoch, -1, spec.worker_id, None)

    def precheck(self, epoch: int, batch_id: int, indices: Any) -> Any:
        """``None`` when the task should be fetched; otherwise the reply to send instead
        (a Failure or IterEnd), or :data:`SKIP` for none. Every task gets exactly one
        reply unless it is stale or the replica has already ended (the main process then
        expects none)."""
        if epoch != self.epoch or self.ended:
            return SKIP
        if self.init_error is not None:
            reply, self.init_error = self.init_error, None
            return reply._replace(batch_id=batch_id, indices=indices)
        if self.fetcher is None:  # the replica could not start: it has nothing to give
            self.ended = True
            return IterEnd(epoch, batch_id, self.worker_id)
        return None

    def end_state(self) -> Any:
        """The Stateful dataset's state as its ended replica leaves it (None otherwise);
        a persistent worker's next epoch starts from it after a resume."""
        try:
            return end_state(self.dataset)
        except Exception:  # nowhere to report it: such a resumed next epoch starts fresh
            return None


def failure(exc: BaseException, epoch: int, batch_id: int, worker_id: int,
            indices: Any) -> Failure:
    """The Failure message for ``exc`` raised by user code."""
    try:
        exc_type = pickle.dumps(type(exc))
    except Exception:  # a local exception class: the main process raises RuntimeError
        exc_type = None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Failure(epoch, batch_id, worker_id, type(exc).__name__, exc_type, text, indices)


def batch_note(state: EpochState, epoch: int, batch_id: int,
               with_state: bool = True) -> BatchNote | None:
    """The BatchNote for the batch just fetched, or None when there is nothing to say (the
    default path: no skips, no restarts). Raises what the replica's ``state_dict()``
    raises, so that it becomes the batch's Failure."""
    fetcher = state.fetcher
    skipped = fetcher.skipped
    position = fetcher.state() if with_state and state.track_state else None
    if not skipped and position is None:
        return None
    return BatchNote(epoch, batch_id, state.worker_id, tuple(skipped), position)


def _note_or_skips(state: EpochState, epoch: int, batch_id: int,
                   with_state: bool = True) -> BatchNote | None:
    """``batch_note`` for a batch without samples to lose: if the position cannot be
    taken, the skips still go."""
    try:
        return batch_note(state, epoch, batch_id, with_state)
    except Exception:
        return BatchNote(epoch, batch_id, state.worker_id, tuple(state.fetcher.skipped), None)


def fetch_and_encode(state: EpochState, writer: Any, epoch: int, batch_id: int,
                     indices: Any) -> tuple[BatchNote | None, Any]:
    """Fetch and collate ``indices`` with collate's arrays carved from ``writer``'s current
    slot (``writer.begin`` already called), then encode the batch for the main process.
    Returns (note, reply): the reply is an Encoded batch, or a Failure (user code raised),
    an IterEnd (the iterable replica ended) or an EmptyBatch (every sample skipped); the
    note, when not None, must reach the main process before the reply."""
    previous = collate.use_allocator(writer.alloc)
    cpu0 = thread_time()
    try:
        batch = state.fetcher.fetch(indices, batch_id)
        note = batch_note(state, epoch, batch_id)
        t0 = perf_counter()
        kind, payload, spans = codec.encode(batch, writer)
        encode_s = perf_counter() - t0
        del batch
    except StopIteration as exc:
        if not state.iterable:  # a map dataset raised it: an error, as in torch
            return None, failure(exc, epoch, batch_id, state.worker_id, indices)
        state.ended = True
        return (_note_or_skips(state, epoch, batch_id, with_state=False),
                IterEnd(epoch, batch_id, state.worker_id, state.end_state()))
    except BatchSkipped:
        return _note_or_skips(state, epoch, batch_id), EmptyBatch(epoch, batch_id,
                                                                  state.worker_id)
    except Exception as exc:
        return None, failure(exc, epoch, batch_id, state.worker_id, indices)
    finally:
        collate.use_allocator(previous)
    fetcher = state.fetcher
    timing = (fetcher.count, fetcher.fetch_s, fetcher.collate_s, encode_s, thread_time() - cpu0)
    entry = getattr(fetcher, "entry", None)  # a resume entry (TrackedFetcher)
    return note, Encoded(kind, payload, spans, timing, entry)
