"""``DistributedSampler``: each of ``num_replicas`` processes loads its own share of a dataset.

All replicas compute the same (optionally shuffled) order of ``0 .. N - 1``, make it
evenly divisible (padding by repeating from the start, or dropping the tail with
``drop_last``) and keep every ``num_replicas``-th index starting at ``rank``, exactly as
torch does. The shuffle is a function of ``seed + epoch`` only, so it is identical on every
replica without communication and changes only through :meth:`DistributedSampler.set_epoch`.
Where torch is imported it is torch's own (``torch.randperm`` on a generator seeded with
``seed + epoch``), so ranks running torch's DistributedSampler and ranks running this one
agree on the order; without torch it is ``np.random.default_rng(seed + epoch).permutation``
(no rank of such a job can be running torch's).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sized
from typing import TypeVar

import numpy as np

from .sampler import Sampler, _Resumable

__all__ = ["DistributedSampler"]

_T_co = TypeVar("_T_co", covariant=True)


def _initialized_process_group():
    """``torch.distributed`` when torch is imported and a process group is up, else None."""
    if sys.modules.get("torch") is None:
        return None
    import torch.distributed as dist  # already loaded with torch; no import cost

    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def _permutation(n: int, seed: int) -> list[int]:
    """The shuffled order of one epoch: torch's where torch is in use, else numpy's."""
    torch = sys.modules.get("torch")
    if torch is None:
        return np.random.default_rng(seed).permutation(n).tolist()
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator).tolist()


def _from_environment(variable: str) -> int:
    """World size or rank from ``torchrun``'s environment variables."""
    value = os.environ.get(variable)
    if value is None:
        raise RuntimeError("Requires distributed package to be available")
    return int(value)


class DistributedSampler(_Resumable, Sampler[_T_co]):
    """The indices of ``dataset`` that belong to replica ``rank`` of ``num_replicas``.

    ``num_replicas`` and ``rank`` default to the initialized ``torch.distributed`` process
    group, else to the ``WORLD_SIZE`` and ``RANK`` environment variables. Call
    :meth:`set_epoch` before each epoch, or every epoch shuffles the same way.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        group = _initialized_process_group()
        if num_replicas is None:
            num_replicas = group.get_world_size() if group else _from_environment("WORLD_SIZE")
        if rank is None:
            rank = group.get_rank() if group else _from_environment("RANK")
        if rank >= num_replicas or rank < 0:
            raise ValueError(
                f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]"
            )
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = drop_last
        n = len(dataset)
        if drop_last and n % num_replicas:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.shuffle = shuffle
        self.seed = seed

    def __iter__(self) -> Iterator[_T_co]:
        replay, skip = self._take_replay()
        epoch = self.epoch if replay is None else replay["epoch"]
        self._pass_record = {"epoch": epoch}
        n = len(self.dataset)
        if self.shuffle:
            indices = _permutation(n, self.seed + epoch)
        else:
            indices = list(range(n))
        if self.drop_last:
            del indices[self.total_size :]
        elif indices:
            padding = self.total_size - n  # repeat from the start, cycling if n < padding
            indices += (indices * math.ceil(padding / n))[:padding]
        if len(indices) != self.total_size:  # the dataset changed size since construction
            raise AssertionError(
                f"Number of indices ({len(indices)}) does not match total_size ({self.total_size})"
            )
        start = self.rank + skip * self.num_replicas
        return iter(indices[start : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, which reseeds the shuffle of the next pass on every replica."""
        self.epoch = epoch

    # resume (sampler.py's _Resumable): the epoch is state, the rest must agree
    def _resume_config(self) -> dict:
        return {"num_replicas": self.num_replicas, "rank": self.rank, "shuffle": self.shuffle,
                "seed": self.seed, "drop_last": self.drop_last,
                "num_samples": self.num_samples}

    def _current_record(self) -> dict:
        return {"epoch": self.epoch}

    def _resume_restore(self, state: dict) -> None:
        self._resume_check(state)
        self.epoch = state["epoch"]
