"""Checkpoints in the layouts transformers 4 and 5 write, for every family; the manifest's source.

transformers 5 nests the image processor under ``"image_processor"`` in ``processor_config.json``
and writes no ``preprocessor_config.json``; transformers 4 writes ``preprocessor_config.json``.
Whichever layout a folder has, the exporter must read the same image processor transformers
reads (checked against ``AutoImageProcessor``), and the bundle's tokenizer must give the ids of
transformers' own tokenizer.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402
from fixtures_ckpt import (  # noqa: E402
    CONTEXT_LENGTH,
    PARITY_TEXTS,
    make_tiny_chinese_clip_checkpoint,
    make_tiny_clip_checkpoint,
    make_tiny_siglip_checkpoint,
    make_transformers4_clip_checkpoint,
    parity_images,
    to_transformers4_layout,
)

from clipeval.cli.main import cli  # noqa: E402
from clipeval.engine.sessions.bundle import load_bundle  # noqa: E402
from clipeval.engine.errors import ExportError  # noqa: E402
from clipeval.engine.images.preprocess import Preprocessor, PreprocessSpec  # noqa: E402
from clipeval.engine.text.tokenizer import TextTokenizer  # noqa: E402
from clipeval.export import export_checkpoint  # noqa: E402
from clipeval.export.convert import FAMILIES, _read_config  # noqa: E402
from clipeval.export.preprocess_config import preprocess_from_checkpoint, read_image_processor_config  # noqa: E402
from clipeval.export.tokenizer_export import encode_padded, export_tokenizer  # noqa: E402

MAKERS = {
    "clip": make_tiny_clip_checkpoint,
    "chinese_clip": make_tiny_chinese_clip_checkpoint,
    "siglip": make_tiny_siglip_checkpoint,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One checkpoint per family, saved by the installed transformers."""
    root = tmp_path_factory.mktemp("saved")
    return {name: make(root / name, seed=0) for name, make in MAKERS.items()}


def _layouts(saved, family, tmp_path):
    """(name, folder) for the folder as saved and the same folder rewritten to the other layout."""
    as_saved = saved[family]
    other = shutil.copytree(as_saved, tmp_path / f"{family}-v4")
    to_transformers4_layout(other)
    return [("as saved", as_saved), ("transformers 4", other)]


def _transformers_image_processor(path):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(path), backend="pil")


@pytest.mark.parametrize("family", sorted(MAKERS))
def test_both_layouts_read_the_image_processor_transformers_reads(saved, family, tmp_path):
    specs = []
    for name, path in _layouts(saved, family, tmp_path):
        if name == "transformers 4":
            assert (path / "preprocessor_config.json").is_file() and not (path / "processor_config.json").exists()
        spec = preprocess_from_checkpoint(path)
        want = PreprocessSpec.from_hf_processor_config(_transformers_image_processor(path).to_dict()).to_dict()
        assert spec == want, name
        pixels = np.stack([Preprocessor(spec)(img) for img in parity_images()])
        ref = _transformers_image_processor(path)(parity_images(), return_tensors="np")["pixel_values"]
        np.testing.assert_array_equal(pixels, ref)
        specs.append(spec)
    assert specs[0] == specs[1]


@pytest.mark.parametrize("family", sorted(MAKERS))
def test_both_layouts_give_the_tokenizer_transformers_gives(saved, family, tmp_path):
    from transformers import AutoTokenizer

    kind = FAMILIES[family].tokenizer
    for name, path in _layouts(saved, family, tmp_path):
        out = tmp_path / f"{name.replace(' ', '_')}-tokenizer.json"
        info = export_tokenizer(path, out, kind)
        hf = AutoTokenizer.from_pretrained(str(path))
        padding = "max_length" if family == "siglip" else "longest"
        want = hf(PARITY_TEXTS, padding=padding, truncation=True, max_length=CONTEXT_LENGTH, return_tensors="np")
        got = encode_padded(out, PARITY_TEXTS, CONTEXT_LENGTH, info.pad_id,
                            length=CONTEXT_LENGTH if family == "siglip" else None)
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"], err_msg=name)


def test_committed_transformers4_clip_exports_and_matches_torch(tmp_path):
    import torch
    from transformers import AutoTokenizer, CLIPModel

    ckpt = make_transformers4_clip_checkpoint(tmp_path / "ckpt", seed=2)
    assert not (ckpt / "processor_config.json").exists() and (ckpt / "preprocessor_config.json").is_file()
    assert not (ckpt / "tokenizer.json").exists()  # a slow-tokenizer save: vocab.json + merges.txt
    bundle = load_bundle(export_checkpoint(ckpt, tmp_path / "bundle"))
    m = bundle.manifest
    assert m["family"] == "clip" and m["tokenizer"]["pooling"] == "max_id"
    assert m["validation"]["fp32"]["passed"]
    hf = AutoTokenizer.from_pretrained(str(ckpt))
    tok = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    feeds = tok(PARITY_TEXTS)
    want = hf(PARITY_TEXTS, padding="longest", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="np")
    np.testing.assert_array_equal(feeds["input_ids"], want["input_ids"])
    model = CLIPModel.from_pretrained(str(ckpt), attn_implementation="eager").eval()
    pixels = _transformers_image_processor(ckpt)(parity_images(), return_tensors="pt")["pixel_values"]
    np.testing.assert_array_equal(np.stack([Preprocessor(bundle.preprocess)(i) for i in parity_images()]),
                                  pixels.numpy())
    import onnxruntime as ort

    with torch.no_grad():
        want_t = torch.nn.functional.normalize(model.get_text_features(
            **{k: torch.from_numpy(v) for k, v in feeds.items()}).pooler_output, dim=-1).numpy()
        want_i = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output,
                                               dim=-1).numpy()
    text = ort.InferenceSession(str(bundle.tower_path("text")), providers=["CPUExecutionProvider"])
    vision = ort.InferenceSession(str(bundle.tower_path("vision")), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(text.run(None, feeds)[0], want_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(vision.run(None, {"pixel_values": pixels.numpy()})[0], want_i, atol=1e-5, rtol=0)


def test_transformers4_layout_of_siglip_exports(saved, tmp_path):
    ckpt = to_transformers4_layout(shutil.copytree(saved["siglip"], tmp_path / "siglip-v4"))
    bundle = load_bundle(export_checkpoint(ckpt, tmp_path / "bundle", validate=False))
    assert bundle.family == "siglip"
    assert bundle.preprocess == preprocess_from_checkpoint(saved["siglip"])


# -- the kind: every arrangement of the two files ---------------------------------------------------

IMAGE = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
         "crop_size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
         "do_center_crop": True, "resample": 3}
OTHER = {**IMAGE, "image_mean": [0.1, 0.2, 0.3], "resample": 2}

# (processor_config.json, preprocessor_config.json, what is read: "nested" | "flat" | error text)
ARRANGEMENTS = [
    ({"image_processor": IMAGE, "processor_class": "CLIPProcessor"}, None, "nested"),
    (None, IMAGE, "flat"),
    ({"image_processor": IMAGE}, OTHER, "nested"),  # both: the nested one wins, as in transformers 5
    ({"processor_class": "CLIPProcessor"}, IMAGE, "flat"),  # a processor file without the entry
    ({"processor_class": "CLIPProcessor"}, None, "without an 'image_processor' entry"),
    (None, None, "found neither file"),
    ({"image_processor": [1, 2]}, None, "is not a JSON object"),
    ([IMAGE], IMAGE, "is not a JSON object"),
    (None, [IMAGE], "is not a JSON object"),
]


@pytest.mark.parametrize("nested,flat,expect", ARRANGEMENTS)
def test_every_arrangement_reads_what_transformers_reads_or_says_what_is_missing(tmp_path, nested, flat, expect):
    for name, content in (("processor_config.json", nested), ("preprocessor_config.json", flat)):
        if content is not None:
            (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")
    if expect in ("nested", "flat"):
        config, where = read_image_processor_config(tmp_path)
        assert config == (nested["image_processor"] if expect == "nested" else flat)
        assert where.endswith("(image_processor)") == (expect == "nested")
        theirs = _transformers_image_processor(tmp_path).to_dict()
        assert PreprocessSpec.from_hf_processor_config(config) == PreprocessSpec.from_hf_processor_config(theirs)
    else:
        with pytest.raises(ExportError) as err:
            read_image_processor_config(tmp_path)
        assert expect in err.value.message and "save_pretrained" in err.value.remedy


def test_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "processor_config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"image_processor": IMAGE}).encode())
    assert read_image_processor_config(tmp_path)[0] == IMAGE


# -- the manifest's source (issue 10) ---------------------------------------------------------------

def test_source_is_the_resolved_path_and_bench_says_when_it_is_gone(saved, tmp_path, monkeypatch):
    ckpt = shutil.copytree(saved["clip"], tmp_path / "work" / "ckpt" / "x")
    monkeypatch.chdir(tmp_path / "work")
    bundle = load_bundle(export_checkpoint("./ckpt/../ckpt/x", tmp_path / "bundle", validate=False))
    assert bundle.manifest["source"] == str(ckpt.resolve()) and bundle.manifest["hub"] is None
    assert bundle.name == "x"
    assert _read_config(ckpt)["model_type"] == "clip"

    from clipeval.cli.bench_cmd import _reference_checkpoint

    monkeypatch.chdir(tmp_path)  # another folder: the recorded path still leads to the checkpoint
    assert _reference_checkpoint(str(bundle.path), bundle, None) == ckpt.resolve()
    data = tmp_path / "data"
    data.mkdir()
    shutil.rmtree(ckpt)
    result = CliRunner().invoke(cli, ["bench", "--model", str(bundle.path), "--data-dir", str(data), "--vs-reference",
                                      "--quiet"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"{ckpt.resolve()}, which no longer exists" in result.stderr and "--checkpoint DIR" in result.stderr
