"""What a cluster run sends to its workers, checked without Ray: image rows (paths, URLs, webdataset
shard ranges, bytes) resolved on a "worker" against the driver's own reading of the same images
(a real HTTP server on 127.0.0.1 with byte ranges), bundle packs verified on arrival, and the
``executor`` / ``ray_address`` config keys."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.engine.sessions.bundle import load_bundle, write_manifest
from clipeval.engine.config import make_eval_config
from clipeval.engine.datasets.sources import fetch_dataset
from clipeval.engine.datasets.wds import ShardImages, read_wds_retrieval
from clipeval.engine.demo import DEMO_MODEL_DIR
from clipeval.engine.errors import BundleError, ConfigError, ImageError
from clipeval.engine.executors import rows as rows_mod
from clipeval.engine.executors.rows import fetch_sources, http_get, image_table
from clipeval.engine.executors.shipping import needed_files, pack_bundle, unpack_bundle
from datagen import noise_image
from rangeserver import RangeServer
from rayfix import FakeRay
from wdsgen import png_bytes, write_retrieval_set

SETTINGS = settings(deadline=None, derandomize=True, max_examples=40,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A served folder: ``flickr8k`` (a webdataset of 23 samples in shards of 5) and ``img/``."""
    root = tmp_path_factory.mktemp("remote")
    write_retrieval_set(root / "flickr8k", n=23, per_shard=5)
    (root / "img").mkdir()
    for i in range(4):
        noise_image(i, (20 + i, 18)).save(root / "img" / f"{i}.png")
    with RangeServer(root) as server:
        yield server


@pytest.fixture(scope="module")
def downloaded(remote, tmp_path_factory):
    """The served webdataset downloaded into a dataset cache, and read from there."""
    cache = tmp_path_factory.mktemp("dcache")
    folder, _ = fetch_dataset("flickr8k", "test", url=f"{remote.url}/flickr8k", cache_dir=cache, progress=False,
                              need_classes=False)
    return read_wds_retrieval(folder, "test", name="flickr8k")


@pytest.fixture(scope="module")
def local_wds(tmp_path_factory):
    """A webdataset in a local folder (no download manifest: its shards are read by path)."""
    root = tmp_path_factory.mktemp("lwds")
    write_retrieval_set(root / "set", n=11, per_shard=4)
    return read_wds_retrieval(root / "set", "test", name="flickr8k")


def _payload(source) -> bytes:
    """What the driver itself would decode for a source: the file's bytes, or the bytes."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    return open(source, "rb").read()


# --- rows: the table -------------------------------------------------------------------------------


def test_paths_become_absolute_urls_and_bytes_stay_as_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    sources = ["a.png", tmp_path / "a.png", "http://127.0.0.1:9/x.jpg", b"\x89PNG..."]
    cols = image_table(sources, np.arange(4))
    assert cols["kind"] == ["path", "path", "url", "bytes"]
    assert cols["location"][:3] == [str(tmp_path / "a.png")] * 2 + ["http://127.0.0.1:9/x.jpg"]
    assert cols["data"][3] == b"\x89PNG..." and list(cols["index"]) == [0, 1, 2, 3]


def test_an_in_memory_pil_image_is_refused_with_a_remedy():
    with pytest.raises(ConfigError, match="image #1 is a Image held in memory") as err:
        image_table(["a.png", noise_image(0)], np.arange(2))
    assert "--executor local" in err.value.remedy


def test_shards_of_a_local_folder_are_read_by_path(tmp_path):
    write_retrieval_set(tmp_path / "wds", n=7, per_shard=3)
    ds = read_wds_retrieval(tmp_path / "wds", "test", name="flickr8k")
    cols = image_table(ds.images, np.arange(7))
    assert set(cols["kind"]) == {"shard"}
    assert [c for c in cols["location"]] == [str(ds.images.shards[s]) for s in ds.images.shard_index]
    assert list(cols["label"]) == ds.images.labels
    assert list(cols["shard_size"]) == [ds.images.shards[s].stat().st_size for s in ds.images.shard_index]


def test_shards_of_a_downloaded_set_are_read_by_url(downloaded, remote):
    cols = image_table(downloaded.images, np.arange(len(downloaded.images)))
    shards = downloaded.images.shards
    assert list(cols["location"]) == [f"{remote.url}/flickr8k/test/{shards[s].name}"
                                      for s in downloaded.images.shard_index]


def test_a_cached_shard_whose_size_changed_is_read_by_path(downloaded, tmp_path):
    """The download manifest vouches for a shard only at the size it recorded."""
    folder = tmp_path / "copy"
    shutil.copytree(downloaded.images.shards[0].parent.parent, folder)
    with open(folder / "test" / "0.tar", "ab") as f:
        f.write(b"\0" * 512)
    ds = read_wds_retrieval(folder, "test", name="flickr8k")
    cols = image_table(ds.images, np.arange(len(ds.images)))
    kinds = {loc.startswith("http") for loc, s in zip(cols["location"], ds.images.shard_index) if s == 0}
    assert kinds == {False}
    assert any(loc.startswith("http") for loc in cols["location"])


# --- rows: the worker side, against the driver's reading ---------------------------------------------


@SETTINGS
@given(data=st.data())
def test_any_batch_of_rows_resolves_to_the_bytes_the_driver_reads(remote, downloaded, local_wds, data):
    """Random batches mixing every kind (shard ranges by URL and by path, files, URLs, bytes), in
    any order, with repeats: each row resolves to exactly the bytes the driver's own source holds."""
    img_dir = remote.root / "img"
    pool = ([("url-shard", i) for i in range(len(downloaded.images))]
            + [("path-shard", i) for i in range(len(local_wds.images))]
            + [("file", i) for i in range(4)] + [("url", i) for i in range(4)] + [("bytes", i) for i in range(3)])
    picks = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=14))
    expected, tables = [], []
    for kind, i in picks:
        if kind.endswith("shard"):
            gallery = (downloaded if kind == "url-shard" else local_wds).images
            cols = image_table(gallery, np.array([i]))
            assert cols["location"][0].startswith("http") == (kind == "url-shard")
            expected.append(gallery[i])
        else:
            src = {"file": str(img_dir / f"{i}.png"), "url": f"{remote.url}/img/{i}.png",
                   "bytes": png_bytes(50 + i)}[kind]
            cols = image_table([src], np.array([0]))
            expected.append(_payload(src) if kind != "url" else (img_dir / f"{i}.png").read_bytes())
        tables.append(cols)
    batch = {k: (np.concatenate([t[k] for t in tables]) if isinstance(tables[0][k], np.ndarray)
                 else sum((list(t[k]) for t in tables), [])) for k in tables[0]}
    got = fetch_sources(batch)
    for row, (want, have) in enumerate(zip(expected, got)):
        assert not isinstance(have, ImageError), have
        assert _payload(have) == bytes(want), row
        if picks[row][0].endswith("shard"):
            assert str(have) == str(want)  # named as the driver names it: {shard}#{key}


def test_images_of_one_shard_in_a_batch_take_one_request(remote, downloaded):
    remote.requests.clear()
    idx = np.arange(5)  # shard 0 holds samples 0-4
    got = fetch_sources(image_table(downloaded.images, idx))
    assert [bytes(g) for g in got] == [bytes(downloaded.images[i]) for i in idx]
    assert len(remote.requests) == 1 and remote.requests[0][1].startswith("bytes=")


def test_a_server_that_ignores_ranges_still_gives_the_right_bytes(remote, downloaded):
    remote.ignore_range = True
    try:
        idx = np.array([6, 8, 12])
        got = fetch_sources(image_table(downloaded.images, idx))
    finally:
        remote.ignore_range = False
    assert [bytes(g) for g in got] == [bytes(downloaded.images[i]) for i in idx]


def test_a_shard_changed_on_the_server_is_an_error_for_its_images_only(remote, downloaded):
    rel = "flickr8k/test/1.tar"
    remote.replace[rel] = (remote.root / rel).read_bytes() + b"\0" * 1024
    try:
        got = fetch_sources(image_table(downloaded.images, np.array([4, 5, 6, 10])))
    finally:
        del remote.replace[rel]
    assert not isinstance(got[0], ImageError) and not isinstance(got[3], ImageError)
    for bad in got[1:3]:
        assert isinstance(bad, ImageError) and "changed on the server" in bad.message


def test_transient_server_errors_are_retried_and_lasting_ones_name_the_url(remote, monkeypatch):
    monkeypatch.setattr(rows_mod, "HTTP_BACKOFF_S", 0.0)
    remote.fail["img/1.png"] = rows_mod.HTTP_ATTEMPTS - 1
    body, _ = http_get(f"{remote.url}/img/1.png")
    assert body == (remote.root / "img" / "1.png").read_bytes()
    got = fetch_sources(image_table([f"{remote.url}/img/nope.png"], np.array([0])))
    assert isinstance(got[0], ImageError) and f"{remote.url}/img/nope.png" in got[0].message
    assert "HTTP 404" in got[0].message


def test_a_missing_local_shard_is_an_error_naming_it(tmp_path):
    write_retrieval_set(tmp_path / "wds", n=4, per_shard=2)
    ds = read_wds_retrieval(tmp_path / "wds", "test", name="flickr8k")
    cols = image_table(ds.images, np.arange(4))
    (tmp_path / "wds" / "test" / "1.tar").unlink()
    got = fetch_sources(cols)
    assert [isinstance(g, ImageError) for g in got] == [False, False, True, True]
    assert "1.tar cannot be read on this node" in got[2].message


# --- bundle packs ----------------------------------------------------------------------------------


@pytest.fixture
def two_variant_bundle(tmp_path):
    """The demo bundle with an extra fp16 variant and an external data file listed."""
    root = tmp_path / "b2"
    shutil.copytree(DEMO_MODEL_DIR, root)
    shutil.copy(root / "vision.onnx", root / "vision.fp16.onnx")
    (root / "weights.bin").write_bytes(b"external tensor data")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["variants"]["fp16"] = {"vision": "vision.fp16.onnx", "text": "text.onnx"}
    write_manifest(root, manifest)
    return load_bundle(root)


def test_a_pack_holds_what_the_job_needs(two_variant_bundle):
    b = two_variant_bundle
    assert sorted(needed_files(b, "fp32", ("vision",))) == ["preprocess.json", "tokenizer.json", "vision.onnx",
                                                            "weights.bin"]
    assert sorted(needed_files(b, "fp16", ("vision",))) == ["preprocess.json", "tokenizer.json",
                                                            "vision.fp16.onnx", "weights.bin"]
    assert sorted(needed_files(b)) == sorted(b.manifest["files"])
    with pytest.raises(BundleError, match="no int8 variant"):
        needed_files(b, "int8", ("vision",))


def test_a_pack_unpacks_to_the_same_verified_files(two_variant_bundle, tmp_path):
    b = two_variant_bundle
    got = unpack_bundle(pack_bundle(b), tmp_path / "node")
    assert got.identity == b.identity and got.path.name == b.path.name and got.name == b.name
    for name in b.manifest["files"]:
        assert (got.path / name).read_bytes() == (b.path / name).read_bytes()
    assert load_bundle(got.path, trust_stamp=False).identity == b.identity  # a whole, loadable bundle
    partial = unpack_bundle(pack_bundle(b, "fp16", ("vision",)), tmp_path / "node2")
    assert sorted(p.name for p in partial.path.iterdir()) == ["manifest.json", "preprocess.json", "tokenizer.json",
                                                              "vision.fp16.onnx", "weights.bin"]
    assert partial.tower_path("vision", "fp16").read_bytes() == b.tower_path("vision", "fp16").read_bytes()


@pytest.mark.parametrize("damage", ["a file's bytes", "the manifest", "a file not listed", "another version"])
def test_a_damaged_pack_is_refused_before_anything_is_written(two_variant_bundle, tmp_path, damage):
    pack = pack_bundle(two_variant_bundle)
    if damage == "a file's bytes":
        pack.files["vision.onnx"] = pack.files["vision.onnx"][:-1] + b"\0"
    elif damage == "the manifest":
        pack.manifest_raw = pack.manifest_raw.replace(b'"clip"', b'"siglip"')
    elif damage == "a file not listed":
        pack.files["../evil.py"] = b"import os"
    else:
        pack.version = "0.0.0"
    with pytest.raises((BundleError, ConfigError)) as err:
        unpack_bundle(pack, tmp_path / "node")
    assert not (tmp_path / "node").exists()
    expected = {"a file's bytes": "vision.onnx: sha256 does not match", "the manifest": "not the one the driver",
                "a file not listed": "../evil.py: not a file the manifest lists", "another version": "0.0.0"}[damage]
    assert expected in str(err.value)


def test_a_pack_of_a_bundle_whose_manifest_changed_is_refused(two_variant_bundle):
    path = two_variant_bundle.path / "manifest.json"
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(BundleError, match="changed while the run was starting"):
        pack_bundle(two_variant_bundle)


# --- config and flags ------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "head-node.local:6379", "ray://10.0.0.5:10001",
                                     "[::1]:6379", "localhost:1"])
def test_good_ray_addresses(address):
    cfg = make_eval_config({"executor": "ray", "ray_address": address})
    assert cfg.executor == "ray" and cfg.ray_address == address


@pytest.mark.parametrize("address", ["", "head", "10.0.0.5", "10.0.0.5:0", "10.0.0.5:70000", "http://h:1",
                                     "ray://", "h:1 ", 6379, True, ["auto"]])
def test_bad_ray_addresses_are_one_error_naming_the_key(address):
    with pytest.raises(ConfigError, match="ray_address") as err:
        make_eval_config({"executor": "ray", "ray_address": address}, "eval")
    assert "auto" in str(err.value)


@pytest.mark.parametrize("executor", ["Ray", "dask", "", 1, None])
def test_unknown_executors_list_the_known_ones(executor):
    block = {"executor": executor} if executor is not None else {"executor": None}
    if executor is None:
        assert make_eval_config(block).executor == "local"  # null means the default, as for other keys
        return
    with pytest.raises(ConfigError, match="executor must be one of local, ray"):
        make_eval_config(block)


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch, tmp_path):
    """``clipeval eval --executor ray`` where Ray cannot be imported: exit status 2, one error
    naming the extra to install, nothing on stdout, no result written."""
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    r = CliRunner().invoke(cli, ["eval", "--executor", "ray", "--model", "demo", "--quiet",
                                 "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install 'clipeval[ray]'" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "out").rglob("*.json"))


def test_the_local_executor_never_imports_ray(tmp_path):
    """A whole local run, in a fresh interpreter, leaves ``ray`` unimported."""
    import subprocess

    code = ("import sys, json; from clipeval.engine.runner import run_task; "
            f"run_task({{'models': ['demo'], 'output_dir': {str(tmp_path / 'o')!r}, 'verbose': False, "
            "'num_workers': 0, 'no_cache': True}); "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_shipped_hashes_are_the_manifests(two_variant_bundle):
    pack = pack_bundle(two_variant_bundle, "fp32", ("text",))
    manifest = json.loads(pack.manifest_raw)
    assert hashlib.sha256(pack.manifest_raw).hexdigest() == two_variant_bundle.identity
    assert {n: hashlib.sha256(d).hexdigest() for n, d in pack.files.items()} == \
        {n: manifest["files"][n] for n in pack.files}


@pytest.mark.parametrize("cpus,dead,threads", [
    ((2,), (), None), ((0, 2, 2), (), None), ((4, 8), (), None), ((2, 2), (), 1), ((4, 8), (), 16),
    ((4, 8), (), 3), ((0, 16, 2), (), None), ((2, 64), (0,), None), ((1,), (), 4), ((0, 6, 6, 6), (1,), 4),
])
def test_cpu_placement_gives_each_actor_a_local_runs_layout_and_fills_the_nodes(cpus, dead, threads):
    """On a CPU-only cluster every actor decodes its own images and reserves the CPUs its
    threads use; by default as many as the smallest node has (one actor per node); as many
    actors as the nodes hold, all started at once, one block in flight each."""
    from clipeval.engine.executors.ray_embed import placement

    place = placement(FakeRay(cpus, dead=dead), "auto", threads)
    alive = [c for i, c in enumerate(cpus) if i not in dead and c > 0]
    want_threads = min(threads or min(alive), max(alive))
    want_pool = max(1, sum(c // want_threads for c in alive))
    assert place.decode_in_actor and place.provider == "cpu" and place.threads == want_threads
    assert place.options == {"min_size": 1, "max_size": want_pool, "initial_size": want_pool,
                             "max_tasks_in_flight_per_actor": 1, "num_cpus": want_threads}
    assert any(c >= place.options["num_cpus"] for c in alive)  # every actor fits a node
    assert want_pool * want_threads <= sum(alive) or want_pool == 1
    assert bool(place.notes) == bool(threads and threads > max(alive))


@pytest.mark.parametrize("provider,gpus,threads", [("auto", 1, None), ("cuda", 4, 2), ("cpu", 2, None)])
def test_gpu_placement_feeds_one_actor_per_gpu_from_decode_tasks(provider, gpus, threads):
    from clipeval.engine.executors.ray_embed import placement

    place = placement(FakeRay((8, 8), gpus=gpus), provider, threads)
    if provider == "cpu":  # the CPU was asked for: the GPUs are not used
        assert place.decode_in_actor and place.options["num_cpus"] == 8 and "num_gpus" not in place.options
        return
    assert not place.decode_in_actor and place.provider == provider and place.threads == (threads or 1)
    assert place.options == {"size": gpus, "num_gpus": 1, "num_cpus": 1}


def test_cuda_asked_on_a_cluster_without_gpus_is_a_note_and_runs_on_cpu():
    from clipeval.engine.executors.ray_embed import placement

    place = placement(FakeRay((2,)), "cuda", None)
    assert place.provider == "cpu" and any("no GPUs" in note for note in place.notes)
