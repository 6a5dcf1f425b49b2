"""How far transformers' torchvision image-processor backend is from its PIL backend (and clipeval).

transformers 5 picks the torchvision backend of ``AutoImageProcessor`` whenever torchvision is
installed; clipeval's preprocessing equals the PIL backend bit for bit. This measures, on the demo
JPEGs (and the same photos resized to random sizes), per processor config: the largest difference
between the two backends in output units and in 8-bit grey levels (difference × std × 255), the
share of values that differ at all and by half a grey level or more, and checks that clipeval's
pixels equal the PIL backend's.

    python benchmarks/processor_backends.py [--images 300]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

CONFIGS = {
    "CLIP 224 (shortest edge + centre crop, bicubic)": {
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224},
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
    "SigLIP 224 (fixed size, bicubic)": {
        "image_processor_type": "SiglipImageProcessor", "size": {"height": 224, "width": 224}, "resample": 3,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}


def main(argv=None) -> None:
    import transformers
    from PIL import Image

    from clipeval.engine.demo import DEMO_DATA_DIR
    from clipeval.engine.images.load import load_image
    from clipeval.engine.images.preprocess import Preprocessor, PreprocessSpec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args(argv)
    paths = sorted((DEMO_DATA_DIR / "images").glob("*.jpg"))[: args.images]
    images = [load_image(p) for p in paths]
    rng = np.random.default_rng(0)  # and the same photos at other sizes (up- and down-scaling)
    images += [img.resize((int(rng.integers(64, 640)), int(rng.integers(64, 640))), Image.Resampling.BICUBIC)
               for img in images]
    report = {"transformers": transformers.__version__, "images": len(images)}
    for name, cfg in CONFIGS.items():
        kind = cfg["image_processor_type"]
        tv = getattr(transformers, kind)(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
        pil = getattr(transformers, kind + "Pil")(**{k: v for k, v in cfg.items() if k != "image_processor_type"})
        ours = Preprocessor(PreprocessSpec.from_hf_processor_config(cfg))
        worst_units = worst_levels = 0.0
        differ = coarse = total = 0
        std = np.array(cfg["image_std"], dtype=np.float64)[:, None, None]
        ours_equal = True
        for img in images:
            a = tv(img, return_tensors="np")["pixel_values"][0].astype(np.float64)
            b = pil(img, return_tensors="np")["pixel_values"][0].astype(np.float64)
            ours_equal &= bool(np.array_equal(ours(img), b.astype(np.float32)))
            d = np.abs(a - b)
            worst_units = max(worst_units, float(d.max()))
            worst_levels = max(worst_levels, float((d * std * 255).max()))
            differ += int(np.count_nonzero(d))
            coarse += int(np.count_nonzero(d * std * 255 >= 0.5))
            total += d.size
        report[name] = {"torchvision_vs_pil_max_abs": worst_units, "torchvision_vs_pil_max_grey_levels": worst_levels,
                        "share_of_values_differing": differ / total,
                        "share_differing_by_half_a_grey_level_or_more": coarse / total,
                        "clipeval_equals_pil_backend": ours_equal}
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
