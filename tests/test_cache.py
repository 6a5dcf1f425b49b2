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
from clipeval.engine.embedding import cache as cache_mod
from clipeval.engine.sessions.bundle import load_bundle
from clipeval.engine.embedding.cache import ENTRY_OVERHEAD, EmbeddingCache, image_key, text_key
from clipeval.engine.embedding.stage import embed_images, embed_texts
from clipeval.engine.sessions.onnx import Tower
from clipeval.engine.sessions.model import load_model
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
    from clipeval.engine.embedding.cache import EmbeddingCache, text_key
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
    monkeypatch.setattr("clipeval.engine.embedding.local.open_tower", no_model)
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


# --- a damaged database ------------------------------------------------------------------------

def _cli(args, cache_root):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"CLIPEVAL_CACHE_DIR": str(cache_root)})


def _cache_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "embedding cache" in line and "WARNING" in line]


def test_the_damage_of_the_issue_leaves_runs_and_cache_clear_working(tmp_path):
    """Fill the cache with one demo eval, overwrite 64 bytes with 0xff at offset 16392: later runs
    warn once and go on without the cache; `cache clear` removes and recreates the database."""
    root = tmp_path / "cache"
    db = root / "embeddings" / "embeddings.sqlite3"
    eval_args = ["eval", "--quiet", "--output-dir", tmp_path / "out"]
    first = _cli(eval_args, root)
    assert first.exit_code == 0, first.output
    assert db.stat().st_size > 16392 + 64
    with open(db, "r+b") as f:
        f.seek(16392)
        f.write(b"\xff" * 64)
    raw = sqlite3.connect(db)  # the damage is real: the (ns, key) index that lookups use is broken
    assert [r[0] for r in raw.execute("PRAGMA quick_check")] != ["ok"]
    with pytest.raises(sqlite3.DatabaseError):
        raw.execute("SELECT vec FROM entries WHERE ns > '' AND key > x''").fetchall()
    raw.close()

    second = _cli(eval_args, root)
    assert second.exit_code == 0 and "Traceback" not in second.output
    assert len(_cache_warnings(second.stderr)) == 1 and "cache clear" in second.stderr
    assert json.loads(second.stdout)["metrics"] == json.loads(first.stdout)["metrics"]

    info = _cli(["cache", "info"], root)
    assert info.exit_code == 2 and "Traceback" not in info.output
    assert info.stderr.startswith("error: ") and "cache clear" in info.stderr

    cleared = _cli(["cache", "clear"], root)
    assert cleared.exit_code == 0, cleared.output
    out = json.loads(cleared.stdout)
    assert out["recreated"] is True and out["path"] == str(db) and "damaged" in out["reason"]
    assert "created an empty cache" in cleared.stderr
    assert json.loads(_cli(["cache", "info"], root).stdout)["entries"] == 0

    third = _cli(eval_args, root)
    fourth = _cli(eval_args, root)  # the recreated cache serves the next run again
    assert third.exit_code == fourth.exit_code == 0 and not _cache_warnings(third.stderr + fourth.stderr)
    meta = json.loads(fourth.stdout)["meta"]
    assert meta["cache"]["image_hits"] == meta["num_images"] and meta["provider"] == "none"
    assert json.loads(fourth.stdout)["metrics"] == json.loads(first.stdout)["metrics"]


def _overwrite(db, rng):
    size = db.stat().st_size
    offset = int(rng.integers(0, size))
    length = int(rng.integers(1, 4097))
    with open(db, "r+b") as f:
        f.seek(offset)
        f.write(bytes(rng.integers(0, 256, length, dtype=np.uint8)))


def _truncate(fraction):
    def damage(db, rng):
        os.truncate(db, int(db.stat().st_size * fraction))
    return damage


def _garbage_wal(db, rng):
    (db.parent / (db.name + "-wal")).write_bytes(bytes(rng.integers(0, 256, 40000, dtype=np.uint8)))


def _not_sqlite(db, rng):
    db.write_bytes(b"this is not a database" * 300)


def _empty(db, rng):
    db.write_bytes(b"")


def _header_only(db, rng):
    with open(db, "r+b") as f:
        f.seek(0)
        f.write(b"\xff" * 100)


def _zeros_page(db, rng):
    with open(db, "r+b") as f:
        f.seek(4096 * int(rng.integers(1, max(2, db.stat().st_size // 4096))))
        f.write(bytes(4096))


DAMAGES = {
    **{f"overwrite-{seed}": _overwrite for seed in range(6)},
    "truncate-half": _truncate(0.5),
    "truncate-to-header": _truncate(100 / 1e9),
    "truncate-one-byte-short": lambda db, rng: os.truncate(db, db.stat().st_size - 1),
    "garbage-wal": _garbage_wal,
    "not-sqlite": _not_sqlite,
    "empty-file": _empty,
    "header-garbage": _header_only,
    "page-of-zeros": _zeros_page,
}


SURELY_NOTICED = {"not-sqlite", "header-garbage"}  # others may leave a database SQLite can still use


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_generated_damage_never_stops_a_run_and_cache_clear_repairs_it(tiny_bundle, tmp_path, name):
    root = tmp_path / "cache"
    db = root / "embeddings" / "embeddings.sqlite3"
    data = _dataset(tmp_path / "ds", 24)
    eval_args = ["eval", "--model", tiny_bundle, "--data-dir", data, "--output-dir", tmp_path / "out", "--quiet",
                 "--recall-k", "1", "--batch-size", "8", "--num-workers", "0"]
    first = _cli(eval_args, root)
    assert first.exit_code == 0, first.output
    seed = int(name.rsplit("-", 1)[1]) if name.startswith("overwrite") else 0
    DAMAGES[name](db, np.random.default_rng(seed))
    for _ in range(2):
        run = _cli(eval_args, root)
        assert run.exit_code == 0 and "Traceback" not in run.output, run.output
        warnings = _cache_warnings(run.stderr)
        assert len(warnings) == 1 if name in SURELY_NOTICED else len(warnings) <= 1
        assert json.loads(run.stdout)["metrics"] == json.loads(first.stdout)["metrics"]
    cleared = _cli(["cache", "clear"], root)
    assert cleared.exit_code == 0 and "Traceback" not in cleared.output, cleared.output
    assert _cli(eval_args, root).exit_code == 0
    again = _cli(eval_args, root)
    assert again.exit_code == 0 and not _cache_warnings(again.stderr)
    assert json.loads(again.stdout)["meta"]["cache"]["image_hits"] == 24


def test_a_directory_in_the_databases_place(tiny_bundle, tmp_path):
    root = tmp_path / "cache"
    db = root / "embeddings" / "embeddings.sqlite3"
    (db / "inside").mkdir(parents=True)
    data = _dataset(tmp_path / "ds", 3)
    run = _cli(["eval", "--model", tiny_bundle, "--data-dir", data, "--output-dir", tmp_path / "out", "--quiet",
                "--recall-k", "1"], root)
    assert run.exit_code == 0 and len(_cache_warnings(run.stderr)) == 1 and "is a directory" in run.stderr
    assert json.loads(run.stdout)["meta"]["cache"] is None
    for sub in (["cache", "clear"], ["cache", "info"]):
        r = _cli(sub, root)
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert r.stderr.startswith("error: ") and "is a directory" in r.stderr and "rm -r" in r.stderr
    assert (db / "inside").is_dir()  # never removed


def test_a_read_or_write_that_fails_mid_run_turns_the_cache_off_once(tmp_path, caplog):
    with EmbeddingCache(tmp_path) as cache:
        space = cache.space("d" * 64, "fp32", "text")
        space.store([key_for(0)], vec_for(0)[None])
        cache._db.execute("DROP TABLE entries")  # every later statement on it fails
        with caplog.at_level("WARNING", logger="clipeval.engine.embedding.cache"):
            assert space.lookup([key_for(0), key_for(1)]) == {}
            space.store([key_for(2)], vec_for(2)[None])
            assert space.lookup([key_for(2)]) == {}
        assert cache.disabled and "no such table" in cache.disabled
        assert len([r for r in caplog.records if "running without it" in r.getMessage()]) == 1


def test_schema_1_databases_are_migrated_and_their_entries_stay_untrusted(tmp_path):
    db_path = tmp_path / "embeddings" / "embeddings.sqlite3"
    db_path.parent.mkdir(parents=True)
    ns = EmbeddingCache.space_name("a" * 64, "fp32", "text")
    raw = vec_for(0).tobytes()
    old = sqlite3.connect(db_path)
    old.executescript("""
        CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
        CREATE TABLE entries(ns TEXT NOT NULL, key BLOB NOT NULL, vec BLOB NOT NULL, digest BLOB NOT NULL,
                             used INTEGER NOT NULL, UNIQUE(ns, key));
        CREATE TABLE stats(id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL, count INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
    """)
    old.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", (ns, key_for(0), raw, cache_mod._digest(ns, key_for(0), raw), 1))
    old.execute("INSERT INTO stats VALUES (0, ?, 1)", (len(raw) + 32 + len(ns) + ENTRY_OVERHEAD,))
    old.commit()
    old.close()
    with EmbeddingCache(tmp_path) as cache:
        untrusted = cache.space("a" * 64, "fp32", "text")
        trusted = cache.space("a" * 64, "fp32", "text", verified=True)
        np.testing.assert_array_equal(untrusted.lookup([key_for(0)])[0], vec_for(0))
        assert trusted.lookup([key_for(0)]) == {}
        assert cache._db.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()[0] == str(cache_mod.SCHEMA_VERSION)


# --- trust: entries of runs that did not verify their bundle ------------------------------------

def test_trusted_and_untrusted_entries(tmp_path):
    with EmbeddingCache(tmp_path) as cache:
        plain = cache.space("t" * 64, "fp32", "text")
        verified = cache.space("t" * 64, "fp32", "text", verified=True)
        poisoned = vec_for(100)
        plain.store([key_for(0), key_for(1)], np.stack([poisoned, vec_for(1)]))
        assert verified.lookup([key_for(0), key_for(1)]) == {}  # never served to a verified run
        verified.store([key_for(0)], vec_for(0)[None])  # replaces the untrusted row
        np.testing.assert_array_equal(plain.lookup([key_for(0)])[0], vec_for(0))
        np.testing.assert_array_equal(verified.lookup([key_for(0)])[0], vec_for(0))
        plain.store([key_for(0)], poisoned[None])  # an untrusted write never replaces a row
        np.testing.assert_array_equal(verified.lookup([key_for(0)])[0], vec_for(0))
        info = cache.info()
        assert info["entries"] == 2 and info["bytes"] == 2 * entry_bytes(plain.ns)
        assert info["spaces"][0]["verified_entries"] == 1
        # the trust mark is covered by the digest: a flipped mark is a corrupt entry
        cache._db.execute("UPDATE entries SET trusted = 1 WHERE key = ?", (key_for(1),))
        assert verified.lookup([key_for(1)]) == {} and verified.stats.corrupt == 1


def _tamper_in_place(path, seed=0):
    """Permute the rows of the largest float32 initializer of an ONNX file, byte for byte in
    place: same size, and the modification time put back, as the issue's scenario does."""
    import onnx
    from onnx import numpy_helper

    st = os.stat(path)
    model = onnx.load(str(path))
    init = max((t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and t.raw_data),
               key=lambda t: len(t.raw_data))
    array = numpy_helper.to_array(init)
    tampered = array[np.random.default_rng(seed).permutation(array.shape[0])]
    data = bytearray(path.read_bytes())
    at = data.find(init.raw_data)
    assert at >= 0 and data.find(init.raw_data, at + 1) < 0
    data[at:at + len(init.raw_data)] = np.ascontiguousarray(tampered).tobytes()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


def test_a_verified_run_never_serves_entries_of_a_tampered_tower(tiny_bundle, tmp_path):
    """text.onnx changed in place (size and mtime kept) is not re-hashed; the embeddings it gives
    are cached under the genuine identity. After the file is restored, a --verify-cache run must
    recompute them, not serve them."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    root = tmp_path / "cache"
    data = _dataset(tmp_path / "ds", 6)
    args = ["eval", "--model", bundle, "--data-dir", data, "--output-dir", tmp_path / "out", "--quiet",
            "--recall-k", "1", "--num-workers", "0"]
    genuine = _cli(args + ["--no-cache"], root)  # hashes the bundle and stamps it
    assert genuine.exit_code == 0, genuine.output
    text_onnx = bundle / "text.onnx"
    original = text_onnx.read_bytes()
    st = os.stat(text_onnx)
    _tamper_in_place(text_onnx)

    poisoned_run = _cli(args, root)  # trusts the stamp: the tampered tower runs, its output is cached
    assert poisoned_run.exit_code == 0, poisoned_run.output
    identity = load_bundle(tiny_bundle).identity
    texts = [q for i in range(6) for q in (f"a photo of a cat {i}", f"a dog {i}")]
    genuine_model = load_model(load_bundle(tiny_bundle), provider="cpu", threads=1)
    want = embed_texts(genuine_model.text, genuine_model.tokenizer, texts, batch_size=8, progress=False).embeds
    with EmbeddingCache(root) as cache:
        stored = cache.space(identity, "fp32", "text").lookup([text_key(t) for t in texts])
        assert len(stored) == len(texts)
        assert max(float(np.abs(stored[i] - want[i]).max()) for i in stored) > 1e-3  # really poisoned
        assert cache.space(identity, "fp32", "text", verified=True).lookup([text_key(t) for t in texts]) == {}

    text_onnx.write_bytes(original)  # the genuine file is back, same size and mtime
    os.utime(text_onnx, ns=(st.st_atime_ns, st.st_mtime_ns))
    verified_run = _cli(args + ["--verify-cache"], root)
    assert verified_run.exit_code == 0, verified_run.output
    out = json.loads(verified_run.stdout)
    assert out["meta"]["cache"]["text_hits"] == 0  # nothing of the unverified run was served
    assert out["metrics"] == json.loads(genuine.stdout)["metrics"]
    with EmbeddingCache(root) as cache:  # the verified run replaced the poisoned entries
        stored = cache.space(identity, "fp32", "text", verified=True).lookup([text_key(t) for t in texts])
        assert len(stored) == len(texts)
        np.testing.assert_allclose(np.stack([stored[i] for i in range(len(texts))]), want, atol=1e-6)
    later = _cli(args, root)  # an ordinary run now gets the genuine entries
    assert json.loads(later.stdout)["metrics"] == json.loads(genuine.stdout)["metrics"]
    assert json.loads(later.stdout)["meta"]["cache"]["text_hits"] == len(texts)


def test_bundle_verified_means_every_file_was_hashed_in_this_load(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "root"))
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    assert load_bundle(bundle).verified is True  # no stamp yet: every file hashed
    assert load_bundle(bundle).verified is False  # the stamp vouched for them
    assert load_bundle(bundle, trust_stamp=False).verified is True
    assert load_bundle(bundle, verify=False).verified is False
    os.utime(bundle / "text.onnx", ns=(1, 1))  # one file re-hashed, the others from the stamp
    assert load_bundle(bundle).verified is False
