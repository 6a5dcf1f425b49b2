"""Text bundles from sentence-transformers checkpoints: every pooling mode, pooling / length
overrides and prompts, each against sentence-transformers' own ``encode``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipeval.engine.sessions.bundle import load_bundle
from clipeval.engine.errors import BundleError, ExportError
from clipeval.engine.embedding.models import load_text_model
from fixtures_text import TEXTS, make_sentence_transformer

pytest.importorskip("sentence_transformers")

# Every mode once, with and without a Normalize module in turn, and two modes concatenated.
POOLINGS = [("cls", True), ("max", False), ("mean", True), ("mean_sqrt_len_tokens", False), ("weightedmean", True),
            ("lasttoken", False), (("mean", "max"), True)]


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_parity(ours, reference, normalized):
    """fp32 parity: cosine >= 0.99999 per text; values within 1e-4 of sentence-transformers'
    (after L2 normalisation when the bundle normalises and the checkpoint does not)."""
    if normalized:
        reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert cosines(ours, reference).min() >= 0.99999
    assert np.abs(ours - reference).max() <= 1e-4


def st_encode(path, texts, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True, **kwargs)


@pytest.mark.parametrize("pooling,normalize", POOLINGS,
                         ids=[f"{p if isinstance(p, str) else '+'.join(p)}-{'norm' if n else 'raw'}" for p, n in POOLINGS])
def test_every_pooling_mode_matches_sentence_transformers(tmp_path, pooling, normalize):
    from clipeval.export.text_model import export_text_model

    ckpt = make_sentence_transformer(tmp_path / "st", pooling=pooling, normalize=normalize, seed=3)
    bundle = load_bundle(export_text_model(ckpt, tmp_path / "bundle"))
    spec = bundle.manifest["text_model"]
    assert spec["pooling"] == (pooling if isinstance(pooling, str) else "+".join(pooling))
    assert spec["pooling_source"] == "checkpoint" and bundle.context_length == 48
    assert bundle.embed_dim == 32 * (1 if isinstance(pooling, str) else len(pooling))
    model = load_text_model(bundle, provider="cpu")
    ours, truncated = model.embed(TEXTS, batch_size=3, progress=False)
    assert truncated == 1
    assert_parity(ours, st_encode(ckpt, TEXTS), normalized=not normalize)


def test_pooling_and_length_given_to_the_export_replace_the_checkpoints(tmp_path):
    """evalscope's pooling_mode / max_seq_length: a SentenceTransformer built from the same
    transformer with Pooling(mode) and that max_seq_length is the reference."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from clipeval.export.text_model import export_text_model

    ckpt = make_sentence_transformer(tmp_path / "st", pooling="mean", seed=5)
    bundle = load_bundle(export_text_model(ckpt, tmp_path / "b", pooling_mode="lasttoken", max_seq_length=9))
    assert bundle.manifest["text_model"]["pooling"] == "lasttoken" and bundle.context_length == 9
    assert bundle.manifest["text_model"]["pooling_source"] == "config"
    word = Transformer(str(ckpt), max_seq_length=9)
    reference = SentenceTransformer(modules=[word, Pooling(32, pooling_mode="lasttoken")], device="cpu").encode(
        TEXTS, convert_to_numpy=True)
    ours, truncated = load_text_model(bundle, provider="cpu").embed(TEXTS, batch_size=4, progress=False)
    assert truncated == sum(len(word.tokenizer(t)["input_ids"]) > 9 for t in TEXTS) > 0
    assert_parity(ours, reference, normalized=True)


def test_bad_overrides_are_refused(tmp_path):
    from clipeval.export.text_model import export_text_model, resolve_text_bundle

    ckpt = make_sentence_transformer(tmp_path / "st", seed=1)
    with pytest.raises(ExportError, match="unknown pooling mode 'median'"):
        export_text_model(ckpt, tmp_path / "a", pooling_mode="median")
    with pytest.raises(ExportError, match="longer than the model's 64 positions"):
        export_text_model(ckpt, tmp_path / "b", max_seq_length=65)
    bundle = resolve_text_bundle(ckpt, tmp_path / "cache")
    with pytest.raises(BundleError, match="cannot change pooling_mode 'cls'"):
        resolve_text_bundle(bundle.path, pooling_mode="cls")
    # The checkpoint with overrides is another cache entry.
    other = resolve_text_bundle(ckpt, tmp_path / "cache", pooling_mode="cls", max_seq_length=16)
    assert other.path != bundle.path and other.context_length == 16


def test_prompts_of_the_checkpoint_go_into_the_manifest(tmp_path):
    from clipeval.export.text_model import export_text_model

    prompts = {"query": "query: ", "document": "passage: "}
    ckpt = make_sentence_transformer(tmp_path / "st", prompts=prompts, seed=2)
    bundle = load_bundle(export_text_model(ckpt, tmp_path / "b"))
    assert bundle.manifest["text_model"]["prompts"] == prompts
    model = load_text_model(bundle, provider="cpu")
    ours, _ = model.embed(["query: " + t for t in TEXTS], batch_size=8, progress=False)
    assert_parity(ours, st_encode(ckpt, TEXTS, prompt_name="query"), normalized=False)


def test_legacy_pooling_config_is_read(tmp_path):
    from clipeval.export.text_model import read_text_spec

    ckpt = make_sentence_transformer(tmp_path / "st", pooling="cls", seed=1)
    (ckpt / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
         "pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": True}))
    assert read_text_spec(ckpt)["pooling"] == "max+mean_sqrt_len_tokens"
