"""Randomised end-to-end check of the transport: batch shapes from a few bytes to past a
ring record (the spill path) and past a slot's first size (growth), held batches, epochs
abandoned halfway, in and out of order, 1 to 5 workers, persistent or not, at a given or
the default prefetch depth; and the same with a worker SIGKILLed in each epoch under
``worker_restarts``. Every sample carries its index, so loss, repetition, reordering and
overwriting all show."""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytest

from loader import DataLoader

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


class Mixed:
    """Sample i is (i, payload); the payload's kind and size depend on i alone."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        r = random.Random(i)
        kind = r.randrange(4)
        if kind == 0:
            payload = np.full(r.randint(1, 50), i, np.int32)
        elif kind == 1:  # large arrays, and strings that push a record past the ring
            payload = {"a": np.full((3, r.choice([1, 5_000, 70_000])), i % 256, np.uint8),
                       "s": "x" * r.randint(0, 50_000)}
        elif kind == 2:
            payload = [i, float(i), str(i) * r.randint(1, 30)]
        else:
            payload = np.full(r.choice([10, 300_000]), i % 256, np.uint8)
        return i, payload


def keep_samples(samples):
    return samples


def intact(sample) -> bool:
    i, p = sample
    if isinstance(p, np.ndarray):
        return bool((p == (i % 256 if p.dtype == np.uint8 else i)).all())
    if isinstance(p, dict):
        return bool((p["a"] == i % 256).all()) and set(p["s"]) <= {"x"}
    return p[0] == i and p[2].startswith(str(i))


def take(batch, rng, order: list, held: list) -> None:
    """Note the batch's indices, check its samples, and keep it (40%) to check later."""
    order.extend(s[0] for s in batch)
    assert all(intact(s) for s in batch)
    if rng.random() < 0.4:
        held.append(batch)


def assert_whole(order: list, n: int, in_order: bool) -> None:
    assert sorted(order) == list(range(n)), "samples lost or repeated"
    if in_order:
        assert order == list(range(n)), "samples reordered"


def run_trial(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(50, 300)
    depth = rng.choice([1, 2, 4, None])  # None: the default, which deepens for small batches
    dl = DataLoader(Mixed(n), batch_size=rng.choice([1, 3, 7, 16]),
                    num_workers=rng.choice([1, 2, 3, 5]), collate_fn=keep_samples,
                    in_order=rng.random() < 0.6, persistent_workers=rng.random() < 0.5,
                    output="numpy", **({} if depth is None else {"prefetch_factor": depth}))
    for epoch in range(3):
        held, order = [], []
        for k, batch in enumerate(dl):
            take(batch, rng, order, held)
            if epoch == 2 and k == 5:
                break  # abandoned halfway
        if epoch < 2:
            assert_whole(order, n, dl.in_order)
        assert all(intact(s) for b in held for s in b), "a held batch changed"
    if dl.persistent_workers:
        dl.close()


FAST_SEEDS = (0, 1, 2, 3, 17)  # 17: the default depth, which goes to 8 and then 32


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_random_transport_trials(seed):
    run_trial(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [s for s in range(40) if s not in FAST_SEEDS])
def test_random_transport_trials_soak(seed):
    run_trial(seed)


def run_kill_trial(seed: int) -> None:
    """Two epochs at the default depth with ``worker_restarts``; in each, a random worker is
    SIGKILLed after a random batch. The epochs stay whole (in order where asked) and the
    batches held stay intact while replacements write into the slots."""
    rng = random.Random(seed)
    n = rng.randint(80, 300)
    dl = DataLoader(Mixed(n), batch_size=rng.choice([1, 3, 7]),
                    num_workers=rng.choice([1, 2, 3]), collate_fn=keep_samples,
                    in_order=rng.random() < 0.7, persistent_workers=rng.random() < 0.5,
                    output="numpy", worker_restarts=2)
    for _ in range(2):
        held, order = [], []
        it = iter(dl)
        kill_at = rng.randrange(1, max(2, len(dl) - 1))
        for k, batch in enumerate(it):
            take(batch, rng, order, held)
            if k == kill_at:
                try:
                    os.kill(rng.choice([p for p in it.worker_pids if p]), signal.SIGKILL)
                except ProcessLookupError:  # a worker killed before, not yet replaced
                    pass
        assert_whole(order, n, dl.in_order)
        assert all(intact(s) for b in held for s in b), "a held batch changed"
    if dl.persistent_workers:
        dl.close()


@pytest.mark.parametrize("seed", range(3))
def test_random_kill_trials(seed):
    run_kill_trial(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 40))
def test_random_kill_trials_soak(seed):
    run_kill_trial(seed)
