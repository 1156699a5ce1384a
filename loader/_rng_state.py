"""Random generator states as plain JSON values, and back.

A resume state must survive ``json.dumps``/``json.loads``, so every generator state in it
is stored in a JSON-safe form:

- ``numpy.random.Generator`` (any bit generator): its ``bit_generator.state`` dict, with
  arrays (MT19937's key) written as ``{"dtype": ..., "data": [...]}``; Python ints of any
  size are JSON numbers.
- ``torch.Generator``: ``{"torch": <base64 of get_state()'s bytes>}``: a string, so it is
  compact (6.7 kB for the CPU generator's 5056 bytes) and immutable.
- torch's global RNG: the same encoding of ``torch.get_rng_state()``.

torch is only touched when the object to capture or restore is torch's (so torch is
already imported).
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import numpy as np

__all__ = ["capture_generator", "is_generator", "restore_generator", "capture_torch_global",
           "restore_torch_global"]


def _is_torch_generator(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Generator)


def is_generator(obj: Any) -> bool:
    """Whether ``obj`` is a generator whose state can be captured (numpy's or torch's)."""
    return isinstance(obj, np.random.Generator) or _is_torch_generator(obj)


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _encode(v) for key, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"dtype": value.dtype.str, "data": value.tolist()}
    if isinstance(value, np.integer):
        return int(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"dtype", "data"}:
            return np.asarray(value["data"], dtype=np.dtype(value["dtype"]))
        return {key: _decode(v) for key, v in value.items()}
    return value


def _torch_bytes(state: Any) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _torch_tensor(text: str) -> Any:
    torch = sys.modules["torch"]
    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy()
    return torch.from_numpy(raw)


def capture_generator(generator: Any) -> dict:
    """The JSON-safe state of a numpy or torch generator."""
    if isinstance(generator, np.random.Generator):
        return _encode(generator.bit_generator.state)
    if _is_torch_generator(generator):
        return {"torch": _torch_bytes(generator.get_state())}
    raise TypeError(f"cannot capture the state of a {type(generator).__name__}")


def restore_generator(generator: Any, state: dict) -> None:
    """Put ``generator`` back into a state :func:`capture_generator` returned."""
    if "torch" in state:
        if not _is_torch_generator(generator):
            raise ValueError(
                "Cannot load this state: generator is a torch.Generator in the state but a "
                f"{type(generator).__name__} in this loader")
        generator.set_state(_torch_tensor(state["torch"]))
        return
    if not isinstance(generator, np.random.Generator):
        raise ValueError(
            "Cannot load this state: generator is a numpy Generator in the state but a "
            f"{type(generator).__name__} in this loader")
    expected = type(generator.bit_generator).__name__
    if state.get("bit_generator") != expected:
        raise ValueError(
            f"Cannot load this state: generator is {state.get('bit_generator')!r} in the "
            f"state but {expected!r} in this loader")
    generator.bit_generator.state = _decode(state)


def capture_torch_global() -> dict | None:
    """torch's global CPU RNG state, or None when torch is not imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"torch": _torch_bytes(torch.get_rng_state())}


def restore_torch_global(state: dict | None) -> dict | None:
    """Set torch's global CPU RNG to ``state``; returns the state it replaced."""
    if state is None:
        return None
    torch = sys.modules.get("torch")
    if torch is None:
        import torch  # the state was taken with torch in use: it is needed again
    previous = {"torch": _torch_bytes(torch.get_rng_state())}
    torch.set_rng_state(_torch_tensor(state["torch"]))
    return previous
