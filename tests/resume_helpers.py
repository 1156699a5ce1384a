"""Datasets, samplers and drivers shared by the resume tests (``from resume_helpers import``).

Module-level classes so that every start method can pickle them. Nothing here imports
torch at module level (spawned workers import this module).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np

import loader
from loader import DataLoader, IterableDataset, get_worker_info


def identity(batch):
    return batch


def as_lists(batches):
    """Batches (numpy arrays, tensors, lists, tuples) as plain nested lists."""
    out = []
    for b in batches:
        out.append(b.tolist() if hasattr(b, "tolist") else b)
    return out


def json_round_trip(state):
    return json.loads(json.dumps(state))


class Items:
    """A map-style dataset of ``n`` ints; a plain class, as a user's would be."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class LoggedItems(Items):
    """Appends every index it is asked for to ``path`` (one line each, O_APPEND, so
    workers in any process can write it): which samples were read."""

    def __init__(self, n, path):
        super().__init__(n)
        self.path = path

    def __getitem__(self, i):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{i}\n".encode())
        finally:
            os.close(fd)
        return i


def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line) for line in f if line.strip()]


class Augmented(Items):
    """Each sample draws from every global RNG a user's transform might use."""

    def __getitem__(self, i):
        values = [i, random.random(), float(np.random.rand())]
        import sys
        torch = sys.modules.get("torch")
        if torch is not None:
            values.append(float(torch.rand(1)))
        return values


class WorkerRngItems(Items):
    """Samples drawn from ``get_worker_info().rng``, the worker's private generator."""

    def __getitem__(self, i):
        return [i, float(get_worker_info().rng.random())]


class CountingSampler:
    """A user's Stateful sampler (torchdata's DummySampler): 0..n-1, position in state."""

    def __init__(self, n):
        self.n = n
        self.i = 0
        self.loads = 0

    def __iter__(self):
        while self.i < self.n:
            i = self.i
            self.i += 1
            yield i
        self.i = 0  # the pass is over: the next starts from 0

    def __len__(self):
        return self.n

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.loads += 1
        self.i = state["i"]


class YieldedSampler:
    """torchdata's StatefulDistributedSampler style: counts what its pass yielded and
    skips that many on the next pass after a load; the count is not reset at the end."""

    def __init__(self, n):
        self.n = n
        self.yielded = 0
        self.next_yielded = None

    def __iter__(self):
        start = self.next_yielded or 0
        self.next_yielded = None
        self.yielded = start
        for i in range(start, self.n):
            self.yielded += 1
            yield i

    def __len__(self):
        return self.n

    def state_dict(self):
        return {"yielded": self.yielded}

    def load_state_dict(self, state):
        self.next_yielded = state["yielded"]


# ---------------------------------------------------------------- iterable datasets


class Stream(IterableDataset):
    """Worker k yields ``start_k .. start_k + sizes[k]`` (the sizes of torchdata's tests);
    in the main process, one stream of everything."""

    def __init__(self, sizes):
        self.sizes = sizes

    def _range(self):
        info = get_worker_info()
        sizes = self.sizes if info is not None else [sum(self.sizes)]
        wid = info.id if info is not None else 0
        start = sum(sizes[:wid])
        return range(start, start + sizes[wid])

    def __iter__(self):
        yield from self._range()


class StatefulStream(Stream):
    """A Stream whose dataset is Stateful (torchdata's GeneratorIterable): ``state_dict``
    says how far the current ``__iter__`` got; ``epoch`` counts finished passes when
    ``count_epochs``."""

    def __init__(self, sizes, count_epochs=False):
        super().__init__(sizes)
        self.i = 0
        self.resume = None
        self.epoch = 0
        self.count_epochs = count_epochs

    def __iter__(self):
        self.i = self.resume or 0
        self.resume = None
        for value in list(self._range())[self.i:]:
            self.i += 1
            yield (value, self.epoch)
        self.i = 0
        if self.count_epochs:
            self.epoch += 1

    def state_dict(self):
        return {"i": self.i, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.resume = state["i"]
        self.epoch = state["epoch"]


class StatefulIterator:
    """An iterator with state (torchdata's DummyIterator), optionally shuffling with
    numpy's global RNG and keeping that RNG in its state."""

    def __init__(self, samples, shuffle):
        self.samples = samples
        self.shuffle = shuffle
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= len(self.samples):
            raise StopIteration
        if self.shuffle:
            value = self.samples[int(np.random.randint(len(self.samples)))]
        else:
            value = self.samples[self.i]
        self.i += 1
        return value

    def state_dict(self):
        state = {"i": self.i}
        if self.shuffle:
            kind, key, pos, has_gauss, gauss = np.random.get_state()
            state["rng"] = [kind, key.tolist(), pos, has_gauss, gauss]
        return state

    def load_state_dict(self, state):
        self.i = state["i"]
        if "rng" in state:
            kind, key, pos, has_gauss, gauss = state["rng"]
            np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))


class IteratorStream(Stream):
    """``__iter__`` returns a Stateful iterator; the dataset itself keeps no state."""

    def __init__(self, sizes, shuffle=False):
        super().__init__(sizes)
        self.shuffle = shuffle

    def __iter__(self):
        return StatefulIterator(list(self._range()), self.shuffle)


class SelfIterator(IterableDataset):
    """A dataset that is its own (Stateful) iterator (torchdata's
    DummyIteratorIterableDataset)."""

    def __init__(self, n):
        self.n = n
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        return self.i - 1

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


class GlobalCursorStream(IterableDataset):
    """Samples 0..n-1 striped over workers by a global cursor; its ``reshard_state``
    turns any number of saved replica states into any other (the documented hook)."""

    def __init__(self, n):
        self.n = n
        self.start = 0  # first global index not yet handed out (set by a reshard)
        self.seen = 0

    def __iter__(self):
        info = get_worker_info()
        k, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.seen = 0
        for i in range(self.start + k, self.n, workers):
            self.seen += 1
            yield i

    def state_dict(self):
        return {"start": self.start, "seen": self.seen}

    def load_state_dict(self, state):
        self.start = state["start"]

    @staticmethod
    def reshard_state(states, num_workers):
        # with batch_size 1 and in-order round robin, the handed-out samples are exactly
        # the first sum(batches) of the global order
        done = sum(s["batches"] for s in states)
        start = (states[0]["dataset"] or {"start": 0})["start"] + done
        return [{"dataset": {"start": start, "seen": 0}, "iterator": None}
                for _ in range(num_workers)]


def make_loader(dataset, **kwargs):
    kwargs.setdefault("collate_fn", identity)
    return DataLoader(dataset, **kwargs)


def run_resume(make, interrupt, *, second=None, json_safe=True):
    """torchdata's ``_run_and_checkpoint``: take ``interrupt`` batches from ``make()``,
    take its state, finish it; a fresh ``(second or make)()`` loaded with that state
    must yield exactly the rest. Returns (rest of the original, resumed)."""
    dl = make()
    it = iter(dl)
    for _ in range(interrupt):
        next(it)
    state = dl.state_dict()
    expected = list(it)
    resumed = (second or make)()
    resumed.load_state_dict(json_round_trip(state) if json_safe else state)
    return expected, list(resumed)


__all__ = [name for name in dir() if not name.startswith("_")] + ["loader"]
