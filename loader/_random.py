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

from loader._rng_state import capture_generator, restore_generator

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

    # ------------------------------------------------------------------ resume

    @property
    def kind(self) -> str:
        """Where draws come from: "numpy", "torch" (a private generator) or "global"."""
        return self._kind

    def state(self) -> dict | None:
        """The JSON-safe state of a private generator (numpy's or torch's); None for the
        global RNGs, which belong to the user (who restores them, if at all)."""
        if self._kind == "numpy":
            return capture_generator(self._rng)
        if self._kind == "torch":
            return capture_generator(self._torch_gen)
        return None

    def set_state(self, state: dict | None) -> None:
        """Put the private generator back into a :meth:`state`; None changes nothing."""
        if state is None:
            return
        if self._kind == "global":
            raise ValueError(
                "Cannot load this state: generator is a seeded generator in the state but "
                "None (the global RNG) in this loader")
        restore_generator(self._rng if self._kind == "numpy" else self._torch_gen, state)

    def begin_pass(self, replay: dict | None = None) -> tuple[np.random.Generator, dict]:
        """The numpy generator for one pass, and a JSON-safe record that replays the pass.

        The record of a private generator is its state before the pass (replaying it
        also leaves the generator where the pass left it, for the passes after); that of
        the global RNG is the seed drawn for the pass, so a replay never touches it.
        """
        if replay is not None:
            if replay.get("seed") is not None:
                return np.random.default_rng(replay["seed"]), replay
            if replay.get("source") is not None:
                self.set_state(replay["source"])
                return self.numpy(), replay
        if self._kind == "global":
            seed = self.seed()
            return np.random.default_rng(seed), {"seed": seed, "source": None}
        record = {"seed": None, "source": self.state()}  # before the pass draws anything
        return self.numpy(), record


def as_source(generator: Any) -> SeedSource:
    """Normalise a ``generator`` argument; a :class:`SeedSource` passes through unchanged."""
    if isinstance(generator, SeedSource):
        return generator
    return SeedSource(generator)


def draw_seed(generator: Any = None) -> int:
    """One 63-bit seed from ``generator`` (see the module docstring for the rules)."""
    return as_source(generator).seed()
