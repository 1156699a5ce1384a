"""Frameworks that rebuild the loader for distributed training: Lightning (``type(dl)(...)``
with a DistributedSampler injected: our engine keeps running) and accelerate (``prepare``
builds its own DataLoaderShard over torch's DataLoader: torch's engine runs our dataset,
sampler and collate). Every sample exactly once per epoch across the ranks, tensors, and
our own arguments surviving the rebuild. The in-process checks call the frameworks' own
rebuild functions for two ranks; the real runs launch 2 gloo ranks as a subprocess each
(Lightning's ddp re-runs the script for rank 1; accelerate under torchrun)."""

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.utils.data as tud
from accelerate.data_loader import prepare_data_loader
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader

from loader import DataLoader

from helpers import frozen_heap  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
CLIENTS = Path(__file__).resolve().parent / "clients"
SAMPLES = 256
RUN_TIMEOUT_S = 300  # a 2-rank launch takes ~10 s on 2 idle cores; generous for a busy CI


def assert_split_exactly(per_rank, n=SAMPLES):
    """Two ranks: each its half, no index on both, every index once."""
    assert [len(r) for r in per_rank] == [n // 2, n // 2]
    counts = Counter(i for r in per_rank for i in r)
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}, \
        f"doubled: {sorted(k for k, c in counts.items() if c > 1)[:10]}"


# ---------------------------------------------------------------- Lightning, in process


def lightning_rebuild(dl, rank):
    """What Lightning's ddp does to a training loader on rank ``rank`` of 2."""
    sampler = _get_distributed_sampler(dl, shuffle=_is_dataloader_shuffled(dl),
                                       overfit_batches=0, num_replicas=2, rank=rank)
    return _update_dataloader(dl, sampler)


def built_like(recorded, **kwargs):
    """The loader as a user builds it: outside any hook (Lightning then rebuilds it from
    its attributes) or inside one (Lightning records the __init__ arguments)."""
    if not recorded:
        return DataLoader(list(range(SAMPLES)), **kwargs)
    with _replace_dunder_methods(tud.DataLoader, "dataset"):
        return DataLoader(list(range(SAMPLES)), **kwargs)


@pytest.mark.parametrize("recorded", [False, True], ids=["attributes", "recorded-args"])
def test_lightning_rebuild_keeps_our_loader_and_its_arguments(recorded):
    kwargs = dict(batch_size=16, shuffle=True, generator=5, output="numpy", drop_last=True,
                  num_workers="auto", multiprocessing_context="fork", prefetch_factor=3,
                  persistent_workers=True, in_order=False, timeout=30)
    rebuilt = []
    for rank in range(2):  # one original per rank: Lightning edits the recorded arguments
        original = built_like(recorded, **kwargs)
        assert _is_dataloader_shuffled(original), "Lightning must see our shuffle"
        rebuilt.append(lightning_rebuild(original, rank))
    for dl in rebuilt:
        assert type(dl) is DataLoader
        assert isinstance(dl.batch_sampler.sampler, tud.DistributedSampler)
        assert dl.batch_sampler.sampler.shuffle
        assert dl.output == "numpy" and dl._autotuner is not None
        assert dl.multiprocessing_context.get_start_method() == "fork"
        assert (dl.prefetch_factor, dl.persistent_workers, dl.in_order, dl.timeout) == \
            (3, True, False, 30)
        assert dl._seed_source._kind == "numpy", "the int seed's stream survives"
    epochs = []
    for epoch in range(2):
        per_rank = []
        for dl in rebuilt:
            dl.batch_sampler.sampler.set_epoch(epoch)
            per_rank.append([int(i) for batch in dl for i in batch])
        assert_split_exactly(per_rank)
        epochs.append(per_rank)
    for dl in rebuilt:
        dl.close()
    assert epochs[0] != epochs[1]


def test_lightning_rebuild_of_an_iterable_dataset_loader():
    """Lightning leaves the sampler of an IterableDataset loader alone, and says so."""
    from loader import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(10))

    dl = DataLoader(Stream(), batch_size=4, output="numpy")
    assert not _is_dataloader_shuffled(dl)
    rebuilt = _update_dataloader(dl, None)
    assert type(rebuilt) is DataLoader
    assert [b.tolist() for b in rebuilt] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


# ---------------------------------------------------------------- accelerate, in process


@pytest.mark.parametrize("config, stateful", [
    (dict(shuffle=True), False), (dict(shuffle=True, generator=5, num_workers=2), False),
    (dict(shuffle=True, generator=5, num_workers="auto", multiprocessing_context="fork"),
     False),
    (dict(num_workers=1, output="numpy"), False),
    (dict(shuffle=True, generator=lambda: np.random.default_rng(4), num_workers=1), True)],
    ids=["shuffle", "int-seed-2-workers", "auto", "sequential-numpy", "torchdata-stateful"])
def test_accelerate_prepare_splits_our_loader_without_crashing(config, stateful):
    """accelerate reads our attributes into torch's DataLoader (or torchdata's
    StatefulDataLoader): an int seed or numpy generator, "auto" and a start-method string
    must arrive in forms torch accepts. Both ranks start from the same torch seed, as
    separate processes would (accelerate syncs the generator across them)."""
    per_rank = []
    for rank in range(2):
        torch.manual_seed(0)
        kwargs = {k: v() if callable(v) else v for k, v in config.items()}  # fresh per rank
        dl = DataLoader(list(range(SAMPLES)), batch_size=16, **kwargs)
        prepared = prepare_data_loader(dl, num_processes=2, process_index=rank,
                                       use_stateful_dataloader=stateful)
        assert isinstance(prepared.base_dataloader, tud.DataLoader)
        assert type(prepared.base_dataloader).__module__ == (
            "torchdata.stateful_dataloader.stateful_dataloader" if stateful
            else "torch.utils.data.dataloader")
        batches = list(prepared)
        assert all(type(b) is torch.Tensor for b in batches), "default_collate: tensors"
        per_rank.append([int(i) for b in batches for i in b])
    assert_split_exactly(per_rank)


# ---------------------------------------------------------------- real 2-rank runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command, out):
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout's loader in every rank
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=env, cwd=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    left = [p for p in psutil.process_iter(["cmdline"])
            if str(out) in " ".join(p.info["cmdline"] or ())]
    assert not left, f"processes of the run outlived it: {left}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def lightning_ddp(tmp_path_factory):
    out = tmp_path_factory.mktemp("lightning")
    return launch([sys.executable, str(CLIENTS / "lightning_ddp.py"), str(out)], out)


@pytest.fixture(scope="module")
def accelerate_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("accelerate")
    return launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                   str(CLIENTS / "accelerate_ranks.py"), str(out)], out)


def test_lightning_ddp_gives_each_rank_its_half(lightning_ddp):
    ranks = lightning_ddp
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world"] == 2
    assert [len(r["train"]) for r in ranks] == [2, 2]
    for epoch in range(2):
        assert_split_exactly([r["train"][epoch] for r in ranks])
        assert_split_exactly([r["val"][epoch] for r in ranks])
    for r in ranks:
        assert r["train_loader"] == r["val_loader"] == "loader.dataloader.DataLoader"
        assert r["train_sampler"] == r["val_sampler"] == "DistributedSampler"
        assert r["kinds"] == [["Tensor", "Tensor"]]
        assert r["train_generator_stream"] == "numpy", "generator=5 survived the rebuild"
        assert r["val_autotune"] and r["val_output"] == "torch"
        assert len(r["val"]) == 2
    assert ranks[0]["train"][0] != ranks[0]["train"][1], "shuffled, and again each epoch"
    assert ranks[0]["val"][0] == list(range(0, SAMPLES, 2)), "validation is not shuffled"


def test_accelerate_gives_each_rank_its_share(accelerate_ranks):
    ranks = accelerate_ranks
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world"] == 2
    for name in ("shuffled", "int_seed", "sequential", "kept"):
        runs = [r[name] for r in ranks]
        for epoch in range(len(runs[0]["seen"])):
            assert_split_exactly([run["seen"][epoch] for run in runs])
        for run in runs:
            assert run["kinds"] == ["Tensor"]
            if name == "kept":  # the README's recipe: not prepared, our engine
                assert run["engine"] == "loader.dataloader.DataLoader"
                continue
            assert run["prepared"] == "DataLoaderShard"
            assert run["engine"] == "torch.utils.data.dataloader.DataLoader"
    shuffled = ranks[0]["shuffled"]["seen"]
    assert shuffled[0] != shuffled[1] and sorted(shuffled[0]) != shuffled[0]
