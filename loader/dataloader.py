"""``DataLoader``: torch's signature, validation, messages and length rules.

Construction validates the arguments in torch's order with torch's messages, builds the
default sampler and batch sampler, and freezes the attributes torch freezes. Iteration
returns a :class:`~loader.iterators.SingleProcessIter` or, with workers, a
``MultiProcessIter``; with ``persistent_workers`` the same iterator is reset every epoch.
Every ``iter()`` opens an epoch in the loader's resume ledger (``loader/state.py``), which
``state_dict()`` reads and ``load_state_dict()`` prepares.
"""

from __future__ import annotations

import math
import numbers
import multiprocessing as std_multiprocessing
import os
import warnings
from typing import Any, Callable, Generic, Iterable, TypeVar

import multiprocess

from loader import _output
from loader._random import as_source, torch_view
from loader._torch_classes import TorchNamesake, adopt_torch_bases
from loader.autotune import AutoTuner, AutoWorkers, initial_workers
from loader.backends import resolve_backend
from loader.collate import default_collate, default_convert
from loader.dataset import is_iterable_dataset
from loader.iterators import BaseIter, SingleProcessIter
from loader.sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler
from loader.state import Ledger
from loader.stats import LoaderStats, Recorder
from loader.workers.fetch import ON_ERROR
from loader.workers.seeding import SEEDINGS

__all__ = ["DataLoader", "StatefulDataLoader"]

T_co = TypeVar("T_co", covariant=True)
TCollated = TypeVar("TCollated")

_FROZEN = ("batch_size", "batch_sampler", "sampler", "drop_last", "dataset",
           "persistent_workers")


class _InfiniteConstantSampler(Sampler):
    """The sampler of an IterableDataset: ``None`` forever (the dataset decides the end)."""

    def __iter__(self):
        while True:
            yield None


def _cpu_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _as_context(ctx: Any) -> Any:
    """A ``multiprocess`` context (dill pickling) for a start method or any context."""
    if isinstance(ctx, multiprocess.context.BaseContext):
        return ctx
    return multiprocess.get_context(ctx.get_start_method())


def _check_healing(stall_warning_s: Any, worker_restarts: Any, on_error: Any,
                   num_workers: int) -> None:
    """Validate the self-healing arguments (ours; torch has none of them)."""
    if isinstance(stall_warning_s, bool) or not isinstance(stall_warning_s, numbers.Real) \
            or not 0 <= stall_warning_s < math.inf:
        raise ValueError(
            "stall_warning_s option should be a finite, non-negative number of seconds (0 "
            f"turns the stall warning off), but got stall_warning_s={stall_warning_s!r}")
    if isinstance(worker_restarts, bool) or not isinstance(worker_restarts, numbers.Integral) \
            or worker_restarts < 0:
        raise ValueError(
            "worker_restarts option should be a non-negative integer (restarts allowed per "
            f"epoch; 0 keeps torch's behaviour), but got worker_restarts={worker_restarts!r}")
    if worker_restarts and num_workers == 0:
        raise ValueError("worker_restarts option needs num_workers > 0")
    if on_error not in ON_ERROR:
        raise ValueError(
            f"on_error option should be one of {ON_ERROR!r}, but got on_error={on_error!r}")


class DataLoader(TorchNamesake, Generic[T_co]):
    """Combines a dataset and a sampler and iterates over batches, like torch's DataLoader.

    Every argument of ``torch.utils.data.DataLoader`` is accepted with torch's meaning.
    Our own additions: ``output`` ("auto", "numpy" or "torch"; see ``loader/_output.py``),
    ``num_workers="auto"``, which sizes the pool from measurements
    (``loader/autotune.py``), self-healing (``loader/_healing.py``):
    ``stall_warning_s`` (warn with the stuck worker's stacks when a batch is that late; 0:
    off), ``worker_restarts`` (replace up to that many dead or stuck workers per epoch) and
    ``on_error="skip"`` (leave out samples whose fetch raises; ``stats().skipped``),
    ``share_dataset``: with workers, the dataset's large lists, tuples and dicts of plain
    values and (spawn, forkserver) its large arrays are put once in shared memory that every
    worker maps, instead of one copy per worker (``workers/shipping.py``); ``False`` gives
    every worker its own copy, as torch does; and ``worker_backend`` ("local", "ray" or a
    :class:`~loader.backends.RayBackend`; None: the ``LOADER_WORKER_BACKEND`` environment
    variable, else "local"; ``loader/backends.py``), which runs the workers as Ray actors on
    a cluster.

    Built while torch is imported, it is also a ``torch.utils.data.DataLoader``
    (``loader/_torch_classes.py``). Frameworks rebuild loaders from their attributes and
    ``__init__`` signature, so every argument is kept as the attribute of the same name
    (``shuffle`` aside, as in torch), in a form torch code can read: ``generator`` a
    ``torch.Generator`` (an int or numpy one is shown as a stand-in that a rebuilt loader
    maps back to the original stream), ``multiprocessing_context`` a standard-library
    context, ``num_workers`` an int (:class:`~loader.autotune.AutoWorkers` under "auto").

    Resume, with torchdata's ``StatefulDataLoader`` API: :meth:`state_dict` and
    :meth:`load_state_dict`, ``snapshot_every_n_steps`` (how often a user's Stateful
    sampler or IterableDataset is asked for its state; 0 or None: never), and
    ``seeding``: "per_worker" (torch's: each worker seeds its RNGs once per epoch) or
    "per_batch" (before every batch, from the base seed, the epoch and the batch's
    position, so random augmentations do not depend on ``num_workers`` and a resume
    repeats them exactly).
    """

    __initialized = False

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler | Iterable | None = None,
        batch_sampler: Sampler | Iterable | None = None,
        num_workers: int | str = 0,
        collate_fn: Callable | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        generator: Any = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        output: str | None = "auto",
        stall_warning_s: float = 60,
        worker_restarts: int = 0,
        on_error: str = "raise",
        snapshot_every_n_steps: int | None = 1,
        seeding: str = "per_worker",
        share_dataset: bool = True,
        worker_backend: Any = None,
    ) -> None:
        autotune = num_workers == "auto" or isinstance(num_workers, AutoWorkers)
        if autotune:
            num_workers = AutoWorkers(initial_workers() if num_workers == "auto" else num_workers)
        if num_workers < 0:
            raise ValueError(
                "num_workers option should be non-negative; "
                "use num_workers=0 to disable multiprocessing."
            )
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        self._prefetch_default = prefetch_factor is None  # the engine may go deeper
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError(
                "prefetch_factor option could only be specified in multiprocessing."
                "let num_workers > 0 to enable multiprocessing, otherwise set "
                "prefetch_factor to None."
            )
        elif num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        elif prefetch_factor is not None and prefetch_factor < 0:
            raise ValueError("prefetch_factor option should be non-negative")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
        _check_healing(stall_warning_s, worker_restarts, on_error, num_workers)
        self._backend_kind, self._ray_options = resolve_backend(
            worker_backend, "auto" if autotune else num_workers, multiprocessing_context)
        if seeding not in SEEDINGS:
            raise ValueError(f"seeding should be one of {SEEDINGS!r}, but got {seeding!r}")
        if snapshot_every_n_steps is not None and (
                not isinstance(snapshot_every_n_steps, int) or snapshot_every_n_steps < 0):
            raise ValueError("snapshot_every_n_steps should be a non-negative int or None, "
                             f"but got {snapshot_every_n_steps!r}")

        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.pin_memory_device = pin_memory_device
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.in_order = in_order
        self.stall_warning_s = stall_warning_s
        self.worker_restarts = worker_restarts
        self.on_error = on_error
        self.worker_backend = worker_backend  # as given: a rebuilt loader resolves it again

        self._dataset_kind_iterable = is_iterable_dataset(dataset)
        if self._dataset_kind_iterable:
            if shuffle not in {False, None}:
                raise ValueError(
                    "DataLoader with IterableDataset: expected unspecified shuffle option, "
                    f"but got shuffle={shuffle}"
                )
            if sampler is not None:
                raise ValueError(
                    "DataLoader with IterableDataset: expected unspecified sampler option, "
                    f"but got sampler={sampler}"
                )
            if batch_sampler is not None:
                raise ValueError(
                    "DataLoader with IterableDataset: expected unspecified batch_sampler "
                    f"option, but got batch_sampler={batch_sampler}"
                )
        else:
            shuffle = bool(shuffle)

        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError(
                    "batch_sampler option is mutually exclusive with batch_size, shuffle, "
                    "sampler, and drop_last"
                )
            batch_size = None
            drop_last = False
        elif batch_size is None and drop_last:
            raise ValueError(
                "batch_size=None option disables auto-batching and is mutually exclusive "
                "with drop_last"
            )

        self._output_mode = _output.resolve_output(output)  # may import torch ("torch")
        self._torch_in_use = adopt_torch_bases()  # torch imported: torch's classes too
        self._seed_source = as_source(generator)
        if self._torch_in_use:
            generator = torch_view(generator, self._seed_source)
        if sampler is None:
            if self._dataset_kind_iterable:
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator)
                sampler._seed_from(generator, self._seed_source)  # one stream for both
            else:
                sampler = SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)

        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.generator = generator
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn
        self.persistent_workers = persistent_workers
        self.output = output
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.seeding = seeding
        self.share_dataset = share_dataset

        self.__initialized = True
        self._IterableDataset_len_called: int | None = None
        self._iterator: BaseIter | None = None
        self._recorder = Recorder()
        self._ledger = Ledger(self)
        # per-worker resume state (an IterableDataset, a Stateful dataset) pins the count
        self._autotuner = AutoTuner(num_workers, resizable=not self._ledger.per_worker) \
            if autotune else None
        self.check_worker_number_rationality()

    # ------------------------------------------------------------------ attributes

    @property
    def multiprocessing_context(self) -> Any:
        return self.__multiprocessing_context

    @multiprocessing_context.setter
    def multiprocessing_context(self, ctx: Any) -> None:
        """Kept as a standard-library context, as torch keeps it (torch code rebuilding a
        loader from this attribute accepts no other); workers start through the
        ``multiprocess`` context of the same start method either way."""
        if ctx is not None:
            if self.num_workers > 0:
                if isinstance(ctx, str):
                    valid = multiprocess.get_all_start_methods()
                    if ctx not in valid:
                        raise ValueError(
                            "multiprocessing_context option should specify a valid start "
                            f"method in {valid!r}, but got multiprocessing_context={ctx!r}"
                        )
                    ctx = std_multiprocessing.get_context(ctx)
                if not isinstance(ctx, (std_multiprocessing.context.BaseContext,
                                        multiprocess.context.BaseContext)):
                    raise TypeError(
                        "multiprocessing_context option should be a valid context object or a "
                        "string specifying the start method, but got "
                        f"multiprocessing_context={ctx}"
                    )
                if isinstance(ctx, multiprocess.context.BaseContext):
                    ctx = std_multiprocessing.get_context(ctx.get_start_method())
            else:
                raise ValueError(
                    "multiprocessing_context can only be used with multi-process loading "
                    f"(num_workers > 0), but got num_workers={self.num_workers}"
                )
        self.__multiprocessing_context = ctx

    def _worker_context(self) -> Any:
        """The ``multiprocess`` context workers start from (fork by default on Linux)."""
        ctx = self.multiprocessing_context
        return multiprocess.get_context() if ctx is None else _as_context(ctx)

    def _backend_spec(self) -> tuple[str, dict]:
        """The worker engine and its own arguments, for ``make_backend``."""
        if self._backend_kind == "ray":
            return "ray", {"options": self._ray_options, "owner": self}
        return "local", {"context": self._worker_context()}

    def __setattr__(self, attr: str, val: Any) -> None:
        if self.__initialized and attr in _FROZEN:
            raise ValueError(
                f"{attr} attribute should not be set after {type(self).__name__} is initialized"
            )
        super().__setattr__(attr, val)

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None

    @property
    def _index_sampler(self) -> Any:
        return self.batch_sampler if self._auto_collation else self.sampler

    # ------------------------------------------------------------------ iteration

    def _get_iterator(self) -> BaseIter:
        if self._autotuner is not None:
            self.num_workers = AutoWorkers(self._autotuner.current)  # what the last epoch chose
        if self.num_workers == 0:
            return SingleProcessIter(self)
        self.check_worker_number_rationality()
        from loader._multiprocess import MultiProcessIter
        return MultiProcessIter(self)

    def __iter__(self) -> BaseIter:
        if self._autotuner is not None:
            self.num_workers = AutoWorkers(self._autotuner.current)
        self._ledger.begin()
        if self.persistent_workers and self.num_workers > 0:
            if self._iterator is None:
                self._iterator = self._get_iterator()
            else:
                self._iterator._reset(self)
            return self._iterator
        if self._iterator is not None:  # "auto" settled on the main process: no pool now
            iterator, self._iterator = self._iterator, None
            iterator.close()
        return self._get_iterator()

    def __len__(self) -> int:
        if self._dataset_kind_iterable:
            length = self._IterableDataset_len_called = len(self.dataset)
            if self.batch_size is not None:
                length = (length // self.batch_size if self.drop_last
                          else math.ceil(length / self.batch_size))
            return length
        return len(self._index_sampler)

    def check_worker_number_rationality(self) -> None:
        """Warn, as torch does, when more workers are asked for than there are CPUs."""
        if not self.num_workers or self._backend_kind == "ray":
            return  # Ray actors use the cluster's CPUs, not this machine's
        suggest = _cpu_count()
        if suggest is not None and self.num_workers <= suggest:
            return
        if suggest is None:
            suggestion = ("DataLoader is not able to compute a suggested max number of worker "
                          "in current system.")
        else:
            cpuset = "" if hasattr(os, "sched_getaffinity") else " (`cpuset` is not taken into account)"
            suggestion = (f"Our suggested max number of worker in current system is {suggest}"
                          f"{cpuset}, which is smaller than what this DataLoader is going to "
                          "create.")
        warnings.warn(
            f"This DataLoader will create {self.num_workers} worker processes in total. "
            f"{suggestion} Please be aware that excessive worker creation might get DataLoader "
            "running slow or even freeze, lower the worker number to avoid potential "
            "slowness/freeze if necessary.",
            stacklevel=2,
        )

    def stats(self) -> LoaderStats:
        """Statistics of the current (or last) epoch and of all epochs so far; its
        ``summary`` says what limits throughput."""
        tuner = self._autotuner
        return self._recorder.snapshot(tuner.current if tuner is not None else self.num_workers)

    def close(self) -> None:
        """Shut down persistent workers now (they also stop when the loader is collected)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()
        if self._backend_kind == "ray":
            from loader.workers import ray_session  # imports no Ray
            ray_session.leave(self)

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: after the last batch handed out by its latest
        iterator (prefetched batches do not count), a plain dict that survives
        ``json.dumps``. Before the first ``iter()`` it describes the first epoch's
        start; after an epoch's last batch *and* its end (``StopIteration``), the next
        epoch's start. Starts no worker; costs about a microsecond. States taken within
        one epoch share their unchanging nested parts: ``copy.deepcopy`` one before
        changing it in place.
        """
        return self._ledger.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from ``state_dict`` on the next ``iter()`` (once); ``{}`` does nothing.

        The generators and samplers are put back now (so a ``sampler.set_epoch`` after
        this call still decides the next epoch), the position on the next ``iter()``.
        Any ``num_workers`` may resume a map-style state. Per-worker states (an
        IterableDataset, a Stateful map-style dataset) need the same number of workers
        (0 and 1 count as one), unless the dataset has a method
        ``reshard_state(states, num_workers) -> list``: it gets one dict per saved
        replica (``dataset``, ``iterator``: their saved states or None; ``batches``:
        batches that replica handed out this epoch; ``batches_since_state``: those made
        after its state was taken) and returns ``num_workers`` dicts (``dataset``,
        ``iterator``) that the new replicas load before (dataset) and after
        (iterator) ``iter(dataset)``.

        Raises ValueError naming the field when the state does not fit this loader
        (dataset length, batch size, sampler, seeding, worker count, version...).
        """
        if isinstance(state_dict, dict) and not state_dict:
            return
        self._ledger.load(state_dict)


StatefulDataLoader = DataLoader  # torchdata's name for a DataLoader with state_dict()
