"""worker_backend="ray" on a multi-node cluster (``ray.cluster_utils.Cluster``: a head and
two worker nodes on this machine): actors pinned to the worker nodes by a custom resource,
batches pulled across nodes, and a node lost mid-epoch reported as a WorkerError naming
the worker and its node, then replaced on the node that is left.

The GCS health checks are shortened so a lost node is declared dead in about a second
(Ray's defaults take 20-60 s).
"""

from __future__ import annotations

import time

import pytest
import ray
from ray.cluster_utils import Cluster

from loader import DataLoader, RayBackend, WorkerError

import ray_datasets as rd
from helpers import frozen_heap, wait_gone  # noqa: F401 (frozen_heap: autouse fixture)
from ray_helpers import RayCluster, tree, with_tests_on_worker_path

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200,
           "health_check_timeout_ms": 200, "health_check_failure_threshold": 3}
_STORE = 80 * 2**20  # object store per node: small, there are three on one machine
_NODE_LOST_WITHIN_S = 30.0  # generous bound on a loaded 2-core machine (measured: printed)
_ON_WORKERS = RayBackend(remote_args={"resources": {"cpu_node": 1}})


@pytest.fixture(scope="module")
def ray_cluster():
    with with_tests_on_worker_path():
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "object_store_memory": _STORE,
            "_system_config": dict(_HEALTH)})  # Ray adds its own keys to it
        try:
            for _ in range(2):
                cluster.add_node(num_cpus=2, resources={"cpu_node": 2},
                                 object_store_memory=_STORE)
            ray.init(address=cluster.address, log_to_driver=False)
            cluster.wait_for_nodes()
        except BaseException:
            cluster.shutdown()
            raise
    try:
        handle = RayCluster(cluster)
        handle.warm_up(num_workers=4)  # both worker nodes: connections to each
        yield handle
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_actors_on_worker_nodes_give_the_local_batches(ray_cluster):
    kwargs = dict(batch_size=12, shuffle=True, num_workers=4, generator=9, output="numpy",
                  worker_init_fn=rd.mark_init)  # 12 x 12 KiB: object-store batches
    remote = DataLoader(rd.Images(60), worker_backend=_ON_WORKERS, **kwargs)
    it = iter(remote)
    try:
        ours = [tree(next(it))]
        nodes = {p._pool._where[p.worker_id][1] for p in it._pool.processes}
        ours += [tree(b) for b in it]
    finally:
        it.close()
    assert ours == [tree(b) for b in DataLoader(rd.Images(60), **kwargs)]
    head = ray_cluster.cluster.head_node.node_id
    assert len(nodes) == 2 and head not in nodes  # two per worker node, none on the head


def test_a_lost_node_is_a_worker_error_naming_it_and_the_worker_is_replaced(ray_cluster,
                                                                         tmp_path):
    gate = str(tmp_path / "gate")
    # two workers: whichever node goes, the other has room for a replacement
    dl = DataLoader(rd.Pids(40, gate=gate, gate_at=9), batch_size=2, num_workers=2,
                    output="numpy", worker_backend=RayBackend(
                        remote_args={"resources": {"cpu_node": 1}}, placement_timeout_s=20))
    it = iter(dl)
    pool = it._pool
    try:
        assert next(it)[0].tolist() == [0, 1]
        pool.processes  # every actor up and placed
        victim = 0
        node_id = pool._where[victim][1]
        node = next(n for n in ray_cluster.cluster.worker_nodes if n.node_id == node_id)
        on_node = [k for k in range(2) if pool._where[k][1] == node_id]
        pids = [pool._where[k][0] for k in on_node]
        t0 = time.monotonic()
        ray_cluster.cluster.remove_node(node, allow_graceful=False)
        with pytest.raises(WorkerError) as info:
            while True:
                pool.receive(_NODE_LOST_WITHIN_S)
        elapsed = time.monotonic() - t0
        print(f"\nnode lost to WorkerError: {elapsed * 1e3:.0f} ms")
        assert elapsed < _NODE_LOST_WITHIN_S
        assert info.value.worker_id in on_node
        text = str(info.value)
        assert f"DataLoader worker {info.value.worker_id} (ray actor" in text
        assert f"on node {node_id}" in text and "Ray said: " in text
        assert wait_gone(pids)  # the lost node's actor processes do not linger

        # a replacement with the same id lands on the node that is left
        open(gate, "w").close()
        pool.restart(victim, epoch=0, base_seed=it._base_seed)
        pool.submit(victim, 0, 100, [30, 31])
        while True:
            message, batch = pool.receive(_NODE_LOST_WITHIN_S)
            if message.batch_id == 100:
                break
        assert batch[0].tolist() == [30, 31]
        assert f"on node {node_id}" not in pool.describe(victim)
    finally:
        open(gate, "w").close()
        it.close()
        # the module's cluster lost a node; give later tests (if any) two again
        ray_cluster.cluster.add_node(num_cpus=2, resources={"cpu_node": 2},
                                     object_store_memory=_STORE)
