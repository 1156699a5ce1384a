"""Finding the large containers a dataset holds, and cloning the objects that hold them.

```
 roots: dataset, collate_fn, worker_init_fn
   └─ holders: objects with attributes (nested datasets: Subset.dataset,
      ConcatDataset.datasets, a wrapper's inner dataset; transforms, a collate object),
      a bound method's __self__, and small lists / tuples / dicts of those
        └─ candidates: exact lists, tuples and dicts of at least MIN_ITEMS items
```

- :func:`find` walks once, depth first, within a depth and a node budget, and returns the
  candidates, their estimated size in memory, and every edge from a holder to what it
  holds. Candidates are not entered (their items are the data, not more datasets).
- :func:`clone` (fork, where workers inherit objects instead of unpickling them) copies
  each object on a path from a root to a replaced container, with the replacement in
  place; every other object is the original, shared. The user's objects are never
  changed: copies are raw (no ``__init__``, ``__copy__`` or ``__setstate__`` runs), so
  holders whose class has its own ``__new__`` are not walked.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loader.ipc.shared_dict import SharedDict
from loader.ipc.shared_views import SharedTuple

__all__ = ["MIN_ITEMS", "Walk", "clone", "find"]

MIN_ITEMS = 1024  # a container with fewer items is not shared: each read unpickles one item,
#                  so few large items would cost a large copy per read for a small saving
_MAX_DEPTH = 8  # holders nested deeper than this are not looked into
_MAX_NODES = 10_000  # objects visited at most: a dataset's object graph is not searched whole
_SAMPLE = 32  # items whose deep size estimates a candidate's size
_SAMPLE_DEPTH = 4  # how deep one sampled item is measured
_SAMPLE_FANOUT = 64  # items of a nested container that are measured
_CONTAINERS = (list, tuple, dict)
_LEAVES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           np.ndarray, np.generic, str, bytes, bytearray, memoryview, int, float, complex,
           range, SharedTuple, SharedDict)


@dataclass
class Walk:
    """What :func:`find` saw."""

    nodes: dict = field(default_factory=dict)  # id -> object, for everything walked
    edges: dict = field(default_factory=dict)  # parent id -> [(how, where, child id)]
    candidates: list = field(default_factory=list)
    estimates: list = field(default_factory=list)  # bytes each candidate takes (sampled)

    @property
    def estimate(self) -> int:
        """Bytes all candidates take as Python objects (sampled)."""
        return sum(self.estimates)


def _slot_names(cls: type) -> list[str]:
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # private names are mangled
            names.append(name)
    return names


def _is_holder(obj: Any) -> bool:
    if isinstance(obj, _LEAVES) or obj is None:
        return False
    cls = type(obj)
    if cls.__new__ is not object.__new__:
        return False  # it could not be copied raw
    return hasattr(obj, "__dict__") or bool(_slot_names(cls))


def _children(obj: Any) -> list[tuple[str, Any, Any]]:
    """(how, where, child) for what ``obj`` holds that the walk looks at."""
    cls = type(obj)
    if cls is list or cls is tuple:
        return [("item", i, v) for i, v in enumerate(obj)]
    if cls is dict:
        return [("key", k, v) for k, v in obj.items()]
    if cls is types.MethodType:
        return [("self", None, obj.__self__)]
    out = []
    state = obj.__dict__ if hasattr(obj, "__dict__") else {}
    if isinstance(state, dict):
        out.extend(("attr", k, v) for k, v in state.items())
    for name in _slot_names(cls):
        try:
            out.append(("slot", name, getattr(obj, name)))
        except AttributeError:
            continue
    return out


def find(roots: list[Any]) -> Walk:
    walk = Walk()
    seen: set[int] = set()
    stack = [(root, 0) for root in reversed(roots) if _is_walkable_root(root)]
    while stack and len(seen) < _MAX_NODES:
        obj, depth = stack.pop()
        key = id(obj)
        if key in seen:
            continue
        seen.add(key)
        walk.nodes[key] = obj
        cls = type(obj)
        if cls in _CONTAINERS and len(obj) >= MIN_ITEMS:
            walk.candidates.append(obj)
            walk.estimates.append(_estimate(obj))
            continue
        if depth >= _MAX_DEPTH:
            continue
        edges = []
        for how, where, child in _children(obj):
            if type(child) in _CONTAINERS or type(child) is types.MethodType or \
                    _is_holder(child):
                edges.append((how, where, id(child)))
                stack.append((child, depth + 1))
        if edges:
            walk.edges[key] = edges
    return walk


def _is_walkable_root(obj: Any) -> bool:
    return type(obj) in _CONTAINERS or type(obj) is types.MethodType or _is_holder(obj)


# ---------------------------------------------------------------- size estimate


def _deep_size(obj: Any, depth: int = 0) -> int:
    size = sys.getsizeof(obj)
    if depth >= _SAMPLE_DEPTH:
        return size
    cls = type(obj)
    if cls is dict or isinstance(obj, dict):
        for i, (k, v) in enumerate(obj.items()):
            if i >= _SAMPLE_FANOUT:
                break
            size += _deep_size(k, depth + 1) + _deep_size(v, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            if i >= _SAMPLE_FANOUT:
                break
            size += _deep_size(v, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        size += _deep_size(vars(obj), depth + 1)
    return size


def _estimate(container: Any) -> int:
    """Bytes ``container`` and its items take, from the deep size of a few items."""
    n = len(container)
    step = max(1, n // _SAMPLE)
    if type(container) is dict:
        keys = list(container)[::step][:_SAMPLE]
        per = sum(_deep_size(k) + _deep_size(container[k]) for k in keys) / len(keys)
    else:
        sample = [container[i] for i in range(0, n, step)][:_SAMPLE]
        per = sum(_deep_size(v) for v in sample) / len(sample)
    return int(sys.getsizeof(container) + per * n)


# ---------------------------------------------------------------- cloning


def _raw_copy(obj: Any) -> Any:
    cls = type(obj)
    new = object.__new__(cls)
    if hasattr(obj, "__dict__"):
        new.__dict__.update(obj.__dict__)
    for name in _slot_names(cls):
        try:
            object.__setattr__(new, name, getattr(obj, name))
        except AttributeError:
            continue
    return new


def clone(walk: Walk, roots: list[Any], replaced: dict[int, Any]) -> list[Any]:
    """``roots`` with every object in ``replaced`` (by id) swapped for its replacement, by
    copying what lies on the way to it; the originals are untouched."""
    parents: dict[int, list[int]] = {}
    for parent, edges in walk.edges.items():
        for _, _, child in edges:
            parents.setdefault(child, []).append(parent)
    dirty: set[int] = set()
    todo = list(replaced)
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in dirty:
                dirty.add(parent)
                todo.append(parent)
    made: dict[int, Any] = {}
    busy: set[int] = set()

    def get(key: int) -> Any:
        if key in replaced:
            return replaced[key]
        if key not in dirty:
            return walk.nodes[key]
        if key in made:
            return made[key]
        obj = walk.nodes[key]
        cls = type(obj)
        if cls is tuple or cls is types.MethodType:
            if key in busy:
                return obj  # a cycle through an immutable object: keep the original here
            busy.add(key)
            children = {where: get(child) for _, where, child in walk.edges[key]}
            busy.discard(key)
            if cls is tuple:
                new = tuple(children.get(i, v) for i, v in enumerate(obj))
            else:
                new = types.MethodType(obj.__func__, children[None])
            made[key] = new
            return new
        new = made[key] = list(obj) if cls is list else dict(obj) if cls is dict \
            else _raw_copy(obj)
        for how, where, child in walk.edges[key]:
            value = get(child)
            if how in ("item", "key"):
                new[where] = value
            elif how == "attr":
                new.__dict__[where] = value
            else:
                object.__setattr__(new, where, value)
        return new

    try:
        return [get(id(root)) if id(root) in walk.nodes else root for root in roots]
    finally:
        get = None  # type: ignore[assignment]  # the closure refers to itself: break the cycle
