"""What a batch looks like when it reaches the user: numpy arrays or torch tensors.

The rule (also in the README): with ``output="auto"`` (the default) a DataLoader returns
torch tensors when torch had been imported by the time the DataLoader was built, and
numpy arrays otherwise, so a torch training loop changes only its import.
``output="torch"`` or ``output="numpy"`` forces one or the other. Conversion is zero-copy
(``torch.from_numpy``); string and object arrays stay numpy, as torch cannot hold them.
"""

from __future__ import annotations

import collections.abc
import copy
import sys
import warnings
from typing import Any

import numpy as np

from loader.collate import _rebuild_mapping

__all__ = ["OUTPUT_CHOICES", "pin", "pin_available", "resolve_output", "to_numpy", "to_torch"]

OUTPUT_CHOICES = ("auto", "numpy", "torch")
_NO_TORCH_KINDS = frozenset("SUOaVMm")  # dtype kinds torch.from_numpy refuses


def resolve_output(output: str | None) -> str:
    """What the iterators do to each batch: "torch", "numpy" (tensors become arrays) or
    "as-is" (auto without torch: numpy unless the samples themselves hold tensors)."""
    if output is None or output == "auto":
        return "torch" if "torch" in sys.modules else "as-is"
    if output == "numpy":
        return "numpy"
    if output == "torch":
        import torch  # noqa: F401  (fails clearly when torch is not installed)
        return "torch"
    raise ValueError(f"output should be one of {OUTPUT_CHOICES!r}, but got output={output!r}")


def _numpy_to_torch(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in _NO_TORCH_KINDS:
            return obj
        if not obj.flags.writeable:
            return _readonly_to_torch(obj)
        return sys.modules["torch"].from_numpy(obj.view(np.ndarray))
    return _NOT_A_LEAF


def _readonly_to_torch(array: np.ndarray) -> Any:
    """A tensor on a read-only array without torch's "not writable" warning. Such arrays
    come from Ray's object store (``worker_backend="ray"``): the memory is the batch's
    alone and mapped writable on this node, and Ray's read-only flag only guards the
    immutability of objects others may read, which no one else does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return sys.modules["torch"].from_numpy(array.view(np.ndarray))


def _torch_to_numpy(obj: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        return (tensor if tensor.device.type == "cpu" else tensor.cpu()).numpy()
    return _NOT_A_LEAF


_NOT_A_LEAF = object()
_ATOMS = (str, bytes, int, float, bool, type(None))


def _convert(obj: Any, leaf: Any) -> Any:
    """``obj`` with every leaf replaced by ``leaf(x)``, containers kept as collate keeps them."""
    t = type(obj)
    if t is list:
        return [_convert(x, leaf) for x in obj]
    if t is dict:
        return {k: _convert(v, leaf) for k, v in obj.items()}
    if t is tuple:
        return tuple(_convert(x, leaf) for x in obj)
    if t in _ATOMS:
        return obj
    converted = leaf(obj)
    if converted is not _NOT_A_LEAF:
        return converted
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return t(*(_convert(x, leaf) for x in obj))
    if isinstance(obj, collections.abc.Mapping):  # keeps the subclass, as collate does
        return _rebuild_mapping(obj, {k: _convert(v, leaf) for k, v in obj.items()})
    if isinstance(obj, collections.abc.MutableSequence):
        try:
            clone = copy.copy(obj)  # list.copy() would drop a list subclass
            for i, x in enumerate(obj):
                clone[i] = _convert(x, leaf)
            return clone
        except TypeError:
            return [_convert(x, leaf) for x in obj]
    return obj


def to_torch(obj: Any) -> Any:
    """Replace every numpy array inside ``obj`` by a tensor sharing its memory."""
    return _convert(obj, _numpy_to_torch)


def to_numpy(obj: Any) -> Any:
    """Replace every torch tensor inside ``obj`` by a numpy array (sharing memory on CPU)."""
    return _convert(obj, _torch_to_numpy)


def pin_available() -> bool:
    """Whether pinned memory means anything here: torch with an accelerator present."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


def warn_no_pin() -> None:
    warnings.warn(
        "'pin_memory' argument is set as true but no accelerator is found, "
        "then device pinned memory won't be used.",
        stacklevel=3,
    )


def pin(obj: Any) -> Any:
    """Pin every tensor (and every object with ``.pin_memory()``) inside ``obj``."""
    if hasattr(obj, "pin_memory") and not isinstance(obj, (str, bytes)):
        return obj.pin_memory()
    if isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, collections.abc.Mapping):  # keeps the subclass, as torch does
        return _rebuild_mapping(obj, {k: pin(v) for k, v in obj.items()})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(pin(x) for x in obj))
    if isinstance(obj, tuple):
        return tuple(pin(x) for x in obj)
    if isinstance(obj, collections.abc.Sequence):
        try:
            if isinstance(obj, collections.abc.MutableSequence):
                clone = copy.copy(obj)
                for i, x in enumerate(obj):
                    clone[i] = pin(x)
                return clone
            return type(obj)([pin(x) for x in obj])
        except TypeError:
            return [pin(x) for x in obj]
    return obj
