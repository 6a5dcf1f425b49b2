"""open_clip models -> bundles: towers, tokenizer and preprocessing equal open_clip's, every source kind.

Random-weight open_clip models of four kinds (tests/fixtures_openclip.py): a ViT, a ViT with
QuickGELU, a ModifiedResNet (BatchNorm in eval mode, attention pooling) and a bidirectional text
tower with a Hugging Face tokenizer, saved the way open_clip publishes models on the Hub. Each is
exported and compared with open_clip's own ``encode_image`` / ``encode_text(normalize=True)``,
its tokenizer and its image transform.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402
from clipeval.export.openclip_source import classify  # noqa: E402
from fixtures_ckpt import write_custom_dataset  # noqa: E402
from fixtures_openclip import (  # noqa: E402
    CONTEXT_LENGTH,
    cli_with_tiny_models,
    populate_hf_cache,
    register_architectures,
    save_hf_tokenizer_folder,
    save_open_clip_folder,
    save_weights_file,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from PIL import Image  # noqa: E402
from textgen import text_strategy, varied_texts  # noqa: E402

from clipeval.engine.sessions.bundle import load_bundle  # noqa: E402
from clipeval.engine.errors import ExportError, ImageError  # noqa: E402
from clipeval.engine.images.load import to_rgb  # noqa: E402
from clipeval.engine.images.preprocess import Preprocessor  # noqa: E402
from clipeval.engine.text.tokenizer import TextTokenizer  # noqa: E402
from clipeval.export import export_checkpoint  # noqa: E402

# kind -> (architecture, open_clip preprocess config written with the model, weights format, precision)
KINDS = {
    "vit": ("clipeval-tiny-ViT", None, "safetensors", "both"),
    "vit-quickgelu": ("clipeval-tiny-ViT-quickgelu",
                      {"resize_mode": "longest", "fill_color": 128, "interpolation": "bilinear"}, "bin", "fp32"),
    "resnet": ("clipeval-tiny-RN", {"resize_mode": "squash", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]},
               "both", "fp32"),
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("open_clip_configs")
    register_architectures(path)
    return path


@pytest.fixture(scope="module")
def folders(registry, tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip_models")
    out = {kind: save_open_clip_folder(root / kind, arch, seed=i, preprocess_cfg=pp, weights=weights)
           for i, (kind, (arch, pp, weights, _)) in enumerate(KINDS.items())}
    out["hf-tokenizer"] = save_hf_tokenizer_folder(root / "hf-tokenizer", seed=7)
    return out


@pytest.fixture(scope="module")
def bundles(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip_bundles")
    precision = {kind: p for kind, (_, _, _, p) in KINDS.items()} | {"hf-tokenizer": "fp32"}
    return {kind: load_bundle(export_checkpoint(folder, root / kind, precision=precision[kind]))
            for kind, folder in folders.items()}


def _open_clip(folder):
    import open_clip

    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), transform, open_clip.get_tokenizer(f"local-dir:{folder}")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _engine_tokenizer(bundle, context_length=None):
    return _cached_tokenizer(bundle.path, context_length or bundle.context_length)


@functools.lru_cache(maxsize=None)
def _cached_tokenizer(path, context_length):
    bundle = load_bundle(path)
    return TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, context_length)


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in ((48, 40), (30, 70), (20, 24))]


TEXTS = ["a", "A photo of a CAT.", " two dogs playing in the snow ", "naïve café &amp; émoji 🐱", "",
         " ".join(["a long caption that keeps going"] * 8)]


# -- towers -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [*KINDS, "hf-tokenizer"])
def test_onnx_towers_equal_open_clip_encoders(kind, folders, bundles):
    import torch

    bundle = bundles[kind]
    model, transform, tokenizer = _open_clip(folders[kind])
    with torch.no_grad():
        want_i = model.encode_image(torch.stack([transform(i) for i in _images()]), normalize=True).numpy()
        want_t = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    pixels = np.stack([Preprocessor(bundle.preprocess)(i) for i in _images()])
    feeds = _engine_tokenizer(bundle)(TEXTS)
    (got_i,) = _session(bundle.tower_path("vision", "fp32")).run(None, {"pixel_values": pixels})
    (got_t,) = _session(bundle.tower_path("text", "fp32")).run(None, feeds)
    for got, want in ((got_i, want_i), (got_t, want_t)):
        cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() >= 0.99999 and np.abs(got - want).max() <= 1e-4
    fp32 = bundle.manifest["validation"]["fp32"]
    assert fp32["passed"] and fp32["reference"].startswith("open_clip encode_image")
    for fig in fp32["outputs"].values():
        assert fig["min_cosine"] >= 0.99999 and fig["max_abs_diff"] <= 1e-4


def test_manifest_records_family_padding_and_provenance(bundles, folders):
    vit = bundles["vit"].manifest
    assert vit["family"] == "open_clip" and vit["context_length"] == CONTEXT_LENGTH and vit["embed_dim"] == 16
    assert vit["source"] == str(folders["vit"].resolve()) and vit["hub"] is None and vit["pretrained"] is None
    rule = vit["tokenizer"]
    assert rule["padding"] == "longest" and rule["pooling"] == "max_id" and rule["text_inputs"] == ["input_ids"]
    assert (rule["pad_id"], rule["bos_id"], rule["eos_id"]) == (0, 49406, 49407)
    assert rule["clean"] == ["ftfy_fix_text", "html_unescape", "html_unescape", "strip", "collapse_whitespace",
                             "strip", "lower"]
    assert vit["open_clip"]["tokenizer"] == "SimpleTokenizer" and "ftfy" in vit["exported_with"]
    assert vit["validation"]["tokenizer"]["identical"] == vit["validation"]["tokenizer"]["texts"]
    assert vit["validation"]["preprocess"]["max_abs_diff"] == 0.0
    assert set(vit["variants"]) == {"fp32", "fp16"} and vit["validation"]["fp16"]["passed"]
    hf = bundles["hf-tokenizer"].manifest
    assert hf["tokenizer"]["padding"] == "max_length" and hf["tokenizer"]["pooling"] == "last"
    assert hf["open_clip"]["tokenizer"] == "HFTokenizer" and "remove_ascii_punctuation" in hf["tokenizer"]["clean"]


def test_padding_to_longest_equals_open_clip_padding_to_the_context(bundles):
    bundle = bundles["vit"]
    tok = _engine_tokenizer(bundle)
    sess = _session(bundle.tower_path("text"))
    short = tok(TEXTS[:4])
    assert short["input_ids"].shape[1] < CONTEXT_LENGTH
    (a,) = sess.run(None, short)
    (b,) = sess.run(None, tok(TEXTS[:4], length=CONTEXT_LENGTH))
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_resnet_batchnorm_runs_in_eval_mode(folders, bundles):
    """The exported ResNet uses the running statistics: a batch of one gives the batch's row."""
    pixels = np.stack([Preprocessor(bundles["resnet"].preprocess)(i) for i in _images()])
    sess = _session(bundles["resnet"].tower_path("vision", "fp32"))
    (batch,) = sess.run(None, {"pixel_values": pixels})
    (one,) = sess.run(None, {"pixel_values": pixels[1:2]})
    np.testing.assert_allclose(one[0], batch[1], atol=1e-5, rtol=0)


# -- tokenizer ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _open_clip_tokenizer(clean="lower"):
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(clean=clean)


@pytest.mark.parametrize("context_length", [CONTEXT_LENGTH, 77])
def test_token_ids_equal_open_clip_on_a_differential_set(bundles, context_length):
    texts = varied_texts(600, seed=2, specials=False)
    got = _engine_tokenizer(bundles["vit"], context_length)(texts, length=context_length)["input_ids"]
    want = _open_clip_tokenizer()(texts, context_length=context_length).numpy()
    assert [texts[i] for i in np.flatnonzero((got != want).any(axis=1))] == []


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_every_clean_mode_converts_exactly(clean, tmp_path):
    from clipeval.export.openclip_tokenizer import convert_simple_tokenizer

    oc = _open_clip_tokenizer(clean)
    tok, info = convert_simple_tokenizer(oc)
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = TextTokenizer(tmp_path / "tokenizer.json", {"pad_id": 0, "padding": "max_length", **info.extra}, 77)
    texts = varied_texts(300, seed=3, specials=False)
    np.testing.assert_array_equal(ours(texts)["input_ids"], oc(texts).numpy())


def test_the_clean_steps_are_open_clips_clean_functions():
    from open_clip.tokenizer import get_clean_fn

    from clipeval.engine.text.prep import make_cleaner
    from clipeval.export.openclip_tokenizer import CLEAN_MODES

    texts = varied_texts(400, seed=4)
    for mode, steps in CLEAN_MODES.items():
        ours, theirs = make_cleaner(steps), get_clean_fn(mode)
        assert [ours(t) for t in texts] == [theirs(t) for t in texts], mode


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=text_strategy(assigned_only=True))
def test_token_ids_equal_open_clip_on_drawn_texts(bundles, text):
    for token in ("<start_of_text>", "<end_of_text>"):
        text = text.replace(token, "")
    got = _engine_tokenizer(bundles["vit"], 77)([text], length=77)["input_ids"][0]
    np.testing.assert_array_equal(got, _open_clip_tokenizer()([text], context_length=77).numpy()[0])


def test_literal_special_tokens_and_the_one_documented_difference(bundles):
    tok = _engine_tokenizer(bundles["vit"], 77)
    oc = _open_clip_tokenizer()
    same = ["a <end_of_text> b", "<start_of_text>cat", "x<END_OF_TEXT>", "dog <start_of_text>"]
    np.testing.assert_array_equal(tok(same, length=77)["input_ids"], oc(same).numpy())
    # after punctuation open_clip's word pattern swallows the "<" ("!<", "end", "_", ...), while the
    # bundle's tokenizer.json always reads the literal as the special token (docs/export.md)
    differs = "wow!<end_of_text>"
    assert not np.array_equal(tok([differs], length=77)["input_ids"][0], oc([differs]).numpy()[0])


def test_hf_tokenizer_ids_equal_open_clips(folders, bundles):
    _, _, tokenizer = _open_clip(folders["hf-tokenizer"])
    texts = varied_texts(300, seed=5, specials=False)
    got = _engine_tokenizer(bundles["hf-tokenizer"])(texts)["input_ids"]
    np.testing.assert_array_equal(got, tokenizer(texts).numpy())


# -- preprocessing --------------------------------------------------------------------------------------

def _mode_images():
    """Images of several modes and sizes: RGB portrait/landscape/small/tiny/wide/tall, RGBA, L, P,
    CMYK, 16-bit grey."""
    rng = np.random.default_rng(11)
    rgb = lambda h, w: Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))  # noqa: E731
    out = {f"RGB {h}x{w}": rgb(h, w) for h, w in ((48, 40), (33, 70), (7, 9), (1, 1), (2, 300), (300, 5), (64, 64))}
    out["RGBA"] = Image.fromarray(rng.integers(0, 256, size=(40, 36, 4), dtype=np.uint8), "RGBA")
    out["L"] = Image.fromarray(rng.integers(0, 256, size=(50, 31), dtype=np.uint8), "L")
    out["P"] = rgb(45, 38).convert("P", palette=Image.Palette.ADAPTIVE, colors=17)
    out["CMYK"] = Image.fromarray(rng.integers(0, 256, size=(39, 52, 4), dtype=np.uint8), "CMYK")
    out["I;16"] = Image.fromarray(rng.integers(0, 65536, size=(35, 41), dtype=np.uint16))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_preprocessing_equals_open_clips_transform_on_sizes_and_modes(kind, folders, bundles):
    _, transform, _ = _open_clip(folders[kind])
    pre = Preprocessor(bundles[kind].preprocess)
    for name, img in _mode_images().items():
        try:
            want = transform(to_rgb(img)).numpy()
        except ValueError:  # open_clip's "longest" fit rounds a side to 0 for very thin images
            with pytest.raises(ImageError):
                pre(img)
            continue
        np.testing.assert_array_equal(pre(img), want, err_msg=f"{kind} {name}")
        if name.startswith(("RGB ", "L", "P", "CMYK")):  # what CLIP_benchmark's loaders feed: convert("RGB")
            np.testing.assert_array_equal(pre(img), transform(img.convert("RGB")).numpy(), err_msg=name)


def test_preprocess_json_carries_open_clips_transform_as_data(bundles):
    assert bundles["vit"].preprocess["size"] == {"shortest_edge": 32}
    assert bundles["vit"].preprocess["crop_rule"] == "torchvision"
    q = bundles["vit-quickgelu"].preprocess
    assert (q["resize_mode"], q["resample"], q["pad_fill"]) == ("longest", "bilinear", [128, 128, 128])
    r = bundles["resnet"].preprocess
    assert r["size"] == {"height": 64, "width": 64} and not r["do_center_crop"] and r["image_std"] == [0.2, 0.3, 0.4]


# -- sources ---------------------------------------------------------------------------------------------

def test_architecture_with_a_weights_file_and_with_bad_pretrained_values(registry, tmp_path):
    weights = save_weights_file(tmp_path / "tiny.pt", "clipeval-tiny-ViT", seed=3)
    bundle = load_bundle(export_checkpoint("clipeval-tiny-ViT", tmp_path / "b", pretrained=str(weights),
                                           validate=False))
    m = bundle.manifest
    assert (m["source"], m["pretrained"], m["hub"]) == ("clipeval-tiny-ViT", str(weights.resolve()), "open_clip")
    assert bundle.name == "clipeval-tiny-ViT_tiny"
    with pytest.raises(ExportError, match="needs pretrained weights"):
        export_checkpoint("clipeval-tiny-ViT", tmp_path / "c")
    with pytest.raises(ExportError, match="neither a pretrained tag"):
        export_checkpoint("clipeval-tiny-ViT", tmp_path / "c", pretrained="no_such_tag")
    with pytest.raises(ExportError, match="does not exist"):
        export_checkpoint("clipeval-tiny-ViT", tmp_path / "c", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ExportError, match="not an open_clip architecture"):
        export_checkpoint("No-Such-Arch", tmp_path / "c", pretrained="laion2b_s34b_b79k")
    assert not (tmp_path / "c").exists()


def test_folder_forms_local_dir_prefix_and_a_folder_without_weights(folders, tmp_path):
    bundle = load_bundle(export_checkpoint(f"local-dir:{folders['vit-quickgelu']}", tmp_path / "b", validate=False))
    assert bundle.manifest["source"] == str(folders["vit-quickgelu"].resolve())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text((folders["vit"] / "open_clip_config.json").read_text())
    with pytest.raises(ExportError, match="no weights"):
        export_checkpoint(empty, tmp_path / "c")


def test_hub_ids_and_a_pretrained_tag_through_open_clip_and_huggingface_hub(registry, folders, tmp_path):
    """A private Hugging Face cache, HF_HUB_OFFLINE=1: open_clip's tag download and a plain org/name
    (found to be an open_clip repository, loaded as hf-hub:org/name) resolve through huggingface_hub,
    in a fresh process run as a user would."""
    cache = tmp_path / "hf"
    populate_hf_cache(cache, "clipeval-test/tiny-vit", folders["vit"])
    populate_hf_cache(cache, "clipeval-test/tiny-rn", folders["resnet"])
    data = write_custom_dataset(tmp_path / "data", n_images=3)
    config = {"models": [{"model_name": "clipeval-tiny-ViT", "pretrained": "tinytag"},
                         {"model_name": "clipeval-test/tiny-rn"}],
              "dataset_name": ["custom"], "data_dir": str(data), "output_dir": str(tmp_path / "out"),
              "batch_size": 3, "num_workers": 0, "recall_k": [1, 2], "provider": "cpu", "verbose": False,
              "cache_dir": str(tmp_path / "clipeval-cache")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    argv = cli_with_tiny_models(["run", str(tmp_path / "config.json")], registry,
                                tags=[("clipeval-tiny-ViT", "tinytag", "clipeval-test/tiny-vit")])
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["model"] for r in results] == ["clipeval-tiny-ViT_tinytag", "tiny-rn"]
    assert "Traceback" not in run.stderr
    manifests = {p.name.split("-fp32-")[0]: json.loads((p / "manifest.json").read_text())
                 for p in (tmp_path / "clipeval-cache" / "models").iterdir()}
    tag = manifests["clipeval-tiny-ViT_tinytag"]
    assert (tag["source"], tag["pretrained"], tag["hub"]) == ("clipeval-tiny-ViT", "tinytag", "open_clip")
    assert manifests["tiny-rn"]["source"] == "hf-hub:clipeval-test/tiny-rn" and manifests["tiny-rn"]["hub"] == "hf"
    for m in manifests.values():
        assert m["validation"]["fp32"]["passed"]


# -- command line ------------------------------------------------------------------------------------------

def test_cli_export_with_pretrained_and_the_mistakes_exit_2(registry, folders, bundles, tmp_path):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    weights = save_weights_file(tmp_path / "w.pt", "clipeval-tiny-RN", seed=4)
    res = CliRunner().invoke(cli, ["export", "clipeval-tiny-RN", "--pretrained", str(weights), "-o",
                                   str(tmp_path / "b"), "--no-validate", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"bundle": str(tmp_path / "b")}
    assert load_bundle(tmp_path / "b").manifest["pretrained"] == str(weights.resolve())
    for argv, needle in (
        (["export", "clipeval-tiny-RN", "-o", str(tmp_path / "c")], "needs pretrained weights"),
        (["export", "clipeval-tiny-RN", "--pretrained", "nope", "-o", str(tmp_path / "c")], "neither a pretrained tag"),
        (["export", str(folders["vit"]), "--pretrained", "x", "-o", str(tmp_path / "c"), "--hub", "modelscope"],
         "--pretrained was given with --hub"),
        (["eval", "--model", str(bundles["vit"].path), "--pretrained", "x", "--data-dir", str(tmp_path)],
         "is a model bundle"),
    ):
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 2, (argv, res.output)
        assert needle in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "c").exists()


def test_bench_vs_reference_runs_clip_benchmarks_pipeline(bundles, tmp_path):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    data = write_custom_dataset(tmp_path / "data", n_images=4)
    res = CliRunner().invoke(cli, ["bench", "--model", str(bundles["vit"].path), "--data-dir", str(data),
                                   "--vs-reference", "--no-second-run", "--batch-size", "2", "--provider", "cpu",
                                   "--precision", "fp32", "--quiet"])
    assert res.exit_code == 0, (res.output, res.exception)
    report = json.loads(res.stdout)
    assert report["reference"]["checkpoint"] == f"local-dir:{bundles['vit'].manifest['source']}"
    assert report["reference"]["counts"] == {"images": 4, "texts": 8}
    assert report["ratios"]["max_recall_difference"] <= 1 / 4  # same model and data; at most a flipped near-tie


def test_source_spellings_are_classified_without_loading(registry, folders, tmp_path):
    hub = classify("hf-hub:org/name", "ignored_tag")
    assert (hub.kind, hub.model_name, hub.source, hub.hub, hub.display_name) == (
        "hub", "hf-hub:org/name", "hf-hub:org/name", "hf", "name")
    local = classify(f"local-dir:{folders['vit']}")
    assert (local.kind, local.model_name) == ("local", f"local-dir:{folders['vit'].resolve()}")
    with pytest.raises(ExportError, match="names no repository"):
        classify("hf-hub:")
    both = tmp_path / "both"
    both.mkdir()
    (both / "config.json").write_text("{}")
    (both / "open_clip_config.json").write_text("{}")
    assert classify(both) is None  # a transformers config.json wins; local-dir: forces open_clip
    with pytest.raises(ExportError, match="no weights"):
        classify(f"local-dir:{both}")
    with pytest.raises(ExportError, match="was given for the folder"):
        classify(both, "openai")
    with pytest.raises(ExportError, match="not a Hub repository"):
        classify(f"local-dir:{folders['vit']}", revision="main")
    assert classify("hf-hub:org/name", revision="v1").revision == "v1"


def test_a_text_graph_that_keeps_the_traced_length_is_exported_at_the_context_length(folders, tmp_path,
                                                                                    monkeypatch):
    """Without the explicit attention, PyTorch's own MultiheadAttention export fixes the sequence
    length: the exporter notices and falls back to encode_text at the context length."""
    import contextlib

    import torch

    from clipeval.export import openclip_export

    @contextlib.contextmanager
    def fastpath_off_only(modules):
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(True)

    monkeypatch.setattr(openclip_export, "traceable_attention", fastpath_off_only)
    bundle = load_bundle(export_checkpoint(folders["vit"], tmp_path / "b"))
    assert bundle.tokenizer_rule["padding"] == "max_length" and bundle.manifest["validation"]["fp32"]["passed"]
    (inp,) = _session(bundle.tower_path("text")).get_inputs()
    assert inp.shape == ["batch", CONTEXT_LENGTH]


def test_cli_eval_with_an_architecture_and_a_weights_file_exports_once(registry, tmp_path):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    weights = save_weights_file(tmp_path / "mine.pt", "clipeval-tiny-ViT-quickgelu", seed=5)
    data = write_custom_dataset(tmp_path / "data", n_images=3)
    argv = ["eval", "--model", "clipeval-tiny-ViT-quickgelu", "--pretrained", str(weights), "--data-dir", str(data),
            "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "3",
            "--num-workers", "0", "--recall-k", "1", "--provider", "cpu", "--quiet"]
    first = CliRunner().invoke(cli, argv)
    assert first.exit_code == 0, (first.output, first.exception)
    result = json.loads(first.stdout)
    assert result["model"] == "clipeval-tiny-ViT-quickgelu_mine"
    assert (tmp_path / "out" / "clipeval-tiny-ViT-quickgelu_mine" / "custom_zeroshot_retrieval.json").is_file()
    entries = list((tmp_path / "cache" / "models").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("clipeval-tiny-ViT-quickgelu_mine-fp32-")
    stamp = (entries[0] / "manifest.json").stat().st_mtime_ns
    second = CliRunner().invoke(cli, argv)
    assert second.exit_code == 0 and json.loads(second.stdout)["metrics"] == result["metrics"]
    assert list((tmp_path / "cache" / "models").iterdir()) == entries  # reused, not exported again
    assert (entries[0] / "manifest.json").stat().st_mtime_ns == stamp
