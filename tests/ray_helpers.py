"""A local Ray cluster for a test module, and the leak checks that replace the process
check for it: ``from ray_helpers import ...``.

Ray's daemons (gcs_server, raylet, ...) are children of the test process and live for
the whole module; Ray starts and ends its own worker processes under the raylet when it
likes. The autouse leak fixture (``conftest.py``) therefore leaves out the process trees
of Ray's daemons for a test that uses a :class:`RayCluster` fixture (named
``ray_cluster``), and asks the cluster instead that no actor of ours is alive after the
test. Everything else (worker processes of the local engine, /dev/shm, descriptors) is
checked as for any test.
"""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import psutil

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ACTORS_GONE_S = 10.0  # how long killed actors may take to be reported dead by the GCS
ACTOR_CLASS = "LoaderWorker"  # workers/ray_actor.py's class, as Ray names its actors


@contextlib.contextmanager
def with_tests_on_worker_path():
    """Ray's worker processes import the tests' datasets by module name: put this folder
    on the PYTHONPATH the raylet (and so every worker) inherits, for as long as needed."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = TESTS_DIR + (os.pathsep + before if before else "")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _ray_root() -> str:
    import ray
    return os.path.dirname(ray.__file__)


class RayCluster:
    """A running Ray session of this test module (one ``ray.init`` or a ``Cluster``)."""

    def __init__(self, cluster=None) -> None:
        self.cluster = cluster  # ray.cluster_utils.Cluster, when the module uses one
        self._root = _ray_root()

    def owns(self, proc: psutil.Process) -> bool:
        """Whether ``proc`` (a direct child of the test process) is one of Ray's daemons:
        its programs and scripts live in Ray's package folder."""
        try:
            return any(self._root in part for part in proc.cmdline()[:3])
        except psutil.Error:
            return False

    def daemon_trees(self) -> set[int]:
        """Pids of Ray's daemons and every process under them (Ray's workers)."""
        pids: set[int] = set()
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return pids
        for proc in children:
            if not self.owns(proc):
                continue
            pids.add(proc.pid)
            try:
                pids.update(p.pid for p in proc.children(recursive=True))
            except psutil.Error:
                pass
        return pids

    def warm_up(self, num_workers: int = 4) -> None:
        """One loader's epoch before the tests: the driver's first actors open its lasting
        connections (a few sockets) and its first object-store batch maps the store (one
        descriptor), once per session, which are not any test's leak."""
        import numpy as np
        from loader import DataLoader
        big = [np.zeros(64 * 1024, np.uint8)] * (4 * num_workers)  # 128 KiB batches
        for batch in DataLoader(big, batch_size=2, num_workers=num_workers,
                                worker_backend="ray"):
            del batch
        self.assert_no_actors_of_ours()

    @staticmethod
    def live_actors() -> list[str]:
        """Ids of our worker actors the cluster still counts as alive or coming up."""
        import ray._private.state as state  # the GCS's actor table; works without a dashboard
        return [actor_id for actor_id, info in state.actors().items()
                if info.get("ActorClassName") == ACTOR_CLASS and info.get("State") != "DEAD"]

    def assert_no_actors_of_ours(self, within_s: float = ACTORS_GONE_S) -> None:
        deadline = time.monotonic() + within_s
        while True:
            alive = self.live_actors()
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not alive, f"loader actors outlived the test: {alive}"


def tree(obj):
    """A batch as plain Python: arrays become (dtype, shape, bytes), tensors too."""
    if hasattr(obj, "numpy") and not isinstance(obj, np.ndarray):
        obj = obj.numpy()
    if isinstance(obj, np.ndarray):
        return (obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, dict):
        return {k: tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree(x) for x in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
