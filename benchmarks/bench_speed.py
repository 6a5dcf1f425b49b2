"""The speed targets of docs/speed.md, measured side by side in one run on this machine.

    python benchmarks/bench_speed.py [--images 300] [--captions 5] [--skip-demo]

1. Builds a random-weight CLIP checkpoint of ViT-B/32 shape (as benchmarks/bench_export.py),
   exports it with fp32 and int8 variants, and writes ``--images`` JPEGs of 640x480 with
   ``--captions`` captions each.
2. Runs, each in its own child process, one after the other: the reference pipeline
   (``python -m clipeval.export.reference``: PyTorch fp32, transformers processor, DataLoader
   with 1 worker, CLIP_benchmark's recall_at_k), ``clipeval eval`` fp32 from an empty embedding
   cache, the same command again (served from the cache), and ``clipeval eval --precision int8``
   from an empty cache. Prints wall times, peak memory and the ratios.
3. On the shipped demo model (trained): recall@k of fp32 against an int8 variant made here with
   onnxruntime's ``quantize_dynamic`` from the shipped fp32 ONNX files (the demo's checkpoint is
   not shipped, so it cannot go through ``clipeval export --precision int8``).

Needs the export extra (torch, transformers, onnx).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

EVAL = [sys.executable, "-c", "from clipeval.cli.main import main; main()", "eval"]


def write_images(root: Path, n: int, captions: int, size=(640, 480)) -> Path:
    from fixtures_ckpt import DEFAULT_WORDS
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # blocky, so JPEG sizes are realistic
    with open(root / "image_queries.jsonl", "w") as f:
        for i in range(n):
            img = Image.fromarray(np.roll(base, i * 7, axis=1))
            draw = ImageDraw.Draw(img)
            for _ in range(3):
                x, y = int(rng.integers(0, size[0] - 80)), int(rng.integers(0, size[1] - 80))
                draw.ellipse([x, y, x + 80, y + 80], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            img.save(root / "images" / f"{i:06d}.jpg", quality=90)
            queries = [" ".join(rng.choice(DEFAULT_WORDS, size=int(rng.integers(6, 14)))) for _ in range(captions)]
            f.write(json.dumps({"image_path": f"images/{i:06d}.jpg", "query": queries}) + "\n")
    return root


def child(argv, env=None):
    from clipeval.engine.bench import run_child

    run = run_child(argv, env)
    if run.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, argv))}\n{run.stderr[-3000:]}")
    return run, json.loads(run.stdout.strip().splitlines()[-1])


def quantized_demo(root: Path) -> Path:
    """A copy of the demo bundle with an int8 variant from quantize_dynamic (fp32 stays the default)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from clipeval.engine.sessions.bundle import MANIFEST, write_manifest
    from clipeval.engine.demo import DEMO_MODEL_DIR

    out = root / "demo-int8"
    shutil.copytree(DEMO_MODEL_DIR, out)
    for tower in ("vision", "text"):
        quantize_dynamic(str(out / f"{tower}.onnx"), str(out / f"{tower}.int8.onnx"), weight_type=QuantType.QInt8)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["variants"]["int8"] = {"vision": "vision.int8.onnx", "text": "text.int8.onnx"}
    write_manifest(out, manifest)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--captions", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    from bench_export import make_checkpoint

    from clipeval.export import export_checkpoint

    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    report = {"images": args.images, "captions_per_image": args.captions, "cpus": os.cpu_count()}
    try:
        t0 = time.perf_counter()
        ckpt = make_checkpoint(work / "ckpt")
        bundle = export_checkpoint(ckpt, work / "bundle", precision="int8")
        print(f"B/32-shape checkpoint exported (fp32 + int8) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        data = write_images(work / "ds", args.images, args.captions)
        common = ["--model", str(bundle), "--data-dir", str(data), "--quiet", "--batch-size", str(args.batch_size)]

        ref_run, ref = child([sys.executable, "-m", "clipeval.export.reference", "--checkpoint", str(ckpt),
                              "--data-dir", str(data), "--batch-size", str(args.batch_size), "--device", "cpu"])
        print(f"reference: {ref_run.wall_s:.1f} s, {ref_run.peak_rss_mb:.0f} MB", file=sys.stderr)
        rows = {"reference": (ref_run, ref)}
        for name, extra, cache in (("fp32 first run", ["--precision", "fp32"], "c32"),
                                   ("fp32 second run", ["--precision", "fp32"], "c32"),
                                   ("int8 first run", ["--precision", "int8"], "c8")):
            run, result = child(EVAL + common + extra + ["--output-dir", str(work / "out" / cache)],
                                {"CLIPEVAL_CACHE_DIR": str(work / cache)})
            rows[name] = (run, result)
            print(f"{name}: {run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB", file=sys.stderr)
        for name, (run, result) in rows.items():
            report[name] = {"wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb,
                            "timings": result.get("timings") or result["meta"]["timings"],
                            "metrics": result["metrics"]}
        ref_s = ref_run.wall_s
        report["ratios"] = {
            "reference / fp32 first run": ref_s / rows["fp32 first run"][0].wall_s,
            "reference / int8 first run": ref_s / rows["int8 first run"][0].wall_s,
            "fp32 first run / second run": rows["fp32 first run"][0].wall_s / rows["fp32 second run"][0].wall_s,
            "in-process: fp32 first total_s / second total_s":
                rows["fp32 first run"][1]["meta"]["timings"]["total_s"]
                / rows["fp32 second run"][1]["meta"]["timings"]["total_s"],
        }
        common_keys = set(ref["metrics"]) & set(rows["fp32 first run"][1]["metrics"])
        report["max |recall fp32 - reference|"] = max(
            abs(ref["metrics"][k] - rows["fp32 first run"][1]["metrics"][k]) for k in common_keys)

        if not args.skip_demo:
            from clipeval.engine.demo import DEMO_DATA_DIR

            demo = quantized_demo(work)
            demo_rows = {}
            for precision in ("fp32", "int8"):
                run, result = child(EVAL + ["--model", str(demo), "--data-dir", str(DEMO_DATA_DIR), "--quiet",
                                            "--precision", precision, "--no-cache",
                                            "--output-dir", str(work / "out" / f"demo-{precision}")])
                demo_rows[precision] = result["metrics"]
            diffs = {k: demo_rows["int8"][k] - demo_rows["fp32"][k] for k in demo_rows["fp32"] if "recall@" in k}
            report["demo int8 - fp32 recall"] = diffs
            report["demo metrics"] = demo_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for k, v in report["ratios"].items():
        print(f"{k}: x{v:.2f}", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
