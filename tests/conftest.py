"""Shared fixtures: one tiny exported bundle per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache_root(tmp_path_factory):
    """Keep every cache (models, embeddings, datasets) of the test session out of the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path_factory.mktemp("cache-root")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny random CLIP checkpoint exported through the same path users take."""
    from fixtures_ckpt import make_tiny_clip_checkpoint

    from clipeval.export import export_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    ckpt = make_tiny_clip_checkpoint(root / "ckpt", seed=0)
    return export_checkpoint(ckpt, root / "bundle")
