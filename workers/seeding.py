"""Per-worker, per-epoch seeds: reproducible from one base seed, never shared.

The main process draws ``base_seed`` from the loader's generator at every epoch. Worker
``k`` seeds ``random`` and torch (when imported) with ``base_seed + k`` and numpy's global
RNG with :func:`generate_state` (torch's ``_generate_state``: a SeedSequence hash, so the
``random`` and numpy streams do not collide), and gets a private
``numpy.random.Generator`` as ``get_worker_info().rng``.
"""

from __future__ import annotations

import random
import sys

import numpy as np

__all__ = ["generate_state", "seed_worker", "warm_before_fork"]

_MASK32 = 0xFFFFFFFF


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
