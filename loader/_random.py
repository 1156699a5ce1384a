"""Where randomness comes from: one rule for samplers, splits and worker seeds.

A ``generator`` argument may be ``None``, an ``int`` seed, a ``numpy.random.Generator``
or a ``torch.Generator``. :func:`as_source` turns any of them into a :class:`SeedSource`:

- ``torch.Generator``: draws are **torch's own** (``randperm``, ``randint``,
  ``multinomial`` on that generator; one int64 per base seed), so shuffles, splits and
  worker seeds are bit-identical to torch's for the same generator state.
- ``None`` while torch is imported: torch's own draws from torch's global RNG, so
  ``torch.manual_seed(s)`` gives exactly torch's order.
- ``int``: a private ``numpy.random.Generator`` seeded once, so successive epochs differ
  but a run is reproducible from the seed. ``numpy.random.Generator``: used as is.
- ``None`` without torch: seeds from numpy's global RNG (``np.random.seed`` governs it).

Where torch is in use, torch code that reads ``loader.generator`` (accelerate builds
torch's DataLoader from it) needs a ``torch.Generator``: :func:`torch_view` shows an int or
numpy generator as one, and remembers which source it stands for, so a loader rebuilt from
that attribute keeps drawing from the original stream.
"""

from __future__ import annotations

import copy
import sys
import weakref
from typing import Any

import numpy as np

from loader._rng_state import (_is_torch_generator, capture_generator, capture_torch_global,
                               restore_generator)

__all__ = ["SeedSource", "as_source", "draw_seed", "torch_view"]

_SEED_BOUND = 1 << 63  # seeds are non-negative int64, like torch's ``random_()`` draw
_SEED_MASK = (1 << 64) - 1  # torch.Generator.manual_seed takes 64 bits

# torch.Generator shown in place of an int / numpy generator -> the source it stands for
_STAND_INS: "weakref.WeakKeyDictionary[Any, SeedSource]" = weakref.WeakKeyDictionary()


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

    @property
    def follows_torch(self) -> bool:
        """Whether draws are torch's own: a torch.Generator, or none while torch is in use."""
        return self._kind == "torch" or (self._kind == "global" and "torch" in sys.modules)

    @property
    def torch_generator(self) -> Any:
        """The torch.Generator torch's draws use (None: torch's global RNG)."""
        return self._torch_gen

    def seed(self) -> int:
        """Draw one non-negative 63-bit seed, advancing the underlying generator."""
        if self._kind == "numpy":
            return int(self._rng.integers(0, _SEED_BOUND, dtype=np.int64))
        if self._kind == "torch":
            torch = sys.modules["torch"]
            return int(torch.empty((), dtype=torch.int64).random_(generator=self._torch_gen).item())
        return _draw_global_seed()

    def epoch_seed(self, first: int, epoch: int) -> int:
        """The base seed of epoch ``epoch`` of a persistent pool whose first was ``first``.

        torch's DataLoader draws a persistent pool's base seed once; a source that follows
        torch must not draw more, or the next epoch's shuffle would differ from torch's.
        Its later seeds are derived instead (still new every epoch). Other sources draw.
        """
        if not self.follows_torch:
            return self.seed()
        words = np.random.SeedSequence([first, epoch]).generate_state(2, np.uint64)
        return int(words[0]) % _SEED_BOUND

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

    def begin_pass(self, replay: dict | None = None, direct: bool = False) -> tuple[Any, dict]:
        """What one sampler pass draws from, and a JSON-safe record that replays the pass.

        The draw is a numpy Generator or a torch.Generator (the sampler draws numpy's or
        torch's way accordingly), or None: torch's global RNG, drawn from directly (only
        with ``direct``, as torch's SubsetRandomSampler and WeightedRandomSampler do). The
        record of a private generator is its state before the pass (a replay also leaves
        it where the pass left it, for the passes after); that of the global RNG is the
        seed drawn for the pass, or with ``direct`` torch's global state before it (the
        caller swaps it in around its draw, so a replay never moves the user's RNG).
        """
        if replay is not None:
            if replay.get("seed") is not None:
                seed = replay["seed"]
                return (_seeded_torch(seed) if replay.get("torch") else
                        np.random.default_rng(seed)), replay
            if replay.get("source") is not None:
                self.set_state(replay["source"])
                return self._private(), replay
            if replay.get("torch_rng") is not None:
                return None, replay
        if self._kind != "global":
            record = {"seed": None, "source": self.state()}  # before the pass draws anything
            return self._private(), record
        if "torch" in sys.modules:
            if direct:
                return None, {"seed": None, "source": None, "torch_rng": capture_torch_global()}
            seed = self.seed()  # torch's RandomSampler: one draw seeds the pass's generator
            return _seeded_torch(seed), {"seed": seed, "torch": True, "source": None}
        seed = self.seed()
        return np.random.default_rng(seed), {"seed": seed, "torch": False, "source": None}

    def _private(self) -> Any:
        return self._rng if self._kind == "numpy" else self._torch_gen


def _seeded_torch(seed: int) -> Any:
    torch = sys.modules.get("torch")
    if torch is None:
        import torch  # a state recorded with torch's draws replays them
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def as_source(generator: Any) -> SeedSource:
    """Normalise a ``generator`` argument; a :class:`SeedSource` passes through unchanged,
    and so does the source a :func:`torch_view` stand-in was made for."""
    if isinstance(generator, SeedSource):
        return generator
    if _is_torch_generator(generator):
        stood_for = _STAND_INS.get(generator)
        if stood_for is not None:
            return stood_for
    return SeedSource(generator)


def torch_view(generator: Any, source: SeedSource) -> Any:
    """``generator`` as torch code expects to read it: ``None`` and torch generators as
    they are; an int or numpy generator as a ``torch.Generator`` seeded from it (an int
    from itself, a numpy generator from a copy, which leaves the original untouched) that
    stands for ``source``. Without torch, ``generator`` unchanged."""
    torch = sys.modules.get("torch")
    if torch is None or generator is None or _is_torch_generator(generator):
        return generator
    if isinstance(generator, np.random.Generator):
        seed = int(copy.deepcopy(generator).integers(0, _SEED_BOUND, dtype=np.int64))
    else:
        seed = int(generator) & _SEED_MASK
    stand_in = torch.Generator()
    stand_in.manual_seed(seed)
    _STAND_INS[stand_in] = source
    return stand_in


def draw_seed(generator: Any = None) -> int:
    """One 63-bit seed from ``generator`` (see the module docstring for the rules)."""
    return as_source(generator).seed()
