"""stats(), the offline tuner and num_workers="auto": behaviour, not timing.

The datasets are chosen so the right answer is not a matter of noise: a latency-bound one
(a sleep per sample, no CPU) must make both tuners go beyond the core count; a CPU-bound
one must not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from loader import DataLoader
from loader.tune import TuneResult, candidate_counts, tune_num_workers

CORES = len(os.sched_getaffinity(0))


class Latency:
    """2 ms of waiting per sample, as remote storage would cost."""

    def __len__(self):
        return 4000

    def __getitem__(self, i):
        time.sleep(0.002)
        return np.float32(i)


class CPUBound:
    """About a millisecond of numpy work per sample; no waiting at all."""

    def __init__(self):
        self.m = np.random.default_rng(0).standard_normal((48, 48))

    def __len__(self):
        return 4000

    def __getitem__(self, i):
        x = self.m
        for _ in range(12):
            x = np.tanh(x @ self.m)
        return x[0, :4].copy()


def factory():
    return Latency()


# ---------------------------------------------------------------------------- stats


def test_stats_counts_and_names_the_limiter():
    loader = DataLoader(np.arange(1000), batch_size=10, num_workers=2)
    for _ in loader:
        time.sleep(0.008)  # a slow consumer: one scheduling hiccup must not outweigh it
    stats = loader.stats()
    assert stats.epoch.batches == 100 and stats.epoch.samples == 1000
    assert sum(w.batches for w in stats.epoch.workers) == 100
    assert all(w.batches == 50 for w in stats.epoch.workers)  # round robin
    assert stats.epoch.consumer_s > 0.7
    assert stats.limiter == "consumer", stats.summary
    assert "1,000" not in stats.summary or "samples/s" in stats.summary
    assert "consumer" in stats.summary


def test_stats_workers_limit_a_slow_dataset():
    loader = DataLoader(Latency(), batch_size=8, num_workers=2)
    it = iter(loader)
    for _ in range(20):
        next(it)
    stats = it.stats()
    assert stats.limiter == "workers"
    w = stats.epoch.workers[0]
    assert w.fetch_s > w.collate_s and w.fetch_s > 0.015  # the sleeps are fetch time
    assert w.rss and w.rss > 0 and w.pid in it.worker_pids
    assert stats.epoch.wait_s > stats.epoch.main_s
    del it


class Spin:
    """2 ms of CPU per sample, by the thread's own clock: the same work on any core."""

    def __len__(self):
        return 150

    def __getitem__(self, i):
        end = time.thread_time() + 0.002
        while time.thread_time() < end:
            pass
        return np.float32(i)


def one_core(worker_id):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("persistent", [False, True])
def test_stats_name_the_cpu_when_workers_wait_for_a_core(persistent):
    """Three CPU-bound workers pinned to one core wait for it about two thirds of the time,
    on any machine: the summary must not ask for more workers (read from schedstat before
    non-persistent workers exit)."""
    loader = DataLoader(Spin(), batch_size=2, num_workers=3, worker_init_fn=one_core,
                        persistent_workers=persistent)
    for _ in loader:
        pass
    stats = loader.stats()
    assert stats.limiter == "CPU", stats.summary
    assert "waiting for a free core" in stats.summary and "will not help" in stats.summary
    elapsed = stats.epoch.elapsed_s
    assert 0.3 * 3 * elapsed < stats.epoch.cpu_wait_s < 3 * elapsed
    assert stats.total.cpu_wait_s >= stats.epoch.cpu_wait_s
    if persistent:
        loader.close()


def test_stats_do_not_blame_the_cpu_for_sleeping_workers():
    """Workers that sleep most of the time are waiting for data even when, on a loaded
    machine, they also wait for a core after each wake-up."""
    loader = DataLoader(Latency(), batch_size=8, num_workers=2, sampler=range(160))
    list(loader)
    stats = loader.stats()
    assert stats.limiter == "workers", stats.summary
    assert stats.epoch.cpu_run_s < 0.5 * 2 * stats.epoch.elapsed_s, stats.summary


def test_stats_cumulative_across_persistent_epochs():
    loader = DataLoader(np.arange(100), batch_size=10, num_workers=2, persistent_workers=True)
    for _ in range(3):
        for _ in loader:
            pass
    stats = loader.stats()
    assert stats.epoch.batches == 10 and stats.total.batches == 30
    assert stats.total.samples == 300
    loader.close()


def test_recorder_keeps_running_totals_per_worker_and_epoch():
    """Workers send running totals; a new process under the same id (a restart) counts
    from zero again without losing what the old one did."""
    from loader.stats import Recorder
    r = Recorder()
    r.start_epoch(2, [None, None])
    r.worker_result(0, (1, 10, 0.1, 0.2, 0.0, 0.3, 100))
    r.worker_result(1, (1, 10, 0.1, 0.0, 0.0, 0.1, 101))
    r.worker_result(0, (2, 20, 0.2, 0.4, 0.0, 0.6, 100))
    r.start_epoch(2, [None, None])
    r.worker_result(0, (3, 30, 0.3, 0.6, 0.0, 0.9, 100))
    r.worker_result(1, (1, 8, 0.5, 0.0, 0.0, 0.5, 102))  # worker 1 was replaced: counts anew
    snap = r.snapshot(2)
    assert [w.batches for w in snap.epoch.workers] == [1, 1]
    assert [w.batches for w in snap.total.workers] == [3, 2]
    assert snap.total.samples == 30 + 18 and snap.epoch.samples == 10 + 8
    assert abs(snap.total.workers[1].fetch_s - 0.6) < 1e-9
    assert r.totals()[1] == 48 and r.totals()[7] == 5


def test_stats_without_workers():
    loader = DataLoader(np.arange(100), batch_size=10)
    list(loader)
    stats = loader.stats()
    assert stats.num_workers == 0 and stats.epoch.samples == 100
    assert stats.limiter in ("main process", "consumer")


# ---------------------------------------------------------------------------- tuner


def test_candidates_cover_every_count_up_to_cores_then_grow():
    assert candidate_counts(2, 16) == [0, 1, 2, 3, 5, 8, 12, 16]
    assert candidate_counts(4, 6) == [0, 1, 2, 3, 4, 5, 6]


def test_tuner_goes_beyond_the_cores_when_workers_wait():
    lines = []
    result = tune_num_workers(Latency(), batch_size=16, seconds=12, progress=lines.append)
    assert isinstance(result, TuneResult)
    assert result.best > CORES
    assert lines and all(line.startswith("[tune]") for line in lines)
    rates = {t.num_workers: t.samples_per_s for t in result.trials if t.prefetch_factor != 4}
    assert rates[result.best] >= 0.95 * max(rates.values())
    assert result.seconds < 12 * 1.5
    assert "recommended: num_workers=" in result.table()


def test_tuner_stays_within_the_cores_for_cpu_bound_work():
    result = tune_num_workers(CPUBound(), batch_size=16, seconds=10, progress=False)
    assert result.best <= CORES + 1
    assert max(t.num_workers for t in result.trials) <= CORES + 3  # it stopped early


def test_tuner_respects_a_memory_budget():
    result = tune_num_workers(Latency(), batch_size=16, seconds=8, progress=False,
                              memory_budget=1)
    assert len(result.trials) == 1 and result.best == 0  # stopped after the first trial
    assert "memory budget" in result.reason


def test_tuner_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "loader.tune", "tests.test_tuning:factory", "--batch-size", "16",
         "--seconds", "6", "--max-workers", "4"],
        capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "recommended: num_workers=" in out.stdout
    assert "[tune] num_workers=" in out.stderr


# ---------------------------------------------------------------------------- auto


def _auto_epochs(dataset, epochs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = DataLoader(dataset, batch_size=16, num_workers="auto",
                            persistent_workers=True, **kwargs)
        batches = [[b.tolist() for b in loader] for _ in range(epochs)]
    return loader, batches


def test_auto_grows_beyond_the_cores_on_waiting_workers_and_keeps_the_batches():
    loader, (first, second) = _auto_epochs(Latency(), 2)
    expected = [list(map(float, range(i, min(i + 16, 4000)))) for i in range(0, 4000, 16)]
    assert first == expected and second == expected  # same batches, same order
    report = loader.stats().autotune
    assert report["settled"] and report["workers"] > CORES, report
    assert report["reason"]
    loader.close()


def test_auto_does_not_exceed_the_cores_on_cpu_bound_work():
    loader, _ = _auto_epochs(CPUBound(), 1)
    report = loader.stats().autotune
    assert report["workers"] <= CORES + 1, report
    loader.close()


def test_switching_to_the_main_process_mid_epoch_keeps_every_batch_in_order():
    """The fallback's mechanism: batches already given to workers arrive first, then the
    main process fetches the rest; nothing is lost, repeated or reordered."""
    data = np.arange(4000)
    loader = DataLoader(data, batch_size=16, num_workers=2, persistent_workers=True)
    expected = [list(range(i, i + 16)) for i in range(0, 4000, 16)]
    for switch_at in (0, 5, 120):
        it = iter(loader)
        got = []
        for i, b in enumerate(it):
            got.append(b.tolist())
            if i == switch_at:
                it._go_local()
        assert got == expected
        it._go_pool()  # and back for the next epoch
    assert [b.tolist() for b in loader] == expected
    loader.close()


def test_auto_tries_the_main_process_and_says_what_it_chose(monkeypatch):
    """Forced to try fetching in the main process (the estimate is made generous), auto
    picks the faster of the two and says so; the batches are those of num_workers=0."""
    import loader.autotune as autotune
    monkeypatch.setattr(autotune, "_LOCAL_TRY", 0.0)
    cheap = np.arange(400_000)  # long enough for both windows (0.25 s each) to close
    loader, epochs = _auto_epochs(cheap, 3)
    expected = [list(range(i, i + 16)) for i in range(0, 400_000, 16)]
    assert all(batches == expected for batches in epochs)
    stats = loader.stats()
    reason = stats.autotune["reason"]
    assert stats.autotune["settled"]
    assert "main process" in reason and reason in stats.summary
    if "fell back" in reason:
        assert stats.autotune["workers"] == 0 and stats.num_workers == 0
        assert type(iter(loader)).__name__ == "SingleProcessIter"  # the pool is gone
    loader.close()


def test_auto_keeps_an_iterable_dataset_pool_fixed():
    from loader import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            from loader import get_worker_info
            info = get_worker_info()
            return iter(range(info.id, 64, info.num_workers))

    loader, (batches,) = _auto_epochs(Stream(), 1)
    assert sorted(x for b in batches for x in b) == list(range(64))
    assert "IterableDataset" in loader.stats().autotune["reason"]
    loader.close()
