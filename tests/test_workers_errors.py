"""num_workers > 0 (fork): user errors come back from next() in torch's words, and the
iteration goes on; errors at worker start-up; timeouts.

Worker deaths (segfault, os._exit, signals) are in ``test_faults.py``.
"""

from __future__ import annotations

import math
import time

import pytest
import torch.utils.data as tud

from loader import DataLoader, Dataset, IterableDataset

from helpers import frozen_heap, wait_for_gate  # noqa: F401 (frozen_heap: autouse fixture)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def drain(it):
    """Call next() until StopIteration: (batches, exceptions), in the order they came."""
    out = []
    while True:
        try:
            out.append(next(it))
        except StopIteration:
            return out
        except Exception as exc:  # noqa: BLE001 -- the point is to collect them
            out.append(exc)


class NoGetItem(Dataset):
    """torch's ErrorDataset: no __getitem__, so every batch raises NotImplementedError."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


class FailAt:
    """Raises ``exc_type("bad index i")`` for the indices in ``bad``."""

    def __init__(self, n, bad, exc_type=ValueError):
        self.n, self.bad, self.exc_type = n, set(bad), exc_type

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise self.exc_type(f"bad index {i}")
        return i


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


class RaisesNeedsTwoArgs:
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise NeedsTwoArgs("x", "y")


# ---------------------------------------------------------------- errors in __getitem__


def test_error_workers_count_equals_batches():
    """torch's test_error_workers: every batch raises, iteration continues to the end."""
    dl = DataLoader(NoGetItem(41), batch_size=2, shuffle=True, num_workers=4)
    out = drain(iter(dl))
    assert len(out) == math.ceil(41 / 2)
    assert all(type(e) is NotImplementedError for e in out)


@pytest.mark.parametrize("num_workers", [2, 3])
def test_error_message_names_worker_and_iteration_goes_on(num_workers):
    dataset = FailAt(20, bad={5, 12})
    out = drain(iter(DataLoader(dataset, batch_size=2, num_workers=num_workers,
                                output="numpy")))
    theirs = drain(iter(tud.DataLoader(dataset, batch_size=2, num_workers=num_workers)))
    assert len(out) == len(theirs) == 10
    for i, (mine, torchs) in enumerate(zip(out, theirs)):
        if i in (2, 6):  # batches [4, 5] and [12, 13]
            assert type(mine) is type(torchs) is ValueError
            text = str(mine)
            worker = i % num_workers
            assert text.startswith(f"Caught ValueError in DataLoader worker process {worker}.")
            assert text.splitlines()[0] == str(torchs).splitlines()[0]
            assert "Original Traceback (most recent call last)" in text
            assert f"ValueError: bad index {5 if i == 2 else 12}" in text
            assert "__getitem__" in text  # the worker's traceback
        else:
            assert mine.tolist() == torchs.tolist() == [2 * i, 2 * i + 1]


def test_error_in_collate_fn():
    def collate(batch):
        if 6 in batch:
            raise TypeError("cannot collate six")
        return sum(batch)

    out = drain(iter(DataLoader(list(range(10)), batch_size=2, num_workers=2,
                                collate_fn=collate)))
    assert out[:3] == [1, 5, 9] and out[4] == 17
    assert type(out[3]) is TypeError
    assert str(out[3]).startswith("Caught TypeError in DataLoader worker process 1.")
    assert "cannot collate six" in str(out[3])


def test_key_error_message_stays_readable():
    """#16647: a KeyError's message shows its newlines (torch's KeyErrorMessage)."""
    out = drain(iter(DataLoader(FailAt(4, bad={0}, exc_type=KeyError), batch_size=2,
                                num_workers=1)))
    error = out[0]
    assert type(error) is KeyError
    text = str(error)
    assert text.startswith("Caught KeyError in DataLoader worker process 0.")
    assert "\n" in text and "Original Traceback" in text
    assert out[1].tolist() == [2, 3]


def test_exception_that_cannot_be_rebuilt_becomes_runtime_error():
    """#30147: an exception type with two required arguments is raised as RuntimeError."""
    out = drain(iter(DataLoader(RaisesNeedsTwoArgs(), batch_size=2, num_workers=2)))
    theirs = drain(iter(tud.DataLoader(RaisesNeedsTwoArgs(), batch_size=2, num_workers=2)))
    assert [type(e) for e in out] == [type(e) for e in theirs] == [RuntimeError] * 2
    assert str(out[1]).splitlines()[0] == str(theirs[1]).splitlines()[0] == \
        "Caught NeedsTwoArgs in DataLoader worker process 1."


def test_error_in_iterable_dataset_next():
    class Flaky(IterableDataset):
        def __iter__(self):
            for i in range(6):
                if i == 2:
                    raise ValueError("stream broke")
                yield i

    out = drain(iter(DataLoader(Flaky(), batch_size=None, num_workers=1)))
    assert out[:2] == [0, 1] and type(out[2]) is ValueError
    assert "Caught ValueError in DataLoader worker process 0" in str(out[2])


# ---------------------------------------------------------------- errors at start-up


class ErrorIterableDataset(IterableDataset):
    def __iter__(self):
        raise RuntimeError("Error in __iter__")


def error_worker_init_fn(_):
    raise RuntimeError("Error in worker_init_fn")


def test_error_in_iterable_dataset_iter():
    """torch's test_error_in_init: __iter__ raising surfaces on next()."""
    for num_workers in (0, 2):
        with pytest.raises(RuntimeError, match="Error in __iter__") as info:
            list(iter(DataLoader(ErrorIterableDataset(), num_workers=num_workers)))
        if num_workers:
            assert str(info.value).startswith(
                "Caught RuntimeError in DataLoader worker process 0")


def test_error_in_worker_init_fn():
    """torch's test_error_in_init: worker_init_fn raising surfaces on next()."""
    dl = DataLoader(list(range(10)), num_workers=2, worker_init_fn=error_worker_init_fn)
    with pytest.raises(RuntimeError, match="Error in worker_init_fn") as info:
        list(iter(dl))
    assert str(info.value).startswith("Caught RuntimeError in DataLoader worker process 0")


def test_start_up_errors_never_hang_and_reach_stop_iteration():
    """After a start-up error, further next() calls raise or end; they never wait forever
    (timeout=20 turns a hang into a failure)."""

    def init_fails_on_worker_0(worker_id):
        if worker_id == 0:
            raise RuntimeError("Error in worker_init_fn")

    out = drain(iter(DataLoader(list(range(12)), batch_size=2, num_workers=2, timeout=20,
                                worker_init_fn=init_fails_on_worker_0, output="numpy")))
    assert not any("timed out" in str(x) for x in out if isinstance(x, Exception))
    assert len(out) == 6
    assert isinstance(out[0], RuntimeError) and "Error in worker_init_fn" in str(out[0])
    for i in (1, 3, 5):  # worker 1 started fine
        assert out[i].tolist() == [2 * i, 2 * i + 1]

    it = iter(DataLoader(ErrorIterableDataset(), num_workers=2, timeout=20))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="Error in __iter__"):
            next(it)
    with pytest.raises(StopIteration):
        next(it)


# ---------------------------------------------------------------- timeout


class GatedDataset:
    """Index 0 waits until ``gate`` exists (at most GATE_LIMIT_S); others return at once."""

    def __init__(self, gate, n=6):
        self.gate, self.n = gate, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == 0:
            wait_for_gate(self.gate)
        return i


def test_timeout_raises_torch_message_and_iteration_can_go_on(tmp_path):
    gate = str(tmp_path / "gate")
    dl = DataLoader(GatedDataset(gate), batch_size=2, num_workers=2, timeout=1,
                    output="numpy")
    it = iter(dl)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader timed out after \d+ seconds"):
        next(it)
    assert time.monotonic() - started < 15  # generous: it did not wait forever
    open(gate, "w").close()
    assert [b.tolist() for b in it] == [[0, 1], [2, 3], [4, 5]]



# ---------------------------------------------------------------- StopIteration


class StopsAtFive:
    """A map-style dataset whose __getitem__ lets a StopIteration escape at index 5."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        if i == 5:
            raise StopIteration
        return i


def test_stop_iteration_from_a_map_dataset_ends_the_epoch_like_torch():
    """torch (any worker count) and num_workers=0 end the loop at the failing batch; no
    batch may go missing from the middle of an epoch."""
    zero = [b.tolist() for b in DataLoader(StopsAtFive(), batch_size=2, output="numpy")]
    theirs = [b.tolist() for b in tud.DataLoader(StopsAtFive(), batch_size=2, num_workers=2)]
    ours = [b.tolist() for b in DataLoader(StopsAtFive(), batch_size=2, num_workers=2,
                                           output="numpy", timeout=20)]
    assert zero == theirs == [[0, 1], [2, 3]]
    assert ours == theirs
