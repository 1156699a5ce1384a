"""``default_collate`` and ``default_convert``: torch's element rules, torch's results
where torch is in use, numpy results elsewhere.

The rules are torch's (``torch.utils.data._utils.collate``): int -> int64, float ->
float64, bool -> bool, numpy scalars and arrays keep their dtype, str/bytes batches come
back unchanged, mappings / namedtuples / sequences keep or lose their container type as
torch does. The arrays are built with numpy (:func:`collate_arrays`,
:func:`convert_arrays`); where torch is in use the public functions hand them out as
tensors over the same memory, as torch's own would return:

- called directly (a user's ``collate_fn`` that calls ``default_collate`` and then
  ``.float()``), torch is in use when it is imported;
- inside a DataLoader's ``collate_fn`` call, in the main process or a worker, it is that
  loader's decision (torch imported when the loader was built: the ``output="auto"``
  rule), carried by :func:`for_loader` into workers that have not imported torch yet.

The DataLoader's own default collation runs the array versions and converts afterwards
(``loader/_output.py``), so workers never import torch for it.

Every array a collate function creates comes from :func:`allocate`, which is
``numpy.empty`` in the main process and a bump allocator over a shared-memory slot inside
a worker, so a batch is written once, straight into the memory the main process reads.

The dispatch table :data:`default_collate_fn_map` is public and may be extended, as in
torch: ``default_collate_fn_map[MyType] = my_collate`` or ``collate(batch,
collate_fn_map=...)``.
"""

from __future__ import annotations

import collections.abc
import copy
import sys
import threading
from typing import Any, Callable

import numpy as np

__all__ = [
    "allocate",
    "collate",
    "collate_arrays",
    "convert_arrays",
    "collate_numpy_array_fn",
    "collate_numpy_scalar_fn",
    "default_collate",
    "default_collate_err_msg_format",
    "default_collate_fn_map",
    "default_convert",
    "for_loader",
    "use_allocator",
]

default_collate_err_msg_format = (
    "default_collate: batch must contain tensors, numpy arrays, numbers, "
    "dicts or lists; found {}"
)

_STRING_OR_OBJECT_KINDS = frozenset("SaUO")  # dtype chars torch refuses to collate

Allocator = Callable[[tuple, np.dtype], np.ndarray]


def _empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype)


_allocator: Allocator = _empty


def allocate(shape: tuple, dtype: Any) -> np.ndarray:
    """A new uninitialised array from the allocator in force (``np.empty`` by default)."""
    return _allocator(shape, np.dtype(dtype))


def use_allocator(allocator: Allocator | None) -> Allocator:
    """Install ``allocator`` (``None``: back to ``np.empty``) and return the previous one.

    Workers install a shared-memory slot allocator around each fetch; nothing else should.
    """
    global _allocator
    previous = _allocator
    _allocator = allocator or _empty
    return previous


# ---------------------------------------------------------------------------- collate


def collate_numpy_array_fn(batch, *, collate_fn_map=None):
    elem = batch[0]
    if elem.dtype.char in _STRING_OR_OBJECT_KINDS:
        raise TypeError(default_collate_err_msg_format.format(elem.dtype))
    dtype, shape = elem.dtype, elem.shape
    for i, a in enumerate(batch):
        if a.shape != shape:
            raise RuntimeError(
                "stack expects each tensor to be equal size, but got "
                f"{list(shape)} at entry 0 and {list(a.shape)} at entry {i}"
            )
        if a.dtype != dtype:
            dtype = _torch_result_type([x.dtype for x in batch])
            break
    out = allocate((len(batch),) + shape, dtype)
    np.stack(batch, out=out)
    return out


def collate_numpy_scalar_fn(batch, *, collate_fn_map=None):
    first = batch[0]
    if len(set(map(type, batch))) == 1:  # one scalar type: no promotion to work out
        out = allocate((len(batch),), first.dtype)
        out[:] = np.fromiter(batch, dtype=first.dtype, count=len(batch))
        return out
    out = np.array(batch)
    if out.dtype != batch[0].dtype and out.dtype.kind in "fc":  # mixed scalar types
        dtype = _torch_result_type([x.dtype for x in batch if isinstance(x, np.generic)])
        out = out.astype(dtype, copy=False)
    return out


def collate_float_fn(batch, *, collate_fn_map=None):
    out = allocate((len(batch),), np.float64)
    out[:] = batch
    return out


def collate_int_fn(batch, *, collate_fn_map=None):
    out = np.array(batch)
    kind = out.dtype.kind
    if kind == "f":  # ints mixed with floats: torch.tensor infers its default float32
        out = out.astype(np.float32)
    elif kind == "c":
        out = out.astype(np.complex64)
    elif kind not in "bi":  # ints beyond int64, or not numbers: fail rather than guess
        out = np.array(batch, dtype=np.int64)
    if _allocator is _empty:
        return out
    placed = allocate(out.shape, out.dtype)  # into the worker's slot, where it is sent from
    placed[...] = out
    return placed


def _torch_result_type(dtypes: list) -> np.dtype:
    """torch's promotion for a mixed batch: a float or complex dtype wins over integers
    and bools at its own width (int64 with float32 gives float32, not numpy's float64)."""
    inexact = [d for d in dtypes if d.kind in "fc"]
    return np.result_type(*(inexact or dtypes))


def collate_str_fn(batch, *, collate_fn_map=None):
    return batch


def collate_tensor_fn(batch, *, collate_fn_map=None):
    torch = sys.modules["torch"]
    elem = batch[0]
    if elem.is_nested:
        raise RuntimeError(
            "Batches of nested tensors are not currently supported by the default collate_fn; "
            "please provide a custom collate_fn to handle them appropriately."
        )
    if elem.layout in {
        torch.sparse_coo, torch.sparse_csr, torch.sparse_bsr, torch.sparse_csc, torch.sparse_bsc
    }:
        raise RuntimeError(
            "Batches of sparse tensors are not currently supported by the default collate_fn; "
            "please provide a custom collate_fn to handle them appropriately."
        )
    out = None
    if _allocator is not _empty and elem.device.type == "cpu":
        try:
            np_dtype = torch.empty((), dtype=elem.dtype).numpy().dtype
        except TypeError:  # bfloat16 and friends have no numpy dtype
            np_dtype = None
        if np_dtype is not None:
            out = torch.from_numpy(allocate((len(batch),) + tuple(elem.shape), np_dtype))
    return torch.stack(batch, 0, out=out)


default_collate_fn_map: dict[type | tuple[type, ...], Callable] = {
    np.ndarray: collate_numpy_array_fn,
    (np.bool_, np.number, np.object_): collate_numpy_scalar_fn,
    float: collate_float_fn,
    int: collate_int_fn,
    str: collate_str_fn,
    bytes: collate_str_fn,
}


def _register_torch() -> None:
    """Add torch.Tensor to the default map once torch has been imported by someone."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.Tensor not in default_collate_fn_map:
        default_collate_fn_map[torch.Tensor] = collate_tensor_fn


def _lookup(elem_type: type, elem: Any, collate_fn_map: dict) -> Callable | None:
    fn = collate_fn_map.get(elem_type)
    if fn is not None:
        return fn
    for key, fn in collate_fn_map.items():
        if isinstance(elem, key):
            return fn
    return None


def collate(batch, *, collate_fn_map: dict | None = None):
    """Collate a list of samples with ``collate_fn_map``, recursing into containers."""
    elem = batch[0]
    elem_type = type(elem)
    if collate_fn_map is not None:
        fn = _lookup(elem_type, elem, collate_fn_map)
        if fn is not None:
            return fn(batch, collate_fn_map=collate_fn_map)

    if isinstance(elem, collections.abc.Mapping):
        fields = {key: collate([d[key] for d in batch], collate_fn_map=collate_fn_map)
                  for key in elem}
        return _rebuild_mapping(elem, fields)
    # Fields go on as the tuples zip() makes, as in torch: a str field comes back a tuple.
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return elem_type(*(collate(s, collate_fn_map=collate_fn_map) for s in zip(*batch)))
    if isinstance(elem, collections.abc.Sequence):
        if len(set(map(len, batch))) > 1:  # map/set run in C: a tenth of a Python loop
            raise RuntimeError("each element in list of batch should be of equal size")
        items = [collate(s, collate_fn_map=collate_fn_map) for s in zip(*batch)]
        return _rebuild_sequence(elem, items)
    raise TypeError(default_collate_err_msg_format.format(elem_type))


def collate_arrays(batch):
    """:func:`default_collate` with numpy arrays out, whether torch is in use or not.

    >>> collate_arrays([(0, 1.5), (1, 2.5)])
    [array([0, 1]), array([1.5, 2.5])]
    """
    _register_torch()
    return collate(batch, collate_fn_map=default_collate_fn_map)


def default_collate(batch):
    """Collate a list of samples into a batch: torch's rules; tensors where torch is in
    use (see the module docstring), numpy arrays otherwise."""
    out = collate_arrays(batch)
    return _as_tensors(out) if _tensors_wanted() else out


# ---------------------------------------------------------------------------- convert


def default_convert(data):
    """Convert one sample without batching (the ``batch_size=None`` path), as torch does:
    tensors where torch is in use (see the module docstring), numpy arrays otherwise."""
    out = convert_arrays(data)
    return _as_tensors(out) if _tensors_wanted() else out


def convert_arrays(data):
    """:func:`default_convert` with numpy arrays out: numpy scalars become 0-d arrays,
    arrays stay (string/object arrays untouched), containers follow the collate rules,
    everything else comes back unchanged."""
    elem_type = type(data)
    if isinstance(data, np.ndarray):
        if type(data) is not np.ndarray and data.dtype.char not in _STRING_OR_OBJECT_KINDS:
            return data.view(np.ndarray)  # memmap and other subclasses become plain arrays
        return data
    if isinstance(data, (np.bool_, np.number)):
        return np.asarray(data)
    if isinstance(data, collections.abc.Mapping):
        return _rebuild_mapping(data, {key: convert_arrays(data[key]) for key in data})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return elem_type(*(convert_arrays(d) for d in data))
    if isinstance(data, tuple):
        return [convert_arrays(d) for d in data]
    if isinstance(data, collections.abc.Sequence) and not isinstance(data, (str, bytes)):
        return _rebuild_sequence(data, [convert_arrays(d) for d in data])
    return data


# ---------------------------------------------------------------------------- torch rule

_loader_rule = threading.local()  # .tensors during a DataLoader's collate_fn call (per
#                                   thread: loaders may collate in several): whether that
#                                   loader's torch is in use; unset: decide by sys.modules


def _tensors_wanted() -> bool:
    rule = getattr(_loader_rule, "tensors", None)
    return "torch" in sys.modules if rule is None else rule


def _as_tensors(batch):
    """``batch`` with its numpy arrays as tensors over the same memory (a slot's too)."""
    import torch  # noqa: F401  (a worker may not have it yet: someone uses torch's names)
    from loader._output import to_torch
    return to_torch(batch)


class LoaderCollate:
    """A user's ``collate_fn`` run under its DataLoader's torch decision (picklable, so
    the decision reaches spawned workers with the function)."""

    __slots__ = ("collate_fn", "tensors")

    def __init__(self, collate_fn: Callable, tensors: bool) -> None:
        self.collate_fn, self.tensors = collate_fn, tensors

    def __call__(self, batch):
        rule = _loader_rule
        previous = getattr(rule, "tensors", None)
        rule.tensors = self.tensors
        try:
            return self.collate_fn(batch)
        finally:
            rule.tensors = previous


def for_loader(collate_fn: Callable, torch_in_use: bool) -> Callable:
    """What a DataLoader's fetcher calls for ``collate_fn``: the array versions of the
    defaults (the loader converts their arrays itself), a user's function under
    :class:`LoaderCollate`."""
    if collate_fn is default_collate:
        return collate_arrays
    if collate_fn is default_convert:
        return convert_arrays
    return LoaderCollate(collate_fn, torch_in_use)


# ---------------------------------------------------------------------------- containers


def _rebuild_mapping(template, fields: dict):
    """A mapping like ``template`` holding ``fields``: same class where torch keeps it."""
    try:
        if isinstance(template, collections.abc.MutableMapping):
            clone = copy.copy(template)
            clone.update(fields)
            return clone
        return type(template)(fields)
    except TypeError:  # the mapping type cannot be built from a dict
        return fields


def _rebuild_sequence(template, items: list):
    """A sequence like ``template`` holding ``items``; tuples become lists, as in torch."""
    if isinstance(template, tuple):
        return items
    try:
        if isinstance(template, collections.abc.MutableSequence):
            clone = copy.copy(template)
            for i, item in enumerate(items):
                clone[i] = item
            return clone
        return type(template)(items)
    except TypeError:  # e.g. range: cannot be rebuilt from a list
        return items
