"""Per-worker, per-epoch seeds: reproducible from one base seed, never shared.

The main process draws ``base_seed`` from the loader's generator at every epoch. Worker
``k`` seeds ``random`` and torch (when imported) with ``base_seed + k`` and numpy's global
RNG with :func:`generate_state` (torch's ``_generate_state``: a SeedSequence hash, so the
``random`` and numpy streams do not collide), and gets a private
``numpy.random.Generator`` as ``get_worker_info().rng``.

``seeding="per_batch"`` (:class:`BatchSeeder`) reseeds all of these before every batch
from (base seed, epoch, the batch's key) instead, so a batch's randomness no longer
depends on which worker made it, or on how many batches that worker made before.
"""

from __future__ import annotations

import random
import sys

import numpy as np

__all__ = ["BatchSeeder", "SEEDINGS", "batch_words", "generate_state", "seed_worker",
           "warm_before_fork"]

_MASK32 = 0xFFFFFFFF
_MASK63 = (1 << 63) - 1  # torch.manual_seed takes a non-negative int64
SEEDINGS = ("per_worker", "per_batch")  # the values DataLoader(seeding=...) accepts


def generate_state(base_seed: int, worker_id: int) -> np.ndarray:
    """Four uint32 words for ``np.random.seed``; equal to torch's ``_generate_state``."""
    entropy = [worker_id, base_seed & _MASK32, base_seed >> 32, 0]
    return np.random.SeedSequence(entropy).generate_state(4, np.uint32)


_warmed = False


def warm_before_fork() -> None:
    """Pay numpy's one-time legacy-RNG set-up (~25 ms) once in the parent, not in every
    forked worker; the parent's global RNG state is left exactly as it was."""
    global _warmed
    if not _warmed:
        state = np.random.get_state()
        np.random.seed(0)
        np.random.set_state(state)
        _warmed = True


def seed_worker(base_seed: int, worker_id: int) -> tuple[int, np.random.Generator]:
    """Seed every global RNG of this process; returns (seed, private numpy generator)."""
    seed = base_seed + worker_id
    state = generate_state(base_seed, worker_id)
    random.seed(seed)
    np.random.seed(state)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence(list(state), spawn_key=(1,)))
    return seed, rng


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (2^64 / the golden ratio)


def _splitmix(x: int) -> int:
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def batch_words(base_seed: int, epoch: int, key: tuple) -> list[int]:
    """Eight 64-bit words from (base seed, epoch, batch key): each input is folded into a
    splitmix64 chain, then the chain runs on (a few microseconds; SeedSequence costs ~10x)."""
    x = _splitmix(base_seed & _MASK64)
    for value in (epoch, len(key), *key):
        x = _splitmix(x ^ (value & _MASK64))
    out = []
    for _ in range(8):
        x = _splitmix(x)
        out.append(x)
    return out


class BatchSeeder:
    """``seeding="per_batch"``: before each batch, seed ``random``, numpy's global RNG,
    torch's (when imported) and the worker's ``rng`` from ``(base_seed, epoch, key)``.

    ``key`` names the batch: ``(0, position)`` for a map-style dataset (its place in the
    sampler's order, the same for any worker count), ``(1, worker_id, n)`` for the n-th
    batch of an iterable dataset's replica. With ``keep_user_state`` (the main process,
    ``num_workers=0``) the CPU global RNGs are put back after the batch, so the user's
    own random streams do not move (CUDA's generators are seeded where CUDA is already
    initialized, never saved).
    """

    __slots__ = ("_base", "_epoch", "_rng", "_keep", "_saved")

    def __init__(self, base_seed: int, epoch: int, rng: np.random.Generator | None,
                 keep_user_state: bool) -> None:
        self._base, self._epoch, self._rng = base_seed, epoch, rng
        self._keep = keep_user_state
        self._saved = None

    def before(self, key: tuple) -> None:
        torch = sys.modules.get("torch")
        if self._keep:
            self._saved = (random.getstate(), np.random.get_state(),
                           torch.get_rng_state() if torch is not None else None)
        w = batch_words(self._base, self._epoch, key)
        np.random.seed([w[0] & _MASK32, w[0] >> 32, w[1] & _MASK32, w[1] >> 32])
        random.seed(w[2])
        if torch is not None:
            seed = w[3] & _MASK63
            # the CPU generator directly: torch.manual_seed's device checks cost ~50x more
            torch.default_generator.manual_seed(seed)
            cuda = getattr(torch, "cuda", None)
            if cuda is not None and cuda.is_initialized():
                cuda.manual_seed_all(seed)
        if self._rng is not None:
            self._rng.bit_generator.state = {
                "bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                "state": {"state": w[4] << 64 | w[5], "inc": (w[6] << 64 | w[7]) | 1}}

    def after(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        if saved[2] is not None:
            sys.modules["torch"].set_rng_state(saved[2])
