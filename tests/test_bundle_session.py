import json
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from clipeval.engine.sessions.bundle import load_bundle, sha256_file, write_manifest
from clipeval.engine.errors import BundleError, ProviderError
from clipeval.engine.sessions.onnx import cuda_problem, open_tower


def _identity_model(path, dim=4):
    """A graph that L2-normalises its input: x / ||x||."""
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["B", dim])
    y = helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["B", dim])
    nodes = [helper.make_node("LpNormalization", ["pixel_values"], ["image_embeds"], axis=1, p=2)]
    graph = helper.make_graph(nodes, "norm", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _bundle(root):
    root.mkdir()
    _identity_model(root / "vision.onnx")
    _identity_model(root / "text.onnx")
    (root / "tokenizer.json").write_text("{}")
    (root / "preprocess.json").write_text(json.dumps({"do_resize": False}))
    manifest = {"format": 1, "family": "clip", "source": "/x/tiny-model", "embed_dim": 4, "context_length": 8,
                "precision": "fp32", "variants": {"fp32": {"vision": "vision.onnx", "text": "text.onnx"}},
                "tokenizer": {"pad_id": 0, "eos_id": 3, "padding": "longest"}}
    return write_manifest(root, manifest)


def test_load_bundle_verifies_files_and_identity(tmp_path):
    root = tmp_path / "b"
    identity = _bundle(root)
    b = load_bundle(root)
    assert b.identity == identity
    assert b.manifest["files"]["vision.onnx"] == sha256_file(root / "vision.onnx")
    assert b.name == "tiny-model"
    assert b.tower_path("vision") == root / "vision.onnx"
    with pytest.raises(BundleError, match="no fp16 variant"):
        b.tower_path("vision", "fp16")


def test_missing_and_modified_files_are_all_listed(tmp_path):
    root = tmp_path / "b"
    _bundle(root)
    (root / "text.onnx").unlink()
    (root / "tokenizer.json").write_text('{"changed": 1}')
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    msg = str(info.value)
    assert "text.onnx: missing" in msg
    assert "tokenizer.json: sha256 does not match" in msg
    assert "re-export" in msg


@pytest.mark.parametrize("mutate, match", [
    (lambda m: m.update(format=99), "format 99"),
    (lambda m: m.pop("variants"), "lacks keys: variants"),
])
def test_bad_manifests(tmp_path, mutate, match):
    root = tmp_path / "b"
    _bundle(root)
    m = json.loads((root / "manifest.json").read_text())
    mutate(m)
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=match):
        load_bundle(root)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_tower_runs_on_cpu_and_reports_the_provider(tmp_path):
    _identity_model(tmp_path / "m.onnx")
    tower = open_tower(tmp_path / "m.onnx", "cpu", threads=1)
    x = np.array([[3, 4, 0, 0], [1, 1, 1, 1]], dtype=np.float32)
    out = tower.run({"pixel_values": x, "ignored_input": x})
    np.testing.assert_allclose(out, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    assert tower.provider == "CPUExecutionProvider"


def test_auto_uses_cuda_only_when_it_loads(tmp_path, caplog):
    _identity_model(tmp_path / "m.onnx")
    tower = open_tower(tmp_path / "m.onnx", "auto", threads=1)
    if cuda_problem():
        assert tower.provider == "CPUExecutionProvider"
        assert not tower.warnings  # auto falls back quietly
    else:
        assert tower.provider == "CUDAExecutionProvider"


def test_asking_for_cuda_without_it_warns_and_names_the_problem(tmp_path, caplog):
    problem = cuda_problem()
    if problem is None:
        pytest.skip("CUDA loads on this machine; the fallback warning cannot happen")
    _identity_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING):
        tower = open_tower(tmp_path / "m.onnx", "cuda", threads=1)
    assert tower.provider == "CPUExecutionProvider"
    assert any("CUDA was asked for but is not available" in w for w in tower.warnings)
    assert problem in tower.warnings[0]
    # On onnxruntime-gpu without CUDA libraries the message names the missing library.
    assert ".so" in problem or "no CUDA provider" in problem


def test_unknown_provider_lists_the_valid_ones(tmp_path):
    with pytest.raises(ProviderError, match="auto, cuda, cpu"):
        open_tower(tmp_path / "m.onnx", "tpu")


def test_corrupt_onnx_file_is_a_bundle_error(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="onnxruntime cannot load"):
        open_tower(tmp_path / "m.onnx", "cpu")


def test_verified_files_are_not_hashed_again_until_they_change(tmp_path, monkeypatch):
    import os

    import clipeval.engine.sessions.bundle as bundle_mod

    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "b"
    _bundle(root)
    load_bundle(root)  # hashes everything and records what matched
    hashed = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p, *a: hashed.append(os.path.basename(p)) or real(p, *a))
    load_bundle(root)
    assert hashed == []
    # A file rewritten in place (same size, new modification time) is hashed again and caught.
    data = bytearray((root / "vision.onnx").read_bytes())
    data[-1] ^= 0xFF
    (root / "vision.onnx").write_bytes(bytes(data))
    st = os.stat(root / "vision.onnx")
    os.utime(root / "vision.onnx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(BundleError, match="vision.onnx: sha256 does not match"):
        load_bundle(root)
    assert hashed == ["vision.onnx"]
    # trust_stamp=False (--verify-cache) hashes every file.
    hashed.clear()
    data[-1] ^= 0xFF
    (root / "vision.onnx").write_bytes(bytes(data))
    load_bundle(root, trust_stamp=False)
    assert sorted(hashed) == sorted(["preprocess.json", "text.onnx", "tokenizer.json", "vision.onnx"])


def test_fp16_is_the_default_only_where_cuda_runs_it(tmp_path, monkeypatch):
    import clipeval.engine.sessions.model as context

    root = tmp_path / "b"
    root.mkdir()
    for name in ("vision.onnx", "text.onnx", "vision.fp16.onnx", "text.fp16.onnx"):
        _identity_model(root / name)
    (root / "tokenizer.json").write_text("{}")
    (root / "preprocess.json").write_text("{}")
    write_manifest(root, {"format": 1, "family": "clip", "embed_dim": 4, "context_length": 8, "precision": "fp32",
                          "variants": {"fp32": {"vision": "vision.onnx", "text": "text.onnx"},
                                       "fp16": {"vision": "vision.fp16.onnx", "text": "text.fp16.onnx"}},
                          "tokenizer": {"pad_id": 0}})
    both = load_bundle(root)
    _bundle(tmp_path / "c")
    fp32_only = load_bundle(tmp_path / "c")
    monkeypatch.setattr(context, "cuda_problem", lambda: None)  # as on a machine where CUDA loads
    assert context.default_precision(both, "auto") == "fp16"
    assert context.default_precision(both, "cuda") == "fp16"
    assert context.default_precision(both, "cpu") == "fp32"
    assert context.default_precision(fp32_only, "auto") == "fp32"
    monkeypatch.setattr(context, "cuda_problem", lambda: "libcublasLt.so.13 is missing")
    assert context.default_precision(both, "auto") == "fp32"
