"""worker_backend: argument rules, the environment override, Ray only imported when used
(and a clear error without it), and who shuts a Ray session down.

The session tests run in child interpreters: each starts (and must end) its own Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from loader import DataLoader, RayBackend
from loader.backends import ENV_VAR

from helpers import frozen_heap  # noqa: F401 (autouse fixture)
from ray_helpers import TESTS_DIR

_CHILD_TIMEOUT_S = 120  # a child interpreter that starts Ray: seconds before it is a hang
_GONE_WITHIN_S = 15.0  # Ray's daemons of an ended session may take a moment to exit

_HIDE_RAY = """
import importlib.abc, sys
class _NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoRay())
"""


def run_child(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = TESTS_DIR + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- arguments


def test_worker_backend_argument_rules():
    data = list(range(8))
    assert DataLoader(data)._backend_kind == "local"
    dl = DataLoader(data, num_workers=2, worker_backend="ray")
    assert dl._backend_kind == "ray" and dl.worker_backend == "ray"
    options = RayBackend(remote_args={"resources": {"cpu_node": 1}})
    dl = DataLoader(data, num_workers=2, worker_backend=options)
    assert dl._backend_kind == "ray" and dl._ray_options is options
    assert dl.worker_backend is options  # kept as given, so a rebuilt loader is the same
    assert options.actor_options() == {"num_cpus": 1, "resources": {"cpu_node": 1}}
    with pytest.raises(ValueError, match="needs num_workers > 0"):
        DataLoader(data, worker_backend="ray")
    with pytest.raises(ValueError, match="cannot be combined with worker_backend='ray'"):
        DataLoader(data, num_workers=2, multiprocessing_context="spawn", worker_backend="ray")
    with pytest.raises(ValueError, match="num_workers='auto'"):
        DataLoader(data, num_workers="auto", worker_backend="ray")
    with pytest.raises(ValueError, match=r"worker_backend should be one of \('local', 'ray'\)"):
        DataLoader(data, num_workers=2, worker_backend="dask")
    with pytest.raises(TypeError):
        DataLoader(data, 1, None, None, None, 2, None, False, False, 0, None, None, None,
                   "ray")  # keyword-only


def test_environment_variable_picks_ray_where_it_applies(monkeypatch):
    data = list(range(8))
    monkeypatch.setenv(ENV_VAR, "ray")
    assert DataLoader(data, num_workers=2)._backend_kind == "ray"
    assert DataLoader(data)._backend_kind == "local"  # num_workers=0: the main process
    assert DataLoader(data, num_workers=2,
                      multiprocessing_context="spawn")._backend_kind == "local"
    assert DataLoader(data, num_workers=2, worker_backend="local")._backend_kind == "local"
    monkeypatch.setenv(ENV_VAR, "rayy")
    with pytest.raises(ValueError, match=f"{ENV_VAR} should be one of"):
        DataLoader(data, num_workers=2)


# ---------------------------------------------------------------- imports


def test_import_loader_never_imports_ray():
    proc = run_child("""
        import json, sys
        import loader
        from loader import DataLoader
        before = "ray" in sys.modules
        dl = DataLoader(list(range(8)), batch_size=2, num_workers=2, worker_backend="ray")
        local = [b.tolist() for b in DataLoader(list(range(4)), batch_size=2, num_workers=1)]
        print(json.dumps({"at_import": before, "after_ray_loader": "ray" in sys.modules,
                          "local": local}))
    """)
    out = last_json(proc)
    assert out == {"at_import": False, "after_ray_loader": False, "local": [[0, 1], [2, 3]]}


def test_ray_backend_without_ray_names_the_extra():
    proc = run_child(_HIDE_RAY + """
import json
from loader import DataLoader
from loader.workers.backend import make_backend
out = {}
try:
    DataLoader(list(range(8)), num_workers=2, worker_backend="ray")
except ImportError as exc:
    out["dataloader"] = str(exc)
try:
    make_backend("ray")
except ImportError as exc:
    out["engine"] = str(exc)
out["local"] = [b.tolist() for b in DataLoader(list(range(4)), batch_size=2, num_workers=1)]
print(json.dumps(out))
""")
    out = last_json(proc)
    hint = "pip install 'loader[ray]'"
    assert hint in out["dataloader"] and hint in out["engine"]
    assert out["local"] == [[0, 1], [2, 3]]  # the local engine does not care


# ---------------------------------------------------------------- session ownership


def _gone(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running after a grace period."""
    deadline = time.monotonic() + _GONE_WITHIN_S
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    return alive


_OWNED = """
import gc, json, os, time, psutil, ray
from loader import DataLoader, RayBackend
import ray_datasets as rd

def ray_pids():
    return [p.pid for p in psutil.Process().children(recursive=True)]

def left(pids, within_s=15.0):
    deadline = time.monotonic() + within_s
    while True:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)

settings = RayBackend(init_args={"num_cpus": 2, "include_dashboard": False,
                                 "object_store_memory": 100 * 2**20, "log_to_driver": False})
out = {}
dl = DataLoader(rd.Plain(8), batch_size=2, num_workers=2, worker_backend=settings)
out["epoch1"] = len(list(dl))
out["between_epochs"] = ray.is_initialized()  # the loader, not the epoch, holds it
out["epoch2"] = len(list(dl))
# an unnamed loader: the iterator's pool keeps the session up while it is collected
out["unnamed"] = sum(1 for _ in DataLoader(rd.Plain(8), batch_size=4, num_workers=1,
                                            worker_backend=settings))
out["ray_pids"] = ray_pids()
dl.close()
gc.collect()
out["after_close"] = ray.is_initialized()
out["left_after_close"] = left(out["ray_pids"])
# a persistent loader left open: interpreter exit ends our actors, then our session
keep = DataLoader(rd.Plain(8), batch_size=2, num_workers=2, persistent_workers=True,
                  worker_backend=settings)
out["persistent"] = len(list(keep))
out["ray_pids_at_exit"] = ray_pids()
print(json.dumps(out))
"""


def test_a_session_the_loader_started_ends_with_it_and_at_exit():
    out = last_json(run_child(_OWNED))
    assert out["epoch1"] == out["epoch2"] == 4 and out["unnamed"] == 2
    assert out["between_epochs"] is True
    assert out["after_close"] is False  # the last holder closed: ray.shutdown()
    assert out["ray_pids"] and out["left_after_close"] == []
    assert out["persistent"] == 4
    assert out["ray_pids_at_exit"] and not _gone(out["ray_pids_at_exit"])
