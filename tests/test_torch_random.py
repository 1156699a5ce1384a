"""Shuffles and splits where torch is in use, differential against torch itself: from a
``torch.Generator``, or from torch's global RNG after ``torch.manual_seed``, every index
is torch's, in torch's order, and the generator is left in torch's state (the next draw
matches too). Int seeds and numpy generators keep their numpy streams."""

import numpy as np
import pytest
import torch
import torch.utils.data as tud
import torch.utils.data.distributed as tud_distributed

import loader
from loader import DataLoader

from helpers import frozen_heap  # noqa: F401 (autouse: keeps the leak check's gc cheap)

SEEDS = (0, 1, 12345)


def same_draws(make_ours, make_theirs, seed, passes=2):
    """Both samplers (or calls), run ``passes`` times after the same seed, yield the
    same indices and leave the same global and generator state behind."""
    results = []
    for make in (make_ours, make_theirs):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed + 1)
        subject = make(g)
        drawn = [list(subject) for _ in range(passes)]
        results.append((drawn, torch.get_rng_state(), g.get_state()))
    (ours, our_global, our_g), (theirs, their_global, their_g) = results
    assert ours == theirs
    assert torch.equal(our_global, their_global), "torch's global RNG advanced differently"
    assert torch.equal(our_g, their_g), "the generator advanced differently"
    return ours


RANDOM_SAMPLER_CASES = [
    dict(replacement=False), dict(replacement=False, num_samples=7),
    dict(replacement=False, num_samples=25), dict(replacement=False, num_samples=30),
    dict(replacement=True), dict(replacement=True, num_samples=5),
    dict(replacement=True, num_samples=64), dict(replacement=True, num_samples=70),
]


@pytest.mark.parametrize("with_generator", [True, False], ids=["generator", "global"])
def test_random_sampler_is_torchs(with_generator):
    data = list(range(10))
    for kwargs in RANDOM_SAMPLER_CASES:
        for seed in SEEDS:
            def make(module):
                return lambda g: module.RandomSampler(
                    data, generator=g if with_generator else None, **kwargs)
            drawn = same_draws(make(loader), make(tud), seed)
            assert all(type(i) is int for i in drawn[0]), kwargs


@pytest.mark.parametrize("with_generator", [True, False], ids=["generator", "global"])
def test_subset_and_weighted_samplers_are_torchs(with_generator):
    indices = [3, 17, 5, 99, 42, 8, 0, 61]
    weights = [0.1, 0.9, 0.4, 0.7, 3.0, 0.6, 0.0, 2.0]
    makers = [
        lambda m, g: m.SubsetRandomSampler(indices, generator=g),
        lambda m, g: m.WeightedRandomSampler(weights, 12, replacement=True, generator=g),
        lambda m, g: m.WeightedRandomSampler(weights, 5, replacement=False, generator=g),
        lambda m, g: m.WeightedRandomSampler(weights, 8, replacement=False, generator=g),
    ]
    for make in makers:
        for seed in SEEDS:
            same_draws(lambda g: make(loader, g if with_generator else None),
                       lambda g: make(tud, g if with_generator else None), seed)


def test_random_split_is_torchs():
    splits = loader.random_split(range(10), [3, 7], generator=torch.Generator().manual_seed(1))
    assert [list(s) for s in splits] == [[5, 6, 1], [2, 0, 8, 9, 3, 7, 4]]
    for lengths in ([3, 7], [0.3, 0.7], [0.5, 0.25, 0.25], [1, 1, 8]):
        for seed in SEEDS:
            for with_generator in (True, False):
                def split(module):
                    def run(g):
                        g = g if with_generator else None
                        kwargs = {"generator": g} if g is not None else {}
                        return [list(s) for s in module.random_split(range(10), lengths,
                                                                     **kwargs)]
                    return run
                same_draws(lambda g: split(loader)(g), lambda g: split(tud)(g), seed,
                           passes=1)


@pytest.mark.parametrize("n", [10, 11])
def test_distributed_sampler_order_is_torchs(n):
    """Mixed ranks (torch's DistributedSampler on some, ours on others) must agree."""
    data = list(range(n))
    for shuffle in (True, False):
        for drop_last in (True, False):
            for seed in (0, 7):
                for rank in range(3):
                    kwargs = dict(num_replicas=3, rank=rank, shuffle=shuffle, seed=seed,
                                  drop_last=drop_last)
                    ours = loader.DistributedSampler(data, **kwargs)
                    theirs = tud_distributed.DistributedSampler(data, **kwargs)
                    for epoch in range(3):
                        ours.set_epoch(epoch)
                        theirs.set_epoch(epoch)
                        assert list(ours) == list(theirs), (kwargs, epoch)
                        assert len(ours) == len(theirs)


def shuffled_epochs(module, epochs=3, **kwargs):
    dl = module.DataLoader(list(range(20)), batch_size=4, shuffle=True, **kwargs)
    orders = [[int(x) for batch in dl for x in batch] for _ in range(epochs)]
    if hasattr(dl, "close"):
        dl.close()
    return orders


@pytest.mark.parametrize("workers", [
    {}, {"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}],
    ids=["0", "2", "2-persistent"])
def test_dataloader_shuffle_after_manual_seed_is_torchs(workers):
    """torch draws base_seed, then the sampler's seed, from the global RNG per epoch (a
    persistent pool: base_seed only once); the orders and the RNG left behind match."""
    results = []
    for module in (loader, tud):
        torch.manual_seed(7)
        orders = shuffled_epochs(module, **workers)
        results.append((orders, torch.get_rng_state()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    assert len({tuple(o) for o in results[0][0]}) == 3


def test_dataloader_shuffle_with_a_torch_generator_is_torchs():
    results = []
    for module in (loader, tud):
        g = torch.Generator().manual_seed(11)
        results.append((shuffled_epochs(module, generator=g), g.get_state()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_int_seeds_and_numpy_generators_keep_numpy_streams():
    """Today's behaviour for our own generator kinds, unchanged by torch being in use."""
    assert list(loader.RandomSampler(range(10), generator=5)) == \
        np.random.default_rng(5).permutation(10).tolist()
    assert list(loader.SubsetRandomSampler([7, 8, 9], generator=np.random.default_rng(2))) == \
        [[7, 8, 9][i] for i in np.random.default_rng(2).permutation(3)]
    order = np.random.default_rng(3).permutation(10).tolist()
    assert [list(s) for s in loader.random_split(range(10), [4, 6], generator=3)] == \
        [order[:4], order[4:]]
    rng = np.random.default_rng(9)
    rng.integers(0, 1 << 63, dtype=np.int64)  # the loader's base seed comes first
    expected = rng.permutation(20).tolist()
    assert shuffled_epochs(loader, epochs=1, generator=9)[0] == expected
