"""The dataset shared by every worker (workers/shipping.py), under fork, spawn, forkserver.

Batches are identical with sharing on and off; workers read views while the user's objects
stay as they were; a worker's writes stay its own; arrays reach spawned workers zero-copy
and private; worker memory stays flat (USS from psutil, not time); the dataset is pickled
once; nothing is left behind after close, a crash or ``kill -9`` of the main process.

This module imports neither torch nor anything heavy at module level: spawn and forkserver
workers import it to unpickle the datasets below.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import multiprocess.forkserver
import multiprocess.resource_tracker
import numpy as np
import psutil
import pytest

from loader import (ConcatDataset, DataLoader, IterableDataset, SharedDict, SharedList,
                    Subset, get_worker_info)

from helpers import EXIT_WITHIN_S, frozen_heap, wait_gone  # noqa: F401 (frozen_heap: autouse)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
METHODS = ["fork", "spawn", "forkserver"]
ITEMS = 40_000  # dicts: estimated above SHARE_MIN_BYTES, so the real threshold applies
FEW = 3000  # items of the datasets tested with small_thresholds (fast without sharing too)
PICKLED = []  # the main process's count of Counted.__getstate__ calls
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def start_method_servers():
    """Process-wide helpers that live as long as the interpreter (see
    test_workers_start_methods.py): started before the per-test leak check."""
    multiprocess.resource_tracker.ensure_running()
    multiprocess.forkserver.ensure_running()
    yield


# ---------------------------------------------------------------- datasets


def _annotations(n: int, offset: int = 0) -> list:
    return [{"id": i + offset, "name": f"img-{i + offset:07d}.jpg", "box": [i, i + 0.5],
             "tags": ("t", i % 3)} for i in range(n)]


class Annotations:
    """A COCO-like dataset: a list of dicts, a dict from names to positions, a float list."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.items = _annotations(n, offset)
        self.by_name = {d["name"]: i for i, d in enumerate(self.items)}
        self.weights = [i / n for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        d = self.items[i]
        return {"id": d["id"], "pos": self.by_name[d["name"]], "w": self.weights[i],
                "box": np.asarray(d["box"]), "tag": d["tags"][1], "name": d["name"]}


class Wrapper:
    """Holds its dataset in an attribute, as augmentation wrappers do."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


class Probe(Annotations):
    """Reports what the worker's containers are."""

    def __getitem__(self, i: int) -> dict:
        out = super().__getitem__(i)
        out["kinds"] = f"{type(self.items).__name__},{type(self.by_name).__name__}," \
                       f"{type(self.weights).__name__}"
        return out


class Writer(Annotations):
    """Writes to its containers on every read (a per-worker cache) and reads back."""

    def __getitem__(self, i: int) -> dict:
        self.by_name[f"seen-{i}"] = i
        self.items[i] = dict(self.items[i], touched=True)
        if i % 7 == 0:
            self.weights.append(float(i))
        return {"cache": len(self.by_name), "own": self.by_name[f"seen-{i}"],
                "touched": self.items[i]["touched"], "weights": len(self.weights),
                "first": self.by_name["img-0000000.jpg"]}


class Images:
    """Arrays in a list (64 KiB each: zero-copy when shared) and one large array."""

    def __init__(self, n: int) -> None:
        self.images = [np.full((64, 64, 4), i, np.float32) for i in range(n)]
        self.big = np.arange(2_000_000, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        before = float(image[0, 0, 0])
        image[0, 0, 0] += 1000  # in place: a later read of i in this worker sees it
        self.big[i] += 1
        return {"before": before, "big": int(self.big[i]), "owndata": image.flags.owndata,
                "in_image": _in_image(image), "big_in_image": _in_image(self.big)}


def _in_image(array: np.ndarray) -> bool:
    """Whether ``array``'s memory lies in a mapping of a shared dataset image."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            span, *rest = line.split()
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                return "memfd:loader-image" in line
    return False


class Counted(Annotations):
    def __getstate__(self):
        if get_worker_info() is None:
            PICKLED.append(os.getpid())
        return self.__dict__


class WithLambda(Annotations):
    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.key = lambda d: d["id"] * 2

        class Local:
            scale = 3

        self.local = Local()

    def __getitem__(self, i: int) -> int:
        return self.key(self.items[i]) * self.local.scale


class Stream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.items = _annotations(n)

    def __iter__(self):
        info = get_worker_info()
        for d in self.items[info.id::info.num_workers]:
            yield d["id"]


class HoldsAView:
    def __init__(self, view) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> int:
        return self.view[i]["id"]


# ---------------------------------------------------------------- helpers


def _batches(dataset, **kwargs) -> list:
    kwargs.setdefault("batch_size", 64)
    return [_plain(b) for b in DataLoader(dataset, output="numpy", **kwargs)]


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def _image_fds(pid: int | str = "self") -> list[str]:
    """The shared dataset images a process holds open (one link per descriptor)."""
    links = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return [link for link in links if "loader-image" in link]


def _shared_report(iterator) -> list:
    return iterator._pool.shipment.report["shared"]


@pytest.fixture
def small_thresholds(monkeypatch):
    """Share containers of 16 items or more whatever their size, so that the runs without
    sharing, which pickle the dataset for every worker, stay fast."""
    from loader.workers import dataset_walk, shipping
    monkeypatch.setattr(shipping, "SHARE_MIN_BYTES", 0)
    monkeypatch.setattr(dataset_walk, "MIN_ITEMS", 16)


@pytest.fixture(scope="module")
def nested():
    """Subset of a ConcatDataset of a wrapped dataset and a plain one; indices in a list."""
    rng = np.random.default_rng(0)
    parts = ConcatDataset([Wrapper(Annotations(FEW)), Annotations(FEW, offset=FEW)])
    return Subset(parts, rng.permutation(2 * FEW).tolist())


# ---------------------------------------------------------------- identity of batches


@pytest.mark.parametrize("method", METHODS)
def test_batches_identical_with_and_without_sharing(method, nested, small_thresholds):
    sampler = list(range(0, len(nested), 7))  # ~860 samples: 14 batches
    reference = _batches(nested, sampler=sampler)  # num_workers=0: nothing is shared
    for workers in (1, 2, 3):
        loader = DataLoader(nested, batch_size=64, sampler=sampler, num_workers=workers,
                            multiprocessing_context=method, output="numpy")
        it = iter(loader)
        assert len(_shared_report(it)) == 7  # 3 per Annotations, and the Subset's indices
        assert [_plain(b) for b in it] == reference, workers
        assert not _image_fds()  # closed at the end of the epoch
    off = _batches(nested, sampler=sampler, num_workers=2, multiprocessing_context=method,
                   share_dataset=False)
    assert off == reference


def test_shuffled_epochs_match_with_sharing_off():
    dataset = Annotations(ITEMS)
    on = _batches(dataset, shuffle=True, generator=3, num_workers=2, batch_size=256)
    off = _batches(dataset, shuffle=True, generator=3, num_workers=2, batch_size=256,
                   share_dataset=False)
    assert on == off and len(on) == -(-ITEMS // 256)


# ---------------------------------------------------------------- what workers see


@pytest.mark.parametrize("method", METHODS)
def test_workers_read_views_and_the_users_objects_are_untouched(method):
    inner = Probe(ITEMS)
    dataset = Subset(Wrapper(inner), list(range(ITEMS)))
    items, by_name, weights = inner.items, inner.by_name, inner.weights
    it = iter(DataLoader(dataset, batch_size=100, sampler=[5, 17, 40_000 - 1] * 40,
                         num_workers=2, multiprocessing_context=method, output="numpy"))
    batches = [_plain(b) for b in it]
    assert {k for b in batches for k in b["kinds"]} == {"SharedList,SharedDict,SharedList"}
    assert [b["id"][:3] for b in batches[:1]] == [[5, 17, 39_999]]
    assert inner.items is items and type(items) is list and items == _annotations(ITEMS)
    assert inner.by_name is by_name and type(by_name) is dict and len(by_name) == ITEMS
    assert inner.weights is weights and type(weights) is list
    assert dataset.dataset.inner is inner and type(dataset.indices) is list


@pytest.mark.parametrize("method", METHODS)
def test_worker_writes_stay_in_the_worker(method, small_thresholds):
    """A worker's writes to shared containers behave as writes to its own copy: the same
    batches as with share_dataset=False, and the main process's dataset is untouched."""
    dataset = Writer(FEW)
    kwargs = dict(batch_size=16, sampler=list(range(0, FEW, 3)) * 2, num_workers=2,
                  multiprocessing_context=method)
    on = _batches(dataset, **kwargs)
    off = _batches(dataset, share_dataset=False, **kwargs)
    assert on == off
    assert max(b["cache"][-1] for b in on) > FEW  # the writes were seen by later reads
    assert len(dataset.by_name) == FEW and len(dataset.weights) == FEW
    assert "touched" not in dataset.items[0]


def test_user_built_views_reach_spawn_workers():
    view = SharedList(_annotations(5000))
    mapping = SharedDict({f"k{i}": i for i in range(3000)})
    dataset = HoldsAView(view)
    assert _batches(dataset, batch_size=1000, num_workers=2,
                    multiprocessing_context="spawn") == [list(range(k, k + 1000))
                                                         for k in range(0, 5000, 1000)]
    assert mapping["k5"] == 5 and view[3]["id"] == 3


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_arrays_reach_spawned_workers_zero_copy_and_private(method, small_thresholds):
    dataset = Images(20)
    sampler = [3, 4, 5, 6] * 3  # every index read three times by the same worker
    kwargs = dict(batch_size=4, sampler=sampler, num_workers=2, multiprocessing_context=method)
    on = _batches(dataset, **kwargs)
    assert all(b["in_image"] == [True] * 4 and b["big_in_image"] == [True] * 4
               and b["owndata"] == [False] * 4 for b in on)
    assert [b["before"] for b in on] == [[3, 4, 5, 6], [3, 4, 5, 6], [1003, 1004, 1005, 1006],
                                         [1003, 1004, 1005, 1006], [2003, 2004, 2005, 2006],
                                         [2003, 2004, 2005, 2006]][:len(on)]
    off = _batches(dataset, share_dataset=False, **kwargs)
    assert [dict(b, in_image=None, big_in_image=None, owndata=None) for b in on] == \
        [dict(b, in_image=None, big_in_image=None, owndata=None) for b in off]
    assert all(b["in_image"] == [False] * 4 for b in off)
    assert dataset.images[3][0, 0, 0] == 3 and dataset.big[3] == 3  # the main's are intact


def test_fork_leaves_arrays_to_fork(small_thresholds):
    """Under fork the arrays are shared already (nothing reads their pages' counts)."""
    dataset = Images(20)
    it = iter(DataLoader(dataset, batch_size=4, sampler=[1, 2], num_workers=1,
                         output="numpy"))
    batch = _plain(next(it))
    assert batch["in_image"] == [False, False] and _shared_report(it) == []
    del it


def test_a_dataset_with_a_lambda_and_a_local_class_under_spawn():
    dataset = WithLambda(ITEMS)
    sampler = list(range(0, ITEMS, 97))
    it = iter(DataLoader(dataset, batch_size=50, sampler=sampler, num_workers=2,
                         multiprocessing_context="spawn", output="numpy"))
    assert _shared_report(it) and it._pool.shipment.ticket.codec == "c"
    assert [_plain(b) for b in it] == _batches(dataset, batch_size=50, sampler=sampler)


def test_the_dataset_is_pickled_once_under_spawn(small_thresholds):
    dataset = Counted(FEW)
    del PICKLED[:]
    _batches(dataset, batch_size=500, num_workers=3, multiprocessing_context="spawn")
    assert len(PICKLED) == 1  # one image for three workers, and no separate check
    del PICKLED[:]
    _batches(dataset, batch_size=500, num_workers=3, multiprocessing_context="spawn",
             share_dataset=False)
    assert len(PICKLED) == 4  # the old way: a check, then one stream per worker


def test_iterable_dataset_and_persistent_workers(small_thresholds):
    stream = Stream(FEW)
    ids = [i for b in _batches(stream, batch_size=1000, num_workers=2,
                               multiprocessing_context="spawn") for i in b]
    assert sorted(ids) == list(range(FEW))
    dataset = Annotations(FEW)
    loader = DataLoader(dataset, batch_size=500, num_workers=2, persistent_workers=True,
                        multiprocessing_context="forkserver", output="numpy")
    first = [_plain(b) for b in loader]
    assert [_plain(b) for b in loader] == first == _batches(dataset, batch_size=500)
    assert len(set(_image_fds())) == 1  # one image for both epochs
    loader.close()
    assert not _image_fds()


def test_too_little_memory_means_a_copy_per_worker(monkeypatch, small_thresholds):
    from loader.ipc import capacity, image
    short = types.SimpleNamespace(available_bytes=lambda: 0,
                                  shortage_message=capacity.shortage_message)
    monkeypatch.setattr(image, "capacity", short)  # only the image sees no memory left
    monkeypatch.setattr(image, "_CHECK_FROM_BYTES", 0)
    dataset = Probe(FEW)
    with pytest.warns(RuntimeWarning, match="not shared"):
        batches = _batches(dataset, batch_size=1000, num_workers=2,
                           multiprocessing_context="spawn")
    assert {k for b in batches for k in b["kinds"]} == {"list,dict,list"}


def test_small_datasets_are_left_alone():
    dataset = Probe(1000)
    batches = _batches(dataset, batch_size=500, num_workers=2)
    assert {k for b in batches for k in b["kinds"]} == {"list,dict,list"}


# ---------------------------------------------------------------- memory


def _uss_mib(pids: list[int]) -> list[float]:
    return [psutil.Process(p).memory_full_info().uss / 2**20 for p in pids]


@pytest.fixture(scope="module")
def large():
    return Annotations(200_000)  # ~70 MiB of Python objects


@pytest.mark.parametrize("method, share", [("fork", True), ("spawn", True),
                                           ("forkserver", True), ("fork", False)])
def test_worker_memory_stays_flat_over_an_epoch(large, method, share):
    """Each worker's USS grows by at most _FLAT_MIB over one shuffled epoch with sharing;
    without it (fork), every worker copies the pages it reads."""
    loader = DataLoader(large, batch_size=512, shuffle=True, num_workers=2,
                        multiprocessing_context=method, output="numpy", share_dataset=share)
    it = iter(loader)
    next(it)
    pids = it.worker_pids
    start = _uss_mib(pids)
    for _ in range(len(loader) - 2):
        next(it)
    end = _uss_mib(pids)
    list(it)
    growth = [e - s for s, e in zip(start, end)]
    if share:
        assert max(growth) < 16 and max(end) < 64, (start, end)
    else:
        assert min(growth) > 30, (start, end)  # the copy sharing avoids


# ---------------------------------------------------------------- nothing left behind


class Crashes(Annotations):
    def __getitem__(self, i):
        if i == 7:
            os._exit(3)
        return super().__getitem__(i)


def test_a_crashed_worker_leaves_no_image(small_thresholds):
    from loader import WorkerError
    with pytest.raises(WorkerError, match="exit code 3"):
        _batches(Crashes(FEW), batch_size=4, sampler=range(16), num_workers=2,
                 multiprocessing_context="spawn")
    assert not _image_fds()


class DiesOnce(Annotations):
    """The first worker to read item 9 dies (the marker file says whether one has)."""

    def __init__(self, n: int, marker: str) -> None:
        super().__init__(n)
        self.marker = marker

    def __getitem__(self, i):
        if i == 9 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(7)
        return super().__getitem__(i)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_replaced_worker_maps_the_same_image(method, tmp_path, small_thresholds):
    dataset = DiesOnce(FEW, str(tmp_path / "died"))
    loader = DataLoader(dataset, batch_size=4, sampler=range(40), num_workers=2,
                        multiprocessing_context=method, worker_restarts=1, output="numpy")
    batches = [_plain(b) for b in loader]
    assert os.path.exists(tmp_path / "died")
    assert batches == _batches(Annotations(FEW), batch_size=4, sampler=range(40))
    assert not _image_fds()


_KILLED_MAIN = textwrap.dedent("""
    import os, sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_shared_dataset import Annotations
    from loader import DataLoader
    if __name__ == "__main__":
        it = iter(DataLoader(Annotations({items}), batch_size=8, num_workers=2,
                             multiprocessing_context={method!r}, output="numpy"))
        next(it)
        print(os.getpid(), *it.worker_pids, flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_kill_9_of_the_main_process_leaves_nothing(method, tmp_path):
    script = tmp_path / "main.py"
    script.write_text(_KILLED_MAIN.format(root=_ROOT, tests=os.path.join(_ROOT, "tests"),
                                          items=ITEMS, method=method))
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        main_pid, *workers = map(int, child.stdout.readline().split())
        name = f"loader-image-{main_pid}-"
        assert len(workers) == 2 and _image_fds(main_pid), "the main process holds its image"
        for pid in workers:  # the second one may still be starting
            deadline = time.monotonic() + EXIT_WITHIN_S
            while not _maps(pid, name) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _maps(pid, name), "each worker maps the image"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    assert wait_gone(workers)
    for pid in psutil.pids():
        assert not _maps(pid, name), f"process {pid} still maps the image"
        assert not [link for link in _image_fds(pid) if name in link]


def _maps(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return name in f.read()
    except OSError:
        return False
