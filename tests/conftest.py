"""Shared fixtures. Every test is checked for leaks: no worker process, no /dev/shm
entry and no extra file descriptor may outlive it.

A test that uses a module's Ray cluster (a fixture named ``ray_cluster``, see
``tests/ray_helpers.py``) is checked the same way, except that the process trees of Ray's
own daemons (long-lived children of the test process, which start and end Ray's worker
processes as Ray likes) are left out of the process check; instead no actor of ours may
be alive on the cluster after the test."""

from __future__ import annotations

import gc
import os
import re
import time

import psutil
import pytest

from helpers import shm_held_by_others

_SETTLE_S = 10.0  # how long teardown waits for workers that are already shutting down


_OWNER = re.compile(r"^torch_(\d+)_")  # torch's shm files name the process that made them


def _shm_entries() -> set[str]:
    """/dev/shm entries that this test process or its children could have made."""
    ours = {os.getpid()} | {p.pid for p in _children()}
    try:
        names = [n for n in os.listdir("/dev/shm") if not n.startswith("sem.")]
    except FileNotFoundError:
        return set()
    return {n for n in names if not (m := _OWNER.match(n)) or int(m.group(1)) in ours}


def _children() -> list[psutil.Process]:
    """Live descendants of the test process. One that ends while we look is left out by
    itself: a race with one of Ray's short-lived workers must not empty the whole list
    (an empty "before" would then blame the session's forkserver on the next test)."""
    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _described(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} started {time.strftime('%H:%M:%S', time.localtime(p.create_time()))}: "
                       f"{' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            out.append(f"{p.pid} (gone)")
    return out


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fd_targets() -> set[str]:
    """What each open descriptor points at, for the message of a failed fd check."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail a test that leaves worker processes, /dev/shm files or descriptors behind."""
    if request.node.get_closest_marker("allow_leaks"):
        yield
        return
    ray_cluster = (request.getfixturevalue("ray_cluster")
                   if "ray_cluster" in request.fixturenames else None)

    def children() -> list[psutil.Process]:
        procs = _children()
        if ray_cluster is None:
            return procs
        ray_trees = ray_cluster.daemon_trees()
        return [p for p in procs if p.pid not in ray_trees]

    gc.freeze()  # what exists now is not this test's; teardown's collection skips it
    shm_before = _shm_entries()
    fds_before = _fd_count()
    targets_before = _fd_targets()
    before = {p.pid for p in children()}
    yield
    gc.collect()
    deadline = time.monotonic() + _SETTLE_S
    while True:
        left = [p for p in children() if p.pid not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
        gc.collect()
    leaked_shm = _shm_entries() - shm_before
    if leaked_shm:
        leaked_shm -= shm_held_by_others(leaked_shm, {os.getpid()} | {p.pid for p in _children()})
    fds_after = _fd_count()
    if ray_cluster is not None:  # Ray closes its connections to killed actors a bit later
        fd_deadline = time.monotonic() + _SETTLE_S
        while fds_after > fds_before and time.monotonic() < fd_deadline:
            time.sleep(0.05)
            fds_after = _fd_count()
    for p in left:  # do not let one leaky test poison the rest of the run
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"worker processes outlived the test: {_described(left)}"
    assert not leaked_shm, f"/dev/shm entries outlived the test: {sorted(leaked_shm)}"
    assert fds_after <= fds_before, (
        f"file descriptors leaked: {fds_before} before, {fds_after} after: "
        f"{sorted(_fd_targets() - targets_before)}")
    if ray_cluster is not None:
        ray_cluster.assert_no_actors_of_ours()


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_leaks: skip the leak check (a test that "
                            "checks leaks itself in a child interpreter)")
