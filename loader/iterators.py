"""The iterator protocol shared by both engines, and the single-process engine.

``iter(loader)`` returns a :class:`SingleProcessIter` (``num_workers=0``) or a
``MultiProcessIter`` (``loader/_multiprocess.py``). Both draw ``base_seed`` first and the
sampler's seed second, count what they yield for the IterableDataset over-length warning,
and hand the batch through the same output step (torch tensors, pinning). With
``on_error="skip"`` both list skipped samples in ``stats()`` and warn once per epoch.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from loader import _output
from loader._random import as_source
from loader.collate import for_loader
from loader.workers.fetch import BatchSkipped, make_fetcher

__all__ = ["BaseIter", "SingleProcessIter"]


class BaseIter:
    """What every DataLoader iterator does around ``_next_data()``."""

    def __init__(self, loader: Any) -> None:
        self._dataset = loader.dataset
        self._iterable = loader._dataset_kind_iterable
        self._len_called = loader._IterableDataset_len_called
        self._auto_collation = loader._auto_collation
        self._drop_last = loader.drop_last
        self._index_sampler = loader._index_sampler
        self._num_workers = loader.num_workers
        self._timeout = loader.timeout
        self._collate_fn = for_loader(loader.collate_fn, loader._torch_in_use)
        self._seed_source = as_source(loader._seed_source)
        self._output = loader._output_mode
        if loader.pin_memory and loader.pin_memory_device:
            warnings.warn(
                "pin_memory_device is deprecated, the current accelerator will be used as the "
                f"device,ignore pin_memory_device='{loader.pin_memory_device}'.",
                stacklevel=3,
            )
        if loader.pin_memory and not _output.pin_available():
            _output.warn_no_pin()
        self._pin = bool(loader.pin_memory and self._output == "torch" and _output.pin_available())
        self._sampler_iter = iter(self._index_sampler)
        self._base_seed = self._seed_source.seed()
        self._num_yielded = 0
        self._recorder = loader._recorder
        self._waited = 0.0  # seconds this next() spent blocked on workers
        self._on_error = loader.on_error
        self._skips_told = False  # the epoch's skip warning was given

    def __iter__(self) -> "BaseIter":
        return self

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        self._sampler_iter = iter(self._index_sampler)
        self._num_yielded = 0
        self._len_called = loader._IterableDataset_len_called
        self._skips_told = False

    def _queue_depths(self) -> tuple[int, int]:
        """(tasks in flight, batches waiting in the reorder buffer), for stats."""
        return 0, 0

    def stats(self):
        """Statistics of this loader's current epoch and of all epochs so far."""
        return self._recorder.snapshot(self._num_workers)

    def _next_index(self) -> Any:
        return next(self._sampler_iter)  # StopIteration ends the epoch

    def _next_data(self) -> Any:
        raise NotImplementedError

    def _skip_items(self, worker_id: int, items: Any) -> list:
        """Skipped samples as stats lists them: an IterableDataset's index is (worker id,
        position in that worker's replica)."""
        if self._iterable:
            return [((worker_id, index), kind, text) for index, kind, text in items]
        return list(items)

    def _tell_skips(self) -> None:
        """At the end of an epoch: one warning with the count of skipped samples."""
        skipped = self._recorder.epoch.skips
        if skipped and not self._skips_told:
            self._skips_told = True
            warnings.warn(
                f"DataLoader skipped {skipped} sample{'s' if skipped != 1 else ''} in epoch "
                f"{self._recorder.epochs - 1} whose fetch raised (on_error='skip'); "
                "stats().skipped lists each as (index, exception type, message).",
                RuntimeWarning, stacklevel=3)

    def __next__(self) -> Any:
        entered = self._recorder.entered()
        self._waited = 0.0
        try:
            data = self._next_data()
        except StopIteration:
            self._tell_skips()
            raise
        self._recorder.left(entered, self._waited, *self._queue_depths())
        self._num_yielded += 1
        if self._iterable and self._len_called is not None and self._num_yielded > self._len_called:
            msg = (
                f"Length of IterableDataset {self._dataset} was reported to be {self._len_called}"
                f"(when accessing len(dataloader)), but {self._num_yielded} samples have been "
                "fetched. "
            )
            if self._num_workers > 0:
                msg += (
                    "For multiprocessing data-loading, this could be caused by not properly "
                    "configuring the IterableDataset replica at each worker. Please see "
                    "https://pytorch.org/docs/stable/data.html#torch.utils.data.IterableDataset "
                    "for examples."
                )
            warnings.warn(msg, stacklevel=2)
        if self._output == "torch":
            data = _output.to_torch(data)
            if self._pin:
                data = _output.pin(data)
        elif self._output == "numpy" and "torch" in sys.modules:
            data = _output.to_numpy(data)
        return data

    def __len__(self) -> int:
        return len(self._index_sampler)

    def __getstate__(self):
        raise NotImplementedError(f"{type(self).__name__} cannot be pickled")


class SingleProcessIter(BaseIter):
    """``num_workers=0``: fetch and collate in the calling thread, as a worker would."""

    def __init__(self, loader: Any) -> None:
        super().__init__(loader)
        if self._timeout != 0:
            raise AssertionError("_SingleProcessDataLoaderIter requires timeout == 0")
        self._fetcher = make_fetcher(self._iterable, self._dataset, self._auto_collation,
                                     self._collate_fn, self._drop_last, self._on_error)
        self._recorder.start_epoch(0, [])

    def _next_data(self) -> Any:
        fetcher = self._fetcher
        while True:
            index = self._next_index()
            try:
                data = fetcher.fetch(index)
            except BatchSkipped as exc:  # every sample raised: on to the next batch
                self._recorder.skip(self._skip_items(0, exc.skipped))
                continue
            except StopIteration:
                if fetcher.skipped:  # an iterable replica that ended after some bad samples
                    self._recorder.skip(self._skip_items(0, fetcher.skipped))
                    fetcher.skipped = []
                raise
            if fetcher.skipped:
                self._recorder.skip(self._skip_items(0, fetcher.skipped))
            self._recorder.main_fetch(fetcher.count)
            return data
