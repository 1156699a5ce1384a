"""Dataset libraries that shard by worker, and torch's DistributedSampler, with our loader:
every sample exactly once per epoch across all ranks and workers, as tensors (torch is in
use here). HF ``datasets`` and webdataset ask ``torch.utils.data.get_worker_info()``
which shard is theirs; if our workers were invisible to it, every worker would read every
shard (1,000 rows would arrive as 2,000 with 2 workers)."""

from collections import Counter

import datasets
import pytest
import torch
import torch.utils.data.distributed as tud_distributed
import webdataset as wds

from loader import DataLoader

from helpers import frozen_heap, start_method_servers  # noqa: F401 (autouse fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 on 2 cores

ROWS = 1_000
SHARDS, PER_SHARD = 4, 50
WORKERS = [0, 1, 2, 3]


def assert_exactly_once(seen, expected):
    counts = Counter(seen)
    doubled = sorted(k for k, c in counts.items() if c > 1)
    missing = sorted(set(expected) - set(counts))
    assert not doubled and not missing and len(seen) == len(expected), (
        f"{len(seen)} samples for {len(expected)}: doubled {doubled[:10]}, "
        f"missing {missing[:10]}")


@pytest.fixture(scope="module")
def hf_rows():
    return datasets.Dataset.from_dict({"idx": list(range(ROWS)),
                                       "x": [[float(i)] * 4 for i in range(ROWS)]})


@pytest.mark.parametrize("workers", WORKERS)
def test_hf_map_style_dataset(hf_rows, workers):
    dl = DataLoader(hf_rows, batch_size=64, shuffle=True, num_workers=workers)
    for _ in range(2):
        seen = []
        for batch in dl:
            assert type(batch["idx"]) is torch.Tensor and batch["idx"].dtype == torch.int64
            assert isinstance(batch["x"], list) and type(batch["x"][0]) is torch.Tensor
            seen += batch["idx"].tolist()
        assert_exactly_once(seen, range(ROWS))


def epochs_of(dl, field, epochs=2):
    """The samples of each epoch (persistent workers: the same replicas, re-iterated)."""
    result = []
    for _ in range(epochs):
        seen = []
        for batch in dl:
            values = batch[field]
            assert type(values) is torch.Tensor and values.dtype == torch.int64
            seen += values.tolist()
        result.append(seen)
    dl.close()
    return result


@pytest.mark.parametrize("workers", WORKERS)
def test_hf_iterable_dataset_is_sharded_by_worker(hf_rows, workers):
    stream = hf_rows.to_iterable_dataset(num_shards=SHARDS)
    dl = DataLoader(stream, batch_size=32, num_workers=workers,
                    persistent_workers=workers > 0)
    for seen in epochs_of(dl, "idx"):
        assert_exactly_once(seen, range(ROWS))


def test_hf_iterable_dataset_under_spawn(hf_rows):
    """A spawned worker imports datasets and torch itself, from unpickling the stream."""
    stream = hf_rows.to_iterable_dataset(num_shards=SHARDS)
    dl = DataLoader(stream, batch_size=100, num_workers=2, multiprocessing_context="spawn")
    assert_exactly_once([i for batch in dl for i in batch["idx"].tolist()], range(ROWS))


@pytest.fixture(scope="module")
def tar_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    paths = []
    for shard in range(SHARDS):
        path = str(folder / f"shard-{shard}.tar")
        with wds.TarWriter(path) as sink:
            for k in range(PER_SHARD):
                i = shard * PER_SHARD + k
                sink.write({"__key__": f"{i:06d}", "cls": i})
        paths.append(path)
    return paths


@pytest.mark.parametrize("workers", WORKERS)
def test_webdataset_shards_are_split_by_worker(tar_shards, workers):
    stream = wds.WebDataset(tar_shards, shardshuffle=False, empty_check=False) \
        .decode().to_tuple("__key__", "cls")
    dl = DataLoader(stream, batch_size=10, num_workers=workers,
                    persistent_workers=workers > 0)
    for keys, labels in dl:
        assert [int(k) for k in keys] == labels.tolist()
    for seen in epochs_of(dl, 1):
        assert_exactly_once(seen, range(SHARDS * PER_SHARD))


@pytest.mark.parametrize("workers", [0, 2])
def test_torchs_distributed_sampler_with_our_loader(workers):
    """Two ranks (no process group needed: rank and world size are given), three epochs."""
    data = list(range(101))
    samplers = [tud_distributed.DistributedSampler(data, num_replicas=2, rank=r, seed=3)
                for r in range(2)]
    loaders = [DataLoader(data, batch_size=8, sampler=s, num_workers=workers,
                          persistent_workers=workers > 0) for s in samplers]
    orders = []
    for epoch in range(3):
        per_rank = []
        for sampler, dl in zip(samplers, loaders):
            sampler.set_epoch(epoch)
            batches = list(dl)
            assert all(type(b) is torch.Tensor for b in batches)
            per_rank.append([int(i) for b in batches for i in b])
            assert per_rank[-1] == list(sampler), "the loader follows the sampler's order"
        assert len(per_rank[0]) == len(per_rank[1]) == 51
        padded = per_rank[0] + per_rank[1]
        assert_exactly_once(sorted(set(padded)), data)
        assert len(padded) - len(set(padded)) == 1, "torch pads one index to even ranks"
        orders.append(padded)
    for dl in loaders:
        dl.close()
    assert orders[0] != orders[1] != orders[2], "set_epoch reshuffles"
