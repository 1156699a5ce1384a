"""Batches in and out of a worker's slot: a layout for plain batches, pickle for the rest.

Worker side, :func:`encode` (the slot is the current one of ``SlotWriter``):

- **Layout** (``LAYOUT``): a batch made only of lists, tuples, dicts and numpy arrays
  (or CPU torch tensors) of plain dtypes, with str / bytes / int / float / bool / None
  leaves, which is what ``default_collate`` returns, becomes a tree of plain tuples whose
  array leaves are (dtype, shape, offset, strides) in the slot; it rides inside the Result
  message itself. Arrays ``default_collate`` wrote into the slot, and tensors over them
  (``default_collate`` called by a user's ``collate_fn`` where torch is in use), are
  described where they are; arrays elsewhere (a custom ``collate_fn``) are copied in once.
  A plain value is its own node, and a list or tuple of plain values one node (the strings
  ``default_collate`` leaves as they are), so only containers of arrays cost per element.
- **Pickle** (``PICKLE``): anything else goes through pickle protocol 5; out-of-band
  buffers of 64 KiB and more land in the slot, smaller ones travel in-band. Torch tensors
  are pickled as their numpy view and rebuilt with ``torch.from_numpy``.
- Without a free slot, the batch is pickled with every buffer in-band (``INBAND``).

Main side, :func:`decode` rebuilds the batch as zero-copy arrays on a slot lease.
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import numpy as np

from loader.ipc.arena import INLINE_MAX, Lease, SlotWriter

__all__ = ["INBAND", "LAYOUT", "PICKLE", "decode", "encode", "tensor_from_numpy"]

LAYOUT, PICKLE, INBAND = 0, 1, 2  # how a Result's payload is encoded

# layout node tags; a node is a tuple (tag, ...), and any other leaf is a plain value
_ARRAY, _LIST, _TUPLE, _DICT, _VALUES, _TENSOR = range(6)
_SMALL = 4  # shorter containers of plain values are not worth the type scan
_PLAIN_KINDS = frozenset("biufc")  # dtype kinds a layout may describe (no object/str/void)
_VALUE_TYPES = frozenset((str, bytes, int, float, bool, type(None)))


class _NotPlain(Exception):
    """The batch holds something a layout cannot describe: use pickle."""


def tensor_from_numpy(array: np.ndarray) -> Any:
    """Rebuild a torch tensor on the receiving side (referenced by pickled batches)."""
    import torch
    return torch.from_numpy(array)


# ---------------------------------------------------------------------------- worker


def _array_node(tag: int, array: np.ndarray, writer: SlotWriter) -> tuple:
    dtype = array.dtype
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None:
        raise _NotPlain
    offset, strides = writer.locate(array)
    return (tag, dtype.str, array.shape, offset, strides)


def _tensor_node(tensor: Any, writer: SlotWriter) -> tuple:
    """A plain CPU tensor as the array it views (no copy when it lies in the slot)."""
    torch = sys.modules["torch"]
    if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.requires_grad:
        raise _NotPlain
    try:
        array = tensor.numpy()
    except (TypeError, RuntimeError):  # no numpy dtype (bfloat16), conjugate views...
        raise _NotPlain from None
    return _array_node(_TENSOR, array, writer)


def _layout(obj: Any, writer: SlotWriter, tensor_type: Any = None) -> Any:
    t = type(obj)
    if t is np.ndarray:
        return _array_node(_ARRAY, obj, writer)
    if t is list or t is tuple:
        if len(obj) > _SMALL and set(map(type, obj)) <= _VALUE_TYPES:
            return (_VALUES, obj)  # e.g. the strings default_collate leaves as they are
        return (_LIST if t is list else _TUPLE,
                [x if type(x) in _VALUE_TYPES else _layout(x, writer, tensor_type)
                 for x in obj])
    if t is dict:
        keys = list(obj)
        if not set(map(type, keys)) <= _VALUE_TYPES:
            raise _NotPlain
        return (_DICT, keys, [_layout(obj[k], writer, tensor_type) for k in keys])
    if t in _VALUE_TYPES:
        return obj  # a plain value is its own node (only nodes are tuples)
    if t is tensor_type:
        return _tensor_node(obj, writer)
    raise _NotPlain


class _TensorPickler(pickle.Pickler):
    """Sends CPU tensors as numpy arrays, so their storage rides the slot like any array."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules["torch"]
        if type(obj) is torch.Tensor and obj.device.type == "cpu" \
                and obj.layout == torch.strided and not obj.requires_grad:
            try:
                return tensor_from_numpy, (obj.numpy(),)
            except (TypeError, RuntimeError):  # no numpy dtype (bfloat16), conjugate views...
                return NotImplemented
        return NotImplemented


def _pickle(batch: Any, writer: SlotWriter) -> tuple[bytes, tuple]:
    spans: list[tuple[int, int]] = []

    def place(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        nbytes = raw.nbytes
        if nbytes < INLINE_MAX or not writer.has_slot:
            return True
        offset = writer.offset_of(np.frombuffer(raw, np.uint8).__array_interface__["data"][0],
                                  nbytes)
        spans.append((writer.place(raw) if offset is None else offset, nbytes))
        return False

    try:
        if "torch" in sys.modules:
            out = io.BytesIO()
            _TensorPickler(out, protocol=5, buffer_callback=place).dump(batch)
            return out.getvalue(), tuple(spans)
        return pickle.dumps(batch, protocol=5, buffer_callback=place), tuple(spans)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise type(exc)(
            f"DataLoader worker could not send its batch to the main process: {exc}. "
            "collate_fn must return arrays, numbers, strings and containers of them "
            "(objects that pickle)") from exc


def encode(batch: Any, writer: SlotWriter) -> tuple[int, Any, tuple]:
    """(codec, payload, spans) for ``batch``: the layout tree, or pickled bytes whose
    out-of-band buffers are at ``spans`` (offset, nbytes) in the slot."""
    if writer.has_slot:
        torch = sys.modules.get("torch")
        try:
            return LAYOUT, _layout(batch, writer, torch.Tensor if torch else None), ()
        except _NotPlain:
            pass
        payload, spans = _pickle(batch, writer)
        return (PICKLE if spans else INBAND), payload, spans
    payload, _ = _pickle(batch, writer)
    return INBAND, payload, ()


# ---------------------------------------------------------------------------- main


_DTYPES: dict[str, np.dtype] = {}  # dtype strings seen, parsed once


def _array(node: tuple, lease: Lease | None) -> np.ndarray:
    _, code, shape, offset, strides = node
    dtype = _DTYPES.get(code)
    if dtype is None:
        dtype = _DTYPES[code] = np.dtype(code)
    if lease is None:  # the batch wrote nothing into its slot: only empty arrays
        return np.empty(shape, dtype)
    return np.ndarray(shape, dtype, buffer=lease, offset=offset, strides=strides)


def _rebuild(node: Any, lease: Lease) -> Any:
    if type(node) is not tuple:
        return node  # a plain value
    tag = node[0]
    if tag == _ARRAY:
        return _array(node, lease)
    if tag == _LIST:
        return [x if type(x) is not tuple else _rebuild(x, lease) for x in node[1]]
    if tag == _DICT:
        return {k: x if type(x) is not tuple else _rebuild(x, lease)
                for k, x in zip(node[1], node[2])}
    if tag == _TUPLE:
        return tuple([x if type(x) is not tuple else _rebuild(x, lease) for x in node[1]])
    if tag == _VALUES:
        return node[1]  # freshly unpickled: nobody else holds it
    return tensor_from_numpy(_array(node, lease))  # _TENSOR


def decode(codec: int, payload: Any, lease: Lease | None, spans: tuple) -> Any:
    """The batch in ``payload``, its arrays zero-copy views on ``lease``."""
    if codec == LAYOUT:
        return _rebuild(payload, lease)
    if codec == PICKLE:
        return pickle.loads(payload, buffers=[lease[off:off + n] for off, n in spans])
    return pickle.loads(payload)
