"""Build the embedded demo end to end: train -> checkpoint -> bundle -> demo dataset -> check.

    python -m clipeval.export.demo.build [--out-model DIR] [--out-data DIR] [--steps N] [--seed S]

By default it writes into the package (``clipeval/engine/demo/model`` and ``.../data``). The
same seed and torch version give the same images and weights (training runs on one CPU thread
unless ``--threads`` says otherwise). At the end the bundle is checked with onnxruntime alone on
the demo dataset; the build fails if recall@5 in either direction is below ``--min-recall``.
Progress goes to stderr; the final figures are printed to stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from clipeval.engine.fsutil import write_atomic

from . import train as T

SOURCE_NAME = "clipeval-demo-shapes"
DEMO_IMAGES = 300
QUERIES_FILE = "image_queries.jsonl"


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _default_dirs() -> tuple[Path, Path]:
    from clipeval.engine import demo

    return demo.DEMO_MODEL_DIR, demo.DEMO_DATA_DIR


def write_demo_data(demo: T.DemoSet, out_data: str | os.PathLike) -> Path:
    """Write ``images/NNNN.jpg`` and ``image_queries.jsonl`` under ``out_data`` (replacing old ones)."""
    out = Path(out_data)
    images = out / "images"
    if images.is_dir():
        for old in images.glob("*.jpg"):
            old.unlink()
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (blob, caps) in enumerate(zip(demo.jpeg_bytes, demo.captions)):
        rel = f"images/{i:04d}.jpg"
        (out / rel).write_bytes(blob)
        lines.append(json.dumps({"image_path": rel, "query": caps}, ensure_ascii=False))
    write_atomic(out / QUERIES_FILE, ("\n".join(lines) + "\n").encode("utf-8"))
    return out


def read_demo_data(data_dir: str | os.PathLike) -> tuple[list[Path], list[list[str]]]:
    """(image paths, captions per image) of a demo data directory."""
    root = Path(data_dir)
    paths, captions = [], []
    with open(root / QUERIES_FILE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                paths.append(root / row["image_path"])
                captions.append(list(row["query"]))
    return paths, captions


def onnx_recall(bundle_dir: str | os.PathLike, data_dir: str | os.PathLike, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall of the bundle on the demo data using only onnxruntime, tokenizers, PIL and numpy.

    Preprocessing follows the bundle's ``preprocess.json`` mean/std and size with PIL bicubic
    resizing; texts are tokenised with the bundle's ``tokenizer.json`` and padded with its pad id.
    """
    import onnxruntime as ort
    from PIL import Image
    from tokenizers import Tokenizer

    bundle = Path(bundle_dir)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    pre = json.loads((bundle / "preprocess.json").read_text(encoding="utf-8"))
    mean = np.asarray(pre.get("image_mean", pre.get("mean")), dtype=np.float32)
    std = np.asarray(pre.get("image_std", pre.get("std")), dtype=np.float32)
    paths, captions = read_demo_data(data_dir)
    pixels = []
    for p in paths:
        with Image.open(p) as img:
            pixels.append(T.to_model_pixels(img))
    x = ((np.stack(pixels).astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    variant = manifest["variants"][manifest["precision"]]
    vision = ort.InferenceSession(str(bundle / variant["vision"]), opts, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(bundle / variant["text"]), opts, providers=["CPUExecutionProvider"])
    image_embeds = vision.run(["image_embeds"], {"pixel_values": x})[0]

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=int(manifest["context_length"]))
    texts = [c for caps in captions for c in caps]
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    enc = [e.ids for e in tok.encode_batch(texts)]
    width = max(len(e) for e in enc)
    ids = np.full((len(enc), width), int(manifest["tokenizer"]["pad_id"]), dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, e in enumerate(enc):
        ids[r, : len(e)] = e
        mask[r, : len(e)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    feeds = {i.name: feeds[i.name] for i in text.get_inputs()}
    text_embeds = text.run(["text_embeds"], feeds)[0]
    return {
        **T.retrieval_recall(image_embeds, text_embeds, owner, ks),
        "images": len(paths),
        "texts": len(texts),
    }


def _set_source(bundle_dir: Path, seed: int, steps: int) -> None:
    """Give the bundle a stable source name instead of the temporary checkpoint path."""
    from clipeval.engine.sessions.bundle import write_manifest

    manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest["source"] = SOURCE_NAME
    manifest["revision"] = f"seed{seed}-steps{steps}"
    manifest.pop("files", None)
    write_manifest(bundle_dir, manifest)


def build(
    out_model: str | os.PathLike,
    out_data: str | os.PathLike,
    cfg: T.TrainConfig,
    demo_images: int = DEMO_IMAGES,
    keep_checkpoint: str | os.PathLike | None = None,
    min_recall: float = 0.9,
) -> dict:
    """Train, export and write the demo; return the onnxruntime recall figures."""
    from clipeval.export import export_checkpoint

    t0 = time.perf_counter()
    check = T.draw_demo_set(cfg.seed, demo_images, stream=T.STREAM_CHECK)
    demo = T.draw_demo_set(cfg.seed, demo_images, stream=T.STREAM_DEMO)
    result = T.train(cfg, progress=_say, check=check)
    _say(f"trained in {result.seconds:.0f} s")

    with tempfile.TemporaryDirectory(prefix="clipeval-demo-") as tmp:
        ckpt = Path(keep_checkpoint) if keep_checkpoint else Path(tmp) / SOURCE_NAME
        T.save_checkpoint(result, ckpt)
        _say(f"checkpoint saved to {ckpt}; exporting")
        bundle = export_checkpoint(ckpt, out_model, force=True)
    _set_source(bundle, cfg.seed, cfg.steps)
    write_demo_data(demo, out_data)
    _say(f"wrote {len(demo.images)} demo images to {out_data}")

    figures = onnx_recall(bundle, out_data)
    n_params = sum(p.numel() for p in result.model.parameters())
    size = sum(f.stat().st_size for f in Path(bundle).rglob("*") if f.is_file())
    data_size = sum(f.stat().st_size for f in Path(out_data).rglob("*") if f.is_file())
    report = {
        "recall": figures,
        "torch_check_set": {k: v for k, v in result.history[-1].items() if "recall" in k},
        "parameters": n_params,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "bundle_bytes": size,
        "data_bytes": data_size,
        "final_loss": result.history[-1]["loss"],
    }
    worst = min(figures["image_retrieval_recall@5"], figures["text_retrieval_recall@5"])
    if worst < min_recall:
        raise SystemExit(f"demo model too weak: recall@5 {worst:.3f} < {min_recall} ({json.dumps(figures)})")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    default_model, default_data = _default_dirs()
    defaults = T.TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m clipeval.export.demo.build", description=__doc__.split("\n")[0])
    ap.add_argument("--out-model", type=Path, default=default_model, help="bundle directory (default: %(default)s)")
    ap.add_argument("--out-data", type=Path, default=default_data, help="demo data directory (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=defaults.steps, help="training steps (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=defaults.seed, help="seed of all data and weights (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (default: %(default)s)")
    ap.add_argument("--pool-size", type=int, default=defaults.pool_size, help="training images (default: %(default)s)")
    ap.add_argument("--demo-images", type=int, default=DEMO_IMAGES, help="demo images (default: %(default)s)")
    ap.add_argument("--keep-checkpoint", type=Path, default=None, help="also keep the Hugging Face checkpoint here")
    ap.add_argument("--min-recall", type=float, default=0.9, help="fail below this recall@5 (default: %(default)s)")
    args = ap.parse_args(argv)
    cfg = T.TrainConfig(steps=args.steps, seed=args.seed, threads=args.threads, pool_size=args.pool_size)
    report = build(args.out_model, args.out_data, cfg, args.demo_images, args.keep_checkpoint, args.min_recall)
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
