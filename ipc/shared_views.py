"""Read-only views of containers packed into a shared image: SharedTuple, SharedList,
SharedDict.

```
 SharedList(items) ──pack (ipc/packing.py)──▶ its own image (ipc/image.py)
 view[i] ──▶ starts[i]:starts[i+1] of the mapping ──pickle.loads──▶ a new object
 pickle.dumps(view) ──▶ (image ref, header) only; another process attaches to the image
 view[i] = x ──▶ this process's overlay (the shared section is never written)
```

- A view behaves like the container it replaces for reading: indexing, slicing, ``len``,
  iteration, ``in``, ``index``, ``count``, comparisons, ``+`` and ``*``; a SharedDict has
  ``get``, ``keys()``, ``values()``, ``items()``, ``|`` and insertion order.
- What differs: every read unpickles the element afresh, so an element read twice is two
  equal objects, not the same one, and changing an element read from a view changes only
  that copy. ``isinstance(view, list)`` is false (the views are
  ``collections.abc`` Sequences and Mappings).
- Writes are this process's alone, as with its own copy: a SharedList keeps replaced items
  in an overlay and turns into a private list on its first structural change (``append``,
  ``del``, ``sort``...); a SharedDict keeps added, replaced and deleted keys aside.
- Ownership: a view built with its constructor owns its image (closed when the last view
  of this process that uses it is collected); pickled, it reaches any process while the
  owner keeps it. Views the DataLoader makes belong to its workers' image.
"""

from __future__ import annotations

import functools
import itertools
import pickle
from collections.abc import (ItemsView, KeysView, Mapping, MutableMapping, MutableSequence,
                             Sequence, ValuesView)
from typing import Any, Iterator

from loader.ipc import image as _image
from loader.ipc.packing import lookup_hash, pack_mapping, pack_sequence, write_header

__all__ = ["SharedDict", "SharedList", "SharedTuple"]

_REPR_ITEMS = 6  # items a repr shows before "...": a view's repr must not unpickle a million
_loads = pickle.loads


class _Section:
    """Reads the elements of one packed section, each unpickled on access (``get`` is
    chosen per layout, and bound to something other than the section: no cycle, so a view
    and its mapping go as soon as the last reference does)."""

    __slots__ = ("n", "get", "_view", "_data", "_starts", "_bindex", "_btable")

    def __init__(self, view: memoryview, header: dict) -> None:
        self.n = n = header["n"]
        self._view = view
        at = header["data"]
        if header["kind"] == "packed":
            self.get = view[at:at + 8 * n].cast(header["fmt"]).__getitem__
            return
        data = self._data = view[at:at + header["data_len"]]
        at = header["starts"]
        starts = self._starts = view[at:at + 8 * (n + 1)].cast("q")
        if "buffer_index" not in header:
            self.get = functools.partial(_get, data, starts)
            return
        at = header["buffer_index"]
        index = self._bindex = view[at:at + 8 * (n + 1)].cast("q")
        at = header["buffer_table"]
        table = self._btable = view[at:at + 16 * index[n]].cast("q")
        self.get = functools.partial(_get_with_buffers, data, starts, index, table, view)

    def iterate(self, indices: Any) -> Iterator[Any]:
        return map(self.get, indices)


def _get(data: memoryview, starts: memoryview, i: int) -> Any:
    return _loads(data[starts[i]:starts[i + 1]])


def _get_with_buffers(data: memoryview, starts: memoryview, index: memoryview,
                      table: memoryview, view: memoryview, i: int) -> Any:
    first, last = index[i], index[i + 1]
    blob = data[starts[i]:starts[i + 1]]
    if first == last:
        return _loads(blob)
    buffers = [view[table[2 * k]:table[2 * k] + table[2 * k + 1]] for k in range(first, last)]
    return _loads(blob, buffers=buffers)


def _read_header(view: memoryview, at: int, length: int) -> dict:
    return _loads(view[at:at + length])


def _standalone(pack: Any) -> tuple[_image.Image, _image.ImageRef, int, int]:
    """Build a one-section image for a view made by its constructor."""
    builder = _image.ImageBuilder("loader-shared-view")
    try:
        at, length = write_header(builder, pack(builder))
        return builder.finish(), builder.ref, at, length
    except BaseException:
        builder.abort()
        raise


def _rebuild(cls: type, ref: _image.ImageRef, at: int, length: int, state: Any) -> Any:
    view = cls.__new__(cls)
    view._attach(ref, at, length, _image._OWNED.get(ref.token))
    if state is not None:
        view._set_overlay(state)
    return view


class _SharedBase:
    """What every view shares: where its section lives and how it is pickled."""

    __slots__ = ()

    def _attach(self, ref: _image.ImageRef, at: int, length: int, owner: Any) -> None:
        view = _image.attach(ref)
        self._where = (ref, at, length)
        self._owner = owner  # keeps a constructor-made image open while this view lives
        self._bind(view, _read_header(view, at, length))

    def __reduce__(self) -> tuple:
        ref, at, length = self._where
        return _rebuild, (type(self), ref, at, length, self._overlay_state())

    def _overlay_state(self) -> Any:
        return None

    def _set_overlay(self, state: Any) -> None:
        pass


# ---------------------------------------------------------------- sequences


class SharedTuple(_SharedBase, Sequence):
    """A read-only sequence in shared memory that stands in for a tuple (or, as the base
    of :class:`SharedList`, a list). ``SharedTuple(iterable)`` packs the items (anything
    the C pickler takes); each read unpickles the item."""

    __slots__ = ("_where", "_owner", "_items", "_get", "_n", "__weakref__")
    _kind: type = tuple
    _name = "tuple"

    def __init__(self, iterable: Any = ()) -> None:
        items = list(iterable)
        image, ref, at, length = _standalone(
            lambda builder: pack_sequence(builder, items, strict=False, oob=True))
        self._attach(ref, at, length, image)

    def _bind(self, view: memoryview, header: dict) -> None:
        self._items = _Section(view, header)
        self._get = self._items.get
        self._n = header["n"]

    # reading

    def __len__(self) -> int:
        return self._n

    def _index(self, i: Any, verb: str = "index") -> int:
        n = self._n
        try:
            j = i.__index__()
        except AttributeError:
            raise TypeError(f"{self._name} indices must be integers or slices, not "
                            f"{type(i).__name__}") from None
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"{self._name} {verb} out of range")
        return j

    def __getitem__(self, i: Any) -> Any:
        if type(i) is int and 0 <= i < self._n:
            return self._get(i)
        if isinstance(i, slice):
            return self._kind(self._items.iterate(range(*i.indices(self._n))))
        return self._get(self._index(i))

    def __iter__(self) -> Iterator[Any]:
        return self._items.iterate(range(self._n))

    def __reversed__(self) -> Iterator[Any]:
        return self._items.iterate(range(self._n - 1, -1, -1))

    def __contains__(self, value: Any) -> bool:
        return any(item is value or item == value for item in self)

    def _plain(self) -> Any:
        return self._kind(self)

    def _comparable(self, other: Any) -> Any:
        """``other`` if it compares with this view as a tuple (list) with a tuple (list)."""
        if isinstance(other, SharedTuple):
            return other if other._kind is self._kind else None
        return other if isinstance(other, self._kind) else None

    def __eq__(self, other: Any) -> Any:
        other_seq = self._comparable(other)
        if other_seq is None:
            return NotImplemented
        if len(self) != len(other_seq):
            return False
        return all(a is b or a == b for a, b in zip(self, other_seq))

    def __ne__(self, other: Any) -> Any:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def _compare(self, other: Any, op: str) -> Any:
        other_seq = self._comparable(other)
        if other_seq is None:
            return NotImplemented
        return getattr(self._plain(), op)(self._kind(other_seq))

    def __lt__(self, other: Any) -> Any:
        return self._compare(other, "__lt__")

    def __le__(self, other: Any) -> Any:
        return self._compare(other, "__le__")

    def __gt__(self, other: Any) -> Any:
        return self._compare(other, "__gt__")

    def __ge__(self, other: Any) -> Any:
        return self._compare(other, "__ge__")

    def __hash__(self) -> int:
        return hash(self._plain())

    def __add__(self, other: Any) -> Any:
        other_seq = self._comparable(other)
        if other_seq is None:
            return NotImplemented
        return self._plain() + self._kind(other_seq)

    def __radd__(self, other: Any) -> Any:
        other_seq = self._comparable(other)
        if other_seq is None:
            return NotImplemented
        return self._kind(other_seq) + self._plain()

    def __mul__(self, count: Any) -> Any:
        return self._plain() * count

    __rmul__ = __mul__

    def __repr__(self) -> str:
        n = len(self)
        shown = ", ".join(repr(self[i]) for i in range(min(n, _REPR_ITEMS)))
        more = f", ... ({n} items)" if n > _REPR_ITEMS else ""
        close = ",)" if self._kind is tuple and n == 1 else ")"
        open_, close = ("[", "]") if self._kind is list else ("(", close)
        return f"{type(self).__name__}({open_}{shown}{more}{close})"


class SharedList(SharedTuple, MutableSequence):
    """A list in shared memory: reads unpickle the item; writes stay in this process.

    ``view[i] = x`` goes to an overlay; the first structural change (``append``,
    ``insert``, ``del``, ``sort``, slice assignment...) turns the view into this process's
    own list, as if it had had its own copy all along.
    """

    __slots__ = ("_over", "_local")
    _kind = list
    _name = "list"

    def __init__(self, iterable: Any = ()) -> None:
        self._over = self._local = None
        super().__init__(iterable)

    def _bind(self, view: memoryview, header: dict) -> None:
        super()._bind(view, header)
        self._over: dict | None = None
        self._local: list | None = None

    def _own(self) -> list:
        """This process's own list (made once, from the shared items and the overlay)."""
        if self._local is None:
            over = self._over or {}
            self._local = [over[i] if i in over else self._get(i) for i in range(self._n)]
            self._over = None
        return self._local

    # reading, through the overlay

    def __len__(self) -> int:
        return self._n if self._local is None else len(self._local)

    def __getitem__(self, i: Any) -> Any:
        if self._local is not None:
            return self._local[i]
        over = self._over
        if over is None:
            return SharedTuple.__getitem__(self, i)
        if isinstance(i, slice):
            return [over[j] if j in over else self._get(j) for j in range(*i.indices(self._n))]
        j = self._index(i)
        return over[j] if j in over else self._get(j)

    def __iter__(self) -> Iterator[Any]:
        if self._local is not None:
            return iter(self._local)
        if self._over is None:
            return SharedTuple.__iter__(self)
        return (self[i] for i in range(self._n))

    def __reversed__(self) -> Iterator[Any]:
        if self._local is not None:
            return reversed(self._local)
        return (self[i] for i in range(self._n - 1, -1, -1))

    __hash__ = None  # type: ignore[assignment]

    # writing

    def __setitem__(self, i: Any, value: Any) -> None:
        if self._local is not None or isinstance(i, slice):
            self._own()[i] = value
            return
        j = self._index(i, "assignment index")
        if self._over is None:
            self._over = {}
        self._over[j] = value

    def __delitem__(self, i: Any) -> None:
        del self._own()[i]

    def insert(self, i: int, value: Any) -> None:
        self._own().insert(i, value)

    def append(self, value: Any) -> None:
        self._own().append(value)

    def extend(self, values: Any) -> None:
        self._own().extend(values)

    def pop(self, i: int = -1) -> Any:
        return self._own().pop(i)

    def remove(self, value: Any) -> None:
        self._own().remove(value)

    def clear(self) -> None:
        self._local, self._over = [], None

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._own().sort(key=key, reverse=reverse)

    def reverse(self) -> None:
        self._own().reverse()

    def copy(self) -> list:
        return list(self)

    def __iadd__(self, values: Any) -> "SharedList":
        self._own().extend(values)
        return self

    def __imul__(self, count: Any) -> "SharedList":
        self._own().__imul__(count)
        return self

    def _overlay_state(self) -> Any:
        if self._local is not None:
            return ("local", self._local)
        return ("over", self._over) if self._over else None

    def _set_overlay(self, state: Any) -> None:
        kind, value = state
        if kind == "local":
            self._local = list(value)
        else:
            self._over = dict(value)


# ---------------------------------------------------------------- mapping


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
