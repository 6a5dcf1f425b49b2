"""The embedding stage on Ray against a local run, side by side in one run on this machine.

Writes ``--n`` photo-like JPEGs (640x480, quality 90; benchmarks/bench_decode.py's generator)
and embeds them all with one bundle (default: the embedded demo model), no cache, three ways:

* ``local``  — the embedding stage with :class:`~clipeval.engine.embedding.local.LocalExecutor`,
  decode threads = onnxruntime threads = the machine's cores (what ``clipeval eval`` does); its
  session is opened before the runs;
* ``ray-1``  — the embedding stage with :class:`~clipeval.engine.executors.ray_embed.RayExecutor`
  (what ``clipeval eval --executor ray`` does) on a Ray started afresh for each run
  (``ray.init(address="local", num_cpus=C)``, C = the machine's cores; what a run without
  ``--ray-address`` does): one node, and everything Ray starts on first use (Ray Data's
  cluster-wide helper actors, the job's worker processes, the tower actors) starts in the run;
* ``ray-1s`` — a standing one-node cluster (``ray.cluster_utils.Cluster``, a head node of C CPUs,
  started once for all rotations; one untimed run first, so Ray Data's cluster-wide helper actors
  exist, as on a cluster that has served a run before); each timed run is a new driver
  connection, i.e. a new Ray job, as a new ``clipeval eval --ray-address ADDRESS`` is: Ray
  starts the job's worker processes and the tower actors afresh;
* ``ray-1w`` — ``ray-1`` on a node that has run the same job once already (not timed): Ray's
  worker processes are started and have imported clipeval, as in a process that runs many
  evaluations on one connection; only the tower actors start again;
* ``ray-2``  — the same on a simulated cluster (``ray.cluster_utils.Cluster``): a head node that
  only runs the driver and two worker nodes of C CPUs each. Both nodes share this machine's C
  cores, so this cannot show a speed-up; it shows what spreading the work over two nodes costs
  (blocks cross object stores, two schedulers).

Each way runs ``--repeats`` times, in rotation (local, ray-1, ray-2, local, ...), so a change in
the machine's load touches all three alike. A Ray cluster is started once per way, before its
runs, and its start-up is reported apart (a cluster that runs many evaluations starts once);
every run is otherwise whole: Dataset planning, actor start-up (bundle unpacked and verified,
session opened), decoding, inference, and the embeddings back on the driver. Each run's
embeddings are checked against the local ones (max absolute difference). The load average is
printed before each run: other work on the machine shows there.

Prints one line per run, then per way the median, min and max seconds, images/s, and the ratio
to local (median over median, and the spread: fastest ray / slowest local .. slowest ray /
fastest local), and each Ray run over the local run of its rotation (the runs closest in time,
so the least touched by a change of load).

    python benchmarks/bench_ray.py [--n 2000] [--repeats 3] [--batch 64] [--model BUNDLE]
                                   [--actor-cpus X] [--ways local,ray-1,ray-1s,ray-1w,ray-2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

OBJECT_STORE = 512 << 20


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


class Way:
    """One way to embed: ``start()`` (not timed in the runs), ``run(paths)``, ``stop()``."""

    def __init__(self, name, bundle, cores, batch, actor_cpus):
        self.name, self.bundle, self.cores, self.batch, self.actor_cpus = name, bundle, cores, batch, actor_cpus
        self.cluster = None
        self.start_s = 0.0

    def start(self):
        t0 = time.perf_counter()
        if self.name == "local":
            from clipeval.engine.embedding.executor import TowerRef
            from clipeval.engine.embedding.local import LocalExecutor
            from clipeval.engine.embedding.stage import EmbeddingStage

            executor = LocalExecutor(provider="cpu", threads=self.cores, num_workers=self.cores, decode="threads")
            executor.session(TowerRef(self.bundle, self.bundle.manifest["precision"], "vision"))
            self.stage = EmbeddingStage(executor, None, progress=False)
        else:
            import ray

            if self.name == "ray-1s":
                if self.cluster is None:
                    from ray.cluster_utils import Cluster

                    self.cluster = Cluster(initialize_head=True, connect=False,
                                           head_node_args={"num_cpus": self.cores, "num_gpus": 0,
                                                           "include_dashboard": False,
                                                           "object_store_memory": OBJECT_STORE})
                    ray.init(address=self.cluster.address, log_to_driver=False, logging_level=logging.WARNING)
                    self.run(self.warm_paths[:256])  # Ray Data's helper actors start, once per cluster
                    ray.shutdown()
                ray.init(address=self.cluster.address, log_to_driver=False, logging_level=logging.WARNING)
            elif self.name in ("ray-1", "ray-1w"):
                ray.init(address="local", num_cpus=self.cores, num_gpus=0, include_dashboard=False, object_store_memory=OBJECT_STORE,
                         log_to_driver=False, logging_level=logging.WARNING)
            else:
                from ray.cluster_utils import Cluster

                self.cluster = Cluster(initialize_head=True, connect=False,
                                       head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False,
                                                       "object_store_memory": OBJECT_STORE})
                for _ in range(2):
                    self.cluster.add_node(num_cpus=self.cores, num_gpus=0, object_store_memory=OBJECT_STORE)
                ray.init(address=self.cluster.address, log_to_driver=False, logging_level=logging.WARNING)
                self.cluster.wait_for_nodes(timeout=120)
            if self.actor_cpus is not None:
                from clipeval.engine.executors import ray_embed

                plain = ray_embed.placement

                def placement(ray_, provider, threads):
                    place = plain(ray_, provider, threads)
                    place.options["num_cpus"] = self.actor_cpus
                    return place

                ray_embed.placement = placement
        if self.name == "ray-1w":
            self.run(self.warm_paths)
        self.start_s = time.perf_counter() - t0

    def run(self, paths):
        precision = self.bundle.manifest["precision"]
        if self.name == "local":
            return self.stage.images(self.bundle, precision, paths, batch_size=self.batch)
        from clipeval.engine.embedding.stage import EmbeddingStage
        from clipeval.engine.executors.ray_embed import RayExecutor

        with EmbeddingStage(RayExecutor(provider="cpu"), None, progress=False) as stage:
            return stage.images(self.bundle, precision, paths, batch_size=self.batch)

    def stop(self):
        if self.name == "local":
            self.stage.close()
        else:
            import ray

            ray.shutdown()
            if self.cluster is not None and self.name != "ray-1s":
                self.cluster.shutdown()
                self.cluster = None

    def close(self):
        """The end of the benchmark: the standing cluster of ``ray-1s`` is stopped."""
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None


def main() -> None:
    from bench_decode import write_jpegs

    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.engine.demo import DEMO_MODEL_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", default=str(DEMO_MODEL_DIR))
    ap.add_argument("--actor-cpus", type=float, default=None,
                    help="logical CPUs each tower actor reserves (default: the executor's own choice)")
    ap.add_argument("--ways", default="local,ray-1,ray-2")
    ap.add_argument("--images", default=None, help="a folder of JPEGs to reuse (written when missing)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    bundle = load_bundle(args.model)
    names = args.ways.split(",")
    print(f"# {cpu_name()}; {args.n} images 640x480 JPEG; bundle {bundle.name} ({bundle.path}); batch {args.batch}; "
          f"{args.repeats} repeats; actor CPUs {args.actor_cpus if args.actor_cpus is not None else 'default'}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images or tmp
        os.makedirs(folder, exist_ok=True)
        paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))
        if len(paths) < args.n:
            paths = write_jpegs(folder, args.n)
        paths = paths[: args.n]
        ways = {name: Way(name, bundle, cores, args.batch, args.actor_cpus) for name in names}
        for way in ways.values():
            way.warm_paths = paths
        times: dict[str, list[float]] = {name: [] for name in names}
        # Ray keeps one connection per process: each Ray way connects and disconnects around its runs
        try:
            rotations(args, names, ways, paths, times)
        finally:
            for way in ways.values():
                way.close()
    report(args, names, times)


def rotations(args, names, ways, paths, times) -> None:
    """Each way ``args.repeats`` times, in rotation; one line per run."""
    reference = None
    for rep in range(args.repeats):
        for name in names:
            way = ways[name]
            way.start()
            before = load()
            t0 = time.perf_counter()
            got = way.run(paths)
            took = time.perf_counter() - t0
            way.stop()
            if reference is None and name == "local":
                reference = got.embeds
            diff = float(np.abs(got.embeds - reference).max()) if reference is not None else float("nan")
            times[name].append(took)
            print(f"run {rep + 1} {name:6s} {took:7.2f} s  {args.n / took:7.1f} img/s  start-up {way.start_s:5.2f} s"
                  f"  load before {before}  max |diff| {diff:.1e}", flush=True)


def report(args, names, times) -> None:
    """Per way: median, min, max, images/s and the ratios to local."""
    print()
    print(f"{'way':6s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'img/s':>7s} {'x local':>8s} {'spread':>13s}")
    local = times.get("local")
    for name in names:
        t = times[name]
        med = statistics.median(t)
        ratio = f"{med / statistics.median(local):8.2f}" if local else "       -"
        spread = f"{min(t) / max(local):.2f}..{max(t) / min(local):.2f}" if local else "-"
        print(f"{name:6s} {med:9.2f} {min(t):7.2f} {max(t):7.2f} {args.n / med:7.1f} {ratio} {spread:>13s}")
    if local:
        for name in names:
            if name != "local":
                pairs = [r / l for r, l in zip(times[name], local)]
                print(f"{name} / local of the same rotation: {', '.join(f'{x:.2f}' for x in pairs)} "
                      f"(median {statistics.median(pairs):.2f})")
    if "ray-1" in times and "ray-2" in times:
        print(f"ray-2 / ray-1 (median): {statistics.median(times['ray-2']) / statistics.median(times['ray-1']):.2f}")


if __name__ == "__main__":
    main()
