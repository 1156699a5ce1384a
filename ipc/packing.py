"""Packing a list, tuple or dict into a shared image: one section per container.

```
 items ─▶ pack_sequence ─▶ [element pickles back to back][starts int64[n+1]]
                            [buffers of large arrays][buffer index int64[n+1]]
                            [buffer table int64[k, 2]][header]
 only ints, or only floats ─▶ [int64 or float64 array][header] (read back as int / float)
 only arrays of one dtype and shape ─▶ [their bytes back to back][header] (read as views)
 a dict ─▶ pack_mapping ─▶ keys section + values section + [crc32 uint32[n]]
                            [bucket starts int64[m+1]][order int64[n]][header]
```

- Elements are pickled one by one (protocol 5, the C pickler), so a reader unpickles only
  the element it reads; no reference count in the section is ever written.
- ``strict`` packing (what the DataLoader does on its own) takes only *plain values*: the
  builtin scalars and containers, numpy arrays and scalars, a few value types of the
  standard library, named tuples and dataclasses that compare by value, and classes and
  functions that pickle by name. Anything else (an object compared by identity, a lambda)
  means the container is left alone: :class:`NotPlain`. The public views pack anything the
  C pickler takes.
- Arrays of at least :data:`OOB_MIN_BYTES` inside elements are written out of band, each at
  an aligned offset, and come back as zero-copy arrays on the reader's mapping; with
  ``oob=False`` (fork, where arrays are already shared) such a container is left alone.
- Dict keys hash with crc32 (stable across processes, unlike ``hash(str)``): equal keys of
  different types (``1``, ``1.0``, ``True``) hash alike, as Python requires.
"""

from __future__ import annotations

import copyreg
import dataclasses
import enum
import functools
import pickle
import struct
import sys
import types
from collections import Counter, OrderedDict, defaultdict
from operator import methodcaller
from typing import Any
from zlib import crc32

import numpy as np

from loader.ipc.image import ALIGN, ImageBuilder

__all__ = ["NotPlain", "OOB_MIN_BYTES", "key_hash", "lookup_hash", "pack_mapping",
           "pack_sequence"]

OOB_MIN_BYTES = 64 * 1024  # bytes: arrays this large are zero-copy views of the image;
#                            smaller ones are copied on read (cheaper than a table entry)
_CHUNK_ITEMS = 1 << 16  # elements pickled and joined per step: bounds the transient copies
_STACK_GLOBAL = pickle.STACK_GLOBAL  # protocol 5 names every non-builtin type with it
_PLAIN_TYPES = frozenset({complex, bytearray, range, slice, OrderedDict, defaultdict, Counter})
_PLAIN_NAMES = frozenset({  # by name: importing these modules here would slow every worker
    ("datetime", "date"), ("datetime", "time"), ("datetime", "datetime"),
    ("datetime", "timedelta"), ("datetime", "timezone"), ("decimal", "Decimal"),
    ("fractions", "Fraction"), ("uuid", "UUID")})
_PLAIN_BASES = (enum.Enum, np.generic, np.dtype)
_NUMPY_SCALARS = frozenset({  # rebuilt exactly from .item(): type(x)(x.item()) == x
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128})
_SAMPLE = 32  # elements pickled carefully before the fast pass: most refusals show here
_ARRAY_WRITE_BYTES = 8 << 20  # bytes of small same-shaped arrays joined per write


class _LargeBuffer(Exception):
    """The fast pass met an array to put out of band: the careful pass takes over."""


def _in_band_only(buf: pickle.PickleBuffer) -> bool:
    if buf.raw().nbytes >= OOB_MIN_BYTES:
        raise _LargeBuffer
    return True


_DUMPS = functools.partial(pickle.dumps, protocol=5, buffer_callback=_in_band_only)
_UTF8 = methodcaller("encode", "utf-8", "surrogatepass")
_INT64_MASK = (1 << 64) - 1
_NONE_HASH = 0x9E3779B9
_BYTES_SALT = 0x5BD1E995


class NotPlain(TypeError):
    """A container holds something that is not a plain value: it is left as it is."""


# ---------------------------------------------------------------- element pickling


class _Pickler(pickle.Pickler):
    """The C pickler with a gate on every non-builtin object (the C pickler asks
    ``reducer_override`` about everything except exact ints, floats, strs, bytes, lists,
    tuples, dicts, sets, None and bools) and large array buffers set aside."""

    def __init__(self, file: Any, *, strict: bool, oob: bool, main_ok: bool) -> None:
        super().__init__(file, 5, buffer_callback=self._buffer)
        self.strict, self.oob, self.main_ok = strict, oob, main_ok
        self.buffers: list[memoryview] = []
        self.saw_objects = False  # whether anything but builtin values was pickled

    def reducer_override(self, obj: Any) -> Any:
        self.saw_objects = True
        cls = type(obj)
        if cls in _NUMPY_SCALARS:
            return cls, (obj.item(),)  # exact, and ~20x cheaper than numpy's own reduce
        if self.strict and not _is_plain(obj, self.main_ok):
            raise NotPlain(f"{cls.__module__}.{cls.__qualname__} is not a plain value")
        return NotImplemented

    def _buffer(self, buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_MIN_BYTES:
            return True  # in band
        if not self.oob:
            raise NotPlain("holds large arrays (fork shares them already)")
        self.buffers.append(raw)
        return False


def _is_plain(obj: Any, main_ok: bool) -> bool:
    cls = type(obj)
    if cls in _PLAIN_TYPES:
        return True
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return main_ok or getattr(obj, "__module__", None) != "__main__"  # pickled by name
    if cls is np.ndarray:
        return not obj.dtype.hasobject
    if isinstance(obj, _PLAIN_BASES) or (cls.__module__, cls.__qualname__) in _PLAIN_NAMES:
        return True
    pathlib = sys.modules.get("pathlib")  # a path exists only if pathlib was imported
    if pathlib is not None and isinstance(obj, pathlib.PurePath):
        return True
    if isinstance(obj, tuple) and hasattr(cls, "_fields"):
        return True  # a named tuple: compared by value
    params = getattr(cls, "__dataclass_params__", None)
    return params is not None and params.eq and dataclasses.is_dataclass(obj)


class _Packed:
    """One section's pickles (joined in chunks) and its out-of-band buffers, in memory
    until the whole container has packed (a container that fails writes nothing)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.chunks: list[bytes] = []
        self.lengths: list[np.ndarray] = []
        self.buffers: list[memoryview] = []
        self.buffer_counts: np.ndarray | None = None  # per element, if any has buffers


def _pickle_items(items: list, *, strict: bool, oob: bool, main_ok: bool) -> _Packed:
    """Every element pickled on its own; the fast path is plain ``pickle.dumps``, and only
    elements whose pickle names a global (a non-builtin type) are re-pickled through the
    gated pickler."""
    careful = _Careful(strict=strict, oob=oob, main_ok=main_ok)
    for i in range(0, len(items), max(1, len(items) // _SAMPLE)):
        careful.dumps(items[i], i)  # a container that is not plain fails here, cheaply
    fast = not careful.pickler.saw_objects  # else most items need the careful pass anyway
    return _pickle_range(items, careful, fast)


def _pickle_range(items: Any, careful: "_Careful", fast: bool) -> _Packed:
    """The pickles of ``items``, chunk by chunk (fast pass first unless ``fast`` is off)."""
    packed = _Packed(len(items))
    always_careful = bool(copyreg._extension_registry)  # extension codes hide globals
    counts: dict[int, int] = {}
    for start in range(0, len(items), _CHUNK_ITEMS):
        chunk = items[start:start + _CHUNK_ITEMS]
        try:
            if not fast:
                raise _LargeBuffer
            blobs = list(map(_DUMPS, chunk))
        except Exception:
            blobs, joined = [b""] * len(chunk), None
            suspects: Any = range(len(chunk))  # the gated pickler says which and why
        else:
            joined = b"".join(blobs)
            suspects = range(len(chunk)) if always_careful else _naming_globals(blobs, joined)
        lengths = np.fromiter(map(len, blobs), np.int64, len(blobs))
        for i in suspects:
            blob, buffers = careful.dumps(chunk[i], start + i)
            blobs[i] = blob
            joined = None
            lengths[i] = len(blob)
            if buffers:
                counts[start + i] = len(buffers)
                packed.buffers.extend(buffers)
        packed.lengths.append(lengths)
        packed.chunks.append(b"".join(blobs) if joined is None else joined)
    if counts:
        packed.buffer_counts = np.zeros(len(items), np.int64)
        for i, c in counts.items():
            packed.buffer_counts[i] = c
    return packed


def _naming_globals(blobs: list, joined: bytes) -> list[int]:
    """Indices of the pickles in ``joined`` that may name a global (a STACK_GLOBAL byte;
    the same byte inside an int or a string only costs a careful second look)."""
    positions = []
    at = joined.find(_STACK_GLOBAL)
    while at >= 0:
        positions.append(at)
        at = joined.find(_STACK_GLOBAL, at + 1)
    if not positions:
        return []
    ends = np.cumsum(np.fromiter(map(len, blobs), np.int64, len(blobs)))
    return np.unique(np.searchsorted(ends, positions, side="right")).tolist()


class _Careful:
    """One gated pickler reused for every suspect element; its output goes straight to a
    list (one write per element unless the pickle spans several frames)."""

    def __init__(self, **options: Any) -> None:
        self.out: list[bytes] = []
        sink = types.SimpleNamespace(write=self.out.append)
        self.pickler = _Pickler(sink, **options)

    def dumps(self, obj: Any, index: int) -> tuple[bytes, list[memoryview]]:
        out, pickler = self.out, self.pickler
        pickler.clear_memo()
        if pickler.buffers:
            pickler.buffers = []
        try:
            pickler.dump(obj)
        except NotPlain as exc:
            raise NotPlain(f"item {index} {exc}") from None
        except Exception as exc:
            raise NotPlain(f"item {index} cannot be pickled: {type(exc).__name__}: {exc}") \
                from None
        finally:
            blob = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
        return blob, pickler.buffers


# ---------------------------------------------------------------- sections


def _packed_array(items: list) -> np.ndarray | None:
    """Only exact ints (within int64) or only exact floats: one typed array."""
    kinds = set(map(type, items))
    if kinds == {int}:
        try:
            return np.fromiter(items, np.int64, len(items))
        except OverflowError:
            return None
    if kinds == {float}:
        return np.fromiter(items, np.float64, len(items))
    return None


def _uniform_arrays(items: Any) -> tuple[np.dtype, tuple] | None:
    """(dtype, shape) when every item is a C-contiguous numpy array of that dtype and shape
    (an image dataset held as a list of arrays), else None."""
    if set(map(type, items)) != {np.ndarray}:
        return None
    first = items[0]
    dtype, shape = first.dtype, first.shape
    if dtype.hasobject:
        return None
    for a in items:
        if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
            return None
    return dtype, shape


def _pack_arrays(builder: ImageBuilder, items: Any, oob: bool) -> dict | None:
    """Arrays of one dtype and shape, back to back: a reader builds item i as an array on
    its mapping at base + i * nbytes (no unpickling, no copy). None: not such a list."""
    found = _uniform_arrays(items)
    if found is None:
        return None
    dtype, shape = found
    nbytes = items[0].nbytes
    if nbytes >= OOB_MIN_BYTES and not oob:
        raise NotPlain("holds large arrays (fork shares them already)")
    per_write = max(1, _ARRAY_WRITE_BYTES // max(1, nbytes))
    base = None
    for start in range(0, len(items), per_write):
        chunk = items[start:start + per_write]
        data = [chunk[0]] if len(chunk) == 1 else [b"".join(map(memoryview, chunk))]
        at = builder.append(data, ALIGN if base is None else 1)
        base = at if base is None else base
    return {"kind": "arrays", "n": len(items), "dtype": dtype, "shape": shape,
            "data": base, "stride": nbytes}


def pack_sequence(builder: ImageBuilder, items: list, *, strict: bool, oob: bool,
                  main_ok: bool = True) -> dict:
    """Write ``items`` as one section; its header (a small dict a reader needs).

    Raises :class:`NotPlain` (``strict``) or another error (not picklable) and then writes
    nothing.
    """
    n = len(items)
    array = _packed_array(items) if n else None
    if array is not None:
        fmt = "q" if array.dtype == np.int64 else "d"
        return {"kind": "packed", "n": n, "fmt": fmt, "data": builder.append([array])}
    header = _pack_arrays(builder, items, oob) if n else None
    if header is not None:
        return header
    packed = _pickle_items(items, strict=strict, oob=oob, main_ok=main_ok)
    lengths = np.concatenate(packed.lengths) if packed.lengths else np.zeros(0, np.int64)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    header = {"kind": "pickles", "n": n, "data": builder.append(packed.chunks),
              "data_len": int(starts[-1])}
    header["starts"] = builder.append([starts])
    if packed.buffer_counts is not None:
        table = np.empty((len(packed.buffers), 2), np.int64)
        for k, raw in enumerate(packed.buffers):
            table[k] = builder.append([raw], ALIGN), raw.nbytes
        index = np.zeros(n + 1, np.int64)
        np.cumsum(packed.buffer_counts, out=index[1:])
        header["buffer_index"] = builder.append([index])
        header["buffer_table"] = builder.append([table])
    return header


def pack_mapping(builder: ImageBuilder, mapping: dict, *, strict: bool, oob: bool,
                 main_ok: bool = True) -> dict:
    """Write a dict as keys, values and a hash table; its header. Raises
    :class:`NotPlain` when a key has no stable hash (see :func:`key_hash`)."""
    keys = list(mapping)
    hashes = _hashes(keys)
    n = len(keys)
    buckets = 8
    while buckets < n:
        buckets *= 2
    slot = hashes & np.uint32(buckets - 1)
    order = np.argsort(slot, kind="stable").astype(np.int64)
    bucket_starts = np.zeros(buckets + 1, np.int64)
    np.cumsum(np.bincount(slot, minlength=buckets), out=bucket_starts[1:])
    values = pack_sequence(builder, list(mapping.values()), strict=strict, oob=oob,
                           main_ok=main_ok)
    return {"kind": "mapping", "n": n, "buckets": buckets,
            "keys": pack_sequence(builder, keys, strict=True, oob=False),
            "values": values, "hashes": builder.append([hashes]),
            "bucket_starts": builder.append([bucket_starts]), "order": builder.append([order])}


def write_header(builder: ImageBuilder, header: dict) -> tuple[int, int]:
    """Append a section's header; (offset, length) locate it for a reader."""
    blob = pickle.dumps(header, 5)
    return builder.append([blob], 8), len(blob)


# ---------------------------------------------------------------- key hashing


def _int_hash(value: int) -> int:
    return crc32((value & _INT64_MASK).to_bytes(8, "little"))


def key_hash(key: Any) -> int | None:
    """A hash of ``key`` that is the same in every process (None: no stable hash for this
    type). Exact builtin types only; equal numbers hash alike."""
    cls = type(key)
    if cls is str:
        return crc32(key.encode("utf-8", "surrogatepass"))
    if cls is int or cls is bool:
        return _int_hash(key)
    if cls is float:
        if key != key:
            return None  # NaN: a dict finds it only by identity
        if key.is_integer():
            return _int_hash(int(key))
        return crc32(struct.pack("<d", key))
    if cls is bytes:
        return crc32(key) ^ _BYTES_SALT
    if key is None:
        return _NONE_HASH
    if cls is tuple:
        h = _NONE_HASH
        for item in key:
            part = key_hash(item)
            if part is None:
                return None
            h = crc32(part.to_bytes(4, "little"), h)
        return h
    return None


def lookup_hash(key: Any) -> int | None:
    """:func:`key_hash` for a key being looked up, which may be a subclass or a numpy
    number equal to a stored key (``np.int64(3)`` finds ``3``, as in a dict)."""
    h = key_hash(key)
    if h is not None:
        return h
    if isinstance(key, str):
        return key_hash(str(key))
    if isinstance(key, (bool, int, np.integer)):
        return _int_hash(int(key))
    if isinstance(key, (float, np.floating)):
        return key_hash(float(key))
    if isinstance(key, bytes):
        return key_hash(bytes(key))
    if isinstance(key, tuple):
        return key_hash(tuple(key))
    return None


def _hashes(keys: list) -> np.ndarray:
    n = len(keys)
    if set(map(type, keys)) == {str}:
        return np.fromiter(map(crc32, map(_UTF8, keys)), np.uint32, n)
    hashes = list(map(key_hash, keys))
    if None in hashes:
        bad = keys[hashes.index(None)]
        raise NotPlain(f"key {bad!r} ({type(bad).__name__}) has no stable hash")
    return np.fromiter(hashes, np.uint32, n)
