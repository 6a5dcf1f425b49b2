"""Preprocessor against transformers' PIL image processors, and preprocess.json validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipeval.engine.errors import BundleError, ImageError
from clipeval.engine.images.preprocess import PreprocessSpec, Preprocessor

transformers = pytest.importorskip("transformers")
from transformers.models.chinese_clip.image_processing_pil_chinese_clip import ChineseCLIPImageProcessorPil  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil  # noqa: E402

HF_PROCESSORS = {
    "clip": lambda: CLIPImageProcessorPil(),
    "clip_bilinear": lambda: CLIPImageProcessorPil(resample=Image.Resampling.BILINEAR),
    # crop larger than the resize: the image is padded; odd crop sizes test offset rounding
    "clip_pad_odd": lambda: CLIPImageProcessorPil(size={"shortest_edge": 199}, crop_size={"height": 223, "width": 205}),
    "clip_lanczos_odd": lambda: CLIPImageProcessorPil(
        resample=Image.Resampling.LANCZOS, size={"shortest_edge": 241}, crop_size={"height": 225, "width": 224}
    ),
    "siglip": lambda: SiglipImageProcessorPil(),
    "siglip_nearest_rect": lambda: SiglipImageProcessorPil(resample=Image.Resampling.NEAREST, size={"height": 96, "width": 160}),
    "chinese_clip": lambda: ChineseCLIPImageProcessorPil(size={"height": 224, "width": 224}),
    "crop_only": lambda: CLIPImageProcessorPil(do_resize=False, crop_size={"height": 64, "width": 48}),
}

SIZES = [(640, 480), (480, 640), (225, 301), (301, 225), (224, 224), (223, 225), (1, 1), (100, 50), (50, 100),
         (7, 3), (300, 5), (1024, 768)]


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth_image(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(arr.astype(np.uint8))


def hf_pixels(proc, img: Image.Image) -> np.ndarray:
    return proc(images=img, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("name", sorted(HF_PROCESSORS))
def test_matches_transformers_on_many_sizes(name):
    hf = HF_PROCESSORS[name]()
    pp = Preprocessor(PreprocessSpec.from_hf_processor_config(hf.to_dict()))
    for k, (w, h) in enumerate(SIZES):
        for img in (noise_image(w, h, seed=k), smooth_image(w, h)):
            expected = hf_pixels(hf, img)
            got = pp(img)
            assert got.dtype == np.float32
            assert got.shape == expected.shape == (3, *pp.output_size)
            diff = float(np.abs(got - expected).max())
            assert diff <= 1e-5, (name, w, h, diff)


def modes_images():
    rgb = noise_image(37, 29, seed=5)
    rgba = np.dstack([np.asarray(rgb), np.random.default_rng(6).integers(0, 256, (29, 37), dtype=np.uint8)])
    pal_t = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal_t.info["transparency"] = 3
    return {
        "L": rgb.convert("L"),
        "1": rgb.convert("1"),
        "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32),
        "P+transparency": pal_t,
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "LA": Image.fromarray(rgba, "RGBA").convert("LA"),
        "CMYK": rgb.convert("CMYK"),
    }


@pytest.mark.parametrize("mode", sorted(modes_images()))
def test_modes_match_transformers_convert_rgb(mode):
    hf = CLIPImageProcessorPil()
    pp = Preprocessor(PreprocessSpec.from_hf_processor_config(hf.to_dict()))
    img = modes_images()[mode]
    assert float(np.abs(pp(img) - hf_pixels(hf, img)).max()) <= 1e-5


def test_out_argument_fills_given_array():
    pp = Preprocessor(PreprocessSpec.from_hf_processor_config(CLIPImageProcessorPil().to_dict()))
    img = noise_image(90, 70, seed=1)
    out = np.full((3, 224, 224), np.nan, dtype=np.float32)
    result = pp(img, out=out)
    assert result is out
    assert np.array_equal(out, pp(img))
    with pytest.raises(ValueError):
        pp(img, out=np.empty((3, 10, 10), np.float32))


# --- preprocess.json --------------------------------------------------------------------------

CLIP_JSON = {
    "format": 1,
    "do_convert_rgb": True,
    "do_resize": True, "size": {"shortest_edge": 224}, "resample": "bicubic",
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def test_round_trip_through_json():
    spec = PreprocessSpec.from_dict(CLIP_JSON)
    assert spec.to_dict() == CLIP_JSON
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.output_size == (224, 224)
    assert spec.draft_size == (224, 224)


def test_openai_style_config_converts():
    # preprocessor_config.json as published for openai/clip-vit-base-patch32
    openai = {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "size": 224,
    }
    assert PreprocessSpec.from_hf_processor_config(openai) == PreprocessSpec.from_dict(CLIP_JSON)
    assert PreprocessSpec.from_hf_processor_config(CLIPImageProcessorPil().to_dict()) == PreprocessSpec.from_dict(CLIP_JSON)


def test_siglip_and_chinese_clip_configs_convert():
    siglip = PreprocessSpec.from_hf_processor_config(SiglipImageProcessorPil().to_dict())
    assert not siglip.do_center_crop and siglip.size == {"height": 224, "width": 224}
    assert siglip.image_mean == (0.5, 0.5, 0.5) and siglip.output_size == (224, 224)
    int_size = {"image_processor_type": "SiglipImageProcessor", "size": 384, "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3, "resample": 2}
    spec = PreprocessSpec.from_hf_processor_config(int_size)
    assert spec.size == {"height": 384, "width": 384} and spec.resample == "bilinear"
    chinese = {
        "image_processor_type": "ChineseCLIPImageProcessor", "size": {"height": 224, "width": 224},
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    spec = PreprocessSpec.from_hf_processor_config(chinese)
    assert spec.size == {"height": 224, "width": 224} and spec.output_size == (224, 224)


def test_unknown_processor_is_refused_with_the_supported_list():
    with pytest.raises(BundleError) as err:
        PreprocessSpec.from_hf_processor_config({"image_processor_type": "ViTImageProcessor"})
    assert "ViTImageProcessor" in str(err.value) and "CLIPImageProcessor" in str(err.value)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"image_mean": None}, ["image_mean"]),
        ({"size": None, "resample": None}, ["size", "resample"]),
        ({"crop_size": None}, ["crop_size"]),
        ({"colour": "red"}, ["colour"]),
        ({"resample": "cubic"}, ["resample", "bicubic"]),
        ({"image_std": [0.5, 0.0, 0.5]}, ["image_std"]),
        ({"image_mean": [0.5, 0.5]}, ["image_mean"]),
        ({"size": {"shortest_edge": 0}}, ["size"]),
        ({"size": {"longest_edge": 224}}, ["size"]),
        ({"do_resize": "yes"}, ["do_resize"]),
        ({"format": 2}, ["format"]),
        ({"rescale_factor": -1}, ["rescale_factor"]),
        ({"do_center_crop": False}, ["varying size"]),
    ],
)
def test_bad_preprocess_json_names_the_key(change, words):
    d = dict(CLIP_JSON)
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    with pytest.raises(BundleError) as err:
        PreprocessSpec.from_dict(d, source="/b/preprocess.json")
    text = str(err.value)
    for word in words:
        assert word in text
    assert "/b/preprocess.json" in text


def test_fixed_size_without_crop_is_accepted():
    d = dict(CLIP_JSON, do_center_crop=False, size={"height": 96, "width": 128})
    d.pop("crop_size")
    spec = PreprocessSpec.from_dict(d)
    assert spec.output_size == (96, 128)
    assert spec.draft_size == (128, 96)
    assert Preprocessor(spec)(noise_image(50, 60, seed=2)).shape == (3, 96, 128)


def test_values_are_the_formula():
    # no resize, crop equal to the image: pixel = (u * factor - mean) / std per channel
    d = {"do_convert_rgb": True, "do_resize": False, "do_center_crop": True, "crop_size": {"height": 4, "width": 5},
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.25, 2.0]}
    img = noise_image(5, 4, seed=3)
    arr = np.asarray(img).astype(np.float64)
    expected = np.stack([(arr[..., c] / 255 - d["image_mean"][c]) / d["image_std"][c] for c in range(3)])
    got = Preprocessor(d)(img)
    assert np.abs(got - expected).max() < 1e-6


def test_no_rgb_conversion_refuses_other_modes():
    d = dict(CLIP_JSON, do_convert_rgb=False)
    with pytest.raises(ImageError):
        Preprocessor(d)(noise_image(30, 30, seed=4).convert("L"))


def test_extreme_aspect_ratio_is_an_image_error():
    pp = Preprocessor(CLIP_JSON)
    with pytest.raises(ImageError):
        pp(Image.new("RGB", (1, 400_000)))


def test_engine_does_not_import_transformers_or_torch():
    code = (
        "import sys; import clipeval.engine.images.preprocess, clipeval.engine.images.load, clipeval.engine.images.pipeline; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- open_clip's transform (resize_mode, crop_rule, pad_fill) -------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"resize_mode": "widest"}, ["resize_mode", "shortest"]),
    ({"resize_mode": "longest"}, ["resize_mode", "height"]),  # with a shortest_edge size
    ({"crop_rule": "numpy"}, ["crop_rule", "torchvision"]),
    ({"pad_fill": [0, 0]}, ["pad_fill"]),
    ({"pad_fill": [0, 256, 0]}, ["pad_fill"]),
    ({"pad_fill": [0.5, 0, 0]}, ["pad_fill"]),
])
def test_bad_open_clip_keys_name_the_key(change, words):
    with pytest.raises(BundleError) as err:
        PreprocessSpec.from_dict({**CLIP_JSON, **change}, source="/b/preprocess.json")
    for word in words:
        assert word in str(err.value)


def test_transformers_bundles_keep_their_preprocess_json():
    """The open_clip keys appear only where they differ from transformers' behaviour."""
    for make in HF_PROCESSORS.values():
        d = PreprocessSpec.from_hf_processor_config(make().to_dict()).to_dict()
        assert not {"resize_mode", "crop_rule", "pad_fill"} & set(d)
    assert PreprocessSpec.from_dict(CLIP_JSON).to_dict() == CLIP_JSON


def _open_clip_cfg(size, mode, interpolation, fill):
    return {"size": size, "mode": "RGB", "mean": (0.48145466, 0.4578275, 0.40821073),
            "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": interpolation, "resize_mode": mode,
            "fill_color": fill}


def test_open_clip_transform_oracle_on_generated_sizes_and_configs():
    """Every resize mode, square and rectangular targets, both interpolations, fill colours, images
    from 1x1 to very wide: clipeval's pixels equal open_clip's eval transform (torchvision's PIL
    path), or both refuse the image."""
    pytest.importorskip("open_clip")
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipeval.export.openclip_export import preprocess_spec

    sizes = st.one_of(st.integers(8, 48), st.tuples(st.integers(8, 48), st.integers(8, 48)))

    @settings(max_examples=150, deadline=None)
    @given(size=sizes, mode=st.sampled_from(["shortest", "longest", "squash"]),
           interpolation=st.sampled_from(["bicubic", "bilinear", "random"]), fill=st.integers(0, 255),
           w=st.integers(1, 120), h=st.integers(1, 120), seed=st.integers(0, 3))
    def check(size, mode, interpolation, fill, w, h, seed):
        cfg = _open_clip_cfg(size, mode, interpolation, fill)
        transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        pre = Preprocessor(preprocess_spec(cfg))
        img = noise_image(w, h, seed)
        try:
            want = transform(img).numpy()
        except ValueError:  # a "longest" fit that rounds a side to 0
            with pytest.raises(ImageError):
                pre(img)
            return
        np.testing.assert_array_equal(pre(img), want)

    check()
