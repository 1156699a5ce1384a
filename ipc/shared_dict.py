"""SharedDict: a read-only dict in a shared image, with this process's writes on top.

```
 SharedDict(mapping) ──pack_mapping (ipc/packing.py)──▶ keys, values, crc32 hash table
 d[key] ──▶ crc32(key) ──▶ its bucket ──▶ unpickle the candidate keys ──▶ == key?
        ──▶ unpickle the value at that position
 d[key] = v, del d[key] ──▶ this process's overlay (added, replaced, deleted keys)
```

- Insertion order is the original dict's, then this process's added keys, as in a dict.
- Lookups use Python equality, so ``1``, ``1.0``, ``True`` and ``np.int64(1)`` find the
  same key; keys must be str, bytes, numbers, None or tuples of them (stable hashes).
- Everything else (what differs from a dict, pickling, ownership) is as for the sequence
  views in ``ipc/shared_views.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView
from typing import Any, Iterator

from loader.ipc.packing import lookup_hash, pack_mapping
from loader.ipc.shared_views import _REPR_ITEMS, _Section, _SharedBase, _standalone

__all__ = ["SharedDict"]


class _Overlay:
    """A SharedDict's writes in this process: keys added or replaced, keys deleted."""

    __slots__ = ("added", "replaced", "deleted", "cleared")

    def __init__(self) -> None:
        self.added: dict = {}  # keys not in the shared dict (or deleted and added again)
        self.replaced: dict = {}  # shared keys with a new value, in their original place
        self.deleted: set = set()
        self.cleared = False


class SharedDict(_SharedBase, MutableMapping):
    """A dict in shared memory, in the original insertion order: lookups hash the key
    (stable across processes), unpickle only the candidate keys and the value found; writes
    stay in this process. Keys must be str, bytes, int, float, bool, None or tuples of them."""

    __slots__ = ("_where", "_owner", "_keys", "_values", "_hashes", "_bucket_starts",
                 "_order", "_mask", "_n", "_ov", "__weakref__")

    def __init__(self, mapping: Any = (), **kwargs: Any) -> None:
        items = dict(mapping, **kwargs)
        image, ref, at, length = _standalone(
            lambda builder: pack_mapping(builder, items, strict=False, oob=True))
        self._attach(ref, at, length, image)

    def _bind(self, view: memoryview, header: dict) -> None:
        self._n = header["n"]
        self._keys = _Section(view, header["keys"])
        self._values = _Section(view, header["values"])
        n, buckets = self._n, header["buckets"]
        at = header["hashes"]
        self._hashes = view[at:at + 4 * n].cast("I")
        at = header["bucket_starts"]
        self._bucket_starts = view[at:at + 8 * (buckets + 1)].cast("q")
        at = header["order"]
        self._order = view[at:at + 8 * n].cast("q")
        self._mask = buckets - 1
        self._ov: _Overlay | None = None

    def _find(self, key: Any) -> int:
        """The position of ``key`` among the shared keys, or -1."""
        h = lookup_hash(key)
        if h is None:
            hash(key)  # an unhashable key raises TypeError, as in a dict
            return next((i for i, k in enumerate(self._keys.iterate(range(self._n)))
                         if k is key or k == key), -1)
        b = h & self._mask
        hashes, order, get_key = self._hashes, self._order, self._keys.get
        for j in range(self._bucket_starts[b], self._bucket_starts[b + 1]):
            i = order[j]
            if hashes[i] == h:
                stored = get_key(i)
                if stored is key or stored == key:
                    return i
        return -1

    def _shared_index(self, key: Any) -> int:
        """Like :meth:`_find`, but -1 for keys this process deleted."""
        ov = self._ov
        if ov is not None and (ov.cleared or (ov.deleted and key in ov.deleted)):
            return -1
        return self._find(key)

    # reading

    def __getitem__(self, key: Any) -> Any:
        ov = self._ov
        if ov is not None:
            if key in ov.added:
                return ov.added[key]
            if key in ov.replaced:
                return ov.replaced[key]
        i = self._shared_index(key)
        if i < 0:
            raise KeyError(key)
        return self._values.get(i)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        ov = self._ov
        if ov is not None and key in ov.added:
            return True
        return self._shared_index(key) >= 0

    def __len__(self) -> int:
        ov = self._ov
        if ov is None:
            return self._n
        return (0 if ov.cleared else self._n - len(ov.deleted)) + len(ov.added)

    def _shared_positions(self, reverse: bool = False) -> Iterator[tuple[int, Any]]:
        """(position, key) of every shared key still present here."""
        ov = self._ov
        if ov is not None and ov.cleared:
            return iter(())
        order = range(self._n - 1, -1, -1) if reverse else range(self._n)
        pairs = zip(order, self._keys.iterate(order))
        if ov is not None and ov.deleted:
            deleted = ov.deleted
            return ((i, k) for i, k in pairs if k not in deleted)
        return pairs

    def __iter__(self) -> Iterator[Any]:
        shared = (k for _, k in self._shared_positions())
        if self._ov is None or not self._ov.added:
            return shared
        return itertools.chain(shared, list(self._ov.added))

    def __reversed__(self) -> Iterator[Any]:
        added = reversed(list(self._ov.added)) if self._ov is not None else iter(())
        return itertools.chain(added, (k for _, k in self._shared_positions(reverse=True)))

    def _iter_items(self) -> Iterator[tuple[Any, Any]]:
        ov, get_value = self._ov, self._values.get
        replaced = ov.replaced if ov is not None else {}
        for i, key in self._shared_positions():
            yield key, (replaced[key] if replaced and key in replaced else get_value(i))
        if ov is not None:
            yield from list(ov.added.items())

    def keys(self) -> KeysView:
        return KeysView(self)

    def values(self) -> ValuesView:
        return _Values(self)

    def items(self) -> ItemsView:
        return _Items(self)

    def __eq__(self, other: Any) -> Any:
        if not isinstance(other, Mapping):
            return NotImplemented
        if len(self) != len(other):
            return False
        return dict(self._iter_items()) == dict(other.items())

    def __ne__(self, other: Any) -> Any:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def __or__(self, other: Any) -> Any:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self._iter_items()) | dict(other)

    def __ror__(self, other: Any) -> Any:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(other) | dict(self._iter_items())

    def __ior__(self, other: Any) -> "SharedDict":
        self.update(other)
        return self

    def copy(self) -> dict:
        return dict(self._iter_items())

    def __repr__(self) -> str:
        shown = ", ".join(f"{k!r}: {v!r}" for k, v in
                          itertools.islice(self._iter_items(), _REPR_ITEMS))
        n = len(self)
        more = f", ... ({n} items)" if n > _REPR_ITEMS else ""
        return f"SharedDict({{{shown}{more}}})"

    # writing

    def _overlay(self) -> _Overlay:
        if self._ov is None:
            self._ov = _Overlay()
        return self._ov

    def __setitem__(self, key: Any, value: Any) -> None:
        ov = self._overlay()
        if key in ov.added:
            ov.added[key] = value
        elif self._shared_index(key) >= 0:
            ov.replaced[key] = value
        else:
            ov.added[key] = value

    def __delitem__(self, key: Any) -> None:
        ov = self._overlay()
        if key in ov.added:
            del ov.added[key]
            return
        if self._shared_index(key) < 0:
            raise KeyError(key)
        ov.deleted.add(key)
        ov.replaced.pop(key, None)

    def popitem(self) -> tuple[Any, Any]:
        ov = self._overlay()
        if ov.added:
            return ov.added.popitem()
        for i, key in self._shared_positions(reverse=True):
            value = ov.replaced.pop(key) if key in ov.replaced else self._values.get(i)
            ov.deleted.add(key)
            return key, value
        raise KeyError("popitem(): dictionary is empty")

    def clear(self) -> None:
        ov = self._ov = _Overlay()
        ov.cleared = True

    def _overlay_state(self) -> Any:
        ov = self._ov
        if ov is None:
            return None
        return (ov.added, ov.replaced, ov.deleted, ov.cleared)

    def _set_overlay(self, state: Any) -> None:
        ov = self._overlay()
        added, replaced, deleted, ov.cleared = state
        ov.added, ov.replaced, ov.deleted = dict(added), dict(replaced), set(deleted)


class _Values(ValuesView):
    def __iter__(self) -> Iterator[Any]:
        return (v for _, v in self._mapping._iter_items())


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._iter_items()
