"""seeding="per_batch": a batch's randomness is a function of (base seed, epoch, batch
position), so it is the same for every num_workers (0 included), survives a resume bit
for bit, and with num_workers=0 leaves the user's own RNGs where they were."""

from __future__ import annotations

import random

import numpy as np
import pytest

from helpers import frozen_heap  # noqa: F401  (module-scoped autouse fixture)
from resume_helpers import (Augmented, IteratorStream, WorkerRngItems, json_round_trip,
                            make_loader)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def _augmented(num_workers, seeding="per_batch", **kw):
    return make_loader(Augmented(48), num_workers=num_workers, batch_size=4, shuffle=True,
                       generator=21, seeding=seeding, **kw)


def test_same_values_for_every_worker_count():
    import torch  # noqa: F401  (in use: its global RNG is seeded per batch too)
    runs = {}
    for num_workers in (0, 1, 2, 3):
        dl = _augmented(num_workers)
        runs[num_workers] = [list(dl), list(dl)]  # two epochs
    assert runs[0] == runs[1] == runs[2] == runs[3]
    epoch0, epoch1 = runs[0]
    assert epoch0 != epoch1  # epochs differ: new order and new draws
    values = [s[1] for b in epoch0 for s in b]
    assert len(set(values)) == len(values)  # no two batches share a seed
    assert all(len(s) == 4 for b in epoch0 for s in b)  # random, numpy and torch draws


def test_default_seeding_is_per_worker():
    """Without the opt-in, torch's rule: each worker seeds once per epoch, so values
    depend on the worker count."""
    one = list(_augmented(1, seeding="per_worker"))
    two = list(_augmented(2, seeding="per_worker"))
    assert [[s[0] for s in b] for b in one] == [[s[0] for s in b] for b in two]
    assert one != two


@pytest.mark.parametrize("before,after", [(2, 2), (0, 3), (3, 0), (2, 1)])
def test_resume_reproduces_values_bit_for_bit(before, after):
    dl = _augmented(before)
    it = iter(dl)
    for _ in range(5):
        next(it)
    state = dl.state_dict()
    rest = list(it) + list(dl)
    resumed = _augmented(after)
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) + list(resumed) == rest


def test_out_of_order_values_do_not_depend_on_arrival():
    ordered = sorted(list(_augmented(2)), key=lambda b: b[0][0])
    shuffled = sorted(list(_augmented(2, in_order=False)), key=lambda b: b[0][0])
    by_first = {b[0][0]: b for b in ordered}
    assert all(by_first[b[0][0]] == b for b in shuffled)


def test_worker_rng_is_reseeded_per_batch():
    runs = [list(make_loader(WorkerRngItems(30), num_workers=n, batch_size=3, generator=3,
                             seeding="per_batch")) for n in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]
    per_worker = [list(make_loader(WorkerRngItems(30), num_workers=n, batch_size=3,
                                   generator=3)) for n in (1, 2)]
    assert per_worker[0] != per_worker[1]


def test_main_process_rngs_are_not_disturbed():
    """num_workers=0: the batches are seeded, the user's streams continue as if the
    loader had drawn nothing."""
    import torch

    def user_draws():
        return [random.random(), float(np.random.rand()), float(torch.rand(1))]

    def seed_all():
        random.seed(5)
        np.random.seed(5)
        torch.manual_seed(5)

    seed_all()
    expected = [user_draws() for _ in range(3)]
    seed_all()
    dl = make_loader(Augmented(12), num_workers=0, batch_size=4, seeding="per_batch",
                     generator=3)
    got = []
    for batch in dl:
        assert batch
        got.append(user_draws())
    assert got == expected


def test_iterable_per_batch_seeds_by_replica_and_resumes():
    """For an IterableDataset the key is (worker, n-th batch of its replica): a resume
    with the same workers repeats the values; the shuffled stream's RNG is reseeded."""
    def make():
        return make_loader(IteratorStream([30, 30], shuffle=True), num_workers=2,
                           batch_size=3, seeding="per_batch", generator=8)
    dl = make()
    it = iter(dl)
    for _ in range(4):
        next(it)
    state = dl.state_dict()
    rest = list(it)
    resumed = make()
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) == rest
    assert make_loader(IteratorStream([60], shuffle=True), num_workers=0, batch_size=3,
                       seeding="per_batch", generator=8).state_dict()["seeding"] == "per_batch"
