"""Keep the parent's objects out of gc during an iterator's first epoch.

```
 MultiProcessIter.__new__ (fork) ─▶ snapshot(): gc.freeze()   every object that exists
 MultiProcessIter.__init__ ───────▶ hold(it)                   now goes to gc's permanent
 first epoch ends, an exception leaves next(), shutdown,       generation, and back
 or another iterator takes the hold ─▶ release(it) ─▶ gc.unfreeze()
```

- Why: a full collection of a torch-sized heap (~170k objects) takes 70-110 ms on the
  2-core dev VM, and the first one after ``import torch`` falls due soon after: it used to
  land in the first epoch, stalling the main process while its workers ran out of tasks,
  and copying ~10k pages it shared with them. Frozen objects are not walked, by the
  parent or by the workers (a worker's own collections never touch them either).
- Only what exists when iteration starts is frozen, never the iterator itself (the
  freeze comes before it is made) nor what the epoch makes (batches, exceptions and
  their frames), so those stay collectable.
- Releasing is always safe (it only lets the collector see those objects again), so the
  hold is kept short: one holder at a time, released at the end of its first epoch, when
  an exception leaves ``next()`` (its traceback may close a cycle through frozen frames),
  at shutdown, or when a newer iterator takes the hold. An iterator abandoned in a
  reference cycle with older objects is therefore collected by the next release at the
  latest. Like the fork-time freeze/unfreeze this replaces, ``unfreeze`` also returns
  objects the user froze before to the collector.
- A release from inside a collection (``__del__``) unfreezes from gc's "stop" callback.
- Forks outside a hold (a worker replaced or added in a later epoch) freeze only around
  the fork (:func:`fork`), as before: the child inherits a frozen heap either way.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, Callable

__all__ = ["fork", "hold", "holding", "release", "snapshot"]

_state: dict[str, Any] = {"holder": None, "collecting": False, "pending": False}


def snapshot() -> None:
    """Freeze every object that exists now; :func:`hold` names who keeps it."""
    if _phase not in gc.callbacks:  # registered by the first snapshot, then kept
        gc.callbacks.append(_phase)
    gc.freeze()


def hold(owner: Any) -> None:
    """``owner`` keeps the freeze (any earlier holder no longer does)."""
    _state["holder"] = weakref.ref(owner)
    _state["pending"] = False


def holding(owner: Any) -> bool:
    ref = _state["holder"]
    return ref is not None and ref() is owner


def _held() -> bool:
    ref = _state["holder"]
    return ref is not None and ref() is not None


def fork(start: Callable[[], None]) -> None:
    """Run ``start`` (which forks) with the parent's objects frozen for the child, so its
    collections never walk (and copy-on-write) them. While an iterator holds the freeze
    the objects older than it are frozen already and nothing changes; otherwise (a worker
    replaced or added after the first epoch) they are frozen around the fork only."""
    if _held():
        start()
        return
    gc.freeze()
    try:
        start()
    finally:
        if not _held():
            gc.unfreeze()


def release(owner: Any) -> None:
    """Unfreeze, if ``owner`` still holds the freeze."""
    ref = _state["holder"]
    if ref is None or (ref() is not owner and ref() is not None):
        return
    _state["holder"] = None
    if _state["collecting"]:
        _state["pending"] = True
        return
    gc.unfreeze()


def _phase(phase: str, info: dict) -> None:
    _state["collecting"] = phase == "start"
    if phase == "stop" and _state["pending"]:
        _state["pending"] = False
        if _state["holder"] is None:
            gc.unfreeze()
