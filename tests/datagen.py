"""Writers of small test datasets (import as ``from datagen import ...``)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


# A CLIP-style preprocessing spec at 32 px (resize, crop, rescale, normalise) for decode tests.
PREPROCESS_32 = {
    "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": 32}, "resample": "bicubic",
    "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
}


def noise_image(seed: int, size=(40, 30), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(arr, "RGB")


def write_dataset(root, rows: list[dict], images: dict[str, Image.Image | bytes] | None = None):
    """Write images (PIL images are saved by extension; bytes as they are) and image_queries.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    for name, img in (images or {}).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, bytes):
            path.write_bytes(img)
        else:
            img.save(path)
    with open(root / "image_queries.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return root
