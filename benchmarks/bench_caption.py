"""Captioning throughput against an OpenAI-compatible server that answers every request in 200 ms.

Starts tests/fake_openai.py's server on 127.0.0.1 (200 ms per answer, captions from the image
bytes), writes N photo-like 640x480 JPEGs, and runs the image_caption task over them (each image
decoded, re-encoded as JPEG, base64, sent) at several concurrencies, side by side. The ideal rate
is concurrency / 0.2 s; the figure to look at is captions/s at concurrency 64 (goal: >= 40).

    python benchmarks/bench_caption.py [--n 640] [--delay 0.2] [--concurrency 64 8 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402

from clipeval.engine.config import make_eval_config  # noqa: E402
from clipeval.engine.tasks.image_caption import run_caption  # noqa: E402


def photo_like(seed: int, size=(640, 480)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, size[0]), rng.integers(0, size[1])
        draw.ellipse([x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img.filter(ImageFilter.GaussianBlur(2))


def write_data(root: Path, n: int) -> Path:
    import json

    (root / "images").mkdir(parents=True)
    with open(root / "image_queries.jsonl", "w") as f:
        for i in range(n):
            photo_like(i).save(root / "images" / f"{i:05d}.jpg", quality=90)
            f.write(json.dumps({"image_path": f"images/{i:05d}.jpg", "query": [f"a picture number {i}"]}) + "\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=640, help="images at the highest concurrency")
    ap.add_argument("--delay", type=float, default=0.2, help="seconds the server takes per answer")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 8, 1])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_caption_"))
    try:
        data = write_data(tmp / "data", args.n)
        print(f"{args.n} JPEGs 640x480; server answers in {args.delay * 1000:.0f} ms")
        print(f"{'concurrency':>11} {'images':>7} {'seconds':>8} {'captions/s':>11} {'ideal/s':>8} {'requests':>9}")
        with FakeOpenAI(captioner="echo", delay_s=args.delay) as srv:
            for c in args.concurrency:
                # enough images for ~10 rounds of requests, at most n
                n = min(args.n, max(20, 10 * c))
                cfg = make_eval_config({"models": [{"model_name": f"bench-c{c}", "api_base": srv.url}],
                                        "task": "image_caption", "data_dir": str(data), "limit": n,
                                        "output_dir": str(tmp / "out"), "concurrency": c, "verbose": False})
                srv.model = cfg.models[0]["model_name"]
                srv.reset_counts()
                t0 = time.perf_counter()
                result = run_caption(cfg, cfg.models[0], "custom", data)
                dt = time.perf_counter() - t0
                done = result["meta"]["num_images"]
                print(f"{c:>11} {done:>7} {dt:>8.2f} {done / dt:>11.1f} {c / args.delay:>8.0f} "
                      f"{srv.total_requests:>9}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
