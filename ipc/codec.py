"""Batches in and out of pickle protocol 5, with their large buffers left in a slot.

Worker: :func:`encode` pickles a collated batch. Each out-of-band buffer that already lies
in the current slot (``default_collate`` wrote it there) is recorded as (offset, nbytes);
a large buffer elsewhere (a custom ``collate_fn``) is copied into the slot once; small
buffers travel in-band. Torch tensors are pickled as their numpy view and rebuilt with
``torch.from_numpy``, so they take the same path.

Main: :func:`decode` unpickles the header against zero-copy views of the slot.
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import numpy as np

from ipc.arena import INLINE_MAX, SlotWriter

__all__ = ["decode", "encode", "tensor_from_numpy"]


def tensor_from_numpy(array: np.ndarray) -> Any:
    """Rebuild a torch tensor on the receiving side (referenced by pickled batches)."""
    import torch
    return torch.from_numpy(array)


def _address(raw: memoryview) -> int:
    return np.frombuffer(raw, np.uint8).__array_interface__["data"][0]


class _TensorPickler(pickle.Pickler):
    """Sends CPU tensors as numpy arrays, so their storage rides the slot like any array."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules["torch"]
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and obj.layout == torch.strided \
                and not obj.requires_grad:
            try:
                return tensor_from_numpy, (obj.numpy(),)
            except (TypeError, RuntimeError):  # no numpy dtype (bfloat16), conjugate views...
                return NotImplemented
        return NotImplemented


def encode(batch: Any, writer: SlotWriter) -> tuple[bytes, tuple]:
    """Pickle ``batch``; returns the header and the (offset, nbytes) spans in the slot."""
    spans: list[tuple[int, int]] = []

    def place(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        nbytes = raw.nbytes
        if nbytes < INLINE_MAX:
            return True
        offset = writer.offset_of(_address(raw), nbytes)
        if offset is None:
            offset = writer.place(raw)
            if offset is None:  # no free slot: everything travels in-band
                return True
        spans.append((offset, nbytes))
        return False

    try:
        if "torch" in sys.modules:
            out = io.BytesIO()
            _TensorPickler(out, protocol=5, buffer_callback=place).dump(batch)
            header = out.getvalue()
        else:
            header = pickle.dumps(batch, protocol=5, buffer_callback=place)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise type(exc)(
            f"DataLoader worker could not send its batch to the main process: {exc}. "
            "collate_fn must return arrays, numbers, strings and containers of them "
            "(objects that pickle)") from exc
    return header, tuple(spans)


def decode(header: bytes, buffers: list | None) -> Any:
    """Unpickle a batch against its slot buffers (zero-copy views)."""
    return pickle.loads(header, buffers=buffers)
