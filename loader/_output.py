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

__all__ = ["OUTPUT_CHOICES", "pin", "pin_available", "resolve_output", "to_torch"]

OUTPUT_CHOICES = ("auto", "numpy", "torch")
_NO_TORCH_KINDS = frozenset("SUOaVMm")  # dtype kinds torch.from_numpy refuses


def resolve_output(output: str | None) -> bool:
    """True when batches should be torch tensors."""
    if output is None or output == "auto":
        return "torch" in sys.modules
    if output == "numpy":
        return False
    if output == "torch":
        import torch  # noqa: F401  (fails clearly when torch is not installed)
        return True
    raise ValueError(f"output should be one of {OUTPUT_CHOICES!r}, but got output={output!r}")


def to_torch(obj: Any) -> Any:
    """Replace every numpy array inside ``obj`` by a tensor sharing its memory."""
    t = type(obj)
    if t is np.ndarray:
        if obj.dtype.kind in _NO_TORCH_KINDS:
            return obj
        return sys.modules["torch"].from_numpy(obj)
    if t is list:
        return [to_torch(x) for x in obj]
    if t is dict:
        return {k: to_torch(v) for k, v in obj.items()}
    if t is tuple:
        return tuple(to_torch(x) for x in obj)
    if t in (str, bytes, int, float, bool) or obj is None:
        return obj
    if isinstance(obj, np.ndarray):  # memmap and other subclasses
        return to_torch(obj.view(np.ndarray))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return t(*(to_torch(x) for x in obj))
    if isinstance(obj, collections.abc.Mapping):  # keeps the subclass, as collate does
        return _rebuild_mapping(obj, {k: to_torch(v) for k, v in obj.items()})
    if isinstance(obj, collections.abc.MutableSequence):
        try:
            clone = copy.copy(obj)  # list.copy() would drop a list subclass
            for i, x in enumerate(obj):
                clone[i] = to_torch(x)
            return clone
        except TypeError:
            return [to_torch(x) for x in obj]
    return obj


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
