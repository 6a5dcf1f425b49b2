"""CLIP checkpoint -> bundle export: parity with PyTorch, padding, dynamic shapes, errors, atomicity."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from fixtures_ckpt import CONTEXT_LENGTH, IMAGE_SIZE, make_tiny_bert_checkpoint, make_tiny_clip_checkpoint  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from clipeval.engine.sessions.bundle import load_bundle  # noqa: E402
from clipeval.engine.errors import ExportError  # noqa: E402
from clipeval.engine.text.tokenizer import TextTokenizer  # noqa: E402
from clipeval.export import FAMILIES, convert, export_checkpoint  # noqa: E402
from clipeval.export import validate as validate_mod  # noqa: E402
from clipeval.export.preprocess_config import read_image_processor_config  # noqa: E402
from clipeval.export.tokenizer_export import pooled_positions  # noqa: E402

TEXTS = [
    "a",
    "a red car",
    "two dogs playing in the snow",
    "the cat",
    " ".join(["a small green tree on the grass"] * 5),  # longer than the context: truncated
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory):
    return export_checkpoint(ckpt, tmp_path_factory.mktemp("out") / "bundle")


@pytest.fixture(scope="module")
def legacy_ckpt(tmp_path_factory):
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("ckpt") / "legacy-clip", seed=1, legacy_eos=True)


@pytest.fixture(scope="module")
def legacy_bundle(legacy_ckpt, tmp_path_factory):
    return export_checkpoint(legacy_ckpt, tmp_path_factory.mktemp("out") / "bundle")


@pytest.fixture(scope="module")
def torch_model(ckpt):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(ckpt), attn_implementation="eager").eval()


def _hf_tokenizer(ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt))


def _features(out):
    """get_*_features -> numpy, whether it returns a tensor or an output object."""
    t = out if not hasattr(out, "pooler_output") else out.pooler_output
    return t.detach().numpy()


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _encode(bundle_dir, texts, length=None):
    """Tokenise with the bundle's tokenizer.json and its manifest rule, padded on the right."""
    b = load_bundle(bundle_dir)
    tok = Tokenizer.from_file(str(b.path / "tokenizer.json"))
    tok.enable_truncation(max_length=b.context_length)
    ids = [e.ids for e in tok.encode_batch(texts)]
    width = length or max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), b.tokenizer_rule["pad_id"], dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


# -- the bundle ---------------------------------------------------------------------------------


def test_bundle_loads_verified_with_manifest_facts(bundle, ckpt):
    b = load_bundle(bundle, verify=True)
    m = b.manifest
    config = json.loads((ckpt / "config.json").read_text())
    assert m["family"] == "clip"
    assert m["source"] == str(ckpt.resolve())
    assert b.embed_dim == config["projection_dim"]
    assert b.context_length == config["text_config"]["max_position_embeddings"] == CONTEXT_LENGTH
    assert m["precision"] == "fp32" and m["opset"] == 17
    assert m["variants"] == {"fp32": {"vision": "vision.onnx", "text": "text.onnx"}}
    assert set(m["files"]) == {"vision.onnx", "text.onnx", "tokenizer.json", "preprocess.json"}
    hf = _hf_tokenizer(ckpt)
    assert hf.pad_token == "!" and hf.pad_token_id == 0  # as in the LAION conversions
    assert m["tokenizer"] == {
        "pad_id": hf.pad_token_id,
        "eos_id": hf.eos_token_id,
        "bos_id": hf.bos_token_id,
        "padding": "longest",
        "pooling": "first_eos",
        "text_inputs": ["input_ids", "attention_mask"],
    }
    assert m["tokenizer"]["eos_id"] == config["text_config"]["eos_token_id"]
    tol = validate_mod.TOLERANCES["fp32"]
    assert m["validation"]["fp32"]["passed"] is True
    for name in ("image_embeds", "text_embeds"):
        fig = m["validation"]["fp32"]["outputs"][name]
        assert fig["max_abs_diff"] <= tol.max_abs and fig["min_cosine"] >= tol.min_cosine


def test_tokenizer_json_has_padding_and_truncation_off(bundle, ckpt):
    raw = json.loads((bundle / "tokenizer.json").read_text())
    assert raw["padding"] is None and raw["truncation"] is None
    # the post-processor wraps every text in <|startoftext|> ... <|endoftext|>, words end in </w>
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    ids = tok.encode("A Red car").ids
    assert ids[0] == tok.token_to_id("<|startoftext|>") and ids[-1] == tok.token_to_id("<|endoftext|>")
    assert ids[1:-1] == [tok.token_to_id("a</w>"), tok.token_to_id("red</w>"), tok.token_to_id("car</w>")]
    assert ids == _hf_tokenizer(ckpt)("A Red car")["input_ids"]


def test_engine_tokenizer_equals_transformers_on_varied_texts(bundle, ckpt):
    from fixtures_ckpt import PARITY_TEXTS

    texts = PARITY_TEXTS + TEXTS + ["", "  ", "naïve café", "emoji 🐱🐶", "it's a DOG's life", "x" * 60]
    hf = _hf_tokenizer(ckpt)
    b = load_bundle(bundle)
    got = TextTokenizer(b.path / "tokenizer.json", b.tokenizer_rule, b.context_length)(texts)
    want = hf(texts, padding="longest", truncation=True, max_length=CONTEXT_LENGTH, return_tensors="np")
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])


def test_preprocess_json_follows_the_image_processor(bundle, ckpt):
    hf, _ = read_image_processor_config(ckpt)
    pre = load_bundle(bundle).preprocess
    assert pre["size"] == {"shortest_edge": IMAGE_SIZE}
    assert pre["crop_size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    assert pre["resample"] == "bicubic" and hf["resample"] == 3
    assert pre["rescale_factor"] == pytest.approx(1 / 255, rel=1e-12)
    assert pre["image_mean"] == hf["image_mean"] and pre["image_std"] == hf["image_std"]
    assert pre["do_convert_rgb"] and pre["do_resize"] and pre["do_center_crop"] and pre["do_normalize"]


def test_onnx_graphs_have_the_contract_signature(bundle):
    for name, inputs, output in (
        ("vision.onnx", {"pixel_values": ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]}, "image_embeds"),
        ("text.onnx", {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}, "text_embeds"),
    ):
        model = onnx.load(str(bundle / name))
        assert model.ir_version <= 10  # onnxruntime 1.31 reads IR <= 13; opset 17 needs IR 8
        assert {o.domain: o.version for o in model.opset_import}[""] == 17
        sess = _session(bundle / name)
        assert {i.name: i.shape for i in sess.get_inputs()} == inputs
        expected_type = "tensor(float)" if name == "vision.onnx" else "tensor(int64)"
        assert all(i.type == expected_type for i in sess.get_inputs())
        (out,) = sess.get_outputs()
        assert out.name == output and out.type == "tensor(float)" and out.shape == ["batch", 16]


# -- parity with PyTorch --------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5])
def test_image_embeds_equal_torch_features(bundle, torch_model, batch):
    import torch

    pixels = np.random.default_rng(batch).standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    (got,) = _session(bundle / "vision.onnx").run(None, {"pixel_values": pixels})
    with torch.no_grad():
        want = _normalise(_features(torch_model.get_image_features(pixel_values=torch.from_numpy(pixels))))
    assert got.shape == (batch, 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS[1:2], TEXTS], ids=["1-short", "1-mid", "5-mixed"])
def test_text_embeds_equal_torch_features(bundle, torch_model, texts):
    import torch

    feeds = _encode(bundle, texts)
    (got,) = _session(bundle / "text.onnx").run(None, feeds)
    with torch.no_grad():
        out = torch_model.get_text_features(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    want = _normalise(_features(out))
    assert got.shape == (len(texts), 16)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_sequence_lengths_cover_one_to_context(bundle):
    feeds = _encode(bundle, TEXTS)
    lengths = feeds["attention_mask"].sum(axis=1)
    assert lengths.min() == 3 and lengths.max() == CONTEXT_LENGTH  # "a" -> <bos> a <eos>; truncated text
    assert feeds["input_ids"].shape[1] == CONTEXT_LENGTH


@pytest.mark.parametrize("which", ["bundle", "legacy_bundle"])
def test_padding_to_longest_equals_padding_to_context(which, request):
    path = request.getfixturevalue(which)
    texts = TEXTS[:4]  # longest is shorter than the context
    sess = _session(path / "text.onnx")
    short = _encode(path, texts)
    full = _encode(path, texts, length=CONTEXT_LENGTH)
    assert short["input_ids"].shape[1] < CONTEXT_LENGTH
    (a,) = sess.run(None, short)
    (b,) = sess.run(None, full)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # each text alone (no padding at all) gives the same row as in the padded batch
    for row, text in enumerate(texts):
        (alone,) = sess.run(None, _encode(path, [text]))
        np.testing.assert_allclose(alone[0], a[row], atol=1e-5, rtol=0)


def test_legacy_eos_rule_is_recorded_and_matches_torch(legacy_bundle, legacy_ckpt):
    import torch
    from transformers import CLIPModel

    m = load_bundle(legacy_bundle).manifest
    tok = Tokenizer.from_file(str(legacy_bundle / "tokenizer.json"))
    assert m["tokenizer"]["pooling"] == "max_id"
    assert m["tokenizer"]["eos_id"] == tok.token_to_id("<|endoftext|>") == tok.get_vocab_size() - 1
    assert m["tokenizer"]["pad_id"] == m["tokenizer"]["eos_id"]  # OpenAI style: pads with the end token
    assert json.loads((legacy_ckpt / "config.json").read_text())["text_config"]["eos_token_id"] == 2
    feeds = _encode(legacy_bundle, TEXTS)
    lengths = feeds["attention_mask"].sum(axis=1)
    np.testing.assert_array_equal(pooled_positions(feeds["input_ids"], "max_id", m["tokenizer"]["eos_id"]), lengths - 1)
    model = CLIPModel.from_pretrained(str(legacy_ckpt), attn_implementation="eager").eval()
    (got,) = _session(legacy_bundle / "text.onnx").run(None, feeds)
    with torch.no_grad():
        want = _normalise(_features(model.get_text_features(**{k: torch.from_numpy(v) for k, v in feeds.items()})))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# -- validation ------------------------------------------------------------------------------------


def test_compare_figures_are_the_formulas():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    cand = np.array([[1.0, 0.5], [1.0, 0.0]], dtype=np.float32)
    fig = validate_mod.compare(ref, cand)
    assert fig["max_abs_diff"] == 1.0
    assert fig["min_cosine"] == pytest.approx(0.0)  # second row is orthogonal; first is 1/sqrt(1.25)
    same = validate_mod.compare(ref, ref)
    assert same["max_abs_diff"] == 0.0 and same["min_cosine"] == pytest.approx(1.0)


def test_check_outputs_lists_every_output_then_fails_once():
    ref = {"image_embeds": np.eye(2, dtype=np.float32), "text_embeds": np.eye(2, dtype=np.float32)}
    bad = {"image_embeds": np.eye(2, dtype=np.float32) + 1e-3, "text_embeds": np.eye(2, dtype=np.float32)}
    with pytest.raises(ExportError) as err:
        validate_mod.check_outputs(ref, bad, "fp32")
    msg = str(err.value)
    assert "1 of 2 failed" in msg and "image_embeds" in msg and "text_embeds" in msg
    nan = {"image_embeds": np.full((2, 2), np.nan, dtype=np.float32), "text_embeds": ref["text_embeds"]}
    with pytest.raises(ExportError):
        validate_mod.check_outputs(ref, nan, "fp32")
    ok = validate_mod.check_outputs(ref, ref, "fp32")
    assert ok["outputs"]["text_embeds"]["max_abs_diff"] == 0.0


def test_failed_parity_raises_one_error_listing_all_outputs_and_leaves_nothing(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(validate_mod.TOLERANCES, "fp32", validate_mod.Tolerance(max_abs=0.0, min_cosine=2.0))
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as err:
        export_checkpoint(ckpt, out)
    msg = str(err.value)
    assert "2 of 2 failed" in msg and "image_embeds" in msg and "text_embeds" in msg
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_corrupted_torch_side_fails_parity(ckpt, tmp_path, monkeypatch):
    real = validate_mod.run_torch

    def corrupted(module, feeds):
        return {k: v + 0.01 * (k == "text_embeds") for k, v in real(module, feeds).items()}

    monkeypatch.setattr(validate_mod, "run_torch", corrupted)
    with pytest.raises(ExportError) as err:
        export_checkpoint(ckpt, tmp_path / "bundle")
    assert "1 of 2 failed" in str(err.value) and "text_embeds: max abs diff 0.01" in str(err.value)


def test_validate_false_skips_validation(ckpt, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("validation ran")

    monkeypatch.setattr(validate_mod, "run_torch", boom)
    out = export_checkpoint(ckpt, tmp_path / "b", validate=False)
    assert load_bundle(out).manifest["validation"] == {"skipped": True}


# -- bad input and atomicity -----------------------------------------------------------------------


def test_source_without_config_json(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ExportError, match="has no config.json"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    with pytest.raises(ExportError, match="neither a local directory nor a hub id"):
        export_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_model_type_lists_supported(tmp_path):
    src = make_tiny_bert_checkpoint(tmp_path / "bert")
    with pytest.raises(ExportError) as err:
        export_checkpoint(src, tmp_path / "out")
    assert "'bert'" in str(err.value)
    assert err.value.remedy.startswith("supported model types: ")
    for name, family in FAMILIES.items():
        assert f"{name} ({family.model_class})" in err.value.remedy
    assert set(FAMILIES) == {"clip", "chinese_clip", "siglip"}


def test_unsupported_precision_and_opset(ckpt, tmp_path):
    with pytest.raises(ExportError, match="bf16"):
        export_checkpoint(ckpt, tmp_path / "out", precision="bf16")
    with pytest.raises(ExportError, match="opset"):
        export_checkpoint(ckpt, tmp_path / "out", opset=9)


def test_non_empty_out_dir_needs_force_and_force_replaces_only_bundles(ckpt, bundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_checkpoint(ckpt, out)
    with pytest.raises(ExportError, match="does not hold a model bundle"):
        export_checkpoint(ckpt, out, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="not empty"):
        export_checkpoint(ckpt, bundle)  # an existing bundle, no force
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_bundle(export_checkpoint(ckpt, empty, validate=False)).family == "clip"
    assert load_bundle(export_checkpoint(ckpt, empty, force=True, validate=False)).family == "clip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]


def test_missing_torch_names_the_extra(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ExportError) as err:
        export_checkpoint(ckpt, tmp_path / "out")
    assert "torch" in err.value.message and err.value.remedy == "pip install 'clipeval[export]'"


def test_interrupted_export_leaves_nothing_and_keeps_the_old_bundle(ckpt, tmp_path, monkeypatch):
    def half_written(root, manifest):
        (root / "manifest.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "write_manifest", half_written)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(ckpt, tmp_path / "new", validate=False)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    old = export_checkpoint(ckpt, tmp_path / "old", validate=False)
    before = (old / "manifest.json").read_bytes()
    monkeypatch.setattr(convert, "write_manifest", half_written)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(ckpt, old, force=True, validate=False)
    assert (old / "manifest.json").read_bytes() == before
    assert load_bundle(old).family == "clip"
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_eos_id_mismatch_is_caught_before_writing(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    config = json.loads((bad / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 1  # '"': the tower would pool the wrong position
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="pooling rule 'first_eos'"):
        export_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_image_processor_config(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    for name in ("processor_config.json", "preprocessor_config.json"):
        (bad / name).unlink(missing_ok=True)
    with pytest.raises(ExportError) as err:
        export_checkpoint(bad, tmp_path / "out")
    assert "processor_config.json" in err.value.message and "preprocessor_config.json" in err.value.message
    assert "save_pretrained" in err.value.remedy and "both are read" in err.value.remedy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
