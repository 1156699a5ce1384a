"""Samplers: ports of torch's sampler tests plus differential checks against torch itself."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
import torch.utils.data as tud
import torch.utils.data.distributed as tud_distributed

from loader._random import SeedSource
from loader.distributed import DistributedSampler
from loader.sampler import (
    BatchSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from helpers import raised, same_error

DATASET = list(range(100))
WEIGHTS = [0.1, 0.9, 0.4, 0.7, 3.0, 0.6]


def random_samplers(generator=None):
    """One of each random sampler, built alike from ``generator``."""
    return [
        RandomSampler(DATASET, num_samples=5, replacement=True, generator=generator),
        RandomSampler(DATASET, replacement=False, generator=generator),
        WeightedRandomSampler(WEIGHTS, num_samples=5, replacement=True, generator=generator),
        WeightedRandomSampler(WEIGHTS, num_samples=5, replacement=False, generator=generator),
        SubsetRandomSampler(range(10), generator=generator),
    ]


# --- base and sequential ----------------------------------------------------------------


def test_sampler_base_is_abstract_without_len():
    with pytest.raises(NotImplementedError):
        iter(Sampler())
    with pytest.raises(TypeError):
        len(Sampler())
    assert raised(lambda: Sampler([1]))[0] is raised(lambda: tud.Sampler([1]))[0] is TypeError


def test_samplers_are_generic():
    assert Sampler[int].__origin__ is Sampler
    assert DistributedSampler[int].__origin__ is DistributedSampler
    assert Sampler[int] in SequentialSampler.__orig_bases__


def test_sequential_sampler_matches_torch_and_follows_growth():
    data = list(range(7))
    ours, theirs = SequentialSampler(data), tud.SequentialSampler(data)
    assert list(ours) == list(theirs) and len(ours) == len(theirs) == 7
    data.append(7)
    assert list(ours) == list(range(8)) and len(ours) == 8


# --- RandomSampler ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"replacement": 0},
        {"replacement": None},
        {"num_samples": 0},
        {"num_samples": -3},
        {"num_samples": 1.5},
        {"num_samples": np.int64(3)},
        {"replacement": True, "num_samples": "3"},
    ],
)
def test_random_sampler_errors_like_torch(kwargs):
    same_error(
        lambda: RandomSampler(DATASET, **kwargs), lambda: tud.RandomSampler(DATASET, **kwargs)
    )


def test_random_sampler_messages():
    with pytest.raises(TypeError, match="should be a boolean value, but got replacement=0"):
        RandomSampler(DATASET, replacement=0)
    with pytest.raises(ValueError, match="but got num_samples=0"):
        RandomSampler([])


def sample_stat(sampler):
    counts = Counter(sampler)
    repeated = sum(v > 1 for v in counts.values())
    return repeated, min(counts), max(counts), sum(counts.values())


def test_random_sampler_statistics():
    n = len(DATASET)
    with_replacement = RandomSampler(DATASET, replacement=True, num_samples=n + 1, generator=0)
    repeated, lo, hi, total = sample_stat(with_replacement)
    assert repeated > 0 and lo >= 0 and hi < n and total == n + 1

    assert sample_stat(RandomSampler(DATASET)) == (0, 0, n - 1, n)
    assert sample_stat(RandomSampler(DATASET, num_samples=2 * n)) == (n, 0, n - 1, 2 * n)
    repeated, lo, hi, total = sample_stat(RandomSampler(DATASET, num_samples=n - 1))
    assert repeated == 0 and lo >= 0 and hi < n and total == n - 1
    assert sample_stat(RandomSampler(DATASET, num_samples=n + 1)) == (1, 0, n - 1, n + 1)


def test_random_sampler_full_permutations_then_a_truncated_one():
    drawn = list(RandomSampler(range(10), num_samples=25, generator=3))
    assert sorted(drawn[:10]) == sorted(drawn[10:20]) == list(range(10))
    assert len(set(drawn[20:])) == 5


def test_random_sampler_with_replacement_is_uniform():
    drawn = np.fromiter(RandomSampler(range(10), True, num_samples=50_000, generator=5), int)
    counts = np.bincount(drawn, minlength=10)
    assert counts.sum() == 50_000
    assert np.all(np.abs(counts - 5000) < 300)


@pytest.mark.parametrize("replacement", [False, True])
def test_random_sampler_len(replacement):
    for num_samples in (None, 5, 150):
        kwargs = {"replacement": replacement, "num_samples": num_samples}
        ours, theirs = RandomSampler(DATASET, **kwargs), tud.RandomSampler(DATASET, **kwargs)
        assert len(ours) == len(theirs) == len(list(ours))


def test_random_sampler_num_samples_follows_the_dataset():
    data = list(range(4))
    sampler = RandomSampler(data)
    data.extend([4, 5])
    assert len(sampler) == 6 and sorted(sampler) == list(range(6))


# --- reproducibility (test_sampler_reproducibility) ---------------------------------------


@pytest.mark.parametrize(
    "make_generator",
    [lambda: 42, lambda: np.random.default_rng(42), lambda: torch.Generator().manual_seed(42)],
)
def test_samplers_built_alike_from_a_seed_agree(make_generator):
    for a, b in zip(random_samplers(make_generator()), random_samplers(make_generator())):
        first = list(a)
        assert first == list(b)
        assert all(type(i) is int for i in first)


def test_seeded_sampler_changes_between_epochs():
    for sampler in random_samplers(SeedSource(7)) + random_samplers(7):
        epochs = [list(sampler) for _ in range(4)]
        assert any(e != epochs[0] for e in epochs[1:])


def test_unseeded_sampler_changes_between_epochs():
    for sampler in random_samplers():
        epochs = [list(sampler) for _ in range(4)]
        assert any(e != epochs[0] for e in epochs[1:])


def test_global_torch_seed_makes_unseeded_samplers_reproducible():
    for sampler in random_samplers():
        torch.manual_seed(0)
        first = list(sampler) + list(sampler)
        torch.manual_seed(0)
        assert list(sampler) + list(sampler) == first

        iterators, drawn = (iter(sampler), iter(sampler)), ([], [])
        for step in range(len(sampler)):
            for i in range(2):
                if step == 0:
                    torch.manual_seed(0)
                drawn[i].append(next(iterators[i]))
        assert drawn[0] == drawn[1]


def test_sampler_keeps_the_users_generator_object():
    gen = torch.Generator().manual_seed(1)
    for sampler in random_samplers(gen):
        assert sampler.generator is gen
    assert RandomSampler(DATASET).generator is None


def test_unknown_generator_type_is_rejected():
    with pytest.raises(TypeError, match="generator must be"):
        RandomSampler(DATASET, generator="seed")


# --- SubsetRandomSampler ------------------------------------------------------------------


def test_subset_random_sampler_permutes_the_given_indices():
    indices = [3, 17, 5, 99, 42]
    sampler = SubsetRandomSampler(indices, generator=0)
    assert len(sampler) == len(tud.SubsetRandomSampler(indices)) == 5
    assert sorted(sampler) == sorted(indices)


def test_subset_random_sampler_yields_python_ints_and_keeps_keys():
    drawn = list(SubsetRandomSampler(np.array([4, 8, 15]), generator=1))
    assert sorted(drawn) == [4, 8, 15] and all(type(i) is int for i in drawn)
    assert sorted(SubsetRandomSampler(["a", "b"])) == ["a", "b"]


# --- WeightedRandomSampler ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (WEIGHTS, 0),
        (WEIGHTS, -1),
        (WEIGHTS, True),
        (WEIGHTS, 2.0),
        (WEIGHTS, 3, 0),
        (WEIGHTS, 3, None),
        ([[1.0, 2.0]], 3),
        (5.0, 3),
    ],
)
def test_weighted_sampler_errors_like_torch(args):
    kind, _ = same_error(
        lambda: WeightedRandomSampler(*args), lambda: tud.WeightedRandomSampler(*args)
    )
    assert kind is ValueError


def test_weighted_sampler_messages():
    with pytest.raises(ValueError, match="should be a boolean value, but got replacement=0"):
        WeightedRandomSampler(WEIGHTS, 3, replacement=0)
    with pytest.raises(ValueError, match=r"weights have shape \(1, 2\)"):
        WeightedRandomSampler([[1.0, 2.0]], 3)


@pytest.mark.parametrize(
    "weights, num_samples, replacement",
    [
        ([1.0, -1.0], 2, True),
        ([0.0, 0.0], 2, True),
        ([1.0, float("inf")], 2, True),
        ([1.0, float("nan")], 2, True),
        ([1.0, 2.0], 3, False),
    ],
)
def test_weighted_sampler_bad_weights_fail_on_iteration_like_torch(
    weights, num_samples, replacement
):
    ours = WeightedRandomSampler(weights, num_samples, replacement)
    theirs = tud.WeightedRandomSampler(weights, num_samples, replacement)
    assert same_error(lambda: list(ours), lambda: list(theirs))[0] is RuntimeError


def test_weighted_sampler_rejects_empty_weights_on_iteration():
    with pytest.raises(RuntimeError, match="sum of probabilities <= 0"):
        list(WeightedRandomSampler([], 1))


def test_weighted_sampler_without_replacement_needs_enough_nonzero_weights():
    """numpy draws cannot fill up with zero-weight indices: an error; torch's draws (no
    generator while torch is in use) are torch's multinomial, which fills up."""
    sampler = WeightedRandomSampler([1.0, 0.0, 0.0], 2, replacement=False, generator=0)
    with pytest.raises(RuntimeError, match="only 1 of the 3 weights are nonzero"):
        list(sampler)
    torch.manual_seed(3)
    ours = list(WeightedRandomSampler([1.0, 0.0, 0.0], 2, replacement=False))
    torch.manual_seed(3)
    assert ours == list(tud.WeightedRandomSampler([1.0, 0.0, 0.0], 2, replacement=False))


def test_weighted_sampler_follows_the_weights():
    weights = np.array([0.0, 1.0, 3.0, 6.0])
    drawn = list(WeightedRandomSampler(weights, 40_000, generator=2))
    assert len(drawn) == 40_000 and all(type(i) is int for i in drawn)
    freq = np.bincount(drawn, minlength=4) / 40_000
    assert freq[0] == 0
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.015)


def test_weighted_sampler_without_replacement_draws_distinct_nonzero():
    sampler = WeightedRandomSampler(torch.tensor([0.5, 0.0, 2.0, 1.0, 4.0]), 4, replacement=False)
    for _ in range(20):
        drawn = list(sampler)
        assert sorted(drawn) == [0, 2, 3, 4]
    assert len(sampler) == 4


# --- BatchSampler -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch_size, drop_last",
    [(0, False), (-2, False), (True, False), (1.5, False), (None, False), (2, 0), (2, None)],
)
def test_batch_sampler_errors_like_torch(batch_size, drop_last):
    kind, _ = same_error(
        lambda: BatchSampler(range(4), batch_size, drop_last),
        lambda: tud.BatchSampler(range(4), batch_size, drop_last),
    )
    assert kind is ValueError


def test_batch_sampler_messages():
    with pytest.raises(ValueError, match="positive integer value, but got batch_size=True"):
        BatchSampler(range(4), True, False)
    with pytest.raises(ValueError, match="should be a boolean value, but got drop_last=1"):
        BatchSampler(range(4), 2, 1)


@pytest.mark.parametrize("drop_last", [False, True])
def test_batch_sampler_matches_torch(drop_last):
    for n, batch_size in itertools.product((0, 1, 5, 9, 10, 11), (1, 2, 3, 5, 10, 12)):
        source = SequentialSampler(range(n))
        ours = BatchSampler(source, batch_size, drop_last)
        theirs = tud.BatchSampler(tud.SequentialSampler(range(n)), batch_size, drop_last)
        batches = list(ours)
        assert batches == list(theirs), (n, batch_size)
        assert len(ours) == len(theirs) == len(batches)
        assert all(type(b) is list for b in batches)


def test_batch_sampler_over_an_unsized_iterable():
    sampler = BatchSampler((i * i for i in range(5)), 2, False)
    assert list(sampler) == [[0, 1], [4, 9], [16]]
    with pytest.raises(TypeError):
        len(sampler)


def test_batch_sampler_passes_any_index_objects_through():
    index_arrays = [np.arange(3), np.arange(3, 6), np.arange(6, 9)]
    batches = list(BatchSampler(index_arrays, 2, False))
    assert [len(b) for b in batches] == [2, 1]
    assert batches[1][0] is index_arrays[2]


def test_batch_sampler_over_a_random_sampler_covers_everything():
    batches = list(BatchSampler(RandomSampler(range(23), generator=0), 4, False))
    assert [len(b) for b in batches] == [4] * 5 + [3]
    assert sorted(itertools.chain.from_iterable(batches)) == list(range(23))


# --- DistributedSampler -------------------------------------------------------------------


def test_distributed_sampler_invalid_rank():
    dataset = list(range(10))
    with pytest.raises(ValueError, match="Invalid rank"):
        DistributedSampler(dataset, 3, 3)
    with pytest.raises(ValueError, match="Invalid rank"):
        DistributedSampler(dataset, 3, -1)


@pytest.mark.parametrize("num_replicas, rank", [(3, 3), (3, -1), (0, 0)])
def test_distributed_sampler_invalid_rank_like_torch(num_replicas, rank):
    kind, _ = same_error(
        lambda: DistributedSampler(range(10), num_replicas, rank),
        lambda: tud_distributed.DistributedSampler(range(10), num_replicas, rank),
    )
    assert kind is ValueError


def test_duplicating_data_with_drop_last():
    num_processes, num_batches = 4, 9
    data = list(range(num_batches))
    scanned = []
    for rank in range(num_processes):
        sampler = DistributedSampler(data, num_processes, rank)
        for batch in BatchSampler(sampler, num_batches // num_processes, drop_last=True):
            scanned.extend(data[i] for i in batch)
    assert len(scanned) == len(set(scanned))


@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_matches_torch_without_shuffle(drop_last):
    for n, replicas in itertools.product(range(12), range(1, 6)):
        for rank in range(replicas):
            ours = DistributedSampler(range(n), replicas, rank, shuffle=False, drop_last=drop_last)
            theirs = tud_distributed.DistributedSampler(
                range(n), replicas, rank, shuffle=False, drop_last=drop_last
            )
            assert list(ours) == list(theirs), (n, replicas, rank)
            assert (len(ours), ours.num_samples, ours.total_size) == (
                len(theirs),
                theirs.num_samples,
                theirs.total_size,
            )


def test_distributed_sampler_pads_by_cycling_from_the_start():
    shares = [list(DistributedSampler(range(2), 5, r, shuffle=False)) for r in range(5)]
    assert shares == [[0], [1], [0], [1], [0]]


@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_shuffle_partitions_one_permutation(drop_last):
    n, replicas = 23, 4
    samplers = [
        DistributedSampler(range(n), replicas, rank, seed=5, drop_last=drop_last)
        for rank in range(replicas)
    ]
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        shares = [list(s) for s in samplers]
        assert len({len(share) for share in shares}) == 1
        drawn = list(itertools.chain.from_iterable(shares))
        assert all(type(i) is int for i in drawn)
        if drop_last:
            assert len(drawn) == 20 and len(set(drawn)) == 20
        else:
            assert len(drawn) == 24 and set(drawn) == set(range(n))
        assert drawn != sorted(drawn)


def test_distributed_sampler_order_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        sampler = DistributedSampler(range(50), 2, 1, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(5, 0)
    assert order(0, 1) == order(1, 0)  # as in torch, only seed + epoch counts
    unchanged = DistributedSampler(range(50), 2, 1)
    assert list(unchanged) == list(unchanged)


def test_distributed_sampler_defaults_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    sampler = DistributedSampler(range(9), shuffle=False)
    assert (sampler.num_replicas, sampler.rank, list(sampler)) == (3, 2, [2, 5, 8])


def test_distributed_sampler_defaults_from_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    sampler = DistributedSampler(range(8), shuffle=False)
    assert (sampler.num_replicas, sampler.rank, list(sampler)) == (4, 1, [1, 5])


def test_distributed_sampler_without_any_distributed_setup(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="Requires distributed package to be available"):
        DistributedSampler(range(8))
    with pytest.raises(RuntimeError, match="Requires distributed package to be available"):
        DistributedSampler(range(8), num_replicas=2)
