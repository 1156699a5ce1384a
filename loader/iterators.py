"""The iterator protocol shared by both engines, and the single-process engine.

``iter(loader)`` returns a :class:`SingleProcessIter` (``num_workers=0``) or a
``MultiProcessIter`` (``loader/_multiprocess.py``). Both open the sampler, draw
``base_seed`` and then the sampler's first index (through the loader's resume ledger,
``loader/state.py``, which may replay a saved pass up to its position), count what they
yield for the IterableDataset over-length warning, report every batch handed out to the
epoch's ``Progress`` and hand the batch through the same output step (torch tensors,
pinning). With ``on_error="skip"`` both list skipped samples in ``stats()`` and warn once
per epoch.

Every drawn batch has a position in its epoch's sampler order (``_index_pos``); a resume
with ``in_order=False`` skips the positions already handed out.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from loader import _output
from loader._random import as_source
from loader.collate import for_loader
from loader.state import warn_replay
from loader.workers.fetch import BatchSkipped, make_fetcher
from loader.workers.seeding import BatchSeeder

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
        self._recorder = loader._recorder
        self._waited = 0.0  # seconds this next() spent blocked on workers
        self._on_error = loader.on_error
        self._skips_told = False  # the epoch's skip warning was given
        self._ledger = loader._ledger
        self._seeding = loader.seeding
        self._index_template = [None] * loader.batch_size if self._auto_collation and \
            loader.batch_size is not None else None
        self._begin()

    def __iter__(self) -> "BaseIter":
        return self

    def _begin(self, chain: tuple[int, int] | None = None) -> None:
        """Open this epoch (``DataLoader.__iter__`` made its Progress): the sampler,
        positioned where a loaded state left it, and ``base_seed`` (drawn, or with
        ``chain`` = (first seed, epoch) derived, as a persistent pool's later epochs are)."""
        ledger = self._ledger
        self._progress, self._plan = ep, plan = ledger.take_opening()
        self._sampler_iter, self._base_seed, fresh_pass = \
            ledger.start(ep, plan, self._seed_source, chain)
        self._draw_pos = ep.low  # position of the next index drawn
        self._index_pos = ep.low  # position of the index drawn last
        self._skip = set(ep.above)  # positions handed out already (in_order=False)
        self._first_draw = fresh_pass
        ep.pass_begun = not fresh_pass
        self._stateful_sampler = ledger.track.kind == "stateful"
        self._draw_hooks = fresh_pass or bool(self._skip) or self._stateful_sampler
        # batches handed out so far this epoch (an iterable's positions also count the
        # tasks its ended replicas never answered)
        self._num_yielded = sum(ep.handed) if self._iterable and ep.handed else ep.low
        self._restore = ledger.restore_for(plan, self._index_template)
        if self._restore:
            counts = [r["discard"] for r in self._restore
                      if r is not None and r.get("entry") is None and r.get("discard")]
            warn_replay(counts, ledger.every)

    def _next_chain(self) -> tuple[int, int] | None:
        """How the next epoch of this iterator gets its base seed: None, drawn."""
        return None

    def _reset(self, loader: Any, first_iter: bool = False) -> None:
        if not first_iter:
            self._begin(self._next_chain())
        self._len_called = loader._IterableDataset_len_called
        self._skips_told = False

    def _queue_depths(self) -> tuple[int, int]:
        """(tasks in flight, batches waiting in the reorder buffer), for stats."""
        return 0, 0

    def stats(self):
        """Statistics of this loader's current epoch and of all epochs so far."""
        return self._recorder.snapshot(self._num_workers)

    def _next_index(self) -> Any:
        if self._draw_hooks:
            return self._hooked_index()
        index = next(self._sampler_iter)  # StopIteration ends the epoch
        pos = self._draw_pos
        self._index_pos = pos
        self._draw_pos = pos + 1
        return index

    def _hooked_index(self) -> Any:
        """``_next_index`` with the resume bookkeeping that only some draws need: the
        pass's first draw, a Stateful sampler's snapshots, positions to skip."""
        track, ep = self._ledger.track, self._progress
        while True:
            first = self._first_draw
            if first:
                track.before_first_draw(ep)
            index = next(self._sampler_iter)
            if first:
                self._first_draw = False
                track.after_first_draw(ep)
                ep.pass_begun = True
            pos = self._draw_pos
            self._draw_pos = pos + 1
            if self._stateful_sampler:
                track.drawn(ep, pos + 1)
            if pos not in self._skip:
                break
            self._skip.discard(pos)
        self._index_pos = pos
        self._draw_hooks = bool(self._skip) or self._stateful_sampler
        return index

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
            self._progress.finished = True
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


SKIPPED = object()  # what fetch_here returns for a batch whose every sample was skipped


def fetch_here(it: BaseIter, fetcher: Any, index: Any, pos: int) -> Any:
    """Batch ``pos`` fetched and collated in this process by ``fetcher``, its hand-out,
    skips and main-process fetch counted as a worker's batch would be: ``num_workers=0``,
    and the pool's main-process fallback (``num_workers="auto"``). :data:`SKIPPED` when
    every sample was skipped (its replica moved on; nothing to hand out)."""
    progress, recorder = it._progress, it._recorder
    try:
        data = fetcher.fetch(index, pos)
    except BatchSkipped as exc:
        progress.hand_out(pos, 0)
        recorder.skip(it._skip_items(0, exc.skipped))
        return SKIPPED
    except StopIteration:
        if fetcher.skipped:  # an iterable replica that ended after some bad samples
            recorder.skip(it._skip_items(0, fetcher.skipped))
            fetcher.skipped = []
        raise
    except Exception:
        progress.hand_out(pos, 0, made=False)
        raise
    progress.hand_out(pos, 0)
    if fetcher.skipped:
        recorder.skip(it._skip_items(0, fetcher.skipped))
    recorder.main_fetch(fetcher.count)
    return data


class SingleProcessIter(BaseIter):
    """``num_workers=0``: fetch and collate in the calling thread, as a worker would."""

    def __init__(self, loader: Any) -> None:
        super().__init__(loader)
        if self._timeout != 0:
            raise AssertionError("_SingleProcessDataLoaderIter requires timeout == 0")
        seeder = BatchSeeder(self._base_seed, self._progress.epoch, None,
                             keep_user_state=True) if self._seeding == "per_batch" else None
        per_worker = self._ledger.per_worker
        self._fetcher = make_fetcher(self._iterable, self._dataset, self._auto_collation,
                                     self._collate_fn, self._drop_last, self._on_error,
                                     seeder=seeder,
                                     restore=self._restore[0] if self._restore else None,
                                     track=per_worker, copy_state=True)
        if per_worker:
            self._progress.inline = self._fetcher
        self._recorder.start_epoch(0, [])

    def _next_data(self) -> Any:
        while True:
            data = fetch_here(self, self._fetcher, self._next_index(), self._index_pos)
            if data is not SKIPPED:
                return data
