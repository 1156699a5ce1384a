"""Check, before any worker starts, that what the workers need can be pickled.

Under ``spawn`` and ``forkserver`` the dataset, ``collate_fn`` and ``worker_init_fn`` are
pickled with ``multiprocess``'s pickler (dill, so lambdas and local classes work; module
globals travel by reference). The check uses that same pickler. When one of them cannot be, the
error names the path to the culprit (``dataset.handle._lock``) instead of failing inside a
half-started worker.
"""

from __future__ import annotations

from typing import Any

from multiprocess.reduction import ForkingPickler

__all__ = ["UnpicklableError", "check_picklable", "find_unpicklable"]

_MAX_DEPTH = 6  # how deep the search for the culprit goes through attributes and items


class UnpicklableError(TypeError):
    """An object the workers need cannot be sent to them."""


def _dumps(obj: Any) -> None:
    ForkingPickler.dumps(obj)  # exactly what starting a worker will do


def _children(obj: Any):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield f"[{key!r}]", value
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            yield f"[{i}]", value
        return
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        for key, value in state.items():
            yield f".{key}", value
    for key in getattr(type(obj), "__slots__", ()) or ():
        if hasattr(obj, key):
            yield f".{key}", getattr(obj, key)


def find_unpicklable(obj: Any, path: str, depth: int = 0) -> tuple[str, Any, BaseException] | None:
    """The deepest (path, object, error) that fails to pickle inside ``obj``, or None."""
    try:
        _dumps(obj)
        return None
    except Exception as exc:
        error = exc
    if depth < _MAX_DEPTH:
        for suffix, child in _children(obj):
            found = find_unpicklable(child, path + suffix, depth + 1)
            if found is not None:
                return found
    return path, obj, error


def check_picklable(**objects: Any) -> None:
    """Raise :class:`UnpicklableError` naming the first object path that cannot be pickled."""
    for name, obj in objects.items():
        found = find_unpicklable(obj, name)
        if found is not None:
            path, culprit, error = found
            raise UnpicklableError(
                f"DataLoader workers started with this start method need {name} pickled, but "
                f"{path} ({type(culprit).__name__}) cannot be: {error}. "
                "Make it picklable, create it lazily inside the worker (worker_init_fn or on "
                "first use), or use multiprocessing_context='fork'."
            ) from error
