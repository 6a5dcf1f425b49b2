"""Ray for the tests (import as ``from rayfix import ...``): a local instance or a simulated
multi-node cluster on 127.0.0.1, with small object stores, that leave no process behind."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

OBJECT_STORE = 96 << 20  # bytes per node: small, so CI machines are safe (tests move little data)
GONE_WITHIN_S = 30.0


def _pids_with(text: str) -> list[int]:
    """The processes whose command line holds ``text``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(int(proc.name))
    return out


def assert_gone(session_dir: str, timeout: float = GONE_WITHIN_S) -> None:
    """Every process of the Ray session ``session_dir`` (raylet, GCS, workers name it in their
    command line) has exited within ``timeout`` seconds."""
    name = os.path.basename(session_dir.rstrip("/"))
    deadline = time.monotonic() + timeout
    while True:
        left = _pids_with(name)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"Ray processes of {name} still running: {left}"


def session_dir(ray) -> str:
    return ray._private.worker._global_node.get_session_dir_path()


@contextlib.contextmanager
def local_ray(num_cpus: int = 2):
    """``ray.init(num_cpus=2, include_dashboard=False)`` with a small object store; shut down,
    and checked to have left no process, when the block ends (also after a failure)."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, num_gpus=0, include_dashboard=False,
             object_store_memory=OBJECT_STORE, log_to_driver=False, logging_level=logging.WARNING)
    where = session_dir(ray)
    try:
        yield ray
    finally:
        ray.shutdown()
        assert_gone(where)


@contextlib.contextmanager
def simulated_cluster(head_cpus: int = 0, nodes: tuple[int, ...] = (2,), head_config: dict | None = None):
    """A ``ray.cluster_utils.Cluster`` on this machine: a head node with ``head_cpus`` CPUs (0: it
    runs only the driver) and one worker node per entry of ``nodes`` (its CPUs); the driver is
    connected; ``head_config``: Ray system settings of the head (``_system_config``). Yields
    ``(ray, cluster)``; everything is shut down, and checked gone, at the end."""
    import ray
    from ray.cluster_utils import Cluster

    where = None
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": head_cpus, "num_gpus": 0, "object_store_memory": OBJECT_STORE,
                                      "include_dashboard": False, "_system_config": head_config or {}})
    try:
        for cpus in nodes:
            cluster.add_node(num_cpus=cpus, num_gpus=0, object_store_memory=OBJECT_STORE)
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        where = session_dir(ray)
        cluster.wait_for_nodes(timeout=60)
        yield ray, cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if where is not None:
            assert_gone(where)


class FakeRay:
    """What the placement of tower actors and pair tasks asks of Ray, without Ray: the cluster's
    resources and its nodes (``cpus``: one entry per node, 0 for a node without CPUs; ``dead``:
    indices of nodes gone, which count for nothing; ``gpus`` in the cluster)."""

    def __init__(self, cpus, gpus=0, dead=()):
        self.cpus, self.gpus, self.dead = list(cpus), gpus, set(dead)

    def cluster_resources(self):
        alive = [c for i, c in enumerate(self.cpus) if i not in self.dead]
        return {"CPU": float(sum(alive)), **({"GPU": float(self.gpus)} if self.gpus else {})}

    def nodes(self):
        return [{"Alive": i not in self.dead, "Resources": {"CPU": float(c)} if c else {}}
                for i, c in enumerate(self.cpus)]
