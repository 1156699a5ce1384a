"""Run a function once a module has been imported: nothing runs, and nothing is imported,
until someone else imports it.

A worker must show torch-aware libraries its identity in torch's own
``get_worker_info()``, also when torch is first imported inside the worker by the dataset's
library, long after the worker started; and a spawned worker that never uses torch must not
pay for importing it. :func:`when_imported` leaves one finder on ``sys.meta_path`` that
answers ``None`` (costing a dict lookup) for every import but the awaited one; for that one
it lets the normal finders find the module and wraps its loader so the callbacks run right
after the module has executed, then steps aside.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any, Callable

__all__ = ["when_imported"]

_waiting: dict[str, dict[str, Callable[[Any], None]]] = {}  # module -> key -> callback


def when_imported(name: str, key: str, callback: Callable[[Any], None]) -> None:
    """Call ``callback(module)`` once module ``name`` is imported: now if it already is,
    else right after its import. A second registration under the same ``key`` replaces
    the first."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    _waiting.setdefault(name, {})[key] = callback
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _waiting:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # a namespace package or a legacy loader: nothing to wrap
        spec.loader = _Loader(spec.loader, _waiting.pop(fullname))
        if not _waiting:
            sys.meta_path.remove(self)
        return spec


class _Loader(importlib.abc.Loader):
    """The module's own loader, plus the callbacks after ``exec_module``."""

    def __init__(self, inner: Any, callbacks: dict[str, Callable[[Any], None]]) -> None:
        self._inner, self._callbacks = inner, callbacks

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        spec = module.__spec__
        spec.loader = module.__loader__ = self._inner  # the module sees its own loader
        self._inner.exec_module(module)
        for callback in self._callbacks.values():
            callback(module)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ...
        return getattr(self._inner, name)


_FINDER = _Finder()
