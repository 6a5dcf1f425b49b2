"""Faults on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster`` on 127.0.0.1): a
worker node killed mid-run is retried by Ray and the embedding stage gives the local
embeddings; in ``clipeval eval --executor ray``, a batch whose worker dies every time ends the
run with exit status 2 and one error naming its images, while the other batches finish and are
cached whole, and no result file is written. Every wait is bounded; the cluster is shut down (and checked
to have left no process) whatever happens."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from clipeval.engine.embedding.local import LocalExecutor
from clipeval.engine.embedding.stage import EmbeddingStage
from clipeval.engine.executors.ray_embed import RETRIES, RayExecutor
from clipeval.engine.sessions.bundle import load_bundle
from datagen import noise_image
from rangeserver import LocalServer, QuietHandler, RangeServer
from rayfix import simulated_cluster
from wdsgen import write_retrieval_set

WAIT_S = 120.0
# Fast detection of a dead node (defaults: several seconds per missed check, five checks)
HEAD_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 2}


def pid_of_client(port: int) -> int | None:
    """The process holding the local TCP socket ``127.0.0.1:port`` (from /proc: socket inode,
    then the process whose file descriptors include it)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                inode = parts[9]
                break
        if inode:
            break
    if not inode:
        return None
    target = f"socket:[{inode}]"
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{proc}/fd"):
                if os.readlink(f"/proc/{proc}/fd/{fd}") == target:
                    return int(proc)
        except OSError:
            continue
    return None


class ImageServer(LocalServer):
    """Serves ``images`` (name -> PNG bytes). ``hold_after``: requests after that many are held
    until :meth:`release`."""

    def __init__(self, images: dict[str, bytes], hold_after: int | None = None):
        self.images = images
        self.hold_after = hold_after
        self.served = 0
        self.held = 0
        self.gate = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                with server.lock:
                    server.served += 1
                    hold = server.hold_after is not None and server.served > server.hold_after
                    if hold:
                        server.held += 1
                if hold:
                    server.gate.wait(WAIT_S)
                data = server.images[name]
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client was killed with its node
                    pass

        super().__init__(Handler)

    def release(self):
        self.hold_after = None
        self.gate.set()

    def __exit__(self, *exc):
        self.release()  # else server_close, which joins the handler threads, would wait for a held one
        super().__exit__(*exc)


def wait_for(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def png(i: int) -> bytes:
    import io

    buf = io.BytesIO()
    noise_image(300 + i, (24 + i, 20)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cluster():
    """A head node that only runs the driver (0 CPUs) and one worker node of 2 CPUs."""
    with simulated_cluster(head_cpus=0, nodes=(2,), head_config=HEAD_CONFIG) as (ray, cl):
        yield ray, cl


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def local_images(bundle, sources, **kwargs):
    """The oracle: the same images through the embedding stage with the local executor."""
    stage = EmbeddingStage(LocalExecutor(provider="cpu", threads=1, num_workers=0), None, progress=False)
    return stage.images(bundle, "fp32", sources, **kwargs)


def ray_stage() -> EmbeddingStage:
    return EmbeddingStage(RayExecutor(provider="cpu"), None, progress=False)


def test_a_worker_node_killed_mid_run_is_retried_and_the_embeddings_are_the_local_ones(cluster, bundle):
    ray, cl = cluster
    images = {f"{i}.png": png(i) for i in range(12)}
    with ImageServer(images, hold_after=4) as server:
        sources = [f"{server.url}/{i}.png" for i in range(12)]
        out: dict = {}

        def run():
            try:
                out["result"] = ray_stage().images(bundle, "fp32", sources, batch_size=3)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                out["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_for(lambda: server.held >= 1, "a decode task on the worker node to be mid-request")
        victim = cl.worker_nodes and list(cl.worker_nodes)[0]
        raylet = victim.all_processes["raylet"][0].process.pid
        cl.remove_node(victim, allow_graceful=False)  # the node dies with the task it was running
        cl.add_node(num_cpus=2, num_gpus=0, object_store_memory=96 << 20)
        server.release()
        thread.join(timeout=300)
        assert not thread.is_alive(), "the run did not finish after the node was replaced"
    assert "error" not in out, out.get("error")
    with pytest.raises(ProcessLookupError):
        os.kill(raylet, 0)
    want = local_images(bundle, list(images.values()), batch_size=3)
    got = out["result"]
    assert got.indices.tolist() == want.indices.tolist() == list(range(12))
    assert np.abs(got.embeds - want.embeds).max() <= 1e-6
    assert server.served > 12  # some images were fetched again by the retried tasks


def test_eval_whose_batch_keeps_dying_exits_2_naming_its_images_and_writes_no_result(cluster, tiny_bundle, tmp_path):
    """``clipeval eval --executor ray`` on webdataset shards served by URL, where every request
    for the images of one batch kills the worker that asked: exit status 2, one error naming
    that batch's images, no result file; the cache holds the other batches, whole, and a
    re-run after the fault is gone computes only the lost batch and gives the local metrics."""
    import json

    from click.testing import CliRunner

    from clipeval.cli.main import cli

    write_retrieval_set(tmp_path / "srv" / "flickr8k", n=9, per_shard=3)  # shard k = batch k of 3
    args = ["eval", "--model", str(tiny_bundle), "--quiet", "--provider", "cpu", "--dataset", "flickr8k",
            "--batch-size", "3", "--cache-dir", str(tmp_path / "cache")]
    killed = []

    def drop(path, byte_range, port):
        if byte_range and path == "flickr8k/test/1.tar":
            pid = pid_of_client(port)
            if pid is not None and pid != os.getpid():
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)
            return True
        return False

    with RangeServer(tmp_path / "srv") as server:
        url = ["--data-dir", f"{server.url}/flickr8k"]
        server.drop = drop
        r = CliRunner().invoke(cli, [*args, *url, "--executor", "ray", "--output-dir", str(tmp_path / "out")])
        assert r.exit_code == 2, (r.output, r.exception)
        assert r.stdout == "" and len(killed) == RETRIES + 1
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in r.stderr
        assert "3 image(s) did not come back from the Ray cluster" in r.stderr
        assert all(f"test/1.tar#s{i:07d}" in r.stderr for i in (3, 4, 5))
        assert not any(f"#s{i:07d}" in r.stderr for i in (0, 1, 2, 6, 7, 8))
        assert not list((tmp_path / "out").rglob("*.json"))  # nothing half-written
        server.drop = None
        server.requests.clear()
        again = CliRunner().invoke(cli, [*args, *url, "--executor", "ray", "--output-dir", str(tmp_path / "out")])
        assert again.exit_code == 0, (again.output, again.exception)
        ranged = [p for p, rng in server.requests if rng]
        assert ranged == ["flickr8k/test/1.tar"]  # the batches that finished came from the cache
        local = CliRunner().invoke(cli, [*args, *url, "--no-cache", "--output-dir", str(tmp_path / "local")])
        assert local.exit_code == 0, (local.output, local.exception)
    got, want = json.loads(again.stdout), json.loads(local.stdout)
    assert got["metrics"] == want["metrics"] and got["meta"]["cache"]["image_hits"] == 6


def test_without_an_address_a_run_starts_its_own_ray_and_never_joins_one_on_this_machine(cluster, monkeypatch):
    """docs/scale.md: with ``ray_address`` unset (and no ``RAY_ADDRESS``), a run starts a Ray of
    its own and stops it after; a cluster running on this machine (as ``ray start`` leaves one,
    which plain ``ray.init()`` would join) is not touched."""
    import logging

    from ray._private.utils import read_ray_address

    from clipeval.engine.executors.ray_cluster import connected

    ray, cl = cluster
    assert read_ray_address() == cl.address  # the cluster plain ray.init() would join
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.shutdown()
    try:
        with connected(None) as own:
            assert own.get_runtime_context().gcs_address != cl.address
            assert len(own.nodes()) == 1
        assert not ray.is_initialized()
    finally:
        ray.init(address=cl.address, log_to_driver=False, logging_level=logging.WARNING)
    assert len([n for n in ray.nodes() if n["Alive"]]) >= 2  # the cluster itself still runs
