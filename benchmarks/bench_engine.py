"""Engine benchmarks: short-text padding, and peak memory of a large custom dataset.

    python benchmarks/bench_engine.py text      # texts/s, padded to the batch's longest vs to 77
    python benchmarks/bench_engine.py memory    # peak RSS of `clipeval eval` on 20,000 images
    python benchmarks/bench_engine.py inflight  # peak RSS of the decode pipeline at batch 128, 16 workers
    python benchmarks/bench_engine.py threads   # first-run wall time: decode threads x onnxruntime spinning

`text` exports a random-weight CLIP whose text tower has ViT-B/32's shape (width 512, 12 layers,
8 heads, 77 positions) and embeds caption-length queries both ways, in one process, one after the
other. `threads` exports a random-weight ViT-B/32-shape CLIP (fp32 + int8) and runs `clipeval
eval --no-cache` on JPEGs in child processes, round robin, with 1 or 2 decode threads and
onnxruntime's intra-op threads spinning (its default) or not, best of ``--repeat``. `inflight` decodes 640x480 JPEGs through ``iter_pixel_batches`` in child processes, for
both backends, with the bound on batches in flight (``pipeline.batches_ahead``) as it is and as it
was (``prefetch_batches + num_workers``), and reports each child's peak resident memory (shared
memory the consumer maps counts once it is touched). `memory` writes a custom dataset of JPEG files, runs the CLI in a child process and reads
its peak resident memory from the kernel. Needs the export extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _export_text_b32(root: Path) -> Path:
    from clipeval.export import export_checkpoint
    from clipeval.export.tokenizer_export import special_ids, train_wordlevel_tokenizer, wrap_fast_tokenizer
    from clipeval.export.towers import build_clip_config, build_clip_model

    words = [f"w{i}" for i in range(2000)]
    tok = train_wordlevel_tokenizer([" ".join(words)])
    ids = special_ids(tok)
    config = build_clip_config(tok.get_vocab_size(), pad_id=ids.pad_id, bos_id=ids.bos_id, eos_id=ids.eos_id,
                               hidden_size=512, intermediate_size=2048, num_layers=12, num_heads=8,
                               image_size=32, patch_size=8, projection_dim=512, context_length=77,
                               vision_hidden_size=64)
    ckpt = root / "ckpt"
    build_clip_model(config, seed=0).save_pretrained(ckpt)
    wrap_fast_tokenizer(tok, 77).save_pretrained(ckpt)
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(ckpt)
    return export_checkpoint(ckpt, root / "bundle")


def bench_text(args) -> None:
    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.engine.embedding.stage import embed_texts
    from clipeval.engine.sessions.onnx import open_tower
    from clipeval.engine.text.tokenizer import TextTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bundle = load_bundle(_export_text_b32(Path(tmp)))
        print(f"export of the B/32-shape text tower: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        tower = open_tower(bundle.tower_path("text"), "cpu", args.threads)
        tok = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
        rng = np.random.default_rng(0)
        texts = [" ".join(f"w{j}" for j in rng.integers(0, 2000, rng.integers(6, 15))) for _ in range(args.texts)]
        embed_texts(tower, tok, texts[:64], batch_size=64, progress=False)  # warm-up

        t0 = time.perf_counter()
        short = embed_texts(tower, tok, texts, batch_size=args.batch_size, progress=False).embeds
        t_short = time.perf_counter() - t0

        encoded = tok.encode(texts)
        t0 = time.perf_counter()
        full = np.concatenate([tower.run(tok.pad(encoded.ids[i:i + args.batch_size], length=77))
                               for i in range(0, len(texts), args.batch_size)])
        t_full = time.perf_counter() - t0
    lengths = encoded.lengths
    report = {
        "texts": len(texts), "tokens_median": float(np.median(lengths)), "tokens_max": int(lengths.max()),
        "padded_to_longest_texts_per_s": len(texts) / t_short, "padded_to_77_texts_per_s": len(texts) / t_full,
        "speedup": t_full / t_short, "max_abs_diff": float(np.abs(short - full).max()),
        "threads": args.threads, "cpus": os.cpu_count(),
    }
    print(f"short-text padding: {report['padded_to_longest_texts_per_s']:.0f} texts/s vs "
          f"{report['padded_to_77_texts_per_s']:.0f} texts/s padded to 77 -> x{report['speedup']:.2f} "
          f"(max abs diff {report['max_abs_diff']:.1e})", file=sys.stderr)
    print(json.dumps(report))


def _write_images(root: Path, n: int, size: tuple[int, int]) -> None:
    """JPEG files with two captions each from the demo model's grammar (so texts vary as real
    captions do; all-identical texts are the ranking kernel's worst case, see docs/speed.md)."""
    from PIL import Image, ImageDraw

    from clipeval.export.demo.shapes import random_captions, random_scene

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    with open(root / "image_queries.jsonl", "w") as f:
        for i in range(n):
            img = Image.fromarray(np.roll(base, i * 7, axis=1))
            draw = ImageDraw.Draw(img)
            x, y = int(rng.integers(0, size[0] - 40)), int(rng.integers(0, size[1] - 40))
            draw.ellipse([x, y, x + 40, y + 40], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            img.save(root / "images" / f"{i:06d}.jpg", quality=90)
            query = random_captions(random_scene(rng), rng, 2)
            f.write(json.dumps({"image_path": f"images/{i:06d}.jpg", "query": query}) + "\n")


def bench_memory(args) -> None:
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        t0 = time.perf_counter()
        _write_images(root, args.images, (w, h))
        print(f"wrote {args.images} JPEGs {w}x{h} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        cmd = [sys.executable, "-m", "clipeval", "eval", "--model", args.model, "--data-dir", str(root),
               "--output-dir", str(Path(tmp) / "out"), "--quiet"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = json.loads(out.stdout.strip().splitlines()[-1])
    report = {"images": args.images, "size": args.size, "peak_rss_mb": peak_mb, "wall_s": wall,
              "images_per_s": args.images / wall, "timings": result["meta"]["timings"], "cpus": os.cpu_count()}
    print(f"{args.images} images: peak RSS {peak_mb:.0f} MB, wall {wall:.0f} s", file=sys.stderr)
    print(json.dumps(report))


_INFLIGHT_CHILD = """
import sys
from clipeval.engine.images import decode_procs
from clipeval.engine.images import pipeline
from clipeval.engine.images.preprocess import PreprocessSpec, Preprocessor
sys.path.insert(0, {bench!r})
from bench_decode import CLIP_LIKE
if {old!r}:
    old = lambda batch_size, num_workers, prefetch_batches: prefetch_batches + num_workers
    pipeline.batches_ahead = decode_procs.batches_ahead = old
if __name__ == "__main__":
    paths = {paths!r}
    pp = Preprocessor(PreprocessSpec.from_dict(CLIP_LIKE))
    n = 0
    for batch in pipeline.iter_pixel_batches(enumerate(paths), pp, batch_size={batch}, num_workers={workers},
                                             decode={decode!r}):
        n += len(batch)
        batch.pixels.reshape(len(batch), -1)[:, ::1024].sum()  # read every page, as a model call does
    assert n == len(paths)
"""


def bench_inflight(args) -> None:
    from clipeval.engine.bench import run_child

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        _write_images(root, args.images, (640, 480))
        paths = sorted(str(p) for p in (root / "images").iterdir())
        rows = {}
        for decode in ("threads", "processes"):
            for old in (True, False):
                code = _INFLIGHT_CHILD.format(bench=str(Path(__file__).resolve().parent), old=old, paths=paths,
                                              batch=args.batch_size, workers=args.workers, decode=decode)
                script = Path(tmp) / "child.py"
                script.write_text(code)
                run = run_child([sys.executable, str(script)])
                if run.returncode:
                    raise SystemExit(run.stderr[-2000:])
                name = f"{decode}, {'prefetch + workers (before)' if old else 'batches_ahead'}"
                rows[name] = {"peak_rss_mb": run.peak_rss_mb, "wall_s": run.wall_s}
                print(f"{name:45s} peak RSS {run.peak_rss_mb:7.0f} MB  {args.images / run.wall_s:6.1f} img/s",
                      file=sys.stderr)
    print(json.dumps({"images": args.images, "batch_size": args.batch_size, "workers": args.workers,
                      "cpus": os.cpu_count(), "rows": rows}))


_NO_SPIN = (
    "import clipeval.engine.sessions.onnx as s\n"
    "plain = s.session_options\n"
    "def no_spin(threads=None):\n"
    "    so = plain(threads)\n"
    "    so.add_session_config_entry('session.intra_op.allow_spinning', '0')\n"
    "    return so\n"
    "s.session_options = no_spin\n"
)


def bench_threads(args) -> None:
    from bench_export import make_checkpoint
    from bench_speed import write_images

    from clipeval.engine.bench import run_child
    from clipeval.export import export_checkpoint

    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = export_checkpoint(make_checkpoint(work / "ckpt"), work / "bundle", precision="int8")
        data = write_images(work / "ds", args.images, 5)
        for _ in range(args.repeat):
            for workers in (2, 1):
                for spin in (True, False):
                    code = ("" if spin else _NO_SPIN) + "from clipeval.cli.main import main; main()"
                    for precision in ("fp32", "int8"):
                        run = run_child([sys.executable, "-c", code, "eval", "--model", str(bundle), "--data-dir",
                                         str(data), "--quiet", "--no-cache", "--precision", precision,
                                         "--num-workers", str(workers), "--batch-size", "64",
                                         "--output-dir", str(work / "out")])
                        if run.returncode:
                            raise SystemExit(run.stderr[-2000:])
                        key = f"{precision}, {workers} decode thread(s), {'spinning' if spin else 'no spinning'}"
                        rows[key] = min(rows.get(key, float("inf")), run.wall_s)
                        print(f"{key:45s} {run.wall_s:6.1f} s", file=sys.stderr)
    print(json.dumps({"images": args.images, "repeat": args.repeat, "cpus": os.cpu_count(), "best_wall_s": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("text")
    t.add_argument("--texts", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--threads", type=int, default=None)
    m = sub.add_parser("memory")
    m.add_argument("--images", type=int, default=20000)
    m.add_argument("--size", default="320x240")
    m.add_argument("--model", default="demo")
    f = sub.add_parser("inflight")
    f.add_argument("--images", type=int, default=2560)
    f.add_argument("--batch-size", type=int, default=128)
    f.add_argument("--workers", type=int, default=16)
    h = sub.add_parser("threads")
    h.add_argument("--images", type=int, default=200)
    h.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    {"text": bench_text, "memory": bench_memory, "inflight": bench_inflight, "threads": bench_threads}[args.what](args)


if __name__ == "__main__":
    main()
