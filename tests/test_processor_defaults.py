"""Image processor configs that leave keys out (hand-written, trimmed, or from old tools):
`clipeval export` fills them with the class defaults, as transformers does when it loads the
file, and the bundle's preprocessing equals transformers' on those files (brk3 K3)."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from clipeval.engine.errors import ExportError
from clipeval.engine.images.preprocess import PreprocessSpec, Preprocessor
from clipeval.export.preprocess_config import HF_CLASS_DEFAULTS, preprocess_from_checkpoint

transformers = pytest.importorskip("transformers")

CLASSES = {"CLIPImageProcessor": "CLIPImageProcessorPil",
           "ChineseCLIPImageProcessor": "ChineseCLIPImageProcessorPil",
           "SiglipImageProcessor": "SiglipImageProcessorPil"}
GIVEN = {  # what a full file of each class would hold (small sizes: fast)
    "CLIPImageProcessor": {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 30},
                           "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
    "ChineseCLIPImageProcessor": {"size": {"height": 34, "width": 30}, "crop_size": {"height": 28, "width": 28},
                                  "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
    "SiglipImageProcessor": {"size": {"height": 30, "width": 26}, "image_mean": [0.4, 0.5, 0.6],
                             "image_std": [0.2, 0.3, 0.25]},
}


def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((41, 29), (17, 50))]


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_the_defaults_are_transformers_class_defaults(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(transformers, CLASSES[kind])().to_dict()
    for key, value in HF_CLASS_DEFAULTS[kind].items():
        assert json.loads(json.dumps(theirs[key])) == value, (kind, key)
    assert theirs.get("crop_size") is None or "crop_size" in HF_CLASS_DEFAULTS[kind]


CASES = [(kind, left_out) for kind in sorted(CLASSES)
         for n in range(len(GIVEN[kind]) + 1) for left_out in itertools.combinations(sorted(GIVEN[kind]), n)]


@pytest.mark.parametrize("kind,left_out", CASES)
def test_a_config_leaving_keys_out_preprocesses_as_transformers_loads_it(tmp_path, kind, left_out):
    config = {"image_processor_type": kind, "resample": 3, **{k: v for k, v in GIVEN[kind].items()
                                                                if k not in left_out}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    pp = Preprocessor(PreprocessSpec.from_dict(preprocess_from_checkpoint(tmp_path)))
    for img in images():
        want = hf(images=img, return_tensors="np")["pixel_values"][0]
        got = pp(img)
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-5


def test_a_bad_value_names_the_checkpoint_file_not_a_bundle(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"image_processor_type": "CLIPImageProcessor", "image_mean": [0.5, 0.5]}))
    with pytest.raises(ExportError) as err:
        preprocess_from_checkpoint(tmp_path)
    assert "image_mean" in err.value.message and str(path) in err.value.remedy
    assert "preprocess.json" not in err.value.remedy


@pytest.mark.parametrize("model_type,kind", [("clip", "CLIPImageProcessor"),
                                             ("chinese_clip", "ChineseCLIPImageProcessor"),
                                             ("siglip", "SiglipImageProcessor")])
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_a_config_naming_no_class_takes_the_model_type_as_transformers_does(tmp_path, model_type, kind, layout):
    config = {k: v for k, v in GIVEN[kind].items() if k != "image_mean"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    name = "preprocessor_config.json" if layout == "flat" else "processor_config.json"
    (tmp_path / name).write_text(json.dumps(config if layout == "flat" else {"image_processor": config}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(hf).__name__ == kind + "Pil"
    pp = Preprocessor(PreprocessSpec.from_dict(preprocess_from_checkpoint(tmp_path)))
    for img in images():
        want = hf(images=img, return_tensors="np")["pixel_values"][0]
        assert float(np.abs(pp(img) - want).max()) <= 1e-5


def test_no_class_and_no_known_model_type_is_still_an_error(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(GIVEN["CLIPImageProcessor"]))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ExportError) as err:
        preprocess_from_checkpoint(tmp_path)
    assert "not supported" in err.value.message
