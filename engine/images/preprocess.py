"""Image preprocessing as data: the bundle's ``preprocess.json`` and the function it describes.

Schema (format 1); the keys mirror transformers' image processor config so a checkpoint's
``preprocessor_config.json`` converts one to one::

    {"format": 1,
     "do_convert_rgb": true,
     "do_resize": true,
     "size": {"shortest_edge": 224}  |  {"height": H, "width": W},
     "resample": "bicubic" | "bilinear" | "nearest" | "lanczos" | "box" | "hamming",
     "do_center_crop": true, "crop_size": {"height": 224, "width": 224},
     "do_rescale": true, "rescale_factor": 0.00392156862745098,
     "do_normalize": true, "image_mean": [m0, m1, m2], "image_std": [s0, s1, s2]}

:class:`Preprocessor` reproduces transformers' PIL image processor (``CLIPImageProcessorPil``,
``ChineseCLIPImageProcessorPil``, ``SiglipImageProcessorPil``) exactly:

* shortest edge ``s``: the short side becomes ``s`` and the long side ``int(s * long / short)``
  (truncated, as transformers does);
* the resize is Pillow's ``Image.resize`` on the 8-bit RGB image;
* the centre crop starts at ``(size - crop) // 2``; an image smaller than the crop is placed at
  ``ceil((crop - size) / 2)`` on a canvas of zero pixels (zero *before* rescaling);
* rescale is ``float32(float64(u8) * rescale_factor)``, normalise is ``(x - mean) / std`` in
  float32. Because the input is 8-bit, both are a 256-entry table per channel, computed with the
  same arithmetic, so the output is bit-identical and costs one table lookup per value.

Three optional keys describe open_clip's image transform (``open_clip.transform.image_transform``
on a PIL image, torchvision's PIL code path); a bundle exported from transformers has none of them,
so its ``preprocess.json`` and its pixels are unchanged:

* ``"resize_mode": "shortest" | "longest"`` with a ``{"height": H, "width": W}`` size: open_clip's
  ``ResizeKeepRatio``: ``ratio = min(h / H, w / W)`` (``"shortest"``, the image covers the target)
  or ``max(...)`` (``"longest"``, it fits inside), output ``(round(h / ratio), round(w / ratio))``
  with Python's ``round`` (half to even). Without the key, a ``{"height", "width"}`` size is
  resized to exactly that size (open_clip's ``"squash"``), and ``{"shortest_edge": S}`` truncates
  the long side as above (torchvision's ``Resize(S)`` computes it the same way).
* ``"crop_rule": "torchvision"``: the centre crop starts at ``int(round((size - crop) / 2))``
  (half to even, torchvision's ``center_crop``) and an image smaller than the crop is placed at
  ``(crop - size) // 2`` (torchvision's ``pad`` then crop). Default ``"transformers"``: the rules
  above.
* ``"pad_fill": [r, g, b]``: the 8-bit colour of that padding (open_clip's ``fill_color``; default
  black), rescaled and normalised like every other pixel.

open_clip rescales with ``ToTensor`` (``float32(v) / 255``), which equals transformers'
``float32(float64(v) * (1 / 255))`` for every 8-bit ``v``, and normalises with the same float32
arithmetic, so the value table serves both.

The engine holds no mean, std or size: they come from the bundle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

from ..errors import BundleError, ImageError

FORMAT_VERSION = 1

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# transformers stores ``resample`` as Pillow's integer code.
RESAMPLE_BY_CODE = {int(code): name for name, code in RESAMPLE.items()}

# A resize whose output would exceed this many pixels (an extreme aspect ratio under a
# shortest-edge rule) is refused instead of allocating gigabytes.
MAX_RESIZED_PIXELS = 1 << 26

KEYS = (
    "format",
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "resize_mode",
    "crop_rule",
    "pad_fill",
)
RESIZE_MODES = ("shortest", "longest")  # open_clip's ResizeKeepRatio (see the module docstring)
CROP_RULES = ("transformers", "torchvision")

# Processor classes whose behaviour from_hf_processor_config knows. Values: (default
# do_center_crop, how an integer ``size`` is read). Numeric defaults (mean, std) are not
# kept here: a config lacking them is an error.
_HF_CLASSES = {
    "CLIPImageProcessor": (True, "shortest_edge"),
    "ChineseCLIPImageProcessor": (True, "shortest_edge"),
    "SiglipImageProcessor": (False, "square"),
}


def _where(source: str | None) -> str:
    return f" in {source}" if source else ""


def _size_dict(value: Any, key: str, source: str | None, allow_shortest: bool) -> dict[str, int]:
    def bad(why: str) -> BundleError:
        return BundleError(
            f"preprocess key {key!r}{_where(source)} {why} (got {value!r})",
            'write it as {"height": H, "width": W}'
            + (' or {"shortest_edge": S}' if allow_shortest else "")
            + " with positive integers",
        )

    if not isinstance(value, Mapping):
        raise bad("must be an object")
    keys = set(value)
    if allow_shortest and keys == {"shortest_edge"}:
        names = ("shortest_edge",)
    elif keys == {"height", "width"}:
        names = ("height", "width")
    else:
        raise bad("has the wrong keys")
    out = {}
    for name in names:
        v = value[name]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise bad(f"needs a positive integer {name!r}")
        out[name] = v
    return out


def _triple(value: Any, key: str, source: str | None, positive: bool) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if ok and positive:
        ok = all(v > 0 for v in value)
    if not ok:
        raise BundleError(
            f"preprocess key {key!r}{_where(source)} must be a list of 3 finite numbers"
            + (" > 0" if positive else "")
            + f" (got {value!r})",
            "re-export the bundle, or fix preprocess.json by hand",
        )
    return (float(value[0]), float(value[1]), float(value[2]))


@dataclass(frozen=True)
class PreprocessSpec:
    """What ``preprocess.json`` says. Build it with :meth:`from_dict` (validated)."""

    do_convert_rgb: bool
    do_resize: bool
    size: dict[str, int] | None
    resample: str
    do_center_crop: bool
    crop_size: dict[str, int] | None
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float] | None
    image_std: tuple[float, float, float] | None
    resize_mode: str | None = None  # None | "shortest" | "longest" (open_clip's ResizeKeepRatio)
    crop_rule: str = "transformers"  # "transformers" | "torchvision"
    pad_fill: tuple[int, int, int] = (0, 0, 0)  # 8-bit colour of padding around a small image

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "PreprocessSpec":
        """Validate a ``preprocess.json`` object; ``source`` (a path) is named in errors.

        Every problem found is listed in one :class:`BundleError`.
        """
        if not isinstance(d, Mapping):
            raise BundleError(f"preprocess config{_where(source)} must be a JSON object", "re-export the bundle")
        remedy = "re-export the bundle, or fix preprocess.json by hand"
        unknown = sorted(set(d) - set(KEYS))
        problems = []
        if unknown:
            problems.append(f"unknown keys: {', '.join(unknown)} (accepted: {', '.join(KEYS)})")
        if "format" in d and d["format"] != FORMAT_VERSION:
            problems.append(f"format is {d['format']!r}; this clipeval reads format {FORMAT_VERSION}")
        flags = {}
        for key in ("do_convert_rgb", "do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if key not in d:
                problems.append(f"missing key {key!r}")
            elif not isinstance(d[key], bool):
                problems.append(f"key {key!r} must be true or false (got {d[key]!r})")
            else:
                flags[key] = d[key]
        needed = []
        if flags.get("do_resize"):
            needed += ["size", "resample"]
        if flags.get("do_center_crop"):
            needed += ["crop_size"]
        if flags.get("do_rescale"):
            needed += ["rescale_factor"]
        if flags.get("do_normalize"):
            needed += ["image_mean", "image_std"]
        for key in needed:
            if key not in d:
                problems.append(f"missing key {key!r}")
        if problems:
            raise BundleError(f"preprocess config{_where(source)} is invalid: " + "; ".join(problems), remedy)

        size = crop = mean = std = None
        resample = str(d.get("resample", "bilinear"))
        factor = 1.0
        if flags["do_resize"]:
            size = _size_dict(d["size"], "size", source, allow_shortest=True)
            if resample not in RESAMPLE:
                raise BundleError(
                    f"preprocess key 'resample'{_where(source)} is {d['resample']!r}",
                    f"use one of: {', '.join(RESAMPLE)}",
                )
        if flags["do_center_crop"]:
            crop = _size_dict(d["crop_size"], "crop_size", source, allow_shortest=False)
        if flags["do_rescale"]:
            factor = d["rescale_factor"]
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise BundleError(
                    f"preprocess key 'rescale_factor'{_where(source)} must be a positive number (got {factor!r})",
                    remedy,
                )
            factor = float(factor)
        if flags["do_normalize"]:
            mean = _triple(d["image_mean"], "image_mean", source, positive=False)
            std = _triple(d["image_std"], "image_std", source, positive=True)
        resize_mode, crop_rule, pad_fill = _open_clip_keys(d, size, source)
        if crop is None and (size is None or "shortest_edge" in size or resize_mode is not None):
            raise BundleError(
                f"preprocess config{_where(source)} gives images of varying size "
                "(no centre crop and no fixed-size resize), so they cannot be batched",
                'set "do_center_crop": true with a "crop_size", or a fixed {"height", "width"} "size"',
            )
        return cls(
            do_convert_rgb=flags["do_convert_rgb"],
            do_resize=flags["do_resize"],
            size=size,
            resample=resample,
            do_center_crop=flags["do_center_crop"],
            crop_size=crop,
            do_rescale=flags["do_rescale"],
            rescale_factor=factor,
            do_normalize=flags["do_normalize"],
            image_mean=mean,
            image_std=std,
            resize_mode=resize_mode,
            crop_rule=crop_rule,
            pad_fill=pad_fill,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocess.json`` object (round-trips through :meth:`from_dict`)."""
        d: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "do_convert_rgb": self.do_convert_rgb,
            "do_resize": self.do_resize,
            "do_center_crop": self.do_center_crop,
            "do_rescale": self.do_rescale,
            "do_normalize": self.do_normalize,
        }
        if self.do_resize:
            d["size"] = dict(self.size)
            d["resample"] = self.resample
        if self.do_center_crop:
            d["crop_size"] = dict(self.crop_size)
        if self.do_rescale:
            d["rescale_factor"] = self.rescale_factor
        if self.do_normalize:
            d["image_mean"] = list(self.image_mean)
            d["image_std"] = list(self.image_std)
        # open_clip's keys only where they differ from transformers' behaviour
        if self.resize_mode is not None and self.do_resize:
            d["resize_mode"] = self.resize_mode
        if self.crop_rule != "transformers":
            d["crop_rule"] = self.crop_rule
        if tuple(self.pad_fill) != (0, 0, 0):
            d["pad_fill"] = list(self.pad_fill)
        return d

    @classmethod
    def from_hf_processor_config(cls, d: Mapping[str, Any], source: str | None = None) -> "PreprocessSpec":
        """Convert a transformers ``preprocessor_config.json`` object (or ``processor.to_dict()``).

        Knows CLIPImageProcessor, ChineseCLIPImageProcessor and SiglipImageProcessor (and their
        ``Fast``/``Pil`` variants and the old ``*FeatureExtractor`` names). Keys the config omits
        take that class's behaviour (whether it crops, how an integer ``size`` is read, RGB
        conversion, rescale by 1/255); ``image_mean``/``image_std`` must be present.
        """
        kind = str(d.get("image_processor_type") or d.get("feature_extractor_type") or "")
        for suffix in ("Fast", "Pil"):
            if kind.endswith(suffix):
                kind = kind[: -len(suffix)]
        kind = kind.replace("FeatureExtractor", "ImageProcessor")
        if kind not in _HF_CLASSES:
            raise BundleError(
                f"image processor {kind or '(unnamed)'!r}{_where(source)} is not supported",
                f"supported: {', '.join(_HF_CLASSES)}; write preprocess.json by hand for others",
            )
        default_crop, int_size = _HF_CLASSES[kind]

        def size_of(value: Any, as_int: str, key: str) -> Any:
            if isinstance(value, int) and not isinstance(value, bool):
                return {"shortest_edge": value} if as_int == "shortest_edge" else {"height": value, "width": value}
            if isinstance(value, Mapping) and "longest_edge" in value:
                raise BundleError(
                    f"{key} {dict(value)!r}{_where(source)} uses 'longest_edge', which is not supported",
                    "use a shortest-edge or fixed-size resize",
                )
            return value

        def pick(key: str, default: Any) -> Any:
            value = d.get(key)
            return default if value is None else value

        resample = pick("resample", int(RESAMPLE["bicubic"]))
        if isinstance(resample, int) and not isinstance(resample, bool):
            if resample not in RESAMPLE_BY_CODE:
                raise BundleError(
                    f"resample code {resample}{_where(source)} is unknown",
                    f"use one of: {', '.join(f'{k} ({v})' for k, v in RESAMPLE_BY_CODE.items())}",
                )
            resample = RESAMPLE_BY_CODE[resample]
        out: dict[str, Any] = {
            "do_convert_rgb": bool(pick("do_convert_rgb", True)),
            "do_resize": bool(pick("do_resize", True)),
            "resample": str(resample).lower(),
            "do_center_crop": bool(pick("do_center_crop", default_crop)),
            "do_rescale": bool(pick("do_rescale", True)),
            "rescale_factor": pick("rescale_factor", 1 / 255),
            "do_normalize": bool(pick("do_normalize", True)),
        }
        if out["do_resize"]:
            out["size"] = size_of(d.get("size"), int_size, "size")
        if out["do_center_crop"]:
            out["crop_size"] = size_of(d.get("crop_size"), "square", "crop_size")
        if out["do_normalize"]:
            for key in ("image_mean", "image_std"):
                if key in d:
                    v = d[key]
                    out[key] = [v] * 3 if isinstance(v, (int, float)) else list(v)
        return cls.from_dict(out, source=source)

    @property
    def output_size(self) -> tuple[int, int]:
        """``(H, W)`` of every preprocessed image."""
        if self.do_center_crop:
            return (self.crop_size["height"], self.crop_size["width"])
        return (self.size["height"], self.size["width"])

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """``(w, h)`` to pass to ``Image.draft`` so a JPEG decoded at reduced scale is still at
        least as large as the resize target (``None`` when there is no resize)."""
        if not self.do_resize:
            return None
        if "shortest_edge" in self.size:
            s = self.size["shortest_edge"]
            # draft picks scale = min(W // s, H // s) = short // s, so the long side also stays
            # >= its target int(s * long / short).
            return (s, s)
        return (self.size["width"], self.size["height"])

    def resize_target(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` the resize produces for an input of ``width`` × ``height``."""
        if self.resize_mode is not None:  # open_clip's ResizeKeepRatio
            ratio_h, ratio_w = height / self.size["height"], width / self.size["width"]
            longest = 1.0 if self.resize_mode == "longest" else 0.0
            ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
            return (round(width / ratio), round(height / ratio))
        if "shortest_edge" in self.size:
            s = self.size["shortest_edge"]
            if width <= height:
                return (s, int(s * height / width))
            return (int(s * width / height), s)
        return (self.size["width"], self.size["height"])


def _center_span(n: int, crop: int) -> tuple[int, int, int]:
    """(source start, destination start, length) of a centre crop of ``crop`` from ``n``
    (transformers' rule)."""
    if n >= crop:
        return ((n - crop) // 2, 0, crop)
    return (0, math.ceil((crop - n) / 2), n)


def _center_span_torchvision(n: int, crop: int) -> tuple[int, int, int]:
    """The same under torchvision's ``center_crop``: offset rounded half to even, padding before
    the image ``(crop - n) // 2``."""
    if n >= crop:
        return (int(round((n - crop) / 2.0)), 0, crop)
    return (0, (crop - n) // 2, n)


def _open_clip_keys(d: Mapping[str, Any], size: dict[str, int] | None, source: str | None):
    """Validate ``resize_mode``, ``crop_rule`` and ``pad_fill``; return them with their defaults."""
    remedy = "re-export the bundle, or fix preprocess.json by hand"
    resize_mode = d.get("resize_mode")
    if resize_mode is not None:
        if resize_mode not in RESIZE_MODES:
            raise BundleError(f"preprocess key 'resize_mode'{_where(source)} is {resize_mode!r}",
                              f"use one of: {', '.join(RESIZE_MODES)} (or leave it out)")
        if size is not None and "shortest_edge" in size:
            raise BundleError(f"preprocess key 'resize_mode'{_where(source)} needs a {{'height', 'width'}} size",
                              remedy)
    crop_rule = d.get("crop_rule", "transformers")
    if crop_rule not in CROP_RULES:
        raise BundleError(f"preprocess key 'crop_rule'{_where(source)} is {crop_rule!r}",
                          f"use one of: {', '.join(CROP_RULES)}")
    fill = d.get("pad_fill", [0, 0, 0])
    ok = isinstance(fill, (list, tuple)) and len(fill) == 3
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in fill)
    if not ok:
        raise BundleError(f"preprocess key 'pad_fill'{_where(source)} must be 3 integers 0..255 (got {fill!r})",
                          remedy)
    return resize_mode, crop_rule, (int(fill[0]), int(fill[1]), int(fill[2]))


class Preprocessor:
    """``Preprocessor(spec)(img) -> float32 [3, H, W]``, equal to transformers' PIL processor."""

    def __init__(self, spec: PreprocessSpec | Mapping[str, Any]):
        if not isinstance(spec, PreprocessSpec):
            spec = PreprocessSpec.from_dict(spec)
        self.spec = spec
        self.output_size = spec.output_size
        self._resample = RESAMPLE[spec.resample] if spec.do_resize else None
        self._lut = self._value_table(spec)

    @staticmethod
    def _value_table(spec: PreprocessSpec) -> np.ndarray:
        """float32 [3, 256]: the output value of each 8-bit level per channel, computed with
        transformers' arithmetic (float64 rescale cast to float32, then float32 normalise)."""
        levels = np.arange(256, dtype=np.uint8)
        x = np.broadcast_to(levels, (3, 256))
        if spec.do_rescale:
            x = (x.astype(np.float64) * spec.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if spec.do_normalize:
            mean = np.array(spec.image_mean, dtype=np.float32)[:, None]
            std = np.array(spec.image_std, dtype=np.float32)[:, None]
            x = (x - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32)

    def resize(self, img: Image.Image) -> Image.Image:
        """Convert to RGB (when the spec asks) and resize; the 8-bit image before crop."""
        spec = self.spec
        if img.mode != "RGB":
            if not spec.do_convert_rgb:
                raise ImageError(
                    f"image has mode {img.mode} and preprocess.json sets do_convert_rgb false",
                    "load images with clipeval.engine.images.load.load_image, which returns RGB",
                )
            from .load import to_rgb

            img = to_rgb(img)
        if spec.do_resize:
            w, h = spec.resize_target(*img.size)
            if w * h > MAX_RESIZED_PIXELS or w < 1 or h < 1:  # a side of 0: open_clip's "longest" fit
                raise ImageError(
                    f"image of {img.size[0]}x{img.size[1]} would be resized to {w}x{h}, an extreme aspect ratio",
                    "skip this image (on_error='skip') or crop it first",
                )
            img = img.resize((w, h), resample=self._resample)
        return img

    def __call__(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """Preprocess one PIL image into ``out`` (float32 [3, H, W], allocated if not given)."""
        H, W = self.output_size
        if out is None:
            out = np.empty((3, H, W), dtype=np.float32)
        elif out.shape != (3, H, W) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 of shape {(3, H, W)}, got {out.dtype} {out.shape}")
        arr = np.asarray(self.resize(img))
        h, w = arr.shape[:2]
        if self.spec.do_center_crop:
            span = _center_span_torchvision if self.spec.crop_rule == "torchvision" else _center_span
            sy, dy, ny = span(h, H)
            sx, dx, nx = span(w, W)
            if ny < H or nx < W:  # the padding is an 8-bit colour (default black) before rescaling
                out[...] = self._lut[np.arange(3), list(self.spec.pad_fill)][:, None, None]
        else:
            sy = dy = sx = dx = 0
            ny, nx = h, w
        for c in range(3):
            np.take(self._lut[c], arr[sy : sy + ny, sx : sx + nx, c], out=out[c, dy : dy + ny, dx : dx + nx])
        return out
