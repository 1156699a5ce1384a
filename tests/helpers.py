"""Helpers shared by the test modules: ``from helpers import ...``.

pytest puts ``tests/`` on ``sys.path`` (rootdir-relative "prepend" import mode), so this
imports as the top-level module ``helpers``, as the test modules import as
``test_workers`` and so on; spawn and forkserver workers inherit that path and import it
by the same name. So that those workers start fast, nothing here imports torch at module
level: the functions that need it import it themselves.
"""

from __future__ import annotations

import collections
import gc
import os
import time

import numpy as np
import psutil
import pytest

GATE_LIMIT_S = 30  # a gated worker gives up waiting after this long, so nothing can hang
EXIT_WITHIN_S = 10  # generous bound for workers to be gone after the user lets go

Point = collections.namedtuple("Point", ["x", "y"])


class CustomList(list):
    pass


class CustomDict(dict):
    pass


class Opaque:
    """A type neither collate knows; used for the extension point."""

    def __init__(self, value):
        self.value = value


class Sized:
    """Base of small map-style datasets of ``n`` samples; subclasses add ``__getitem__``.
    A plain class: a subclass is still a user's dataset that subclasses no Dataset."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """Move what exists before these tests (torch's and pytest's objects) out of the
    collector's sight: the leak check's gc.collect() then costs ~1 ms instead of ~100 ms
    per call, while everything a test creates is still collected. Undone afterwards.
    A module that imports it gets it (module scope, autouse)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module", autouse=True)
def start_method_servers():
    """The resource tracker and the fork server are process-wide helpers that
    multiprocess starts on first use and keeps for the life of the interpreter; start
    them before the per-test leak check so they are not mistaken for leaked workers.
    A module that imports it gets it (module scope, autouse)."""
    import multiprocess.forkserver
    import multiprocess.resource_tracker
    multiprocess.resource_tracker.ensure_running()
    multiprocess.forkserver.ensure_running()
    yield


# ---------------------------------------------------------------- comparison helpers


def torch_dtype(np_dtype):
    import torch
    return torch.from_numpy(np.zeros(0, np_dtype)).dtype


def assert_same(ours, theirs, arrays, path="batch", *, exact_tensor_type=True):
    """``ours`` is ``theirs`` (torch's result) with numpy arrays (``arrays="numpy"``) or
    tensors (``arrays="torch"``) in place of torch's tensors: same values, matching dtypes
    and shapes, and the same container types all the way down (list vs tuple vs dict
    subclass vs namedtuple). With ``arrays="torch"``, a tensor of ours must be exactly a
    ``torch.Tensor`` unless ``exact_tensor_type=False`` lets a subclass pass."""
    import torch
    if isinstance(theirs, torch.Tensor):
        if arrays == "numpy":
            assert type(ours) is np.ndarray, f"{path}: {type(ours).__name__}, not an ndarray"
            assert torch_dtype(ours.dtype) == theirs.dtype, \
                f"{path}: {ours.dtype} vs {theirs.dtype}"
            ours = torch.from_numpy(ours)
        elif exact_tensor_type:
            assert type(ours) is torch.Tensor, f"{path}: {type(ours).__name__}, not a tensor"
        else:
            assert isinstance(ours, torch.Tensor), f"{path}: {type(ours).__name__}, not a tensor"
        assert ours.dtype == theirs.dtype, f"{path}: {ours.dtype} vs {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{path}: {ours.shape} vs {theirs.shape}"
        assert torch.equal(ours, theirs), f"{path}: {ours} vs {theirs}"
        return
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} vs {type(theirs).__name__}"
    if isinstance(theirs, collections.abc.Mapping):
        assert list(ours) == list(theirs), path
        for key in theirs:
            assert_same(ours[key], theirs[key], arrays, f"{path}[{key!r}]",
                        exact_tensor_type=exact_tensor_type)
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), f"{path}: length {len(ours)} vs {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, arrays, f"{path}[{i}]", exact_tensor_type=exact_tensor_type)
    elif isinstance(theirs, np.ndarray):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), path
    else:
        assert ours == theirs, f"{path}: {ours!r} vs {theirs!r}"


def raised(fn, *args, **kwargs):
    """``(type, message)`` of what ``fn(*args, **kwargs)`` raises."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return type(info.value), str(info.value)


def same_error(ours, theirs):
    """Both calls fail with the same exception type and message."""
    mine = raised(ours)
    assert mine == raised(theirs)
    return mine


# ---------------------------------------------------------------- worker processes


def wait_for_gate(gate, limit=GATE_LIMIT_S):
    """Wait until the file ``gate`` exists, at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_gone(pids, within=EXIT_WITHIN_S):
    """True once none of ``pids`` is a live process (zombies count as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        gc.collect()
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def shm_held_by_others(names: set[str], ours: set[int]) -> set[str]:
    """Those of ``names`` that a process outside ``ours`` (pids) has open or mapped: made
    by someone else on the machine (another test run, a benchmark), not leaked by us."""
    paths = {f"/dev/shm/{n}": n for n in names}
    held: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in ours:
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for path, name in paths.items():
            if path in maps or path in fds:
                held.add(name)
    return held


# ---------------------------------------------------------------- torch-free datasets
# Spawned workers import these by name from this (torch-free) module, so whether a worker
# imports torch depends only on what the dataset and the loader do.


class TorchProbe(Sized):
    """Each sample says whether torch is imported in the process that fetched it."""

    def __getitem__(self, i):
        import sys
        return {"i": i, "torch": "torch" in sys.modules}


class LateTorch(Sized):
    """A dataset whose library imports torch only when it first reads (as HF datasets or
    webdataset may): what torch's get_worker_info() then says, beside ours."""

    def __getitem__(self, i):
        import torch.utils.data  # the worker's first import of torch, under spawn
        from loader import get_worker_info
        theirs, ours = torch.utils.data.get_worker_info(), get_worker_info()
        return {"i": i, "epoch": ours.epoch,
                "theirs": (theirs.id, theirs.num_workers, str(theirs.seed)),
                "ours": (ours.id, ours.num_workers, str(ours.seed)),
                "same_dataset": theirs.dataset is ours.dataset,
                "torch_seed": str(torch.initial_seed())}


def float_collate(batch):
    """A user's collate_fn in torch style: default_collate, then a tensor method."""
    from loader import default_collate
    x, i = default_collate(batch)
    return x.float(), i
