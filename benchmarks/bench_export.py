"""Export a random-weight CLIP ViT-B/32-shape checkpoint and time its variants on CPU.

Prints, side by side in one run: fused vs raw fp32, int8 vs fp32 (images/s and texts/s at the
real caption length), the int8 and fp16 cosine to PyTorch from the manifest, and the fused
operator counts. Usage: python benchmarks/bench_export.py [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


# Random-weight shapes of the OpenAI checkpoints (the text tower can be shrunk where only the
# vision tower is timed).
SHAPES = {
    "B/32": dict(image_size=224, patch_size=32, vision_hidden=768, vision_layers=12, vision_heads=12,
                 vision_intermediate=3072, projection=512, text_hidden=512, text_layers=12, text_heads=8),
    "L/14@336": dict(image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                     vision_intermediate=4096, projection=768, text_hidden=768, text_layers=12, text_heads=12),
}


def make_checkpoint(path: Path, shape: str = "B/32", small_text: bool = False) -> Path:
    """A random-weight CLIP checkpoint of ``shape`` (``SHAPES``) with a word-level tokenizer and
    the CLIP image processor; ``small_text`` shrinks the text tower to one narrow layer."""
    from fixtures_ckpt import DEFAULT_WORDS, _image_processor

    from clipeval.export.tokenizer_export import special_ids, train_wordlevel_tokenizer, wrap_fast_tokenizer
    from clipeval.export.towers import build_clip_config, build_clip_model

    s = SHAPES[shape]
    tok = train_wordlevel_tokenizer([" ".join(DEFAULT_WORDS)])
    ids = special_ids(tok)
    text_hidden, text_layers, text_heads = (64, 1, 2) if small_text else (s["text_hidden"], s["text_layers"],
                                                                         s["text_heads"])
    config = build_clip_config(
        49408, pad_id=ids.pad_id, bos_id=ids.bos_id, eos_id=ids.eos_id, hidden_size=text_hidden,
        intermediate_size=4 * text_hidden, num_layers=text_layers, num_heads=text_heads,
        image_size=s["image_size"], patch_size=s["patch_size"], projection_dim=s["projection"], context_length=77,
        vision_hidden_size=s["vision_hidden"],
    )
    config.vision_config.intermediate_size = s["vision_intermediate"]
    config.vision_config.num_attention_heads = s["vision_heads"]
    config.vision_config.num_hidden_layers = s["vision_layers"]
    build_clip_model(config).save_pretrained(path)
    wrap_fast_tokenizer(tok, 77).save_pretrained(path)
    _image_processor(s["image_size"]).save_pretrained(path)
    return path


def rate(path: Path, feeds: dict, repeats: int, threads: int = 2) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
    return next(iter(feeds.values())).shape[0] / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from clipeval.export import export_checkpoint, optimize
    from clipeval.export.tokenizer_export import encode_padded

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    ckpt = make_checkpoint(work / "ckpt")
    t0 = time.perf_counter()
    b16 = export_checkpoint(ckpt, work / "b16", precision="both")
    t_both = time.perf_counter() - t0
    b8 = export_checkpoint(ckpt, work / "b8", precision="int8")
    m16 = json.loads((b16 / "manifest.json").read_text())
    m8 = json.loads((b8 / "manifest.json").read_text())
    print(f"export fp32+fp16 with validation: {t_both:.1f} s")
    print("fused ops:", json.dumps({t: (f['ops'], f['layers']) for t, f in m16["fused_ops"].items()}))
    print("cast counts:", json.dumps(m16["graph_ops"]))
    for m, v in ((m16, "fp32"), (m16, "fp16"), (m8, "int8")):
        print(f"{v} vs torch:", {k: (f"{x['max_abs_diff']:.3g}", f"{x['min_cosine']:.6f}")
                                 for k, x in m["validation"][v]["outputs"].items()})

    fused = {}
    for tower, kind, heads, hidden in (("vision", "clip", 12, 768), ("text", "clip", 8, 512)):
        fused[tower] = work / f"{tower}.fused.onnx"
        optimize.fuse(b16 / f"{tower}.onnx", fused[tower], model_type=kind, num_heads=heads, hidden_size=hidden,
                      opset=17)
    rng = np.random.default_rng(0)
    pixels = {"pixel_values": rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)}
    texts = ["a photo of a red car next to the house"] * args.batch
    tfeeds = encode_padded(b16 / "tokenizer.json", texts, 77, 0)
    rows = [
        ("vision fp32 raw", b16 / "vision.onnx", pixels),
        ("vision fp32 fused", fused["vision"], pixels),
        ("vision int8", b8 / "vision.int8.onnx", pixels),
        ("vision fp16 (CPU)", b16 / "vision.fp16.onnx", pixels),
        ("text fp32 raw", b16 / "text.onnx", tfeeds),
        ("text fp32 fused", fused["text"], tfeeds),
        ("text int8", b8 / "text.int8.onnx", tfeeds),
    ]
    rates = {}
    for name, path, feeds in rows:
        rates[name] = rate(path, feeds, args.repeats)
        print(f"{name:22s} {rates[name]:8.1f} items/s (batch {args.batch}, 2 threads, {feeds['input_ids'].shape[1] if 'input_ids' in feeds else 224} wide)")
    for tower in ("vision", "text"):
        print(f"{tower}: fused/raw fp32 = {rates[f'{tower} fp32 fused'] / rates[f'{tower} fp32 raw']:.2f}x, "
              f"int8/fp32 = {rates[f'{tower} int8'] / rates[f'{tower} fp32 raw']:.2f}x")


if __name__ == "__main__":
    main()
