"""The embedding cache: round trips, two concurrent writers, corrupt entries, eviction, the CLI,
and a second run of the same evaluation that does no model work."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from clipeval.cli.main import cli
from clipeval.engine import cache as cache_mod
from clipeval.engine.bundle import load_bundle
from clipeval.engine.cache import ENTRY_OVERHEAD, EmbeddingCache, image_key, text_key
from clipeval.engine.embed import embed_images, embed_texts
from clipeval.engine.session import Tower
from clipeval.engine.tasks.context import load_model
from datagen import noise_image, write_dataset

DIM = 16


def vec_for(i: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(dim).astype(np.float32)


def key_for(i: int) -> bytes:
    return text_key(f"text {i}")


def entry_bytes(ns: str, dim: int = DIM) -> int:
    return 4 * dim + 32 + len(ns.encode()) + ENTRY_OVERHEAD


def rows(cache: EmbeddingCache):
    return cache._db.execute("SELECT ns, key, vec FROM entries").fetchall()


def test_round_trip_is_exact_and_missing_keys_miss(tmp_path):
    with EmbeddingCache(tmp_path) as cache:
        space = cache.space("b" * 64, "fp32", "text")
        keys = [key_for(i) for i in range(5)]
        space.store(keys[:3], np.stack([vec_for(i) for i in range(3)]))
        found = space.lookup(keys + [None])
        assert sorted(found) == [0, 1, 2]
        for i in range(3):
            np.testing.assert_array_equal(found[i], vec_for(i))
        assert (space.stats.hits, space.stats.misses) == (3, 3)
        # Another precision, kind or bundle is another space.
        assert cache.space("b" * 64, "int8", "text").lookup(keys) == {}
        assert cache.space("c" * 64, "fp32", "text").lookup(keys) == {}
        assert cache.space("b" * 64, "fp32", "image").lookup(keys) == {}
        info = cache.info()
        assert info["entries"] == 3 and info["bytes"] == 3 * entry_bytes(space.ns)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from clipeval.engine.cache import EmbeddingCache, text_key
    root, name, start_file = sys.argv[1], sys.argv[2], sys.argv[3]
    import os
    while not os.path.exists(start_file):
        time.sleep(0.005)
    cache = EmbeddingCache(root)
    space = cache.space("f" * 64, "fp32", "text")
    own = 1000 if name == "a" else 2000
    for step in range(40):
        ids = [step * 5 + j for j in range(5)] + [own + step]   # shared ids 0..199, one of its own
        vecs = np.stack([np.random.default_rng(i).standard_normal(16).astype(np.float32) for i in ids])
        space.store([text_key(f"text {i}") for i in ids], vecs)
    print(space.stats.written)
""")


def test_two_processes_writing_at_once_leave_every_entry_whole(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start = tmp_path / "go"
    EmbeddingCache(tmp_path / "c").close()  # the schema exists before the race
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "c"), name, str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in "ab"]
    start.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    written = sum(int(o[0]) for o in outs)
    expected_ids = list(range(200)) + [1000 + s for s in range(40)] + [2000 + s for s in range(40)]
    assert written == len(expected_ids)  # a shared key is written by exactly one of the two
    with EmbeddingCache(tmp_path / "c") as cache:
        space = cache.space("f" * 64, "fp32", "text")
        found = space.lookup([key_for(i) for i in expected_ids])
        assert len(found) == len(expected_ids) and space.stats.corrupt == 0
        for pos, i in enumerate(expected_ids):
            np.testing.assert_array_equal(found[pos], vec_for(i))
        info = cache.info()
        assert len(rows(cache)) == info["entries"] == len(expected_ids)
        assert info["bytes"] == len(expected_ids) * entry_bytes(space.ns)


class CountingTower:
    """A text or vision tower stand-in: a fixed random projection of the input, counting rows."""

    def __init__(self, tower):
        self.tower = tower
        self.rows = 0

    def run(self, feeds):
        out = self.tower.run(feeds)
        self.rows += len(out)
        return out


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return load_model(load_bundle(tiny_bundle), provider="cpu", threads=1)


def test_a_corrupt_entry_is_recomputed_not_trusted(tmp_path, model):
    texts = [f"a photo of the cat {i}" for i in range(6)]
    with EmbeddingCache(tmp_path) as cache:
        space = cache.space("x" * 64, "fp32", "text")
        counting = CountingTower(model.text)
        first = embed_texts(counting, model.tokenizer, texts, batch_size=4, progress=False, cache=space)
        assert counting.rows == 6
        # Flip one byte of one stored vector (same length), and truncate another.
        k2, k4 = text_key(texts[2]), text_key(texts[4])
        (vec2,) = cache._db.execute("SELECT vec FROM entries WHERE key = ?", (k2,)).fetchone()
        bad = bytearray(vec2)
        bad[5] ^= 0x40
        cache._db.execute("UPDATE entries SET vec = ? WHERE key = ?", (bytes(bad), k2))
        cache._db.execute("UPDATE entries SET vec = substr(vec, 1, 8) WHERE key = ?", (k4,))
        counting.rows = 0
        second = embed_texts(counting, model.tokenizer, texts, batch_size=4, progress=False, cache=space)
        assert counting.rows == 2  # exactly the two damaged entries were recomputed
        assert space.stats.corrupt == 2
        np.testing.assert_array_equal(second.embeds, first.embeds)
        counting.rows = 0
        embed_texts(counting, model.tokenizer, texts, batch_size=4, progress=False, cache=space)
        assert counting.rows == 0  # ... and stored again, intact


def test_least_recently_used_entries_are_evicted(tmp_path, monkeypatch):
    ns = EmbeddingCache.space_name("e" * 64, "fp32", "text")
    size = entry_bytes(ns)
    clock = iter(range(10**9, 10**12, 10**9))
    monkeypatch.setattr(cache_mod.time, "time_ns", lambda: next(clock))
    monkeypatch.setattr(cache_mod, "TOUCH_AFTER_S", 0.0)
    with EmbeddingCache(tmp_path, max_bytes=10 * size) as cache:
        space = cache.space("e" * 64, "fp32", "text")
        for i in range(10):
            space.store([key_for(i)], vec_for(i)[None])
        assert cache.info()["entries"] == 10
        space.lookup([key_for(0), key_for(1)])  # used again: now the most recent
        space.store([key_for(10)], vec_for(10)[None])  # over the bound: evict down to 90%
        info = cache.info()
        assert info["bytes"] <= int(10 * size * cache_mod.EVICT_TO)
        kept = space.lookup([key_for(i) for i in range(11)])
        assert {0, 1, 10} <= set(kept)
        assert 2 not in kept  # the least recently used goes first
        assert len(kept) == info["entries"] == int(10 * cache_mod.EVICT_TO)


def test_image_keys_follow_the_file(tmp_path):
    path = tmp_path / "a.png"
    noise_image(0).save(path)
    k1 = image_key(str(path))
    assert image_key(path) == k1 and image_key(str(tmp_path / "." / "a.png")) == k1
    v1 = image_key(path, verify=True)
    copy = tmp_path / "b.png"
    copy.write_bytes(path.read_bytes())
    assert image_key(copy) != k1 and image_key(copy, verify=True) == v1  # content keys survive a copy
    noise_image(1).save(path)
    os.utime(path, ns=(1, 1))
    assert image_key(path) != k1 and image_key(path, verify=True) != v1
    assert image_key(tmp_path / "missing.png") is None
    assert image_key(noise_image(0)) is None  # a PIL image has no identity


def test_partly_cached_images_come_back_in_input_order(tmp_path, model):
    images = {f"i{i}.png": noise_image(i) for i in range(7)}
    write_dataset(tmp_path / "ds", [], images)
    sources = [str(tmp_path / "ds" / n) for n in images]
    plain = embed_images(model.vision, model.preprocessor, sources, batch_size=3, num_workers=0, progress=False)
    with EmbeddingCache(tmp_path / "c") as cache:
        space = cache.space("y" * 64, "fp32", "image")
        embed_images(model.vision, model.preprocessor, [sources[i] for i in (1, 4, 5)], batch_size=3,
                     num_workers=0, progress=False, cache=space)
        counting = CountingTower(model.vision)
        mixed = embed_images(counting, model.preprocessor, sources, batch_size=3, num_workers=0, progress=False,
                             cache=space)
    assert counting.rows == 4 and mixed.cache_hits == 3
    np.testing.assert_array_equal(mixed.indices, np.arange(7))
    np.testing.assert_allclose(mixed.embeds, plain.embeds, atol=1e-6)


def _block(bundle, data, out, cache_dir, **extra):
    block = {"models": [{"model_name": str(bundle)}], "data_dir": str(data), "output_dir": str(out),
             "cache_dir": str(cache_dir), "batch_size": 4, "num_workers": 0, "verbose": False, "recall_k": [1, 2]}
    block.update(extra)
    return block


def _dataset(root, n=5):
    rows = [{"image_path": f"img{i}.png", "query": [f"a photo of a cat {i}", f"a dog {i}"]} for i in range(n)]
    return write_dataset(root, rows, {f"img{i}.png": noise_image(i) for i in range(n)})


def test_a_second_run_does_no_model_work(tiny_bundle, tmp_path, monkeypatch):
    from clipeval import run_task

    data = _dataset(tmp_path / "ds")
    (first,) = run_task(_block(tiny_bundle, data, tmp_path / "out", tmp_path / "cache"))
    assert first["meta"]["cache"]["image_hits"] == 0 and first["meta"]["provider"] == "cpu"

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran on the second run")

    monkeypatch.setattr(Tower, "run", no_model)
    monkeypatch.setattr("clipeval.engine.tasks.context.open_tower", no_model)
    (second,) = run_task(_block(tiny_bundle, data, tmp_path / "out", tmp_path / "cache"))
    assert second["metrics"] == first["metrics"]
    assert second["meta"]["cache"]["image_hits"] == 5 and second["meta"]["cache"]["text_hits"] == 10
    assert second["meta"]["provider"] == "none"
    with pytest.raises(AssertionError, match="the model ran"):  # --no-cache really computes
        run_task(_block(tiny_bundle, data, tmp_path / "out", tmp_path / "cache", no_cache=True))


def test_cli_cache_info_and_clear(tiny_bundle, tmp_path):
    data = _dataset(tmp_path / "ds", 3)
    runner = CliRunner()
    args = ["eval", "--model", str(tiny_bundle), "--data-dir", str(data), "--output-dir", str(tmp_path / "out"),
            "--quiet", "--recall-k", "1"]
    env = {"CLIPEVAL_CACHE_DIR": str(tmp_path / "cache")}
    assert runner.invoke(cli, args + ["--no-cache"], env=env).exit_code == 0
    assert not (tmp_path / "cache" / "embeddings").exists()  # --no-cache writes nothing
    assert runner.invoke(cli, args, env=env).exit_code == 0
    info = runner.invoke(cli, ["cache", "info", "--cache-dir", str(tmp_path / "cache")])
    assert info.exit_code == 0, info.output
    data_info = json.loads(info.stdout)
    assert data_info["entries"] == 3 + 6
    identity = load_bundle(tiny_bundle).identity
    assert {(s["bundle"], s["kind"], s["entries"]) for s in data_info["spaces"]} == {
        (identity, "image", 3), (identity, "text", 6)}
    assert "entries" in info.stderr
    cleared = runner.invoke(cli, ["cache", "clear", "--cache-dir", str(tmp_path / "cache"), "--bundle", "0" * 8])
    assert json.loads(cleared.stdout)["removed_entries"] == 0
    cleared = runner.invoke(cli, ["cache", "clear", "--cache-dir", str(tmp_path / "cache")])
    assert cleared.exit_code == 0 and json.loads(cleared.stdout)["removed_entries"] == 9
    after = json.loads(runner.invoke(cli, ["cache", "info", "--cache-dir", str(tmp_path / "cache")]).stdout)
    assert after["entries"] == 0 and after["bytes"] == 0
    for sub in (["cache", "-h"], ["cache", "info", "-h"], ["cache", "clear", "--help"]):
        assert runner.invoke(cli, sub).exit_code == 0


def test_a_damaged_database_does_not_stop_a_run(tiny_bundle, tmp_path):
    from clipeval import run_task

    db = tmp_path / "cache" / "embeddings" / "embeddings.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    data = _dataset(tmp_path / "ds", 3)
    (result,) = run_task(_block(tiny_bundle, data, tmp_path / "out", tmp_path / "cache"))
    assert result["meta"]["cache"] is None and result["meta"]["num_images"] == 3
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(db).execute("SELECT * FROM entries").fetchall()
