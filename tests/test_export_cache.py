"""`clipeval eval --model <checkpoint dir>`: export once into the model cache, reuse it after."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402
from fixtures_ckpt import make_tiny_clip_checkpoint, write_custom_dataset  # noqa: E402

import clipeval.export as export_pkg  # noqa: E402
from clipeval.cli.main import cli  # noqa: E402
from clipeval.engine.sessions.bundle import is_bundle_dir, load_bundle  # noqa: E402
from clipeval.export import resolve  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_clip_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-clip", seed=5)


def _eval(ckpt, data, out, *extra):
    return CliRunner().invoke(cli, ["eval", "--model", str(ckpt), "--data-dir", str(data), "--output-dir", str(out),
                                    "--provider", "cpu", "--num-workers", "0", "--recall-k", "1", "-q", *extra],
                              catch_exceptions=False)


def test_eval_exports_once_then_reuses_the_cache(ckpt, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(cache))
    data = write_custom_dataset(tmp_path / "data", n_images=3)
    calls = []
    real = export_pkg.export_checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(export_pkg, "export_checkpoint", counting)
    first = _eval(ckpt, data, tmp_path / "out1")
    assert first.exit_code == 0, first.output
    (entry,) = (cache / "models").iterdir()
    assert is_bundle_dir(entry) and entry.name.startswith("tiny-clip-fp32-")
    assert calls == ["fp32"]
    # nothing half-written is left beside it
    assert [p.name for p in (cache / "models").iterdir()] == [entry.name]

    second = _eval(ckpt, data, tmp_path / "out2")
    assert second.exit_code == 0, second.output
    assert calls == ["fp32"]  # reused, not exported again
    r1, r2 = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (first, second))
    assert r1["metrics"] == r2["metrics"]
    assert r1["meta"]["bundle"]["identity"] == r2["meta"]["bundle"]["identity"] == load_bundle(entry).identity

    # another precision is another cache entry
    third = _eval(ckpt, data, tmp_path / "out3", "--precision", "fp16")
    assert third.exit_code == 0, third.output
    assert calls == ["fp32", "fp16"]
    assert len(list((cache / "models").iterdir())) == 2


def test_cache_key_follows_source_revision_precision_and_files(ckpt, tmp_path):
    root = tmp_path / "c"
    base = resolve.cached_bundle_dir(str(ckpt), None, "fp32", root)
    assert base.parent == root / "models"
    assert resolve.cached_bundle_dir(str(ckpt), None, "fp32", root) == base
    assert resolve.cached_bundle_dir(str(ckpt), None, "fp16", root) != base
    hub = resolve.cached_bundle_dir("org/model", "main", "fp32", root)
    assert hub != resolve.cached_bundle_dir("org/model", "v2", "fp32", root)
    assert hub != resolve.cached_bundle_dir("org/model", "main", "fp32", root, hub="modelscope")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    before = resolve.cached_bundle_dir(str(copy), None, "fp32", root)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert resolve.cached_bundle_dir(str(copy), None, "fp32", root) != before


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "env"))
    assert resolve.cache_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve.cache_root() == tmp_path / "env"
    monkeypatch.delenv("CLIPEVAL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve.cache_root() == tmp_path / "xdg" / "clipeval"


def test_failed_export_leaves_no_cache_entry(ckpt, tmp_path, monkeypatch):
    from clipeval.export import validate as validate_mod

    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(validate_mod.TOLERANCES, "fp32", validate_mod.Tolerance(max_abs=0.0, min_cosine=2.0))
    data = write_custom_dataset(tmp_path / "data", n_images=2)
    res = _eval(ckpt, data, tmp_path / "out")
    assert res.exit_code == 2 and "Traceback" not in res.output and "max abs diff" in res.stderr
    assert list((tmp_path / "cache" / "models").iterdir()) == []
