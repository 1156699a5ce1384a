"""A user's ``collate_fn`` that stacks with numpy writes its batch straight into the slot.

```
 worker: collate_fn(samples) ─▶ np.stack / np.concatenate (their out=None calls, only
         inside collate_fn, only on the worker's own thread) ─▶ out= an array carved from
         the current slot ─▶ the batch is already where the main process reads it
```

- Why: ``default_collate`` allocates from the slot itself (``loader.collate.allocate``),
  but a numpy ``collate_fn`` such as ``np.stack([s[0] for s in samples])`` put its result
  on the heap, and the codec then copied every byte into the slot: two copies per byte,
  which is where a threaded loader (SPDL) beat us. With the result landing in the slot,
  the codec finds it there and describes it in place.
- How: while ``collate_fn`` runs, ``numpy.stack`` and ``numpy.concatenate`` (the module
  attributes user code calls) are wrappers that, for plain ndarrays of equal shape and no
  ``out``, compute the result's shape and dtype exactly as numpy would
  (``np.result_type`` of the inputs, or ``dtype=``) and pass an ``out`` carved from the
  slot. Anything else (subclasses, lists, mismatched shapes, other threads, a call
  outside collate) goes to numpy untouched, so errors and results are numpy's own.
- Cost when it does not apply: one attribute swap per batch and a type check per call.
  A stacked array the collate function then discards (``np.stack(x).astype(...)``) still
  occupies slot space for that batch; the slot grows to fit and is reused.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

__all__ = ["landing_collate"]

_stack = np.stack
_concatenate = np.concatenate


def _plain(arrays: Any) -> list | None:
    """The inputs as a list when every one is a plain ndarray, else None."""
    if type(arrays) is not list and type(arrays) is not tuple:
        return None
    if not arrays or not all(type(a) is np.ndarray for a in arrays):
        return None
    return list(arrays)


class _Landing:
    """The two wrappers, bound to the worker's allocator and thread for one call."""

    def __init__(self, alloc: Callable) -> None:
        self.alloc = alloc
        self.thread = threading.get_ident()

    def stack(self, arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
        items = _plain(arrays) if out is None else None
        if items is None or threading.get_ident() != self.thread:
            return _stack(arrays, axis, out, dtype=dtype, casting=casting)
        shape = items[0].shape
        if any(a.shape != shape for a in items):
            return _stack(arrays, axis, out, dtype=dtype, casting=casting)  # numpy's error
        ndim = len(shape) + 1
        if not -ndim <= axis < ndim:
            return _stack(arrays, axis, out, dtype=dtype, casting=casting)
        axis %= ndim
        result = (*shape[:axis], len(items), *shape[axis:])
        kind = np.dtype(dtype) if dtype is not None else np.result_type(*items)
        return _stack(items, axis, self.alloc(result, kind), casting=casting)  # out has dtype

    def concatenate(self, arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
        items = _plain(arrays) if out is None and axis is not None else None
        if items is None or threading.get_ident() != self.thread:
            return _concatenate(arrays, axis, out, dtype=dtype, casting=casting)
        first = items[0].shape
        ndim = len(first)
        if ndim == 0 or not -ndim <= axis < ndim:
            return _concatenate(arrays, axis, out, dtype=dtype, casting=casting)
        axis %= ndim
        rest = first[:axis] + first[axis + 1:]
        if any(a.ndim != ndim or a.shape[:axis] + a.shape[axis + 1:] != rest for a in items):
            return _concatenate(arrays, axis, out, dtype=dtype, casting=casting)
        result = (*first[:axis], sum(a.shape[axis] for a in items), *first[axis + 1:])
        kind = np.dtype(dtype) if dtype is not None else np.result_type(*items)
        return _concatenate(items, axis, self.alloc(result, kind), casting=casting)


def landing_collate(collate_fn: Callable, alloc: Callable) -> Callable:
    """``collate_fn`` with numpy's stack and concatenate landing in ``alloc``'s memory."""

    def collate(samples: Any) -> Any:
        landing = _Landing(alloc)
        np.stack, np.concatenate = landing.stack, landing.concatenate
        try:
            return collate_fn(samples)
        finally:
            np.stack, np.concatenate = _stack, _concatenate

    return collate
