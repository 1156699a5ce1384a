"""The shared-memory channel (ipc/channel.py): rings, doorbells, the spill path, and
the weak-memory-order mode, in one process and across a fork."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from loader import DataLoader, IterableDataset
from loader.ipc import channel as channel_mod
from loader.ipc.channel import MAX_RECORD, MSG, RING_BYTES, SPILL, Channel, Doorbell

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture
def rings():
    main = Channel.create(0, 4)
    worker = Channel(main.fd, 4, main=False)
    yield main, worker
    worker.close()
    main.close()


def test_records_come_out_in_order_through_wraps(rings):
    main, worker = rings
    rng = random.Random(7)
    sent, got, refused = [], [], 0
    for _ in range(60_000):
        if rng.random() < 0.55:
            n = rng.choice([0, 1, 7, 8, 9, 200, 5_000, 60_000, MAX_RECORD])
            payload = bytes([len(sent) % 251]) * n
            if main.tasks.write(payload):
                sent.append(payload)
            else:
                refused += 1
        elif (record := worker.tasks.read()) is not None:
            got.append(record[1])
    while (record := worker.tasks.read()) is not None:
        got.append(record[1])
    assert got == sent and len(sent) > 10_000
    assert refused  # a full ring says so instead of overwriting


def test_a_ring_refuses_what_does_not_fit_and_a_steady_exchange_never_does(rings):
    main, worker = rings
    assert not worker.results.write(b"x" * (MAX_RECORD + 1))  # spill path instead
    for i in range(20_000):  # one in, one out: early wraps keep room for a burst
        assert worker.results.write(i.to_bytes(4, "little") * (i % 300))
        tag, payload = main.results.read()
        assert tag == MSG and payload == i.to_bytes(4, "little") * (i % 300)
    written = 0
    while worker.results.write(b"y" * 1000):
        written += 1  # fill it: nothing is overwritten, the ring just says no
    assert written >= RING_BYTES // 1008 - 1 and main.results.ready()  # a wrap may cost one
    assert all(main.results.read() == (MSG, b"y" * 1000) for _ in range(written))
    assert main.results.read() is None and worker.results.write(b"", SPILL)
    assert main.results.read() == (SPILL, b"")


def test_slot_release_counters_are_shared(rings):
    main, worker = rings
    main.words[main.release_index(2)] = 5
    assert worker.released(2) == 5 and worker.released(1) == 0


def test_doorbell_names_who_rang():
    bell = Doorbell.create()
    try:
        for writer in (3, 0, 300, 3):
            Doorbell(-1, bell.write_fd, writer_id=writer).ring()
        assert Doorbell.ids(bell.drain()) == [3, 0, 300, 3]
        assert bell.drain() == b""
    finally:
        bell.close()


def test_records_written_by_a_forked_child_arrive_in_order(rings):
    main, _ = rings
    pid = os.fork()
    if pid == 0:  # the child writes 5,000 records as a worker would, then leaves
        try:
            child = Channel(main.fd, 4, main=False)
            for i in range(5_000):
                while not child.results.write(i.to_bytes(8, "little") * (1 + i % 50)):
                    pass
        finally:
            os._exit(0)
    got = []
    while len(got) < 5_000:
        record = main.results.read()
        if record is not None:
            got.append(record[1])
    os.waitpid(pid, 0)
    assert got == [i.to_bytes(8, "little") * (1 + i % 50) for i in range(5_000)]


class Alternating(IterableDataset):
    """Small batches, and every third one far larger than a ring record may be."""

    def __iter__(self):
        for i in range(60):
            yield [f"{i}-{j}-" + "x" * 40 for j in range(4_000 if i % 3 == 0 else 2)], i


def test_oversized_records_take_the_spill_path_in_order():
    def collate(samples):
        return [s[0] for s in samples], np.array([s[1] for s in samples])

    expected = [(names, ids.tolist()) for names, ids in
                DataLoader(Alternating(), batch_size=1, collate_fn=collate)]
    for workers in (1, 2):
        dl = DataLoader(Alternating(), batch_size=1, num_workers=workers, collate_fn=collate)
        got = [(names, ids.tolist()) for names, ids in dl]
        if workers == 1:
            assert got == expected
        else:  # each replica yields the whole stream: each batch twice, in turn
            assert got[::2] == expected and got[1::2] == expected
    assert sum(map(len, expected[0][0][0])) > MAX_RECORD  # the first batch had to spill


def test_huge_task_records_spill_and_keep_their_place():
    sizes = [3, 40_000, 5, 60_000, 2]  # 40,000 keys pickle to ~200 kB: over a record
    sampler = []
    start = 0
    for n in sizes:
        sampler.append(list(range(start, start + n)))
        start += n
    dl = DataLoader(list(range(start)), batch_sampler=sampler, num_workers=2,
                    output="numpy")
    assert [b.tolist() for b in dl] == sampler
    assert RING_BYTES // 4 == MAX_RECORD


def test_weak_memory_order_mode_consumes_only_what_the_doorbell_vouched_for(monkeypatch):
    """On machines without x86's store order a reader trusts a record only after the
    writer's doorbell ring for it; forcing that mode here runs its code for real."""
    monkeypatch.setattr(channel_mod, "STRONG_ORDER", False)
    import loader.workers.loop as loop
    import loader.workers.pool as pool
    monkeypatch.setattr(loop, "STRONG_ORDER", False)
    monkeypatch.setattr(pool, "STRONG_ORDER", False)
    data = [np.full(3, i) for i in range(300)]
    for workers in (1, 3):
        dl = DataLoader(data, batch_size=7, num_workers=workers, output="numpy")
        got = np.concatenate([b for b in dl])
        assert got[:, 0].tolist() == list(range(300))


def test_weak_memory_order_ring_waits_for_credit(rings, monkeypatch):
    monkeypatch.setattr(channel_mod, "STRONG_ORDER", False)
    main, worker = rings
    assert worker.results.write(b"a") and worker.results.write(b"b")
    assert main.results.ready() and main.results.read() is None  # no credit yet
    main.results.credits += 1
    assert main.results.read() == (MSG, b"a") and main.results.read() is None
    main.results.credits += 1
    assert main.results.read() == (MSG, b"b")


def test_a_writer_rings_only_a_reader_that_said_it_may_sleep(rings):
    main, worker = rings
    assert not main.wake_worker() and not worker.wake_main()  # both awake: no syscall
    worker.set_worker_asleep(True)
    main.set_main_asleep(True)
    assert main.wake_worker() and worker.wake_main()
    worker.set_worker_asleep(False)
    assert not main.wake_worker() and worker.wake_main()


def _sleep_until(ring, channel, bell, asleep) -> bool:
    """The readers' protocol (workers/loop.py, workers/pool.py): drain, look, say "asleep",
    fence, look again, poll. False if the poll timed out with a record waiting: a lost
    wake-up."""
    import select
    poller = select.poll()
    poller.register(bell.read_fd, select.POLLIN)
    while True:
        bell.drain()
        if ring.ready():
            return True
        asleep(True)
        channel_mod.fence()
        if ring.ready():
            asleep(False)
            return True
        events = poller.poll(2_000)
        asleep(False)
        if not events:
            return not ring.ready()  # nothing came and nothing is there: keep honest


def test_no_wake_up_is_lost_when_both_sides_sleep_between_records(rings):
    """Ping-pong across a fork, each side sleeping before every record: the Dekker
    handshake must wake the sleeper every time (a lost wake-up is a 2 s poll timeout)."""
    main, _ = rings
    to_worker, to_main = Doorbell.create(), Doorbell.create()
    rounds = 3_000
    pid = os.fork()
    if pid == 0:
        lost = 0
        try:
            child = Channel(main.fd, 4, main=False)
            for i in range(rounds):
                if not _sleep_until(child.tasks, child, to_worker, child.set_worker_asleep):
                    lost += 1
                    continue
                _, payload = child.tasks.read()
                assert child.results.write(payload)
                if child.wake_main():
                    to_main.ring()
        finally:
            os._exit(min(lost, 100))
    lost = 0
    try:
        for i in range(rounds):
            assert main.tasks.write(i.to_bytes(8, "little"))
            if main.wake_worker():
                to_worker.ring()
            if not _sleep_until(main.results, main, to_main, main.set_main_asleep):
                lost += 1
                break
            assert main.results.read() == (MSG, i.to_bytes(8, "little"))
    finally:
        _, status = os.waitpid(pid, 0)
        to_worker.close()
        to_main.close()
    assert lost == 0 and os.waitstatus_to_exitcode(status) == 0


def test_a_loader_that_sleeps_on_every_batch_never_waits_for_a_timeout():
    """One worker, one task at a time: main and worker both sleep before nearly every
    record, so a lost wake-up would cost a whole 1 s poll somewhere in 3,000 batches."""
    import time
    dl = DataLoader(np.arange(3_000), batch_size=1, num_workers=1, prefetch_factor=1,
                    output="numpy")
    worst = 0.0
    seen = []
    it = iter(dl)
    for _ in range(3_000):
        t = time.perf_counter()
        seen.append(int(next(it)[0]))
        worst = max(worst, time.perf_counter() - t)
    assert seen == list(range(3_000))
    assert worst < 0.5, f"one next() took {worst:.3f} s"


def test_a_fence_held_by_another_thread_at_fork_does_not_hang_the_child():
    """A worker forked while some thread of the main process was inside fence(): the
    child gets a lock of its own (os.register_at_fork), so its first fence returns."""
    import time
    channel_mod._FENCE.acquire()  # as another thread would, mid-fence, at the fork
    try:
        pid = os.fork()
        if pid == 0:
            try:
                channel_mod.fence()
            finally:
                os._exit(0)
    finally:
        channel_mod._FENCE.release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the child's fence() hung on the lock it inherited")
