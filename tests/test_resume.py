"""Mid-epoch resume of map-style data: DataLoader.state_dict()/load_state_dict().

The kinds of torchdata's own StatefulDataLoader tests (round trips at 0 and 3 workers,
state before the first batch and after the last, multi-epoch, JSON, samplers with and
without state, errors), and what it cannot do: resuming with another num_workers (the
elastic matrix), twice within one epoch, with in_order=False exactly once, the
DistributedSampler's epoch, and a resume that reads no sample it does not hand out.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from loader import (BatchSampler, DataLoader, DistributedSampler, RandomSampler,
                    SequentialSampler, Stateful, StatefulDataLoader, SubsetRandomSampler,
                    WeightedRandomSampler)

from helpers import frozen_heap  # noqa: F401  (module-scoped autouse fixture)
from resume_helpers import (CountingSampler, Items, LoggedItems, YieldedSampler, identity,
                            json_round_trip, make_loader, read_log, run_resume)

# 3 workers on the 2-core VM: torch's "more workers than CPUs" warning is expected
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def _loader(n=100, **kwargs):
    return make_loader(Items(n), **kwargs)


# ---------------------------------------------------------------- the API


def test_names_and_protocol():
    assert StatefulDataLoader is DataLoader
    assert isinstance(CountingSampler(3), Stateful)
    assert not isinstance(Items(3), Stateful)
    dl = DataLoader(Items(4), snapshot_every_n_steps=5)
    assert dl.snapshot_every_n_steps == 5
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="snapshot_every_n_steps"):
            DataLoader(Items(4), snapshot_every_n_steps=bad)
    with pytest.raises(ValueError, match="seeding should be one of"):
        DataLoader(Items(4), seeding="per_sample")


def test_state_before_iter_starts_no_worker_and_is_json():
    dl = _loader(num_workers=2, persistent_workers=True, shuffle=True, generator=3)
    state = dl.state_dict()
    assert dl._iterator is None  # no iterator, so no worker started
    assert state["version"] == 1 and state["started"] is False and state["position"] == 0
    assert json_round_trip(state) == state
    expected = list(dl)
    resumed = _loader(num_workers=0, shuffle=True, generator=3)
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) == expected


@pytest.mark.parametrize("num_workers", [0, 3])
@pytest.mark.parametrize("batch_size", [None, 7])
@pytest.mark.parametrize("interrupt", [0, 1, 10])
def test_round_trip(num_workers, batch_size, interrupt):
    """torchdata's Map round trip (RandomSampler with a seeded generator)."""
    def make():
        import torch
        generator = torch.Generator().manual_seed(13)
        sampler = torch.utils.data.RandomSampler(range(100), generator=generator)
        return _loader(num_workers=num_workers, batch_size=batch_size, sampler=sampler)
    expected, resumed = run_resume(make, interrupt)
    assert resumed == expected and len(expected) == len(make()) - interrupt


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (3, False), (3, True)])
@pytest.mark.parametrize("every", [1, 5])
def test_round_trip_stateful_sampler(num_workers, persistent, every):
    """torchdata's TestStatefulSampler: a user's Stateful sampler is asked, and only
    draws (never fetches) the few batches since its last snapshot."""
    def make():
        return _loader(num_workers=num_workers, persistent_workers=persistent,
                       batch_size=7, sampler=CountingSampler(100),
                       snapshot_every_n_steps=every)
    for interrupt in (0, 1, 6):
        expected, resumed = run_resume(make, interrupt)
        assert resumed == expected


def test_stateful_sampler_snapshot_is_taken_where_batches_were_handed_out():
    sampler = CountingSampler(1000)  # not drawn to its end by the deepest prefetch
    dl = _loader(num_workers=2, batch_size=5, sampler=sampler)
    it = iter(dl)
    for _ in range(3):
        next(it)
    assert sampler.i > 15  # prefetch drew further than what was handed out
    state = dl.state_dict()
    assert state["sampler"] == {"kind": "stateful", "at": 3, "state": {"i": 15}}
    del it


@pytest.mark.parametrize("num_workers", [0, 2])
def test_yielded_counting_sampler_after_a_finished_epoch(num_workers):
    """A torchdata-style sampler whose state still says "pass done" after the epoch:
    the next epoch of the resumed loader is full, not empty."""
    dl = _loader(num_workers=num_workers, batch_size=10, sampler=YieldedSampler(50))
    first = list(dl)
    state = dl.state_dict()
    assert state["finished"] is True
    resumed = _loader(num_workers=num_workers, batch_size=10, sampler=YieldedSampler(50))
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) == first  # the sampler's order does not change between passes


# ---------------------------------------------------------------- the elastic matrix


_SHUFFLED = dict(batch_size=4, shuffle=True, generator=11)


@pytest.mark.parametrize("before,after", [(0, 2), (2, 0), (3, 1), (1, 3), (2, 3), (3, 2)])
def test_elastic_matrix(before, after):
    """Save with one num_workers, resume with another: the same batches, in the same
    order, and the next epoch too."""
    original = _loader(num_workers=before, **_SHUFFLED)
    it = iter(original)
    head = [next(it) for _ in range(7)]
    state = original.state_dict()
    rest = list(it)
    next_epoch = list(original)
    resumed = _loader(num_workers=after, **_SHUFFLED)
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) == rest
    assert list(resumed) == next_epoch
    assert sorted(x for b in head + rest for x in b) == list(range(100))


@pytest.mark.parametrize("before,after", [((2, True), (3, False)), ((0, False), (2, True)),
                                          ((2, True), (2, True))])
def test_elastic_with_persistent_workers(before, after):
    (nw1, pw1), (nw2, pw2) = before, after
    original = _loader(num_workers=nw1, persistent_workers=pw1, **_SHUFFLED)
    list(original)  # a whole epoch first: the state is inside the second
    it = iter(original)
    for _ in range(9):
        next(it)
    state = original.state_dict()
    rest = list(it) + list(original)
    resumed = _loader(num_workers=nw2, persistent_workers=pw2, **_SHUFFLED)
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) + list(resumed) == rest


def test_persistent_workers_resume_into_a_running_iterator():
    """load_state_dict on a loader whose persistent iterator is mid-epoch: the next
    iter() resumes the state, on the same workers."""
    original = _loader(num_workers=2, persistent_workers=True, **_SHUFFLED)
    it = iter(original)
    for _ in range(5):
        next(it)
    state = original.state_dict()
    expected = list(it)
    pids = original._iterator.worker_pids
    it = iter(original)
    next(it)
    original.load_state_dict(state)
    assert list(original) == expected
    assert original._iterator.worker_pids == pids


def test_resume_twice_within_one_epoch():
    """Save, resume, save again, resume again (KempnerForge#57): the second state keeps
    the epoch's position, not the distance since the first resume."""
    continuous = [b for b in _loader(num_workers=2, **_SHUFFLED)]
    first = _loader(num_workers=2, **_SHUFFLED)
    it = iter(first)
    seen = [next(it) for _ in range(5)]
    state = first.state_dict()
    del it
    second = _loader(num_workers=0, **_SHUFFLED)
    second.load_state_dict(json_round_trip(state))
    it = iter(second)
    seen += [next(it) for _ in range(6)]
    state = second.state_dict()
    assert state["position"] == 11
    del it
    third = _loader(num_workers=3, **_SHUFFLED)
    third.load_state_dict(json_round_trip(state))
    seen += list(third)
    assert seen == continuous


# ---------------------------------------------------------------- epochs


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_multi_epoch(num_workers, shuffle):
    """torchdata's MultiEpochSDL: 2 epochs, save, 2 more equal 4 continuous epochs."""
    def make():
        return _loader(num_workers=num_workers, batch_size=10, shuffle=shuffle, generator=5)
    one = make()
    continuous = [b for _ in range(4) for b in one]
    dl = make()
    seen = [b for _ in range(2) for b in dl]
    state = dl.state_dict()
    resumed = make()
    resumed.load_state_dict(json_round_trip(state))
    seen += [b for _ in range(2) for b in resumed]
    assert seen == continuous


@pytest.mark.parametrize("num_workers", [0, 2])
def test_end_of_epoch(num_workers):
    """torchdata's EndOfEpochBehavior: a state taken inside the last step resumes into
    the (empty) rest of that epoch, one taken after its end into a full next epoch."""
    def make():
        return _loader(n=20, num_workers=num_workers, batch_size=1, shuffle=True, generator=2)
    dl = make()
    epoch0 = []
    for batch in dl:
        epoch0.append(batch)
        inside = dl.state_dict()
    after = dl.state_dict()
    epoch1 = list(dl)
    assert inside["finished"] is False and inside["position"] == 20
    assert after["finished"] is True
    resumed = make()
    resumed.load_state_dict(json_round_trip(inside))
    assert list(resumed) == []
    assert list(resumed) == epoch1
    resumed = make()
    resumed.load_state_dict(json_round_trip(after))
    assert list(resumed) == epoch1


def test_load_applies_once_and_state_reads_back():
    """torchdata's InitialState: a loaded state is what state_dict() says until the
    next iter() uses it, once; load_state_dict({}) does nothing."""
    dl = _loader(num_workers=2, **_SHUFFLED)
    it = iter(dl)
    for _ in range(3):
        next(it)
    state = json_round_trip(dl.state_dict())
    expected = list(it)
    fresh = _loader(num_workers=2, **_SHUFFLED)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert list(fresh) == expected
    second = list(fresh)  # the state was used once: this is the next epoch
    assert len(second) == 25 and second != expected
    fresh.load_state_dict({})
    after = fresh.state_dict()
    assert (after["epoch"], after["finished"]) == (1, True)


def test_state_of_a_snapshot_zero_iterator_after_more_iterations():
    """torchdata's SnapshotZero/map_iterrupted_shuffle: a state taken right after
    iter() and one taken later in the same epoch both resume exactly."""
    for num_workers, persistent in ((0, False), (2, False), (2, True)):
        dl = _loader(num_workers=num_workers, persistent_workers=persistent, **_SHUFFLED)
        it = iter(dl)
        state0 = dl.state_dict()
        exp = [next(it) for _ in range(4)]
        state1 = dl.state_dict()
        dl.load_state_dict(state1)
        exp += list(dl)
        dl.load_state_dict(state0)
        assert list(dl) == exp


# ---------------------------------------------------------------- samplers


@pytest.mark.parametrize("make_sampler", [
    lambda ds: SequentialSampler(ds),
    lambda ds: RandomSampler(ds, generator=np.random.default_rng(4)),
    lambda ds: RandomSampler(ds, replacement=True, num_samples=3000, generator=4),
    lambda ds: SubsetRandomSampler(list(range(0, 100, 3)), generator=4),
    lambda ds: WeightedRandomSampler(np.linspace(0.1, 1, 100), 80, generator=4),
    lambda ds: DistributedSampler(ds, num_replicas=3, rank=1, seed=4),
], ids=["sequential", "random", "random-replacement", "subset", "weighted", "distributed"])
def test_our_samplers_resume_across_epochs(make_sampler):
    def make(num_workers):
        ds = Items(100)
        return make_loader(ds, num_workers=num_workers, batch_size=6, sampler=make_sampler(ds))
    dl = make(2)
    list(dl)  # one epoch: the generators have moved on
    it = iter(dl)
    for _ in range(4):
        next(it)
    state = dl.state_dict()
    assert state["sampler"]["kind"] == "own"
    expected = list(it) + list(dl)
    resumed = make(0)
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) + list(resumed) == expected


def test_our_samplers_record_a_pass_once_and_skip_without_drawing():
    sampler = RandomSampler(Items(50), generator=8)
    first = list(sampler)
    record = sampler._resume_state(False)
    second = list(sampler)
    assert second != first
    sampler._resume_restore(record)
    sampler._resume_replay(record, 20)
    assert list(sampler) == first[20:]
    assert list(sampler) == second  # the generator is where the replayed pass left it


@pytest.mark.parametrize("num_workers", [0, 2])
def test_torch_samplers_are_replayed(num_workers):
    """torchdata's NotStatefulSampler: torch's own samplers (not Stateful) are replayed
    by drawing their indices again, with their generator (or torch's global RNG, for
    generator=None) put back where the pass began."""
    import torch
    torch.manual_seed(0)
    for make_sampler in (lambda ds: torch.utils.data.RandomSampler(ds),
                         lambda ds: torch.utils.data.SequentialSampler(ds),
                         lambda ds: torch.utils.data.RandomSampler(
                             ds, generator=torch.Generator().manual_seed(1))):
        def make():
            ds = Items(100)
            return make_loader(ds, num_workers=num_workers, batch_size=5,
                               sampler=make_sampler(ds))
        dl = make()
        list(dl)
        it = iter(dl)
        for _ in range(7):
            next(it)
        state = dl.state_dict()
        assert state["sampler"]["kind"] == "replay"
        expected = list(it)
        user_rng = torch.get_rng_state()
        resumed = make()
        resumed.load_state_dict(json_round_trip(state))
        assert list(resumed) == expected
        assert torch.equal(torch.get_rng_state(), user_rng)  # the user's RNG did not move


def test_torch_distributed_sampler_epoch_is_restored():
    """torch's DistributedSampler (foreign, replayed): its epoch is in the state, and
    load_state_dict sets it, so a resumed run without set_epoch continues correctly."""
    import torch
    def make():
        ds = Items(60)
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=0, seed=3)
        return make_loader(ds, num_workers=2, batch_size=4, sampler=sampler), sampler
    dl, sampler = make()
    sampler.set_epoch(5)
    it = iter(dl)
    for _ in range(3):
        next(it)
    state = dl.state_dict()
    expected = list(it)
    resumed, resumed_sampler = make()
    resumed.load_state_dict(json_round_trip(state))
    assert resumed_sampler.epoch == 5
    assert list(resumed) == expected


@pytest.mark.parametrize("at_end", [False, True])
def test_distributed_sampler_epoch_and_position(at_end):
    """Our DistributedSampler keeps epoch, seed and position (torchdata#1513: the epoch
    was lost). A state taken after the epoch ends resumes into what set_epoch(e + 1)
    then chooses; one inside it into the rest of epoch e, whatever set_epoch says."""
    def make():
        ds = Items(90)
        sampler = DistributedSampler(ds, num_replicas=3, rank=2, seed=7)
        return make_loader(ds, num_workers=2, batch_size=4, sampler=sampler), sampler
    dl, sampler = make()
    sampler.set_epoch(3)
    it = iter(dl)
    for _ in range(2):
        next(it)
    if at_end:
        list(it)
    state = dl.state_dict()
    rest = list(it)
    sampler.set_epoch(4)
    following = list(dl)
    resumed, resumed_sampler = make()
    resumed.load_state_dict(json_round_trip(state))
    assert resumed_sampler.epoch == 3
    if at_end:
        resumed_sampler.set_epoch(4)
        assert list(resumed) == following
    else:
        assert list(resumed) == rest
        resumed_sampler.set_epoch(4)
        assert list(resumed) == following


def test_batch_sampler_given_directly():
    def make():
        ds = Items(64)
        return make_loader(ds, num_workers=2, batch_sampler=BatchSampler(
            RandomSampler(ds, generator=6), 5, drop_last=True))
    expected, resumed = run_resume(make, 4)
    assert resumed == expected and len(expected) == 12 - 4


# ---------------------------------------------------------------- in_order=False


def test_out_of_order_is_exactly_once():
    """in_order=False: the state is the lowest batch not handed out plus the ones above
    it that were; a resume (any num_workers, either order) hands out each other batch
    exactly once."""
    def make(num_workers, in_order):
        return make_loader(SlowFirst(40), num_workers=num_workers, batch_size=2,
                           in_order=in_order)
    dl = make(2, False)
    it = iter(dl)
    seen = [next(it) for _ in range(6)]
    state = dl.state_dict()
    del it
    assert state["delivered"], "batch 0 is slow: later ones came out first"
    assert state["position"] == 0
    for num_workers, in_order in ((2, False), (0, True), (3, True)):
        resumed = make(num_workers, in_order)
        resumed.load_state_dict(json_round_trip(state))
        rest = list(resumed)
        flat = sorted(x for b in seen + rest for x in b)
        assert flat == list(range(40)), (num_workers, in_order)
        if in_order:
            positions = [b[0] // 2 for b in rest]
            assert positions == sorted(positions)


class SlowFirst(Items):
    def __getitem__(self, i):
        if i == 0:
            import time
            time.sleep(0.5)
        return i


# ---------------------------------------------------------------- what a resume reads


@pytest.mark.parametrize("num_workers,resume_workers", [(0, 0), (2, 2), (2, 0), (0, 3)])
def test_resume_reads_no_sample_it_does_not_hand_out(tmp_path, num_workers, resume_workers):
    path = str(tmp_path / "reads.log")
    def make(nw):
        return make_loader(LoggedItems(200, path), num_workers=nw, batch_size=8,
                           shuffle=True, generator=9)
    dl = make(num_workers)
    it = iter(dl)
    for _ in range(11):
        next(it)
    state = dl.state_dict()
    del it, dl
    open(path, "w").close()
    resumed = make(resume_workers)
    resumed.load_state_dict(json_round_trip(state))
    handed = [x for b in resumed for x in b]
    assert len(handed) == 200 - 88
    assert sorted(read_log(path)) == sorted(handed)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("change,field", [
    (dict(n=99), "fingerprint.dataset_length"),
    (dict(batch_size=5), "fingerprint.batch_size"),
    (dict(drop_last=True), "fingerprint.drop_last"),
    (dict(shuffle=False), "fingerprint.sampler"),
    (dict(generator=None), "fingerprint.generator"),
    (dict(seeding="per_batch"), "seeding"),
])
def test_mismatch_names_the_field_and_both_values(change, field):
    base = dict(n=100, batch_size=4, shuffle=True, generator=1, num_workers=0)
    dl = _loader(**base)
    it = iter(dl)
    next(it)
    state = dl.state_dict()
    other = _loader(**{**base, **change})
    with pytest.raises(ValueError, match=field.replace(".", r"\.")) as info:
        other.load_state_dict(state)
    saved = state["fingerprint"].get(field.split(".")[-1], state.get(field))
    assert repr(saved) in str(info.value)
    assert "in the state but" in str(info.value)


def test_sampler_config_mismatch():
    dl = make_loader(Items(50), sampler=RandomSampler(Items(50), replacement=False,
                                                      num_samples=40, generator=1))
    state = dl.state_dict()
    other = make_loader(Items(50), sampler=RandomSampler(Items(50), replacement=True,
                                                         num_samples=40, generator=1))
    with pytest.raises(ValueError, match=r"sampler\.replacement is False in the state "
                                         r"but True"):
        other.load_state_dict(state)
    dist = make_loader(Items(50), sampler=DistributedSampler(Items(50), 2, 0))
    other = make_loader(Items(50), sampler=DistributedSampler(Items(50), 2, 1))
    with pytest.raises(ValueError, match=r"sampler\.rank is 0 in the state but 1"):
        other.load_state_dict(dist.state_dict())


def test_bad_states():
    dl = _loader()
    state = dl.state_dict()
    with pytest.raises(ValueError, match="version is 99 in the state but 1"):
        dl.load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="no 'version' field"):
        dl.load_state_dict({"_snapshot": {}, "_steps_since_snapshot": 0})  # torchdata's
    missing = dict(state)
    del missing["sampler"]
    with pytest.raises(ValueError, match="'sampler' is missing"):
        dl.load_state_dict(missing)
    with pytest.raises(ValueError, match="position is -1"):
        dl.load_state_dict({**state, "position": -1})
    with pytest.raises(ValueError, match="kind is 'iterable' in the state but 'map'"):
        dl.load_state_dict({**state, "kind": "iterable"})
    with pytest.raises(TypeError, match="must be a dict"):
        dl.load_state_dict([1, 2])
    assert list(dl) == list(_loader())  # a refused state changes nothing


def test_errors_after_resume_surface():
    """torchdata's InitialState error cases: a worker_init_fn error and a __getitem__
    error reach the user after a resume, as without one."""
    dl = _loader(num_workers=2, batch_size=4)
    state = dl.state_dict()
    failing = _loader(num_workers=2, batch_size=4, worker_init_fn=_init_fails)
    failing.load_state_dict(state)
    with pytest.raises(ValueError, match="Worker init error"):
        list(failing)
    broken = make_loader(Broken(10), num_workers=2, batch_size=4)
    broken.load_state_dict(make_loader(Broken(10), batch_size=4).state_dict())
    with pytest.raises(ValueError, match="Iteration error"):
        next(iter(broken))


def _init_fails(worker_id):
    raise ValueError("Worker init error")


class Broken(Items):
    def __getitem__(self, i):
        raise ValueError("Iteration error")


def test_concurrent_loaders_match_torch():
    """torchdata's ConcurrentDataLoaders: the stateful loader yields torch's batches."""
    import torch
    ours = list(make_loader(Items(50), num_workers=2, batch_size=3))
    theirs = list(torch.utils.data.DataLoader(Items(50), num_workers=2, batch_size=3,
                                              collate_fn=identity))
    assert ours == theirs


# ---------------------------------------------------------------- cost


def test_state_dict_is_a_small_constant():
    """state_dict() reads values kept ready: its size does not grow with the position
    (the pass record is taken once per pass, not per batch)."""
    dl = _loader(n=10000, num_workers=0, batch_size=10, shuffle=True, generator=1)
    it = iter(dl)
    next(it)
    small = len(json.dumps(dl.state_dict()))
    for _ in range(500):
        next(it)
    assert len(json.dumps(dl.state_dict())) <= small + 3  # the position's digits


@pytest.mark.parametrize("before,after", [(2, 0), (0, 2)])
def test_global_rng_checkpointed_with_the_state(before, after):
    """No generator: shuffles draw from torch's global RNG, as in torch. A checkpoint
    that also saves that RNG (as Lightning and accelerate do) resumes the later epochs
    exactly: the resume itself draws nothing from it."""
    import torch
    torch.manual_seed(0)
    dl = _loader(num_workers=before, batch_size=4, shuffle=True)
    it = iter(dl)
    for _ in range(6):
        next(it)
    state, rng = dl.state_dict(), torch.get_rng_state()
    expected = list(it) + list(dl) + list(dl)
    torch.manual_seed(123)  # the new process starts elsewhere...
    resumed = _loader(num_workers=after, batch_size=4, shuffle=True)
    resumed.load_state_dict(json_round_trip(state))
    torch.set_rng_state(rng)  # ...and the checkpoint puts the RNG back
    assert list(resumed) + list(resumed) + list(resumed) == expected


def test_a_dropped_loader_stops_its_workers_without_the_cycle_collector():
    """The resume ledger refers to its loader weakly: no reference cycle keeps a loader
    (and its persistent workers) alive after the user drops it."""
    import gc
    import time

    import psutil
    from helpers import wait_gone
    gc.disable()
    try:
        dl = _loader(num_workers=2, persistent_workers=True, batch_size=4)
        it = iter(dl)
        next(it)
        dl.state_dict()
        pids = dl._iterator.worker_pids
        del it, dl
        deadline = time.monotonic() + 10
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                  for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    finally:
        gc.enable()
    assert wait_gone(pids)


# ---------------------------------------------------------------- torch's draws


@pytest.mark.parametrize("make_sampler", [
    lambda ds: RandomSampler(ds),
    lambda ds: RandomSampler(ds, replacement=True, num_samples=150),
    lambda ds: SubsetRandomSampler(list(range(0, 100, 2))),
    lambda ds: WeightedRandomSampler(np.linspace(0.1, 1, 100), 70),
], ids=["random", "random-replacement", "subset", "weighted"])
def test_torch_global_draws_replay_without_moving_the_users_rng(make_sampler):
    """With torch in use and no generator our samplers draw torch's way from torch's
    global RNG (a seeded pass generator, or directly for Subset/Weighted, as torch's
    samplers do); the state records the pass, and the replay never moves the RNG."""
    import torch
    torch.manual_seed(3)

    def make(num_workers):
        ds = Items(100)
        return make_loader(ds, num_workers=num_workers, batch_size=5, sampler=make_sampler(ds))
    dl = make(2)
    it = iter(dl)
    for _ in range(4):
        next(it)
    state = dl.state_dict()
    expected = list(it)
    user_rng = torch.get_rng_state()
    resumed = make(0)
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) == expected
    assert torch.equal(torch.get_rng_state(), user_rng)


@pytest.mark.parametrize("before,after", [(2, 0), (0, 3)])
def test_torch_generator_elastic_across_epochs(before, after):
    import torch

    def make(num_workers):
        return _loader(num_workers=num_workers, batch_size=4, shuffle=True,
                       generator=torch.Generator().manual_seed(17))
    dl = make(before)
    list(dl)
    it = iter(dl)
    for _ in range(5):
        next(it)
    state = dl.state_dict()
    assert "torch" in state["generator"]  # base64 of the generator's bytes: JSON-safe
    expected = list(it) + list(dl)
    resumed = make(after)
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) + list(resumed) == expected


def test_persistent_pool_seed_chain_resumes_per_batch_values():
    """A persistent pool that follows torch derives its later epochs' base seeds from its
    first (torch draws one per pool); the state keeps that chain, so with per-batch
    seeding a resumed persistent loader repeats the later epochs' values bit for bit."""
    import torch
    from resume_helpers import Augmented

    def make():
        return make_loader(Augmented(40), num_workers=2, persistent_workers=True,
                           batch_size=4, shuffle=True, seeding="per_batch",
                           generator=torch.Generator().manual_seed(5))
    dl = make()
    list(dl)
    it = iter(dl)
    for _ in range(3):
        next(it)
    state = dl.state_dict()
    assert state["seed_chain"][1] == 1
    expected = list(it) + list(dl) + list(dl)
    resumed = make()
    resumed.load_state_dict(json_round_trip(state))
    assert list(resumed) + list(resumed) + list(resumed) == expected
    list(dl)
    finished = dl.state_dict()
    expected = list(dl)
    resumed = make()
    resumed.load_state_dict(json_round_trip(finished))
    assert list(resumed) == expected
