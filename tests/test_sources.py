"""Downloads: a real HTTP server on 127.0.0.1 serves fixture webdatasets (and drops connections)."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clipeval.engine.datasets import read_classification_dataset, read_dataset
from clipeval.engine.datasets.sources import cache_folder, fetch_dataset
from clipeval.engine.errors import DatasetError
from wdsgen import write_classification_set, write_retrieval_set


class Server:
    """Serves ``root`` with Range support; counts requests; can cut chosen files short."""

    def __init__(self, root):
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.drop: dict[str, int] = {}  # path -> how many more times to cut it off mid-body
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rel = self.path.lstrip("/")
                server.requests.append((rel, self.headers.get("Range")))
                path = server.root / rel
                if ".." in rel or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


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
