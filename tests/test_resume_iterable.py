"""Resume of IterableDatasets (and of Stateful map-style datasets): per-worker state.

A replica's state is taken in its worker right after a batch and counts only once that
batch is handed out; with the same num_workers the resume is exact, for a Stateful
dataset, a Stateful iterator or neither (then fast-forwarded, with a warning). Another
num_workers is refused naming both counts, unless the dataset reshards its own state.
"""

from __future__ import annotations

import copy
import warnings

import pytest

from loader import DataLoader

from helpers import frozen_heap  # noqa: F401  (module-scoped autouse fixture)
from resume_helpers import (GlobalCursorStream, Items, IteratorStream, SelfIterator,
                            StatefulStream, Stream, identity, json_round_trip, make_loader,
                            run_resume)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")

_SIZES = [0, 100, 37]  # torchdata's: one worker with nothing, two uneven ones


def _make(dataset_factory, num_workers, persistent=False, batch_size=None, every=1, **kw):
    def make():
        return make_loader(dataset_factory(), num_workers=num_workers,
                           persistent_workers=persistent, batch_size=batch_size,
                           snapshot_every_n_steps=every, **kw)
    return make


@pytest.mark.parametrize("factory", [lambda: StatefulStream(_SIZES),
                                     lambda: IteratorStream(_SIZES),
                                     lambda: IteratorStream(_SIZES, shuffle=True)],
                         ids=["stateful-dataset", "stateful-iterator", "shuffled-iterator"])
@pytest.mark.parametrize("num_workers,persistent", [(0, False), (3, False), (3, True)])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_round_trip_with_state(factory, num_workers, persistent, batch_size):
    make = _make(factory, num_workers, persistent, batch_size)
    for interrupt in (0, 1, 10):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a Stateful replica is not replayed
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            expected, resumed = run_resume(make, interrupt)
        assert resumed == expected, interrupt


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (3, False), (3, True)])
def test_round_trip_without_state_fast_forwards_with_a_warning(num_workers, persistent):
    make = _make(lambda: Stream(_SIZES), num_workers, persistent, batch_size=7)
    everything = list(make())
    for interrupt in (1, 10):
        with pytest.warns(UserWarning, match=r"fast-forwarding: neither the dataset nor its "
                                             r"iterator defines state_dict") as caught:
            expected, resumed = run_resume(make, interrupt)
        assert resumed == expected
        assert everything[interrupt:] == expected
        assert "implement state_dict() and load_state_dict()" in str(caught[-1].message)


@pytest.mark.parametrize("every,interrupt", [(2, 1), (5, 10), (17, 19), (0, 4)])
def test_snapshot_every_n_steps_replays_the_rest(every, interrupt):
    make = _make(lambda: StatefulStream(_SIZES), 3, True, batch_size=7, every=every)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, resumed = run_resume(make, interrupt)
    assert resumed == expected


def test_snapshot_zero_and_end():
    """torchdata's SnapshotZero and SnapshotEnd for iterables: a state right after
    iter(), and one after the epoch, loaded into a loader that is mid-epoch."""
    for persistent in (False, True):
        make = _make(lambda: IteratorStream(_SIZES, shuffle=True), 3, persistent,
                     generator=4)
        dl = make()
        it = iter(dl)
        state0 = dl.state_dict()
        assert dl.state_dict()["workers"] == [{"entry": None, "handed": 0}] * 3
        expected = list(it)
        dl.load_state_dict(state0)
        assert list(dl) == expected

        dl = make()
        list(dl)
        state_end = dl.state_dict()
        expected = list(dl)
        other = make()
        it = iter(other)
        next(it)
        next(it)
        other.load_state_dict(json_round_trip(state_end))
        assert list(other) == expected


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (3, True)])
def test_multi_epoch_state_of_a_dataset_that_lives_on(num_workers, persistent):
    """torchdata's MultiEpochState: the dataset counts its epochs; a state taken after
    an epoch carries each replica's dataset as that epoch left it, where it lives on
    (persistent workers, the main process)."""
    sizes = [25, 50, 100, 75] if num_workers else [250]
    make = _make(lambda: StatefulStream(sizes, count_epochs=True), num_workers, persistent)
    dl = make()
    exp0 = list(dl)
    state1 = dl.state_dict()
    exp1, exp2 = list(dl), list(dl)
    assert [(v, e + 1) for (v, e) in exp0] == exp1
    resumed = make()
    it = iter(resumed)
    next(it)
    resumed.load_state_dict(json_round_trip(state1))
    assert list(resumed) == exp1
    assert list(resumed) == exp2


def test_dataset_that_is_its_own_iterator_is_stored_once():
    """torchdata's DatasetIteratorStateDuplication: the state is kept as the iterator's."""
    for num_workers in (0, 2):
        dl = make_loader(SelfIterator(100), num_workers=num_workers)
        it = iter(dl)
        for _ in range(num_workers + 1):
            next(it)
        entries = [w["entry"] for w in dl.state_dict()["workers"] if w["entry"]]
        assert entries and all(e["dataset"] is None and e["iterator"] for e in entries)
        del it


def test_earlier_states_do_not_change():
    """torchdata's DynamicState: a state handed out stays as it was."""
    dl = make_loader(StatefulStream([50, 50]), num_workers=2)
    it = iter(dl)
    for _ in range(6):
        next(it)
    state = dl.state_dict()
    frozen = copy.deepcopy(state)
    for _ in range(4):
        next(it)
    assert state == frozen and dl.state_dict() != frozen
    del it
    inline = make_loader(StatefulStream([100]), num_workers=0)
    it = iter(inline)
    next(it)
    state = inline.state_dict()
    frozen = copy.deepcopy(state)
    next(it)
    assert state == frozen


def test_state_request_soon_after_a_resume():
    """torchdata's FastStateDictRequest: a state taken after a resume, before every
    worker has handed out a batch, still holds the others' loaded states."""
    for every in (1, 17):
        make = _make(lambda: IteratorStream([25, 25, 25, 25], shuffle=True), 4, True,
                     batch_size=4, every=every, generator=3)
        dl = make()
        it = iter(dl)
        for _ in range(11):
            next(it)
        state = dl.state_dict()
        next(it)
        next(it)
        expected = list(it)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dl.load_state_dict(state)
            it = iter(dl)
            next(it)
            next(it)
            state2 = dl.state_dict()
            other = make()
            other.load_state_dict(json_round_trip(state2))
            assert list(other) == expected


def test_iter_is_called_once_per_replica():
    """torchdata's SingleIterCalled: a resume calls __iter__ once per worker."""
    dl = make_loader(CountIter(100), num_workers=2)
    it = iter(dl)
    next(it)
    next(it)
    state = dl.state_dict()
    calls = [w["entry"]["dataset"]["calls"] for w in state["workers"]]
    assert calls == [1, 1]
    del it
    again = make_loader(CountIter(100), num_workers=2)
    again.load_state_dict(state)
    it = iter(again)
    next(it)
    next(it)
    assert [w["entry"]["dataset"]["calls"] for w in again.state_dict()["workers"]] == [1, 1]
    del it


class CountIter(Stream):
    def __init__(self, n):
        super().__init__([n // 2, n // 2])
        self.calls = 0

    def __iter__(self):
        self.calls += 1
        yield from self._range()

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        pass  # the position comes from the loader's replay


# ---------------------------------------------------------------- worker counts


@pytest.mark.parametrize("before,after", [(3, 2), (0, 2), (2, 0)])
def test_another_num_workers_is_refused_naming_both(before, after):
    dl = make_loader(StatefulStream([40, 40, 40]), num_workers=before)
    it = iter(dl)
    next(it)
    state = dl.state_dict()
    del it
    other = make_loader(StatefulStream([40, 40, 40]), num_workers=after)
    with pytest.raises(ValueError, match=rf"num_workers={before} .*num_workers={after}"):
        other.load_state_dict(state)
    assert list(other)  # still usable, from the start


def test_zero_and_one_worker_are_one_stream():
    make = lambda nw: make_loader(StatefulStream([60]), num_workers=nw, batch_size=4)
    for before, after in ((0, 1), (1, 0)):
        expected, resumed = run_resume(lambda: make(before), 5, second=lambda: make(after))
        assert resumed == expected


@pytest.mark.parametrize("before,after", [(2, 3), (3, 1), (0, 2)])
def test_reshard_hook(before, after):
    """A dataset with reshard_state resumes on another worker count: every sample once."""
    def make(nw):
        return make_loader(GlobalCursorStream(90), num_workers=nw)
    dl = make(before)
    it = iter(dl)
    seen = [next(it) for _ in range(20)]
    state = dl.state_dict()
    del it
    resumed = make(after)
    resumed.load_state_dict(json_round_trip(state))
    rest = list(resumed)
    assert sorted(x for b in seen + rest for x in b) == list(range(90))


# ---------------------------------------------------------------- Stateful map datasets


class RandomMap(Items):
    """torchdata's DummyMapDataset(shuffle=True): samples drawn with numpy's global RNG
    in __getitem__; its state is that RNG."""

    def __getitem__(self, i):
        import numpy as np
        return [i, int(np.random.randint(1000))]

    def state_dict(self):
        import numpy as np
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        return {"rng": [kind, key.tolist(), pos, has_gauss, gauss]}

    def load_state_dict(self, state):
        import numpy as np
        kind, key, pos, has_gauss, gauss = state["rng"]
        np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (3, False), (3, True)])
def test_stateful_map_dataset_state_per_worker(num_workers, persistent):
    """torchdata's Map random_state: a Stateful map dataset's state is per worker and
    restored into the worker that made the next batch."""
    make = lambda: make_loader(RandomMap(60), num_workers=num_workers, batch_size=4,
                               persistent_workers=persistent, shuffle=True, generator=2)
    for interrupt in (0, 1, 5):
        expected, resumed = run_resume(make, interrupt)
        assert resumed == expected


def test_stateful_map_dataset_needs_the_same_worker_count():
    dl = make_loader(RandomMap(60), num_workers=2, batch_size=4)
    it = iter(dl)
    next(it)
    state = dl.state_dict()
    del it
    with pytest.raises(ValueError, match="num_workers=2 .*Stateful dataset.*num_workers=3"):
        make_loader(RandomMap(60), num_workers=3, batch_size=4).load_state_dict(state)
    assert make_loader(Items(60), num_workers=3, batch_size=4)._ledger.per_worker is False


def test_auto_workers_stay_fixed_for_per_worker_state():
    dl = DataLoader(StatefulStream([10, 10]), num_workers="auto", collate_fn=identity)
    assert dl._autotuner.settled  # never resized


# ---------------------------------------------------------------- a real Stateful dataset


@pytest.mark.parametrize("num_workers", [0, 2])
def test_hugging_face_iterable_dataset(num_workers):
    """torchdata's test_hugging_face: HF datasets' IterableDataset is Stateful (its
    state_dict says which shard and example it is at); the resume asks it, per worker,
    and yields exactly the rest, without replaying."""
    import datasets  # in the test extra

    def make():
        ds = datasets.Dataset.from_dict({"x": list(range(120))}).to_iterable_dataset(
            num_shards=4)
        return DataLoader(ds, batch_size=5, num_workers=num_workers)
    dl = make()
    it = iter(dl)
    for _ in range(7):
        next(it)
    state = dl.state_dict()
    rest = [b["x"].tolist() for b in it]
    resumed = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fast-forward warning
        resumed.load_state_dict(json_round_trip(state))
        assert [b["x"].tolist() for b in resumed] == rest
    assert all(w["entry"] and w["entry"]["dataset"] for w in state["workers"])
