"""Read-only views of containers packed into a shared image: SharedTuple, SharedList
(and, in ``ipc/shared_dict.py``, SharedDict).

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
  that copy. Arrays are the exception where they can be (an item that is one array of a
  list of same-shaped arrays, or an array of ``OOB_MIN_BYTES`` or more anywhere in an
  item): views of this process's copy-on-write mapping, so writes to them stay in this
  process and its later reads see them. ``isinstance(view, list)`` is false (the views are ``collections.abc``
  Sequences and Mappings).
- Writes are this process's alone, as with its own copy: a SharedList keeps replaced items
  in an overlay and turns into a private list on its first structural change (``append``,
  ``del``, ``sort``...); a SharedDict keeps added, replaced and deleted keys aside.
- Ownership: a view built with its constructor owns its image (closed when the last view
  of this process that uses it is collected); pickled, it reaches any process while the
  owner keeps it. Views the DataLoader makes belong to its workers' image.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import MutableSequence, Sequence
from typing import Any, Iterator

import numpy as np

from loader.ipc import image as _image
from loader.ipc.packing import pack_sequence, write_header

__all__ = ["SharedList", "SharedTuple"]

_REPR_ITEMS = 6  # items a repr shows before "...": a view's repr must not unpickle a million
_loads = pickle.loads
_ndarray = np.ndarray


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
        if header["kind"] == "arrays":
            self.get = functools.partial(_get_array, view, at, header["stride"],
                                         header["shape"], header["dtype"])
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


def _get_array(view: memoryview, base: int, stride: int, shape: tuple, dtype: Any,
               i: int) -> Any:
    return _ndarray(shape, dtype, view, base + i * stride)


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
