"""The typed messages between the main process and its workers, and their wire format.

main -> worker k:  Task, Resume, Stop
worker k -> main:  Result, Failure, IterEnd

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

__all__ = ["Failure", "IterEnd", "Result", "Resume", "Stop", "Task", "pack", "unpack"]


class Task(NamedTuple):
    """Fetch and collate batch ``batch_id`` of ``epoch`` from these sampler keys."""
    epoch: int
    batch_id: int
    indices: Any


class Resume(NamedTuple):
    """A new epoch on persistent workers: reseed from ``base_seed``, restart iteration."""
    epoch: int
    base_seed: int


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
    """The worker's replica of an IterableDataset is exhausted."""
    epoch: int
    batch_id: int
    worker_id: int


_KINDS = (Task, Resume, Stop, Result, Failure, IterEnd)
_CODE = {cls: code for code, cls in enumerate(_KINDS)}


def pack(message: Any) -> bytes:
    """One frame for ``message``."""
    return pickle.dumps((_CODE[type(message)], *message), protocol=5)


def unpack(frame: Any) -> Any:
    """The message in ``frame``."""
    fields = pickle.loads(frame)
    return tuple.__new__(_KINDS[fields[0]], fields[1:])
