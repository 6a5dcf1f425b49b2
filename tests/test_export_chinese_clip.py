"""Chinese-CLIP checkpoint -> bundle: BERT WordPiece tokenizer, CLS pooling, fusion, parity, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402
from fixtures_ckpt import (  # noqa: E402
    CONTEXT_LENGTH,
    PARITY_TEXTS,
    eval_block,
    make_tiny_chinese_clip_checkpoint,
    parity_images,
    write_custom_dataset,
)

from clipeval.engine.sessions.bundle import load_bundle  # noqa: E402
from clipeval.engine.images.preprocess import Preprocessor  # noqa: E402
from clipeval.engine.text.tokenizer import TextTokenizer  # noqa: E402
from clipeval.export import export_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_chinese_clip_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-chinese-clip", seed=0)


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory):
    return load_bundle(export_checkpoint(ckpt, tmp_path_factory.mktemp("out") / "bundle", precision="both"))


@pytest.fixture(scope="module")
def hf_tokenizer(ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt))


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest_records_family_rule_variants_and_validation(bundle, ckpt, hf_tokenizer):
    m = bundle.manifest
    config = json.loads((ckpt / "config.json").read_text())
    assert m["family"] == "chinese_clip" and bundle.embed_dim == config["projection_dim"] == 16
    assert bundle.context_length == CONTEXT_LENGTH
    assert m["precision"] == "fp32" and set(m["variants"]) == {"fp32", "fp16"}
    assert m["tokenizer"] == {
        "pad_id": hf_tokenizer.pad_token_id, "eos_id": hf_tokenizer.sep_token_id, "bos_id": hf_tokenizer.cls_token_id,
        "padding": "longest", "pooling": "first", "text_inputs": ["input_ids", "attention_mask"],
    }
    for variant in ("fp32", "fp16"):
        assert m["validation"][variant]["passed"] is True


def test_attention_fuses_in_both_towers(bundle, ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    fused = bundle.manifest["fused_ops"]
    assert fused["vision"]["ops"]["Attention"] == config["vision_config"]["num_hidden_layers"]
    assert fused["text"]["ops"]["Attention"] == config["text_config"]["num_hidden_layers"]  # BERT, with the mask
    assert fused["text"]["optimizer_model_type"] == "bert"
    assert fused["vision"]["attention_fused"] and fused["text"]["attention_fused"]


def test_engine_tokenizer_equals_transformers(bundle, hf_tokenizer):
    tok = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    got = tok(PARITY_TEXTS)
    want = hf_tokenizer(PARITY_TEXTS, padding="longest", truncation=True, max_length=CONTEXT_LENGTH,
                        return_tensors="np")
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    # Chinese characters are split one per token, between [CLS] and [SEP]
    ids = tok(["两只猫"])["input_ids"][0]
    assert list(ids) == [hf_tokenizer.cls_token_id, *hf_tokenizer.convert_tokens_to_ids(["两", "只", "猫"]),
                         hf_tokenizer.sep_token_id]


def test_engine_preprocessing_equals_transformers(bundle, ckpt):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(ckpt), backend="pil")
    images = parity_images()
    want = processor(images, return_tensors="np")["pixel_values"]
    pre = Preprocessor(bundle.preprocess)
    got = np.stack([pre(img) for img in images])
    np.testing.assert_array_equal(got, want)


def test_onnx_towers_equal_torch_on_transformers_inputs(bundle, ckpt, hf_tokenizer):
    import torch
    from transformers import AutoImageProcessor, ChineseCLIPModel

    model = ChineseCLIPModel.from_pretrained(str(ckpt), attn_implementation="eager").eval()
    feeds = hf_tokenizer(PARITY_TEXTS, padding="longest", truncation=True, max_length=CONTEXT_LENGTH,
                         return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(str(ckpt), backend="pil")(parity_images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = model.get_text_features(input_ids=feeds["input_ids"], attention_mask=feeds["attention_mask"])
        image = model.get_image_features(pixel_values=pixels)
    want_t = torch.nn.functional.normalize(text.pooler_output, dim=-1).numpy()
    want_i = torch.nn.functional.normalize(image.pooler_output, dim=-1).numpy()
    tok = TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)
    pre = Preprocessor(bundle.preprocess)
    (got_t,) = _session(bundle.tower_path("text")).run(None, tok(PARITY_TEXTS))
    (got_i,) = _session(bundle.tower_path("vision")).run(None, {"pixel_values": np.stack([pre(i) for i in parity_images()])})
    np.testing.assert_allclose(got_t, want_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_i, want_i, atol=1e-5, rtol=0)
    # padding to the context length changes nothing (the mask hides the pads)
    (wide,) = _session(bundle.tower_path("text")).run(None, tok(PARITY_TEXTS, length=CONTEXT_LENGTH))
    np.testing.assert_allclose(wide, got_t, atol=1e-5, rtol=0)
    # fp16 is close by cosine
    (half,) = _session(bundle.tower_path("text", "fp16")).run(None, tok(PARITY_TEXTS))
    assert np.min(np.sum(half * want_t, axis=1)) >= 0.999


def test_eval_runs_on_the_bundle(bundle, tmp_path):
    from clipeval import run_task

    data = write_custom_dataset(tmp_path / "data", n_images=4)
    (result,) = run_task(eval_block(bundle.path, data, tmp_path / "out", provider="cpu", precision="fp16"))
    assert result["meta"]["precision"] == "fp16"
    for key in ("image_retrieval_recall@1", "text_retrieval_recall@2"):
        assert 0.0 <= result["metrics"][key] <= 1.0
    assert result["metrics"]["image_retrieval_recall@2"] >= result["metrics"]["image_retrieval_recall@1"]
