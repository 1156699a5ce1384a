"""Smoke test of the benchmark suite: it runs, writes JSON, covers both loaders.

No timing assertions: ``--quick`` measures nothing meaningful, it only exercises every
code path (calibration, interleaved reps, cold start with fork and spawn, warm epochs,
a user dataset factory) the way CI can afford.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TIMEOUT_S = 180  # a --quick run takes ~35 s on the 2-core dev VM; this is a hang guard


def _bench(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "results.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [_ROOT, os.path.join(_ROOT, "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out),
                           *args], cwd=_ROOT, env=env, capture_output=True, text=True,
                          timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    with open(out) as f:
        return proc, json.load(f)


def _throughput(rows: list[dict], loader: str) -> list[dict]:
    return [r for r in rows if r["loader"] == loader and r["kind"] == "throughput"]


def test_quick_suite(tmp_path):
    # the peers (torchdata, SPDL) have their own smoke test below; SPDL leaves /dev/shm
    # entries for its resource tracker to clean, which the leak fixture would report
    proc, result = _bench(tmp_path, "--loaders", "ours,torch")
    rows = result["rows"]
    for loader in ("ours", "torch"):
        measured = _throughput(rows, loader)
        assert measured, f"no throughput rows for {loader}"
        for row in measured:
            assert not row.get("errors"), row
            assert row["samples_per_s"] and row["samples_per_s"] > 0, row
    assert {r["workload"] for r in rows if r["kind"] == "cold_start"} == {
        "cold_start/fork", "cold_start/spawn"}
    assert all(r["ttfb_s"] > 0 for r in rows if r["kind"] == "cold_start"
               and not r.get("skipped"))
    assert all(r["samples_per_s"] > 0 for r in rows if r["kind"] == "warm_epochs"
               and not r.get("skipped"))
    assert result["leftover_pids"] == []
    assert "samples/s" in proc.stdout and "×torch" in proc.stdout


# the test extra installs torchdata everywhere and SPDL where its wheels exist
_SPDL_HERE = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
_PEERS = ("torchdata", "spdl", "spdl-threads") if _SPDL_HERE else ("torchdata",)
_TRACKER_GRACE_S = 20.0  # SPDL's resource tracker unlinks its /dev/shm blocks after exit


def _psm_entries() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}
    except FileNotFoundError:
        return set()


def _mapped_anywhere(name: str) -> bool:
    """Whether a live process still maps or holds /dev/shm/<name> (someone else's)."""
    path = f"/dev/shm/{name}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                if path in f.read():
                    return True
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == path
                   for fd in os.listdir(f"/proc/{pid}/fd")):
                return True
        except OSError:
            continue
    return False


@pytest.mark.allow_leaks  # SPDL's shared blocks outlive its run briefly; checked below
def test_installed_peers_show_their_rows(tmp_path):
    """torchdata and SPDL (process pool and thread pipeline) are in the test extra: they
    must show measured rows, a peer's unsupported cell must be a skipped row that breaks
    nothing, and nothing they put in /dev/shm may stay once SPDL's tracker is done."""
    before = _psm_entries()
    _, result = _bench(tmp_path, "--loaders", ",".join(("ours", *_PEERS)),
                       "--workloads", "tiny,image_npcollate,warm_epochs")
    rows = result["rows"]
    for peer in _PEERS:
        measured = [r for r in rows if r["loader"] == peer and r.get("samples_per_s")]
        assert measured, f"no measured row for {peer}: {rows}"
        assert not any(r.get("errors") for r in rows if r["loader"] == peer), rows
    skipped = [r for r in rows if r.get("skipped")]
    if _SPDL_HERE:
        assert any(r["loader"] == "spdl" and r["kind"] == "warm_epochs" for r in skipped)
    deadline = time.monotonic() + _TRACKER_GRACE_S
    while (left := _psm_entries() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    stale = [n for n in left if not _mapped_anywhere(n)]  # others' runs may be alive
    assert not stale, f"/dev/shm entries left behind: {stale}"


def test_user_dataset_factory(tmp_path):
    _, result = _bench(tmp_path, "--dataset", "bench_factory:factory", "--workers", "0,2",
                       "--loaders", "ours,torch")
    rows = result["rows"]
    assert {r["workload"] for r in rows} == {"dataset:bench_factory:factory"}
    for loader in ("ours", "torch"):
        measured = _throughput(rows, loader)
        assert {r["num_workers"] for r in measured} == {0, 2}
        assert all(r["samples_per_s"] > 0 for r in measured), measured


def test_memory_workload(tmp_path):
    """A shared_dicts run, small: every start method, USS and PSS reported. Ours only: on a
    loaded machine torch's spawned workers can take longer to exit than the suite's leak
    check allows, which fails the command (the full run measures torch too)."""
    proc, result = _bench(tmp_path, "--workloads", "shared_dicts", "--items", "5000",
                          "--loaders", "ours")
    rows = result["rows"]
    assert {r["workload"] for r in rows} == {
        "shared_dicts/fork", "shared_dicts/spawn", "shared_dicts/forkserver"}
    for row in rows:
        assert not row.get("errors"), row
        assert row["ttfb_s"] > 0 and row["pss_sum_mb"] > 0, row
        assert len(row["worker_uss_start_mb"]) == len(row["worker_uss_end_mb"]) == 2, row
        assert row["samples"] == 5000, row
    assert "worker USS MiB start → end" in proc.stdout


@pytest.mark.parametrize("args", [["--loaders", "nope"], ["--workloads", "nope"]])
def test_bad_names_are_refused(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--out",
                           str(tmp_path / "r.json")], cwd=_ROOT, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "nope" in proc.stderr


def test_ray_engine_against_the_local_one(tmp_path):
    """ours-ray runs on a local Ray cluster the suite starts once, and the report sets its
    per-batch cost against ours on the same cells."""
    proc, result = _bench(tmp_path, "--loaders", "ours,ours-ray", "--workloads", "tiny",
                          "--workers", "0,2")
    rows = {(r["loader"], r["num_workers"]): r for r in result["rows"]}
    assert rows[("ours-ray", 0)]["skipped"].startswith("workers are Ray actors")
    ray_row = rows[("ours-ray", 2)]
    assert not ray_row.get("errors") and ray_row["samples_per_s"] > 0, ray_row
    assert ray_row["worker_cpu_us_per_batch"] > 0  # the actors are counted as its workers
    assert "engine overhead: ours-ray vs ours on tiny w=2:" in proc.stdout
    assert result["leftover_pids"] == []


def test_state_dict_probe(tmp_path):
    """tiny_state runs ours with and without state_dict() after every batch and reports
    the difference (torchdata's too when it is installed)."""
    proc, result = _bench(tmp_path, "--workloads", "tiny_state", "--loaders",
                          "ours,ours-state,torchdata,torchdata-state", "--workers", "0")
    loaders = {r["loader"] for r in result["rows"]}
    assert loaders == {"ours", "ours-state", "torchdata", "torchdata-state"}
    overhead = {o["loader"]: o for o in result["state_overhead"]}
    assert set(overhead) == {"ours", "torchdata"}
    assert "state_dict() after every batch" in proc.stdout
    _, plain = _bench(tmp_path, "--workloads", "tiny", "--loaders", "ours,ours-state",
                      "--workers", "0")
    assert {r["loader"] for r in plain["rows"]} == {"ours"}  # probes run where asked


def test_floor_runs_and_checks_its_batches():
    """``python -m benchmarks.floor``: both paths run, and the bare path's last batch is
    compared with the one a single process makes (a wrong view fails the run)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.floor", "--reps", "1",
                           "--seconds", "0.2"], cwd=_ROOT, env=env, capture_output=True,
                          text=True, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "bare two-worker path" in proc.stdout and "two / one:" in proc.stdout
