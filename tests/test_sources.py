"""Downloads: a real HTTP server on 127.0.0.1 serves fixture webdatasets (and drops connections)."""

from __future__ import annotations

import gzip
import json
import shutil
import pytest

from clipeval.engine.datasets import read_classification_dataset, read_dataset
from clipeval.engine.datasets.sources import cache_folder, fetch_dataset
from clipeval.engine.errors import DatasetError
from rangeserver import LocalServer, QuietHandler
from wdsgen import write_classification_set, write_retrieval_set


def _html_of_length(n: int) -> bytes:
    page = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>checking your browser"
    return (page + b" " * n)[:max(0, n - 14)] + b"</body></html>"[:n]


# mode -> file bytes -> (headers, body) of a 200 answer that is not the file
BAD_BODIES = {
    "html of the right length": lambda d: ({"Content-Length": str(len(d)), "Content-Type": "text/html"},
                                           _html_of_length(len(d))),
    "truncated without Content-Length": lambda d: ({}, d[: len(d) // 2]),
    "cut at a member boundary without Content-Length": lambda d: ({}, d[:1536]),
    "gzip file as the body": lambda d: ({"Content-Length": str(len(gzip.compress(d)))}, gzip.compress(d)),
    "empty": lambda d: ({"Content-Length": "0"}, b""),
    "garbage of the right length": lambda d: ({"Content-Length": str(len(d))},
                                              bytes((i * 131 + 7) % 256 for i in range(len(d)))),
    "zeros of the right length": lambda d: ({"Content-Length": str(len(d))}, bytes(len(d))),
    # not a wrong body: the shard itself, gzip-encoded as HTTP allows; the client decodes it
    "gzip-encoded shard": lambda d: ({"Content-Length": str(len(gzip.compress(d))), "Content-Encoding": "gzip"},
                                     gzip.compress(d)),
}
SHARD_MODES = list(BAD_BODIES)
WRONG = [m for m in BAD_BODIES if m != "gzip-encoded shard"]

# web pages a hub answers with 200 in place of a side file (login walls, bot checks, error pages)
PAGES = {
    "doctype page": b"<!DOCTYPE html>\n<html>\n<head>\n<title>Sign in</title>\n</head>\n<body>\nlogin\n</body>\n</html>\n",
    "one-line page holding {c}": b"<html><body>a photo of a {c}</body></html>\n",
    "bom, blank lines, upper case": b"\xef\xbb\xbf\n  \t<HTML lang=en><BODY>Just a moment...</BODY></HTML>",
    "body fragment": b"<body>\nrate limited\n</body>\n",
    "xml error document": b'<?xml version="1.0"?>\n<Error><Code>AccessDenied</Code></Error>\n',
}
for _page, _body in PAGES.items():
    BAD_BODIES[f"page: {_page}"] = lambda d, b=_body: ({"Content-Length": str(len(b)), "Content-Type": "text/html"}, b)


class Server(LocalServer):
    """Serves ``root`` with Range support; counts requests; can cut chosen files short or answer
    them with a wrong body (``bad``)."""

    def __init__(self, root):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.drop: dict[str, int] = {}  # path -> how many more times to cut it off mid-body
        self.bad: dict[str, list[str]] = {}  # path -> the wrong bodies to answer next (see BAD_BODIES)
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                rel = self.path.lstrip("/")
                server.requests.append((rel, self.headers.get("Range")))
                path = server.root / rel
                if ".." in rel or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if server.bad.get(rel):
                    self._bad_body(server.bad[rel].pop(0), data)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop.get(rel, 0) > 0:
                    server.drop[rel] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _bad_body(self, mode, data):
                headers, body = BAD_BODIES[mode](data)
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        super().__init__(Handler)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "remote"
    write_retrieval_set(root / "flickr8k", n=9, per_shard=3)
    write_classification_set(root / "vtab-cifar10", n=12, n_classes=6, per_shard=5)
    with Server(root) as server:
        yield server


def same_tree(a, b):
    fa = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    fb = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    return all(f in fb and (a / f).read_bytes() == (b / f).read_bytes() for f in fa)


def test_download_into_cache_then_no_request(served, tmp_path):
    url = f"{served.url}/flickr8k"
    folder, n = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert folder == cache_folder("flickr8k", url, tmp_path / "cache")
    assert same_tree(served.root / "flickr8k", folder)
    assert n == len(served.requests) > 3
    served.requests.clear()
    _, n2 = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert n2 == 0 and served.requests == []


def test_connection_dropped_mid_shard_resumes_with_range(served, tmp_path):
    served.drop["flickr8k/test/1.tar"] = 2
    url = f"{served.url}/flickr8k"
    folder, _ = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert (folder / "test/1.tar").read_bytes() == (served.root / "flickr8k/test/1.tar").read_bytes()
    ranges = [r for p, r in served.requests if p == "flickr8k/test/1.tar"]
    assert len(ranges) == 3 and ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert not list(folder.rglob("*.part"))


def test_truncated_cached_shard_is_fetched_again(served, tmp_path):
    url = f"{served.url}/flickr8k"
    folder, _ = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    shard = folder / "test/2.tar"
    full = shard.read_bytes()
    shard.write_bytes(full[:100])
    served.requests.clear()
    fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert [p for p, _ in served.requests] == ["flickr8k/test/2.tar"]
    assert shard.read_bytes() == full


def test_server_that_keeps_failing_is_a_clear_error(served, tmp_path):
    served.drop["flickr8k/test/0.tar"] = 100
    with pytest.raises(DatasetError) as e:
        fetch_dataset("flickr8k", "test", url=f"{served.url}/flickr8k", cache_dir=tmp_path / "c", progress=False)
    assert "test/0.tar" in e.value.message
    assert sum(p == "flickr8k/test/0.tar" for p, _ in served.requests) == 5  # bounded


def test_missing_split_lists_the_ones_on_the_server(served, tmp_path):
    shutil.copytree(served.root / "flickr8k/test", served.root / "flickr8k/train")
    with pytest.raises(DatasetError) as e:
        fetch_dataset("flickr8k", "valid", url=f"{served.url}/flickr8k", cache_dir=tmp_path / "c", progress=False)
    assert "no split 'valid'" in e.value.message and "splits there: test, train" in e.value.message


def test_folder_and_server_give_the_same_datasets(served, tmp_path):
    opts = dict(dataset_url=f"{served.url}/{{name}}", cache_dir=tmp_path / "cache", progress=False)
    local = read_dataset("flickr8k", served.root / "flickr8k", "test", "fail")
    remote = read_dataset("flickr8k", None, "test", "fail", **opts)
    assert remote.texts == local.texts and remote.text_to_image.tolist() == local.text_to_image.tolist()
    assert [bytes(b) for b in remote.images] == [bytes(b) for b in local.images]
    lc = read_classification_dataset("vtab/cifar10", served.root / "vtab-cifar10", "test", "fail")
    rc = read_classification_dataset("vtab/cifar10", None, "test", "fail", **opts)
    assert rc.labels.tolist() == lc.labels.tolist() and rc.classnames == lc.classnames
    assert rc.templates == lc.templates


def test_cli_folder_and_server_give_identical_metrics(served, tiny_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    monkeypatch.setenv("CLIPEVAL_DATASET_URL", f"{served.url}/{{name}}")
    monkeypatch.setenv("CLIPEVAL_CACHE_DIR", str(tmp_path / "cache"))

    def run(*args):
        r = CliRunner().invoke(cli, ["eval", "--model", str(tiny_bundle), "--quiet", "--batch-size", "4",
                                     "--output-dir", str(tmp_path / "out"), *map(str, args)])
        assert r.exit_code == 0, (r.output, r.exception)
        return [json.loads(line) for line in r.stdout.strip().splitlines()]

    remote = run("--dataset", "flickr8k", "--dataset", "vtab/cifar10")
    assert [r["task"] for r in remote] == ["zeroshot_retrieval", "zeroshot_classification"]
    served.requests.clear()
    again = run("--dataset", "flickr8k", "--dataset", "vtab/cifar10")
    assert served.requests == []  # the second run reads the cache
    local_r = run("--dataset", "flickr8k", "--data-dir", served.root / "flickr8k")
    local_c = run("--dataset", "vtab/cifar10", "--data-dir", served.root / "vtab-cifar10")
    assert remote[0]["metrics"] == again[0]["metrics"] == local_r[0]["metrics"]
    assert remote[1]["metrics"] == again[1]["metrics"] == local_c[0]["metrics"]
    assert set(remote[1]["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert remote[0]["meta"]["num_images"] == 9 and remote[1]["meta"]["num_images"] == 12


# --- wrong bodies are never kept ---------------------------------------------------------------

@pytest.mark.parametrize("mode", SHARD_MODES)
def test_a_wrong_shard_body_is_fetched_again_within_the_run(served, tmp_path, mode):
    served.bad["flickr8k/test/1.tar"] = [mode]
    url = f"{served.url}/flickr8k"
    folder, _ = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    real = (served.root / "flickr8k/test/1.tar").read_bytes()
    assert (folder / "test/1.tar").read_bytes() == real
    asked = [p for p, _ in served.requests if p == "flickr8k/test/1.tar"]
    assert len(asked) == (1 if mode == "gzip-encoded shard" else 2)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"]["test/1.tar"] == len(real)
    assert not list(folder.rglob("*.part"))
    ds = read_dataset("flickr8k", None, "test", "fail", dataset_url=f"{served.url}/{{name}}",
                      cache_dir=tmp_path / "cache", progress=False)
    assert ds.num_images == 9


@pytest.mark.parametrize("mode", WRONG)
def test_a_server_that_keeps_sending_a_wrong_body_is_an_error_and_nothing_is_kept(served, tmp_path, mode):
    served.bad["flickr8k/test/1.tar"] = [mode] * 5
    url = f"{served.url}/flickr8k"
    with pytest.raises(DatasetError) as err:
        fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert "test/1.tar" in err.value.message and "not a whole tar shard" in err.value.message
    folder = cache_folder("flickr8k", url, tmp_path / "cache")
    assert "test/1.tar" not in json.loads((folder / "manifest.json").read_text())["files"]
    assert not (folder / "test/1.tar").exists() and not list(folder.rglob("*.part"))
    served.requests.clear()  # the server is fixed: the next run fetches just that shard
    fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert [p for p, _ in served.requests] == ["flickr8k/test/1.tar"]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_cached_shard_that_fails_the_tar_scan_is_dropped_and_fetched_by_the_next_run(served, tmp_path, on_error):
    """What an earlier version kept (an HTML page of the right length recorded as the shard): the
    reader drops it from the manifest, and the next run fetches it, instead of failing forever."""
    opts = dict(dataset_url=f"{served.url}/{{name}}", cache_dir=tmp_path / "cache", progress=False)
    read_dataset("flickr8k", None, "test", "fail", **opts)
    folder = cache_folder("flickr8k", f"{served.url}/flickr8k", tmp_path / "cache")
    shard = folder / "test/1.tar"
    shard.write_bytes(_html_of_length(shard.stat().st_size))
    served.requests.clear()
    if on_error == "fail":
        with pytest.raises(DatasetError) as err:
            read_dataset("flickr8k", None, "test", "fail", **opts)
        assert "test/1.tar" in err.value.message and "removed from the download cache" in err.value.remedy
    else:
        ds = read_dataset("flickr8k", None, "test", "skip", **opts)
        assert ds.num_images == 6 and ds.left_out["shards"] == {"damaged": 1}
    assert served.requests == []  # no request to find out
    assert "test/1.tar" not in json.loads((folder / "manifest.json").read_text())["files"]
    ds = read_dataset("flickr8k", None, "test", "fail", **opts)
    assert [p for p, _ in served.requests] == ["flickr8k/test/1.tar"] and ds.num_images == 9


@pytest.mark.parametrize("body", ["<html>not found</html>", "", "-3", "2.5", "\u00b2"])
def test_a_wrong_nshards_from_the_server_is_an_error_and_not_kept(served, tmp_path, body):
    real = (served.root / "flickr8k/test/nshards.txt").read_bytes()
    (served.root / "flickr8k/test/nshards.txt").write_text(body, encoding="utf-8")
    url = f"{served.url}/flickr8k"
    with pytest.raises(DatasetError) as err:
        fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert "nshards.txt" in err.value.message and "not kept" in err.value.remedy
    (served.root / "flickr8k/test/nshards.txt").write_bytes(real)
    folder, _ = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert same_tree(served.root / "flickr8k", folder)


@pytest.mark.parametrize("name, body, words", [
    ("dataset_type.txt", "classification\nretrieval\n", "a second line"),
    ("classnames.txt", "", "holds no class names"),
    ("classnames.txt", "cat\ndog\ncat\n", "duplicate class name"),
    ("zeroshot_classification_templates.txt", "a photo\n", "has no {c}"),
])
def test_a_wrong_downloaded_side_file_is_forgotten(served, tmp_path, name, body, words):
    remote = served.root / "vtab-cifar10" / name
    real = remote.read_bytes() if remote.exists() else None
    remote.write_text(body, encoding="utf-8")
    opts = dict(dataset_url=f"{served.url}/{{name}}", cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(DatasetError) as err:
        read_classification_dataset("vtab/cifar10", None, "test", "fail", **opts)
    assert words in err.value.message and "removed from the download cache" in err.value.remedy
    if real is None:
        remote.unlink()
    else:
        remote.write_bytes(real)
    served.requests.clear()
    ds = read_classification_dataset("vtab/cifar10", None, "test", "fail", **opts)
    assert ds.num_images == 12 and [p for p, _ in served.requests] == [f"vtab-cifar10/{name}"]


@pytest.mark.parametrize("manifest", [b"[]", b"{}", b'{"url": 3, "files": {}}', b"not json",
                                      b'{"url": "URL", "files": []}', b'{"url": "URL", "files": {"test/0.tar": -5}}',
                                      b'\xef\xbb\xbf{"url": "URL", "files": {"test/0.tar": "big"}}'])
def test_a_damaged_download_manifest_is_ignored(served, tmp_path, manifest, caplog):
    url = f"{served.url}/flickr8k"
    folder, _ = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    (folder / "manifest.json").write_bytes(manifest.replace(b"URL", url.encode()))
    served.requests.clear()
    fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert served.requests  # checked against the server again
    assert same_tree(served.root / "flickr8k", folder)
    served.requests.clear()
    fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert served.requests == []  # and whole again


def test_a_local_folder_is_never_repaired(served, tmp_path):
    """A --data-dir folder holding a manifest.json of the cache's shape is still the user's: a
    damaged shard there is reported, never deleted."""
    url = f"{served.url}/flickr8k"
    folder, _ = fetch_dataset("flickr8k", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    local = tmp_path / "mine"
    shutil.copytree(folder, local)
    (local / "test/1.tar").write_bytes(b"<html></html>" * 100)
    with pytest.raises(DatasetError) as err:
        read_dataset("flickr8k", local, "test", "fail")
    assert "test/1.tar" in err.value.message and "replace the damaged shard" in err.value.remedy
    assert (local / "test/1.tar").read_bytes() == b"<html></html>" * 100
    assert "test/1.tar" in json.loads((local / "manifest.json").read_text())["files"]


# --- a huge shard count (finding F39) -------------------------------------------------------------

@pytest.mark.parametrize("nshards", [4, 1000, 1_000_000])
def test_a_shard_count_beyond_the_shards_there_fails_with_bounded_tasks(served, tmp_path, monkeypatch, nshards):
    """nshards.txt says more shards than the server has (3): the download fails on the first
    missing one with a DatasetError, the shards before it kept, and at no time are there more
    than CONCURRENCY workers (the old code made one task per shard: a million for 1,000,000)."""
    import asyncio

    from clipeval.engine.datasets import sources

    (served.root / "flickr8k/test/nshards.txt").write_text(f"{nshards}\n")
    peak = [0]
    real_fetch = sources.Fetcher.fetch
    refused = asyncio.Event()  # the server has said 3.tar is not there

    async def counting_fetch(self, session, rel, optional=False):
        peak[0] = max(peak[0], len(asyncio.all_tasks()))
        if rel in ("test/0.tar", "test/1.tar", "test/2.tar"):
            # the worst order: shards before the missing one are still in flight when it is refused
            await refused.wait()
            return await real_fetch(self, session, rel, optional)
        try:
            return await real_fetch(self, session, rel, optional)
        except Exception:
            refused.set()
            raise

    monkeypatch.setattr(sources.Fetcher, "fetch", counting_fetch)
    with pytest.raises(DatasetError) as err:
        fetch_dataset("flickr8k", "test", url=f"{served.url}/flickr8k", cache_dir=tmp_path / "c", progress=False)
    assert "test/3.tar is not on the server" in err.value.message and f"says {nshards} shards" in err.value.message
    assert peak[0] <= sources.CONCURRENCY + 1  # the workers and the main task
    shard_requests = [p for p, _ in served.requests if p.endswith(".tar")]
    assert len(shard_requests) <= 3 + sources.CONCURRENCY  # 0..2, then at most one missing one per worker
    folder = cache_folder("flickr8k", f"{served.url}/flickr8k", tmp_path / "c")
    assert all((folder / f"test/{i}.tar").is_file() for i in range(3))


def test_every_shard_is_fetched_once_by_the_workers(served, tmp_path):
    write_retrieval_set(served.root / "many", n=22, per_shard=1)  # 22 shards, more than CONCURRENCY
    url = f"{served.url}/many"
    folder, _ = fetch_dataset("many", "test", url=url, cache_dir=tmp_path / "c", progress=False)
    shards = sorted(p for p, _ in served.requests if p.endswith(".tar"))
    assert shards == sorted(f"many/test/{i}.tar" for i in range(22))
    assert same_tree(served.root / "many", folder)


# --- a side file answered with a web page is never kept (brk2 K1) --------------------------------

SIDE_FILES = ["classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt", "test/nshards.txt"]


@pytest.mark.parametrize("page", list(PAGES))
@pytest.mark.parametrize("name", SIDE_FILES)
def test_a_side_file_answered_once_with_a_web_page_is_fetched_again_within_the_run(served, tmp_path, name, page):
    """The repro: classnames.txt answered with a 9-line HTML page became 9 class names (labels 0..5
    in range: a run with wrong names, kept for every later run)."""
    if name == "dataset_type.txt":  # the classification set has none: use the retrieval set's
        rel, dataset = f"flickr8k/{name}", "flickr8k"
    else:
        rel, dataset = f"vtab-cifar10/{name}", "vtab/cifar10"
    served.bad[rel] = [f"page: {page}"]
    opts = dict(dataset_url=f"{served.url}/{{name}}", cache_dir=tmp_path / "cache", progress=False)
    if dataset == "flickr8k":
        ds = read_dataset(dataset, None, "test", "fail", **opts)
        assert ds.num_images == 9
    else:
        ds = read_classification_dataset(dataset, None, "test", "fail", **opts)
        assert ds.num_images == 12 and ds.classnames == [f"class{i}" for i in range(6)]
    assert [p for p, _ in served.requests].count(rel) == 2
    folder = cache_folder(rel.split("/")[0], f"{served.url}/{rel.split('/')[0]}", tmp_path / "cache")
    local = rel.split("/", 1)[1]
    assert (folder / local).read_bytes() == (served.root / rel).read_bytes()


@pytest.mark.parametrize("name", SIDE_FILES)
def test_a_server_that_keeps_sending_a_web_page_for_a_side_file_is_an_error_and_nothing_is_kept(served, tmp_path,
                                                                                                 name):
    rel = f"vtab-cifar10/{name}"
    if not (served.root / rel).exists():
        (served.root / rel).write_text("classification\n")
    served.bad[rel] = ["page: doctype page"] * 5
    url = f"{served.url}/vtab-cifar10"
    with pytest.raises(DatasetError) as err:
        fetch_dataset("vtab-cifar10", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert name in err.value.message and "web page" in err.value.message
    folder = cache_folder("vtab-cifar10", url, tmp_path / "cache")
    files = json.loads((folder / "manifest.json").read_text())["files"] if (folder / "manifest.json").exists() else {}
    assert name not in files and not (folder / name).exists() and not list(folder.rglob("*.part"))
    served.requests.clear()  # the server is fixed: the next run fetches that file (and what was not reached)
    fetch_dataset("vtab-cifar10", "test", url=url, cache_dir=tmp_path / "cache", progress=False)
    assert (folder / name).read_bytes() == (served.root / rel).read_bytes()


@pytest.mark.parametrize("page", list(PAGES))
def test_a_web_page_an_earlier_version_cached_as_class_names_is_dropped_and_fetched_again(served, tmp_path, page):
    """A cache filled before pages were refused: the manifest vouches for the page (its size), the
    reader refuses it, drops it, and the next run fetches the real file."""
    opts = dict(dataset_url=f"{served.url}/{{name}}", cache_dir=tmp_path / "cache", progress=False)
    read_classification_dataset("vtab/cifar10", None, "test", "fail", **opts)
    folder = cache_folder("vtab-cifar10", f"{served.url}/vtab-cifar10", tmp_path / "cache")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "classnames.txt").write_bytes(PAGES[page])
    manifest["files"]["classnames.txt"] = len(PAGES[page])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError) as err:
        read_classification_dataset("vtab/cifar10", None, "test", "fail", **opts)
    assert "web page" in err.value.message and "removed from the download cache" in err.value.remedy
    served.requests.clear()
    ds = read_classification_dataset("vtab/cifar10", None, "test", "fail", **opts)
    assert ds.classnames == [f"class{i}" for i in range(6)]
    assert [p for p, _ in served.requests] == ["vtab-cifar10/classnames.txt"]
