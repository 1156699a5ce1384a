"""Self-healing faults: restarts, stalls and skipped samples, one table of child runs.

Each case runs in a child interpreter under a hard limit (``test_faults.run_child``): the
child builds a loader, drives it with :data:`DRIVE` (which may SIGKILL a worker after a
given batch) and reports what it saw: every sample, every error and warning, the stats,
and every worker pid it met, which the test checks are gone afterwards. Datasets return
``[index, worker id, seed % 1000, offset set by worker_init_fn]`` per sample.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

from test_faults import PRELUDE, assert_gone, run_child

LIMIT_S = 60  # a child that runs longer has hung

SETUP = """
import tempfile
from loader import StallWarning
MARK = os.path.join(tempfile.mkdtemp(), "first-try")  # exists once the fault has happened
def once(how):
    if not os.path.exists(MARK):
        open(MARK, "w").close()
        fault(how)
OFFSET = [0]
def init(worker_id):
    OFFSET[0] = 1000
def sample(i):
    info = get_worker_info()
    return np.array([i, info.id, info.seed % 1000, OFFSET[0]])
class DS:
    def __init__(self, n=40, hook=None):
        self.n, self.hook = n, hook
    def __len__(self): return self.n
    def __getitem__(self, i):
        if self.hook: self.hook(i)
        return sample(i)
"""

DRIVE = """
import gc, psutil, warnings
it = iter(loader)
pids = set(it.worker_pids)
rows, errors, epochs = [], [], []
t0 = time.monotonic()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    warnings.simplefilter(STALL_FILTER, StallWarning)
    for epoch in range(EPOCHS):
        it = iter(loader) if epoch else it
        n = 0
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except Exception as exc:
                errors.append((type(exc).__name__, str(exc), round(time.monotonic() - t0, 3)))
                break
            rows.extend(batch.tolist())
            n += 1
            pids.update(p for p in it.worker_pids if p)
            if n == KILL_AFTER:
                os.kill(it.worker_pids[KILL_WORKER], signal.SIGKILL)
        s = loader.stats()
        epochs.append(dict(restarts=s.restarts, stalls=s.stalls, skipped=s.skipped,
                           total_restarts=s.total.restarts, summary=s.summary))
        if errors:
            break
for e in errors:
    pids.update(int(p) for p in re.findall(r"pid (\\d+)", e[1]))
if hasattr(loader, "close"):
    loader.close()
del it
gc.collect()
def workers_left():  # spawn's resource tracker is multiprocess's, not a worker
    return [p.pid for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE
            and not any("resource_tracker" in part for part in p.cmdline())]
deadline = time.monotonic() + 5
while time.monotonic() < deadline and workers_left():
    time.sleep(0.05)
left = workers_left()
report(rows=rows, errors=errors, epochs=epochs, left=left, pids=sorted(pids),
       warnings=[(w.category.__name__, str(w.message)) for w in caught],
       elapsed=round(time.monotonic() - t0, 3))
"""


def drive(setup: str, make: str, *, kill_after: int = -1, kill_worker: int = 0,
          epochs: int = 1, stall_filter: str = "always") -> dict:
    """Run one case in a child; its report (the child's own stderr on a crash)."""
    body = (textwrap.dedent(SETUP) + textwrap.dedent(setup) + f"\nimport re\nloader = {make}\n"
            + textwrap.dedent(DRIVE).replace("KILL_AFTER", str(kill_after))
            .replace("KILL_WORKER", str(kill_worker)).replace("EPOCHS", str(epochs))
            .replace("STALL_FILTER", repr(stall_filter)))
    proc, reports = run_child(body, limit=LIMIT_S)
    assert proc.returncode == 0 and len(reports) == 1, proc.stderr[-3000:]
    result = reports[0]
    assert not result["left"], f"workers still alive after close: {result['left']}"
    assert_gone(result["pids"])
    result["code"] = PRELUDE + body  # what the child ran, for line numbers
    return result


def indices(result: dict) -> list[int]:
    return [row[0] for row in result["rows"]]


def assert_complete_in_order(result: dict, n: int = 40, epochs: int = 1) -> None:
    assert not result["errors"], result["errors"]
    assert indices(result) == list(range(n)) * epochs


def assert_same_worker_seeds(result: dict, per_epoch: int = 40) -> None:
    """Within an epoch, the replacement has its predecessor's id and seed, and ran
    worker_init_fn (seeds change from one epoch to the next by design)."""
    rows = result["rows"]
    for start in range(0, len(rows), per_epoch):
        seeds: dict[int, set] = {}
        for _, worker, seed, offset in rows[start:start + per_epoch]:
            seeds.setdefault(worker, set()).add(seed)
            assert offset == 1000, "worker_init_fn did not run in a worker"
        assert all(len(s) == 1 for s in seeds.values()), seeds


# ---------------------------------------------------------------------------- deaths


SELF_CONTAINED = """
class Alone:  # spawn: what a worker runs must not need this script's globals
    def __len__(self): return 40
    def __getitem__(self, i):
        import os
        import time
        import numpy as np
        time.sleep(0.002)  # slow batches keep torch's depth: the killed worker owes some
        from loader import get_worker_info
        info = get_worker_info()
        return np.array([i, info.id, info.seed % 1000, int(os.environ["TEST_OFFSET"])])
def alone_init(worker_id):
    import os
    os.environ["TEST_OFFSET"] = "1000"
"""


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_sigkill_mid_epoch_is_replaced_and_the_epoch_is_complete(context):
    result = drive(SELF_CONTAINED, "DataLoader(Alone(), batch_size=2, num_workers=2, "
                   "worker_restarts=1, worker_init_fn=alone_init, "
                   f"multiprocessing_context={context!r})", kill_after=3)
    assert_complete_in_order(result)
    assert_same_worker_seeds(result)
    (epoch,) = result["epochs"]
    assert epoch["restarts"] == 1 and "1 worker restart" in epoch["summary"]


def test_segfault_on_first_try_only_is_replaced():
    result = drive("", "DataLoader(DS(hook=lambda i: i == 11 and once('segfault')), "
                       "batch_size=2, num_workers=2, worker_restarts=1, worker_init_fn=init)")
    assert_complete_in_order(result)
    assert_same_worker_seeds(result)
    assert result["epochs"][0]["restarts"] == 1


def test_segfault_in_getitems_on_first_try_only_is_replaced():
    result = drive("""
        class Items(DS):
            def __getitems__(self, keys):
                if 11 in keys: once("segfault")
                return [sample(i) for i in keys]
        """, "DataLoader(Items(), batch_size=2, num_workers=2, worker_restarts=1, "
             "worker_init_fn=init)")
    assert_complete_in_order(result)
    assert result["epochs"][0]["restarts"] == 1


def test_segfault_always_at_17_ends_after_the_last_restart_naming_its_batch():
    result = drive("", "DataLoader(DS(hook=lambda i: i == 17 and fault('segfault')), "
                       "batch_size=2, num_workers=2, worker_restarts=3)")
    ((name, message, elapsed),) = result["errors"]
    assert name == "WorkerError", message
    assert elapsed < 5.0, f"took {elapsed} s"
    assert message.startswith("DataLoader worker (pid ")  # torch's sentence first
    assert "4 worker deaths in epoch 0; worker_restarts=3 allows 3 restarts" in message
    deaths = re.findall(r"^  (\d)\. worker (\d) \(pid \d+\) (.*)$", message, re.M)
    assert [d[0] for d in deaths] == ["1", "2", "3", "4"], message
    for _, worker, how in deaths:
        assert worker == "0"  # batch 8 is worker 0's in round robin, and stays with it
        assert how.startswith("killed by SIGSEGV (Segmentation fault) while working on "
                              "batch 8 (indices [16, 17])"), how
    assert "Indices [16, 17] were in the batch in hand every time" in message
    assert indices(result) == list(range(16))  # everything before the bad batch, in order


def test_worker_init_fn_crash_on_first_try_only_is_replaced():
    result = drive("""
        def crashy_init(worker_id):
            init(worker_id)
            if worker_id == 1: once("exit")
        """, "DataLoader(DS(), batch_size=2, num_workers=2, worker_restarts=1, "
             "worker_init_fn=crashy_init)")
    assert_complete_in_order(result)
    assert_same_worker_seeds(result)


def test_worker_init_fn_crash_every_time_is_told_as_a_start_up_death():
    result = drive("""
        def bad_init(worker_id):
            if worker_id == 1: fault("segfault")
        """, "DataLoader(DS(), batch_size=2, num_workers=2, worker_restarts=2, "
             "worker_init_fn=bad_init, prefetch_factor=2)")  # torch's depth: owing 2
    ((name, message, _),) = result["errors"]
    assert name == "WorkerError"
    assert message.count("worker 1 (pid ") == 3, message
    assert message.count("killed by SIGSEGV (Segmentation fault) before its first batch of "
                         "the epoch (starting up, or idle), owing 2") == 3, message


def test_in_order_false_with_restarts_yields_every_batch_once():
    result = drive("", "DataLoader(DS(hook=lambda i: time.sleep(0.002)), batch_size=2, "
                       "num_workers=3, worker_restarts=1, in_order=False)", kill_after=4,
                   kill_worker=1)
    assert not result["errors"], result["errors"]
    assert sorted(indices(result)) == list(range(40))
    assert result["epochs"][0]["restarts"] == 1


def test_persistent_workers_restart_every_epoch_budget_resets():
    """A kill in each of three epochs with worker_restarts=1: each epoch heals once.

    torch's depth (prefetch_factor=2) keeps the killed worker owing batches of the epoch it
    dies in; at the default, these tiny batches go 32 deep and the worker may already have
    made all ten of its batches, so its death would fall to the next epoch's budget."""
    result = drive("", "DataLoader(DS(), batch_size=2, num_workers=2, worker_restarts=1, "
                       "persistent_workers=True, worker_init_fn=init, prefetch_factor=2)",
                   kill_after=2, epochs=3)
    assert_complete_in_order(result, epochs=3)
    assert_same_worker_seeds(result)
    assert [e["restarts"] for e in result["epochs"]] == [1, 1, 1]
    assert result["epochs"][-1]["total_restarts"] == 3


def test_persistent_worker_dying_between_epochs_is_replaced_in_the_next():
    proc, reports = run_child("""
from loader import get_worker_info
loader = DataLoader(np.arange(40), batch_size=4, num_workers=2, persistent_workers=True,
                    worker_restarts=1)
first = [int(x) for b in loader for x in b]
victim = loader._iterator.worker_pids[1]
os.kill(victim, signal.SIGKILL)
time.sleep(0.2)  # dead and noticed only when the next epoch waits
second = [int(x) for b in loader for x in b]
pids = [victim] + list(loader._iterator.worker_pids)
report(first=first, second=second, restarts=[loader.stats().restarts,
       loader.stats().total.restarts], replaced=victim not in loader._iterator.worker_pids,
       pids=pids)
loader.close()
""", limit=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = reports
    assert result["first"] == result["second"] == list(range(40))
    assert result["restarts"] == [1, 1] and result["replaced"]
    assert_gone(result["pids"])


def test_persistent_worker_dying_after_its_last_batch_is_replaced_in_its_own_epoch():
    """Worker 0 dies once it has made its last batch of epoch 0 (as a fast worker far
    ahead of the main process may): the replacement is epoch 0's restart, so epoch 1 still
    has its own for the mid-epoch death of worker 1."""
    proc, reports = run_child("""
def dead(pid):  # waitable (a zombie's other threads may still be exiting), or reaped
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True
loader = DataLoader(np.arange(40), batch_size=2, num_workers=2, persistent_workers=True,
                    worker_restarts=1, prefetch_factor=2)
epochs, restarts, errors, pids = [], [], [], set()
for epoch, (victim_id, after) in enumerate([(0, 19), (1, 2)]):  # 19: batch 18, worker 0's last
    seen, it = [], iter(loader)
    try:
        for n, batch in enumerate(it, 1):
            seen += batch.tolist()
            pids.update(it.worker_pids)
            if n == after:
                victim = it.worker_pids[victim_id]
                os.kill(victim, signal.SIGKILL)
                while epoch == 0 and not dead(victim):
                    time.sleep(0.01)
    except Exception as exc:
        errors.append(str(exc))
    epochs.append(seen)
    restarts.append(loader.stats().restarts)
    pids.update(it.worker_pids)
loader.close()
report(epochs=epochs, restarts=restarts, errors=errors, pids=sorted(pids))
""", limit=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = reports
    assert not result["errors"], result["errors"]
    assert result["epochs"] == [list(range(40))] * 2
    assert result["restarts"] == [1, 1]
    assert_gone(result["pids"])


def test_two_deaths_in_one_epoch_with_one_restart_is_an_error_naming_both():
    result = drive("", "DataLoader(DS(hook=lambda i: (i == 9 and once('sigkill')) or "
                       "(i == 31 and fault('sigkill'))), batch_size=2, num_workers=2, "
                       "worker_restarts=1, prefetch_factor=2)")  # batch 15 is queued late
    ((name, message, _),) = result["errors"]
    assert name == "WorkerError"
    assert "2 worker deaths in epoch 0; worker_restarts=1 allows 1 restart per" in message
    assert "batch 4 (indices [8, 9])" in message and "batch 15 (indices [30, 31])" in message
    assert message.count("killed by SIGKILL (Killed)") == 2


def test_held_batches_are_never_overwritten_by_the_replacement():
    """Every batch is kept (each lives in a slot of its worker's arena); worker 0 is killed
    mid-epoch and replaced, and at the end every kept batch still holds what it held when
    it was yielded: the replacement wrote only into slots the user did not hold."""
    proc, reports = run_child("""
class Big:
    def __len__(self): return 48
    def __getitem__(self, i):
        time.sleep(0.002)
        return np.full(20000, i)  # 160 kB: the batch lives in a slot, not in the message
loader = DataLoader(Big(), batch_size=2, num_workers=2, worker_restarts=1)
it = iter(loader)
pids = set(it.worker_pids)
held = []
for n, batch in enumerate(it):
    held.append(batch)
    pids.update(p for p in it.worker_pids if p)
    if n == 5:
        os.kill(it.worker_pids[0], signal.SIGKILL)
first = [int(b[0, 0]) for b in held]
intact = [bool((b == b[:, :1]).all()) and b[:, 0].tolist() == [2 * n, 2 * n + 1]
          for n, b in enumerate(held)]
report(first=first, intact=intact, restarts=loader.stats().restarts, pids=sorted(pids))
""", limit=LIMIT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = reports
    assert result["first"] == list(range(0, 48, 2))
    assert all(result["intact"]), result["intact"]
    assert result["restarts"] == 1
    assert_gone(result["pids"])


# ---------------------------------------------------------------------------- stalls


SLEEPER = """
class Sleeper(DS):
    def __getitem__(self, i):
        if i == 5 and not os.path.exists(MARK):
            time.sleep(SLEEP_S)  # SLEEPS HERE
        return sample(i)
"""


def _line_of(body: str, marker: str) -> int:
    (n,) = [k for k, line in enumerate(body.splitlines(), 1) if marker in line]
    return n


def test_sleeping_forever_is_named_by_a_stall_warning_within_the_threshold():
    result = drive(SLEEPER.replace("SLEEP_S", "3600"),
                   "DataLoader(Sleeper(), batch_size=2, num_workers=2, stall_warning_s=0.5)",
                   stall_filter="error")
    ((name, message, elapsed),) = result["errors"]
    assert name == "StallWarning", message  # made an error by the filter, from next()
    assert elapsed < 0.5 + 1.5, f"warned after {elapsed} s"
    assert "DataLoader has waited 0.5 s for a batch (stall_warning_s=0.5): batch 2 " \
           "(indices [4, 5]) is with worker 0 (pid " in message
    pid = int(re.search(r"worker 0 \(pid (\d+)\)", message)[1])
    assert pid in result["pids"]
    line = _line_of(result["code"], "# SLEEPS HERE")
    assert f'File "<string>", line {line} in __getitem__' in message, message
    assert indices(result) == [0, 1, 2, 3]


def test_a_stall_warns_once_and_the_loader_keeps_waiting():
    result = drive(SLEEPER.replace("SLEEP_S", "2"),
                   "DataLoader(Sleeper(), batch_size=2, num_workers=2, stall_warning_s=0.5)")
    assert_complete_in_order(result)
    stalls = [m for kind, m in result["warnings"] if kind == "StallWarning"]
    assert len(stalls) == 1 and "indices [4, 5]" in stalls[0]
    assert result["epochs"][0]["stalls"] == 1


def test_stall_warning_with_in_order_false_names_the_oldest_batch():
    result = drive(SLEEPER.replace("SLEEP_S", "3600"),
                   "DataLoader(Sleeper(n=8), batch_size=2, num_workers=2, in_order=False, "
                   "stall_warning_s=0.5)", stall_filter="error")
    ((name, message, _),) = result["errors"]
    assert name == "StallWarning" and "batch 2 (indices [4, 5]) is with worker 0" in message
    assert sorted(indices(result)) == [0, 1, 2, 3, 6, 7]


def test_stuck_past_timeout_is_killed_and_replaced_and_the_epoch_completes():
    result = drive(SLEEPER.replace("SLEEP_S", "3600").replace(
        "            time.sleep", "            open(MARK, 'w').close()\n            time.sleep"),
        "DataLoader(Sleeper(), batch_size=2, num_workers=2, timeout=2, worker_restarts=1, "
        "worker_init_fn=init)")
    assert_complete_in_order(result)
    assert_same_worker_seeds(result)
    assert result["epochs"][0]["restarts"] == 1
    assert 2.0 <= result["elapsed"] < 10


def test_stuck_again_after_the_last_restart_is_a_timeout_naming_each_kill():
    result = drive(SLEEPER.replace("SLEEP_S", "3600"),
                   "DataLoader(Sleeper(), batch_size=2, num_workers=2, timeout=1, "
                   "worker_restarts=1)")
    ((name, message, _),) = result["errors"]
    assert name == "DataLoaderTimeoutError", message
    assert message.startswith("DataLoader timed out after 1 seconds")
    assert "Worker deaths this epoch:\n  1. worker 0 (pid " in message
    assert "was stuck for 1 s (timeout) and was killed, in __getitem__ (<string>, line " \
           in message
    assert "while working on batch 2 (indices [4, 5])" in message


# ---------------------------------------------------------------------------- iterables


STREAM = """
class Stream(IterableDataset):
    '''Worker k yields k*100, k*100+1, ...; Stateful when STATEFUL (position counted).'''
    def __init__(self, n=20, stateful=False, die_at=None):
        self.n, self.die_at, self.start = n, die_at, 0
        if stateful:
            self.state_dict = lambda: {"start": self.start}
            self.load_state_dict = lambda s: setattr(self, "start", s["start"])
    def __iter__(self):
        info = get_worker_info()
        for i in range(self.start, self.n):
            if info.id == 0 and i == self.die_at: once("sigkill")
            self.start = i + 1
            yield np.array([info.id * 100 + i, info.id, info.seed % 1000, 1000])
"""


def test_iterable_stateful_replica_resumes_after_its_last_delivered_batch():
    result = drive(STREAM, "DataLoader(Stream(stateful=True, die_at=9), batch_size=2, "
                           "num_workers=2, worker_restarts=1)")
    assert not result["errors"], result["errors"]
    got = indices(result)
    assert sorted(got) == sorted(list(range(20)) + list(range(100, 120))), got
    assert result["epochs"][0]["restarts"] == 1


def test_iterable_not_stateful_says_restarts_need_a_stateful_dataset():
    result = drive(STREAM, "DataLoader(Stream(die_at=9), batch_size=2, num_workers=2, "
                           "worker_restarts=1)")
    ((name, message, _),) = result["errors"]
    assert name == "WorkerError"
    assert "is killed by signal: Killed" in message
    assert "restarting an IterableDataset worker needs a Stateful dataset (state_dict() " \
           "and load_state_dict()" in message and "Stream is not" in message


def test_iterable_death_before_any_batch_restarts_from_the_start():
    result = drive(STREAM, "DataLoader(Stream(die_at=0), batch_size=2, num_workers=2, "
                           "worker_restarts=1)")
    assert not result["errors"], result["errors"]
    assert sorted(indices(result)) == sorted(list(range(20)) + list(range(100, 120)))


# ---------------------------------------------------------------------------- skipping


BAD = sorted(int(i) for i in np.random.default_rng(7).choice(1000, 10, replace=False))


def test_skip_one_percent_bad_samples_epoch_completes():
    result = drive(f"""
        def hook(i):
            if i in {set(BAD)!r}: raise ValueError(f"corrupt sample {{i}}")
        """, "DataLoader(DS(n=1000, hook=hook), batch_size=16, num_workers=2, "
             "on_error='skip')")
    assert not result["errors"], result["errors"]
    (epoch,) = result["epochs"]
    bad = [entry[0] for entry in epoch["skipped"]]
    assert bad == BAD
    assert all(kind == "ValueError" and text == f"corrupt sample {i}"
               for i, kind, text in epoch["skipped"])
    assert indices(result) == [i for i in range(1000) if i not in bad]
    warned = [m for kind, m in result["warnings"] if kind == "RuntimeWarning"]
    assert warned == ["DataLoader skipped 10 samples in epoch 0 whose fetch raised "
                      "(on_error='skip'); stats().skipped lists each as (index, exception "
                      "type, message)."]


def test_skip_and_restart_together():
    result = drive("""
        def hook(i):
            if i in (3, 22): raise KeyError(i)
            if i == 13: once("segfault")
        """, "DataLoader(DS(hook=hook), batch_size=4, num_workers=2, on_error='skip', "
             "worker_restarts=1)")
    assert not result["errors"], result["errors"]
    (epoch,) = result["epochs"]
    assert epoch["skipped"] == [[3, "KeyError", "3"], [22, "KeyError", "22"]]
    assert indices(result) == [i for i in range(40) if i not in (3, 22)]
    assert epoch["restarts"] == 1


# ---------------------------------------------------------------------------- soak


@pytest.mark.slow
def test_soak_random_kills_never_lose_duplicate_or_corrupt_a_batch():
    """Twelve loaders (in order and not, small and slot-sized batches, 1-2 workers) with a
    thread SIGKILLing a random worker at random moments, up to six times each, whenever the
    loader has made progress since the last kill: every epoch is exact and every kept batch
    intact (run with -m slow)."""
    proc, reports = run_child("""
import random, threading
class DS:
    def __init__(self, n, width): self.n, self.width = n, width
    def __len__(self): return self.n
    def __getitem__(self, i):
        time.sleep(random.random() * 0.004)
        return np.full(self.width, i, dtype=np.int64)
rng = random.Random(13)
outcomes, pids = [], set()
for trial in range(12):
    n, width = rng.choice([300, 600]), rng.choice([1, 20000])
    in_order = rng.random() < 0.6
    dl = DataLoader(DS(n, width), batch_size=rng.choice([2, 5]), num_workers=rng.choice([1, 2]),
                    worker_restarts=100, in_order=in_order)
    it = iter(dl)
    held, stop, kills = [], threading.Event(), [0, 0]  # kills so far, batches at the last
    def killer():
        while not stop.wait(rng.uniform(0.02, 0.3)) and kills[0] < 6:
            alive = [p for p in it.worker_pids if p]
            if alive and len(held) > kills[1]:
                kills[1] = len(held)
                try:
                    os.kill(rng.choice(alive), signal.SIGKILL)
                    kills[0] += 1
                except ProcessLookupError:
                    pass
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        for b in it:
            held.append(b)
            pids.update(p for p in it.worker_pids if p)
    finally:
        stop.set()
        thread.join()
    got = [int(b[j, 0]) for b in held for j in range(len(b))]
    exact = got == list(range(n)) if in_order else sorted(got) == list(range(n))
    intact = all(bool((b == b[:, :1]).all()) for b in held)
    outcomes.append((exact, intact, kills[0], dl.stats().restarts))
report(outcomes=outcomes, pids=sorted(pids))
""", limit=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = reports
    assert all(exact and intact for exact, intact, _, _ in result["outcomes"]), result
    assert sum(kills for _, _, kills, _ in result["outcomes"]) >= 24  # it did kill
    assert all(restarts >= kills - 1 for _, _, kills, restarts in result["outcomes"])
    print(f"\nsoak: {sum(k for _, _, k, _ in result['outcomes'])} kills, all epochs exact")
    assert_gone(result["pids"])
