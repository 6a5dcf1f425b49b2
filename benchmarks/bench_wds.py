"""Reading webdataset shards streams: peak memory does not grow with the number of shards.

Table 1 writes splits of 2, 8 and 32 shards of ``--per-shard`` samples (``--image-kb`` KiB
images); table 2 splits one fixed set of ``32 * --per-shard / 4`` samples into 2, 8 and 32 shards.
For each split it scans the split (``read_wds_retrieval``) and iterates every image's bytes the way the
decode pipeline pulls them, holding none. Prints, per shard count, the total image bytes read,
the Python heap peak (tracemalloc) during scan + iteration, and the process peak RSS growth.

    python benchmarks/bench_wds.py [--per-shard 200] [--image-kb 64]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from clipeval.engine.datasets.wds import read_wds_retrieval  # noqa: E402


def write(root: Path, shards: int, per_shard: int, image_bytes: int) -> int:
    payload = os.urandom(image_bytes)
    (root / "test").mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(root / "test" / f"{s}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"s{s * per_shard + i:07d}"
                for suffix, data in (("jpg", payload), ("txt", f"caption {key}\nsecond {key}".encode())):
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text(str(shards))
    return shards * per_shard * image_bytes


def rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-shard", type=int, default=200)
    ap.add_argument("--image-kb", type=int, default=64)
    args = ap.parse_args()
    header = (f"{'shards':>6} {'samples':>8} {'image MiB':>10} {'heap peak MiB':>14} {'heap/sample B':>14} "
              f"{'RSS growth MiB':>15} {'s':>6}")
    fixed = 32 * args.per_shard // 4
    with tempfile.TemporaryDirectory() as tmp:
        for title, per_shard_of in (("samples per shard fixed", lambda n: args.per_shard),
                                    (f"{fixed} samples in all", lambda n: fixed // n)):
            print(title)
            print(header)
            for shards in (2, 8, 32):
                root = Path(tmp) / f"{title[:7]}{shards}"
                per_shard = per_shard_of(shards)
                total = write(root, shards, per_shard, args.image_kb * 1024)
                before = rss_kb()
                tracemalloc.start()
                t0 = time.perf_counter()
                ds = read_wds_retrieval(root, "test", name="bench")
                seen = 0
                for img in ds.images:
                    seen += len(img)
                elapsed = time.perf_counter() - t0
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                assert seen == total
                n = shards * per_shard
                print(f"{shards:>6} {n:>8} {total / 2**20:>10.1f} {peak / 2**20:>14.2f} {peak / n:>14.0f} "
                      f"{(rss_kb() - before) / 1024:>15.1f} {elapsed:>6.2f}")
                del ds

if __name__ == "__main__":
    main()
