"""Where randomness comes from: one rule for samplers, splits and worker seeds.

A ``generator`` argument may be ``None``, an ``int`` seed, a ``numpy.random.Generator``
or a ``torch.Generator``. :func:`as_source` turns any of them into a :class:`SeedSource`,
which hands out 63-bit seeds and numpy generators:

- ``int``: a private ``numpy.random.Generator`` seeded once, so successive epochs differ
  but a run is reproducible from the seed.
- ``numpy.random.Generator``: used as is; its state advances as torch's generator would.
- ``torch.Generator``: every draw takes one int64 from it (as torch does for ``base_seed``),
  so seeding that generator makes every result reproducible.
- ``None``: every draw takes a seed from the global RNG of torch when torch is imported
  (so ``torch.manual_seed`` governs it, as in torch), else from numpy's global RNG
  (so ``np.random.seed`` governs it).

Bit-identical shuffles with torch are not a goal; the same statistics and the same
reproducibility rules are.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["SeedSource", "as_source", "draw_seed"]

_SEED_BOUND = 1 << 63  # seeds are non-negative int64, like torch's ``random_()`` draw


def _is_torch_generator(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Generator)


def _draw_global_seed() -> int:
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.empty((), dtype=torch.int64).random_().item())
    return int(np.random.randint(0, _SEED_BOUND, dtype=np.int64))


class SeedSource:
    """Seeds and numpy generators drawn from one user-facing ``generator`` argument."""

    __slots__ = ("_kind", "_rng", "_torch_gen")

    def __init__(self, generator: Any = None) -> None:
        self._rng: np.random.Generator | None = None
        self._torch_gen = None
        if generator is None:
            self._kind = "global"
        elif isinstance(generator, np.random.Generator):
            self._kind, self._rng = "numpy", generator
        elif isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
            self._kind, self._rng = "numpy", np.random.default_rng(int(generator))
        elif _is_torch_generator(generator):
            self._kind, self._torch_gen = "torch", generator
        else:
            raise TypeError(
                "generator must be None, an int seed, a numpy.random.Generator or a "
                f"torch.Generator, but got {type(generator).__name__}"
            )

    def seed(self) -> int:
        """Draw one non-negative 63-bit seed, advancing the underlying generator."""
        if self._kind == "numpy":
            return int(self._rng.integers(0, _SEED_BOUND, dtype=np.int64))
        if self._kind == "torch":
            torch = sys.modules["torch"]
            return int(torch.empty((), dtype=torch.int64).random_(generator=self._torch_gen).item())
        return _draw_global_seed()

    def numpy(self) -> np.random.Generator:
        """A numpy generator for one pass (one ``__iter__`` of a sampler, one split).

        For a numpy-backed source it is the shared generator itself, so consecutive
        passes continue one stream; otherwise a fresh generator from one drawn seed.
        """
        if self._kind == "numpy":
            return self._rng
        return np.random.default_rng(self.seed())


def as_source(generator: Any) -> SeedSource:
    """Normalise a ``generator`` argument; a :class:`SeedSource` passes through unchanged."""
    if isinstance(generator, SeedSource):
        return generator
    return SeedSource(generator)


def draw_seed(generator: Any = None) -> int:
    """One 63-bit seed from ``generator`` (see the module docstring for the rules)."""
    return as_source(generator).seed()
