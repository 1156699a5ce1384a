"""The typed messages between the main process and its workers, and their wire format.

main -> worker k:  Task, Resume, Stop
worker k -> main:  Result, Failure, IterEnd, EmptyBatch; a BatchNote may precede any of them

On the wire a message is the pickled plain tuple ``(kind, *fields)``: one record in the
worker's shared-memory ring (``ipc/channel.py``), or one zmq frame on the spill path
(plain tuples pickle about twice as fast as named tuples). A Result carries its payload
itself: a plain batch's layout, or pickle protocol 5 bytes whose large buffers were left in
a shared slot. Slot releases are no messages: the main process stores them in the
channel (``ipc/channel.py``).
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

__all__ = ["BatchNote", "EmptyBatch", "Failure", "IterEnd", "Result", "Resume", "Stop",
           "Task", "pack", "unpack"]


class Task(NamedTuple):
    """Fetch and collate batch ``batch_id`` of ``epoch`` from these sampler keys."""
    epoch: int
    batch_id: int
    indices: Any


class Resume(NamedTuple):
    """A new epoch on persistent workers: reseed from ``base_seed``, restart iteration;
    ``seed_epoch`` is the loader's epoch (per-batch seeding), ``restore`` where this
    worker's replica starts (loader/state.py), None for the beginning."""
    epoch: int
    base_seed: int
    seed_epoch: int = 0
    restore: Any = None


class Stop(NamedTuple):
    """Exit the worker loop now (the end-of-work marker; never ``None``)."""


class Result(NamedTuple):
    """A collated batch in ``slot`` (-1: none) of ``slot_size`` bytes, published there
    for the ``gen``-th time (its lease stores ``gen`` when the user drops the batch);
    ``payload`` is encoded by ``codec`` (ipc/codec.py) and ``spans`` locate pickle's
    out-of-band buffers. ``timing`` is this worker's running totals since it started,
    (batches, samples, fetch_s, collate_s, encode_s, cpu_s, pid), for stats and the
    autotuner: the main process keeps the latest, so it adds nothing per batch (the pid
    tells a restarted worker's totals from its predecessor's)."""
    epoch: int
    batch_id: int
    worker_id: int
    slot: int
    slot_size: int
    gen: int
    codec: int
    spans: tuple
    timing: tuple
    payload: Any
    state: Any = None  # the replica's resume entry after this batch, when one was taken
    used: int = 0  # bytes of the slot this batch filled (slot_size is what is mapped)


class Failure(NamedTuple):
    """User code raised while producing ``batch_id`` (-1: during worker start-up)."""
    epoch: int
    batch_id: int
    worker_id: int
    exc_type: str
    exception: bytes | None  # the pickled exception type, when it pickles
    text: str
    indices: Any


class IterEnd(NamedTuple):
    """The worker's replica of an IterableDataset is exhausted; ``state`` is what it
    leaves for a persistent worker's next epoch (a Stateful dataset's state)."""
    epoch: int
    batch_id: int
    worker_id: int
    state: Any = None


class BatchNote(NamedTuple):
    """What the main process must know about batch ``batch_id`` besides the batch, sent just
    before its reply: samples left out (``on_error="skip"``: (index, exception type name,
    message) each) and the replica's position after it (``workers/replica.py``; None unless
    restarts are on for a Stateful IterableDataset). It counts only once the reply arrives."""
    epoch: int
    batch_id: int
    worker_id: int
    skipped: tuple
    state: Any = None


class EmptyBatch(NamedTuple):
    """The reply for a batch whose every sample was skipped (``on_error="skip"``)."""
    epoch: int
    batch_id: int
    worker_id: int


_KINDS = (Task, Resume, Stop, Result, Failure, IterEnd, BatchNote, EmptyBatch)
_CODE = {cls: code for code, cls in enumerate(_KINDS)}


def pack(message: Any) -> bytes:
    """One frame for ``message``."""
    return pickle.dumps((_CODE[type(message)], *message), protocol=5)


def unpack(frame: Any) -> Any:
    """The message in ``frame``."""
    fields = pickle.loads(frame)
    return tuple.__new__(_KINDS[fields[0]], fields[1:])
