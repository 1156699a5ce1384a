"""The typed messages between the main process and its workers.

main -> worker k:  Task, Release, Resume, Stop
worker k -> main:  Result (+ payload frame), Failure, IterEnd, Started

Every message is a small named tuple pickled into one zmq frame; a Result's batch
travels in a second frame (pickle protocol 5, large buffers left in a shared slot).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Failure", "IterEnd", "Release", "Result", "Resume", "Started", "Stop", "Task"]


class Task(NamedTuple):
    """Fetch and collate the batch ``batch_id`` of ``epoch`` from these sampler keys."""
    epoch: int
    batch_id: int
    indices: Any


class Release(NamedTuple):
    """The user dropped every view of these slots; the worker may write them again."""
    slots: tuple


class Resume(NamedTuple):
    """A new epoch on persistent workers: reseed from ``base_seed``, restart iteration."""
    epoch: int
    base_seed: int


class Stop(NamedTuple):
    """Exit the worker loop now (the end-of-work marker; never ``None``)."""


class Started(NamedTuple):
    """The worker is up (its pid), sent once before anything else."""
    worker_id: int
    pid: int


class Result(NamedTuple):
    """A collated batch: ``spans`` (offset, nbytes) of ``slot`` (-1: none) hold its buffers."""
    epoch: int
    batch_id: int
    worker_id: int
    slot: int
    slot_size: int
    spans: tuple


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
