"""Pickling what workers need: once, with the C pickler, dill only where it must.

```
 (dataset, collate_fn, worker_init_fn) ─▶ C pickler (protocol 5)
      persistent_id: a container that is shared ─▶ its view's id (ipc/shared_views.py)
      reducer_override: a lambda, a local or __main__ class, a module, an object the C
          pickler refuses (a lock) ─▶ a placeholder; the object goes to the dill part
      buffer_callback: an array of OOB_MIN_BYTES or more ─▶ out of band (into the image)
   ─▶ stream + dill part (one dill stream for all refused objects, so they share identity)
   ─▶ the dill part shares a mutable object with the C stream? one dill stream instead
   ─▶ it cannot be pickled at all? find the culprit's path (only now is anything re-walked)
```

- Under ``spawn`` and ``forkserver`` this is the only time the workers' objects are
  serialized: the check that they can be *is* the serialization. Module-level classes and
  functions travel by reference, as with any pickler; lambdas and classes defined locally
  or in ``__main__`` travel by value through ``multiprocess``'s dill pickler, exactly as
  they did when each worker got its own dill stream.
- :func:`check_picklable` is the old check (dill, everything), kept for
  ``share_dataset=False``, which ships the objects to every worker as before.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from multiprocess.reduction import ForkingPickler

from loader.ipc.packing import OOB_MIN_BYTES

__all__ = ["Pickled", "UnpicklableError", "check_picklable", "dumps_once",
           "find_unpicklable", "loads_once", "name_culprit", "unpicklable_error"]

_MAX_DEPTH = 6  # how deep the search for the culprit goes through attributes and items
_NATIVE = frozenset({np.ndarray, types.BuiltinFunctionType, types.MethodType,
                     types.BuiltinMethodType, types.MethodWrapperType})  # C handles these
_IMMUTABLE = (str, bytes, int, float, complex, tuple, frozenset, type, types.FunctionType,
              types.BuiltinFunctionType, types.ModuleType, type(None), range)


class UnpicklableError(TypeError):
    """An object the workers need cannot be sent to them."""


def _dill_part(index: int) -> Any:
    """Placeholder for an object pickled by dill (resolved by :func:`loads_once`)."""
    raise pickle.UnpicklingError("a dill part is only resolved by loads_once")


def _by_name(obj: Any) -> bool:
    """Whether the C pickler can save ``obj`` by reference and get the same object back in
    a worker: importable, and not from ``__main__`` (whose guarded code a spawned worker
    never runs)."""
    module_name = getattr(obj, "__module__", None)
    if module_name is None or module_name == "__main__":
        return False
    module = sys.modules.get(module_name)
    found: Any = module
    for part in getattr(obj, "__qualname__", "<").split("."):
        found = getattr(found, part, None)
        if found is None:
            return False
    return found is obj


@dataclass
class Pickled:
    """One serialization: a stream, its out-of-band buffers, and the dill part."""

    codec: str  # "c": C stream + dill part; "dill": one dill stream
    stream: bytes
    buffers: list = field(default_factory=list)  # raw memoryviews, in stream order
    part: bytes = b""
    part_buffers: list = field(default_factory=list)


class _Gate:
    """What both picklers share: views by persistent id, large arrays out of band."""

    def _init_gate(self, substitutes: dict) -> None:
        self.substitutes = substitutes
        self.oob: list[memoryview] = []

    def persistent_id(self, obj: Any) -> Any:
        entry = self.substitutes.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        return None

    def _buffer(self, buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_MIN_BYTES:
            return True  # small: in band
        self.oob.append(raw)
        return False


class _CPickler(_Gate, pickle.Pickler):
    def __init__(self, file: Any, substitutes: dict) -> None:
        pickle.Pickler.__init__(self, file, 5, buffer_callback=self._buffer)
        self._init_gate(substitutes)
        self.parts: list = []

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in _NATIVE:
            return NotImplemented
        if isinstance(obj, type) or cls is types.FunctionType:
            return NotImplemented if _by_name(obj) else self._to_dill(obj)
        if cls is types.ModuleType:
            return self._to_dill(obj)
        if cls in copyreg.dispatch_table:
            return NotImplemented
        try:
            return obj.__reduce_ex__(5)
        except Exception:  # the C pickler would refuse it; dill may not
            return self._to_dill(obj)

    def _to_dill(self, obj: Any) -> tuple:
        self.parts.append(obj)
        return _dill_part, (len(self.parts) - 1,)


class _DillPickler(_Gate, ForkingPickler):
    def __init__(self, file: Any, substitutes: dict) -> None:
        ForkingPickler.__init__(self, file, 5, buffer_callback=self._buffer)
        self._init_gate(substitutes)


def _shares_state(c_memo: dict, dill_memo: dict, parts: list) -> bool:
    """Whether the dill part holds a mutable object the C stream holds too (the worker
    would get two of it)."""
    own = {id(p) for p in parts}
    small, large = (c_memo, dill_memo) if len(c_memo) < len(dill_memo) else (dill_memo, c_memo)
    for key in small:
        if key in large and key not in own and not isinstance(small[key][1], _IMMUTABLE):
            return True
    return False


def dumps_once(obj: Any, substitutes: dict | None = None) -> Pickled:
    """Serialize ``obj`` for workers; ``substitutes`` maps ``id(x)`` to ``(x, pid)`` for
    objects replaced by a persistent id. Raises whatever the last pickler raised."""
    substitutes = substitutes or {}
    file = io.BytesIO()
    pickler = _CPickler(file, substitutes)
    try:
        pickler.dump(obj)
    except Exception:
        return _dumps_dill(obj, substitutes)  # dill's by-value rules for all of it
    pickled = Pickled("c", file.getvalue(), pickler.oob)
    if pickler.parts:
        part_file = io.BytesIO()
        part_pickler = _DillPickler(part_file, substitutes)
        part_pickler.dump(pickler.parts)
        if _shares_state(pickler.memo.copy(), part_pickler.memo, pickler.parts):
            return _dumps_dill(obj, substitutes)
        pickled.part, pickled.part_buffers = part_file.getvalue(), part_pickler.oob
    return pickled


def _dumps_dill(obj: Any, substitutes: dict) -> Pickled:
    file = io.BytesIO()
    pickler = _DillPickler(file, substitutes)
    pickler.dump(obj)
    return Pickled("dill", file.getvalue(), pickler.oob)


class _CUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: list, parts: list, load_pid: Callable) -> None:
        super().__init__(file, buffers=buffers)
        self._parts, self._load_pid = parts, load_pid

    def find_class(self, module: str, name: str) -> Any:
        if name == "_dill_part" and module == __name__:
            return self._parts.__getitem__
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return self._load_pid(pid)


def _dill_unpickler(file: Any, buffers: list, load_pid: Callable) -> Any:
    import dill

    class Unpickler(dill.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return load_pid(pid)

    return Unpickler(file, buffers=buffers)


def loads_once(codec: str, stream: Any, buffers: list, part: Any, part_buffers: list,
               load_pid: Callable) -> Any:
    """The object :func:`dumps_once` serialized, from file-like ``stream`` and ``part``
    (None: no dill part); ``load_pid`` turns a persistent id back into its view. Buffers
    are memoryviews (zero-copy: arrays are built on them)."""
    if codec == "dill":
        return _dill_unpickler(stream, buffers, load_pid).load()
    parts = _dill_unpickler(part, part_buffers, load_pid).load() if part is not None else []
    return _CUnpickler(stream, buffers, parts, load_pid).load()


# ---------------------------------------------------------------- naming the culprit


def _dumps(obj: Any) -> None:
    ForkingPickler.dumps(obj)  # exactly what starting a worker without an image does


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


def find_unpicklable(obj: Any, path: str, depth: int = 0,
                     dumps: Callable[[Any], Any] = _dumps) -> tuple[str, Any, BaseException] | None:
    """The deepest (path, object, error) that fails to pickle inside ``obj``, or None."""
    try:
        dumps(obj)
        return None
    except Exception as exc:
        error = exc
    if depth < _MAX_DEPTH:
        for suffix, child in _children(obj):
            found = find_unpicklable(child, path + suffix, depth + 1, dumps)
            if found is not None:
                return found
    return path, obj, error


def unpicklable_error(name: str, path: str, culprit: Any, error: BaseException) -> UnpicklableError:
    return UnpicklableError(
        f"DataLoader workers started with this start method need {name} pickled, but "
        f"{path} ({type(culprit).__name__}) cannot be: {error}. "
        "Make it picklable, create it lazily inside the worker (worker_init_fn or on "
        "first use), or use multiprocessing_context='fork'.")


def check_picklable(**objects: Any) -> None:
    """Raise :class:`UnpicklableError` naming the first object path that cannot be pickled."""
    for name, obj in objects.items():
        found = find_unpicklable(obj, name)
        if found is not None:
            path, culprit, error = found
            raise unpicklable_error(name, path, culprit, error) from error


def name_culprit(substitutes: dict, **objects: Any) -> UnpicklableError | None:
    """After :func:`dumps_once` failed: the error naming the first path that cannot be
    pickled, searched with the same picklers (shared containers stay substituted)."""
    def dumps(obj: Any) -> None:
        dumps_once(obj, substitutes)

    for name, obj in objects.items():
        found = find_unpicklable(obj, name, dumps=dumps)
        if found is not None:
            path, culprit, error = found
            return unpicklable_error(name, path, culprit, error)
    return None
