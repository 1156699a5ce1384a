"""The installed distribution claims one top-level name, ``loader``.

Built as a wheel and installed into a fresh virtual environment, ``import loader`` must work
from a directory that holds a user's own ``workers.py``, ``ipc/`` and ``benchmarks/``, and
must neither break on them nor shadow them; a worker started with ``spawn`` must find our
engine too. The fresh environment borrows the test environment's site-packages (numpy,
pyzmq, ...) through a ``.pth`` file, so the test needs no network and installs only the
wheel.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import sysconfig
import zipfile

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TIMEOUT_S = 300  # building a wheel and a venv takes ~15 s here; a hang guard

_USER_SCRIPT = r"""
import sys
import workers, ipc, benchmarks          # the user's own modules, found first
assert workers.MINE and ipc.MINE and benchmarks.MINE
import loader
from loader import DataLoader
assert "site-packages" in loader.__file__, loader.__file__
assert not hasattr(workers, "pool")
assert sys.modules["workers"] is workers and sys.modules["ipc"] is ipc
if __name__ == "__main__":          # spawn imports this file again in each worker
    dl = DataLoader(list(range(10)), batch_size=4, num_workers=2,
                    multiprocessing_context="spawn")
    print("batches", [b.tolist() for b in dl])
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), _ROOT],
                   check=True, timeout=_TIMEOUT_S, capture_output=True)
    (path,) = glob.glob(str(out / "loader-*.whl"))
    return path


def test_wheel_has_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"loader"}
    for module in ("loader/workers/pool.py", "loader/ipc/arena.py",
                   "loader/benchmarks/__main__.py"):
        assert module in names


def test_installed_wheel_beside_users_own_modules(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=_TIMEOUT_S)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True,
                          timeout=_TIMEOUT_S).stdout.strip()
    # borrow the dependencies, not our own package (it is installed editable, by a finder
    # that a plain path entry does not activate)
    with open(os.path.join(site, "borrowed.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                    "--no-deps", wheel], check=True, timeout=_TIMEOUT_S, capture_output=True)
    project = tmp_path / "project"
    project.mkdir()
    (project / "workers.py").write_text("MINE = True\n")
    for package in ("ipc", "benchmarks"):
        (project / package).mkdir()
        (project / package / "__init__.py").write_text("MINE = True\n")
    (project / "train.py").write_text(_USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([python, "train.py"], cwd=project, capture_output=True, text=True,
                          timeout=_TIMEOUT_S, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "batches [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]" in proc.stdout
