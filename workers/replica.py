"""An IterableDataset replica's position, so a replaced worker can go on where it stopped.

A worker of an IterableDataset holds one replica: ``iter(dataset)``. When the loader
replaces a dead worker (``worker_restarts``), the replacement must go on from the last batch
the main process received, or it would yield those samples again. That is only possible when
the replica can say where it is: the dataset, or the iterator it returns, is *Stateful*
(``state_dict()`` and ``load_state_dict(state)``, torchdata's protocol, which
``loader.Stateful`` names when the resume work provides it).

- :func:`capture` runs in the worker after each batch (only when restarts are on): the
  iterator's state, the dataset's (when the iterator is another object), and the sample
  position; ``None`` when neither is Stateful.
- :func:`restore_dataset` before ``iter(dataset)`` and :func:`restore_iterator` after it
  rebuild the replica in the replacement, in torchdata's order.
"""

from __future__ import annotations

from typing import Any

__all__ = ["capture", "is_stateful", "restore_dataset", "restore_iterator"]


def is_stateful(obj: Any) -> bool:
    """Whether ``obj`` has ``state_dict()`` and ``load_state_dict()`` (structurally, as the
    runtime-checkable ``Stateful`` protocol checks)."""
    return callable(getattr(obj, "state_dict", None)) and \
        callable(getattr(obj, "load_state_dict", None))


def capture(dataset: Any, iterator: Any, position: int) -> dict | None:
    """The replica's position after the batch just drawn, or None if it cannot say."""
    own = is_stateful(iterator)
    outer = iterator is not dataset and is_stateful(dataset)
    if not (own or outer):
        return None
    return {"dataset": dataset.state_dict() if outer else None,
            "iterator": iterator.state_dict() if own else None, "position": position}


def restore_dataset(dataset: Any, state: dict) -> None:
    if state.get("dataset") is not None:
        dataset.load_state_dict(state["dataset"])


def restore_iterator(iterator: Any, state: dict) -> None:
    if state.get("iterator") is not None:
        iterator.load_state_dict(state["iterator"])
