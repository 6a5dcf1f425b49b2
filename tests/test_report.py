"""``clipeval report``: the page's content against the result and detail files, its bounds, and
its failures."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from markupsafe import escape
from PIL import Image

from clipeval.cli.main import cli
from clipeval.engine.results.compare import compare_results
from clipeval.engine.results.detail import RetrievalDetail, load_detail
from clipeval.engine.results.report.build import SHOWN_TOP_K, worst_retrieval
from clipeval.engine.results.report.plots import recall_curve
from clipeval.engine.results.report.thumbs import MAX_THUMBNAILS, ThumbnailBudget
from clipeval.engine.results.read import read_result
from resultgen import evaluate, image_dataset


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_failure(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    assert result.stderr.count("error:") == 1
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


class Page(HTMLParser):
    """Tags with their attributes, and the text inside each table cell of the leaderboard."""

    def __init__(self, text):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self._in_board = False
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._in_board = attrs.get("id") == "leaderboard"
        elif self._in_board and tag == "tr":
            self.rows.append([])
        elif self._in_board and tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_board = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def two_runs(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    rows_extra = [{"image_path": "img0.png", "query": ["<b>bold & 'quoted'</b>"]}]
    data = image_dataset(root / "ds")
    with open(data / "image_queries.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(rows_extra[0]) + "\n")
    file_a, _ = evaluate(tiny_bundle, data, root / "a")
    file_b, _ = evaluate("demo", data, root / "b")
    return root, data, file_a, file_b


def test_report_shows_the_results_their_comparison_and_worst_queries(two_runs, tmp_path):
    root, data, file_a, file_b = two_runs
    out = tmp_path / "r" / "report.html"
    r = run("report", root / "a", root / "b", "-o", out)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["report"] == str(out) and summary["results"] == 2
    text = out.read_text(encoding="utf-8")
    page = Page(text)

    # the leaderboard: one row per model, the headline metrics as the result files hold them
    a, b = read_result(file_a), read_result(file_b)
    headline = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)]
    board = {row[0]: row[1:] for row in page.rows if row}
    assert set(board) == {a.model, b.model}
    leader, other = (a, b) if a.metrics[headline[0]] >= b.metrics[headline[0]] else (b, a)
    comparison = compare_results(leader, other)
    for result in (a, b):
        for cell, name in zip(board[result.model], headline):
            assert cell.startswith(f"{result.metrics[name]:.3f}")
    for cell, name in zip(board[other.model], headline):  # the other row carries B - A and its interval
        m = comparison["metrics"][name]
        p = m["mcnemar"]["p_value"]
        p_text = "p<0.001" if p < 0.001 else f"p={p:.3f}"
        assert cell == f"{other.metrics[name]:.3f}{m['diff']:+.3f} {p_text}[{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}]"
    assert len(page.find("th", title=headline[0])) == 1

    # curves and thumbnails, all inline
    assert text.count("<svg") == 1 and 'class="curve"' in text
    thumbs = [t for t in page.find("img") if t["src"].startswith("data:image/jpeg;base64,")]
    assert thumbs and len(thumbs) == len(page.find("img"))
    assert 0 < summary["thumbnails"]["count"] == len(thumbs) <= MAX_THUMBNAILS

    # worst text -> image queries: positives ranked lowest first, as the detail says
    detail = load_detail(other.path, other.data)
    misses = np.flatnonzero(detail.t2i_rank > 0)
    worst = misses[np.lexsort((misses, -detail.t2i_rank[misses]))][:8]
    section = text[text.index(f"Worst queries · {other.model}"):]
    section = section[:section.index("image → text: the images")]
    assert section.count('<div class="query">') == len(worst) > 0
    at = 0
    for t in worst:  # in this order (texts repeat, so each is looked for after the one before)
        at = section.index(f'<div class="query">{escape(detail.texts[t])}<div class="rank">positive at rank '
                           f'{detail.t2i_rank[t] + 1}</div>', at) + 1
    assert str(escape("<b>bold & 'quoted'</b>")) in text and "<b>bold" not in text


def test_the_page_needs_no_network(two_runs, tmp_path):
    root, *_ = two_runs
    out = tmp_path / "report.html"
    assert run("report", root / "a", root / "b", "-o", out, "--quiet").exit_code == 0
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "data"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, key, value[:80])
    assert not re.search(r"url\(\s*['\"]?(?!data:|#)", text) and "@import" not in text
    for url in re.findall(r"https?://[^\s\"'<>)]+", text):  # only XML namespace names, which nothing fetches
        assert url in ("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"), url


def test_recall_curve_equals_the_definition():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 70, 300)
    ks, values = recall_curve(ranks, gallery=70)
    assert ks.tolist() == list(range(1, 51))
    assert values.tolist() == [np.mean(ranks < k) for k in range(1, 51)]
    ks, values = recall_curve(np.array([0, 0, 2, 1]), gallery=3)
    assert ks.tolist() == [1, 2, 3] and values.tolist() == [2 / 4, 3 / 4, 4 / 4]


def test_worst_retrieval_lists(tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(p)
        paths.append(str(p))
    t2i_rank = np.array([0, 4, 2, 4, 1, 0, 5, 3])
    text_to_image = np.array([0, 1, 2, 3, 4, 5, 0, 1])
    t2i_topk = np.array([[(p + j) % 6 for j in range(6)] for p in text_to_image])
    i2t_rank = np.array([1, 0, 2, -1, 3, 3])
    i2t_topk = np.tile(np.arange(8), (6, 1))
    detail = RetrievalDetail(None, text_to_image, t2i_rank, t2i_topk, i2t_rank, i2t_topk,
                             [f"t{t}" for t in range(8)], paths)
    got = worst_retrieval(detail, ThumbnailBudget(), n=4)
    assert [q["text"] for q in got["t2i"]] == ["t6", "t1", "t3", "t7"]  # rank 5, then 4 (lower index first), then 3
    assert [q["rank"] for q in got["t2i"]] == [6, 5, 5, 4]
    first = got["t2i"][0]
    assert first["positive"]["id"] == paths[0] and first["positive"]["uri"].startswith("data:image/jpeg;base64,")
    assert [x["hit"] for x in first["retrieved"]] == [True] + [False] * (SHOWN_TOP_K - 1)
    assert [q["rank"] for q in got["i2t"]] == [4, 4, 3, 2]  # images 4, 5, 2, 0; image 3 has no text
    assert got["i2t"][0]["captions"] == ["t4"] and got["i2t"][3]["captions"] == ["t0", "t6"]
    assert [x["hit"] for x in got["i2t"][3]["retrieved"]] == [True, False, False, False, False]


def test_thumbnail_budget(tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(big, quality=95)
    budget = ThumbnailBudget(max_count=3)
    uris = [budget.uri(str(big)) for _ in range(5)]
    assert all(u is not None for u in uris[:3]) and uris[3:] == [None, None]
    assert budget.count == 3 and budget.left_out == 2 and budget.bytes == 3 * len(uris[0])
    thumb = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert max(thumb.size) == 96 and thumb.format == "JPEG"
    small = ThumbnailBudget(max_bytes=len(uris[0]) + 10)
    assert small.uri(str(big)) is not None and small.uri(str(big)) is None and small.left_out == 1
    # not files, or not images: no thumbnail, nothing counted
    (tmp_path / "notimage.jpg").write_bytes(b"no")
    none = ThumbnailBudget()
    assert none.uri("test/0.tar#s0001") is None and none.uri(str(tmp_path / "notimage.jpg")) is None
    assert none.count == 0 and none.left_out == 0


def test_report_of_classification_and_of_results_without_detail(tiny_bundle, two_runs, tmp_path):
    from wdsgen import write_classification_set

    root, data, *_ = two_runs
    cls = tmp_path / "cls"
    write_classification_set(cls, n=12, n_classes=6, per_shard=5)
    evaluate(tiny_bundle, cls, tmp_path / "c", dataset="imagenet1k")
    evaluate("demo", data, tmp_path / "nd", "--detail", "off")
    out = tmp_path / "report.html"
    r = run("report", tmp_path / "c", tmp_path / "nd", root / "a", "-o", out)
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    assert text.count("<svg") == 2 and "<!-- image → class -->" in text  # the classification set's top-k accuracy
    r = run("report", root / "a", "-o", tmp_path / "none.html", "--worst", 0)
    assert r.exit_code == 0 and "Worst queries" not in (tmp_path / "none.html").read_text(encoding="utf-8")
    assert "imagenet1k" in text and "acc@1" in text and "No per-query detail: " in text
    assert "no interval:" in text and "--detail on" in text


def test_report_failures_are_one_clear_error(two_runs, tmp_path, monkeypatch):
    root, *_ = two_runs
    (tmp_path / "folder").mkdir()
    assert_clean_failure(run("report", root / "a", "-o", tmp_path / "folder"), "is a folder")
    assert_clean_failure(run("report", root / "a", "-o", ""), "-o is empty")  # K13: not "-o . is a folder"
    (tmp_path / "file").write_text("x")
    assert_clean_failure(run("report", root / "a", "-o", tmp_path / "file" / "r.html"), "-o")
    assert_clean_failure(run("report", tmp_path / "missing", "-o", tmp_path / "r.html"), "does not exist")
    assert_clean_failure(run("report", tmp_path / "folder", "-o", tmp_path / "r.html"), "no zeroshot_retrieval")
    r = run("report", "-o", tmp_path / "r.html")
    assert r.exit_code == 2 and "Traceback" not in r.output
    for module in ("jinja2", "matplotlib"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # as if not installed
            assert_clean_failure(run("report", root / "a", "-o", tmp_path / "r.html"), module,
                                 "pip install 'clipeval[report]'")


def test_the_engine_and_the_cli_do_not_import_the_report_extra():
    code = ("import sys, clipeval.cli.main, clipeval.engine.runner, clipeval.engine.results.compare, clipeval.engine.results.report, "
            "clipeval.engine.results.detail\n"
            "print(sorted(m for m in ('jinja2', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


BAD_TEXT_VALUES = ([1], {"a": 1}, 3, True, 1.5, ["x"])


@pytest.mark.parametrize("key", ["precision", "language", "split", "data_fingerprint", "data_dir"])
def test_a_result_whose_meta_text_field_is_not_text_is_refused_or_passed_over(two_runs, tmp_path, key):
    """F22: every meta field read back as text, of every other JSON type: a file named is one
    clean error, a file found in a folder is passed over; never an internal error."""
    root, data, file_a, file_b = two_runs
    for i, value in enumerate(BAD_TEXT_VALUES):
        folder = tmp_path / f"bad{i}"
        folder.mkdir()
        obj = json.loads(file_a.read_text(encoding="utf-8"))
        obj["meta"][key] = value
        bad = folder / "bad.json"
        bad.write_text(json.dumps(obj), encoding="utf-8")
        assert_clean_failure(run("report", bad, "-o", tmp_path / "r.html"), f"'meta.{key}' is not a string")
        r = run("report", folder, root / "b", "-o", tmp_path / "r.html")
        assert r.exit_code == 0, (value, r.output)
        assert json.loads(r.stdout)["results"] == 1


def test_report_counts_the_results_it_shows(two_runs, tmp_path):
    """F40: the JSON line counts what the page shows; a path given twice is read once, without a warning."""
    import shutil

    root, data, file_a, file_b = two_runs
    out = tmp_path / "r.html"
    r = run("report", root / "a", root / "a", file_a, "-o", out)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"] == 1 and "WARNING" not in r.stderr
    assert "1 model(s), 1 dataset(s), 1 result(s)" in out.read_text(encoding="utf-8")
    shutil.copytree(root / "a", tmp_path / "a2")  # another run of the same model on the same data
    r = run("report", root / "a", tmp_path / "a2", root / "b", "-o", out)
    assert r.exit_code == 0, r.output
    assert "the report shows the first" in r.stderr
    shown = json.loads(r.stdout)["results"]
    assert shown == 2 and f"2 model(s), 1 dataset(s), {shown} result(s)" in out.read_text(encoding="utf-8")


def _not_regular(path, kind):
    """Something at ``path`` that is not a regular file. A device is a link to /dev/null (never
    /dev/null itself: a regression would replace only the link)."""
    import os
    import socket

    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/null")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    return path


@pytest.mark.parametrize("kind", ["fifo", "device", "socket"])
def test_report_never_replaces_a_fifo_or_a_device(two_runs, tmp_path, kind):
    """K5: `-o /dev/null` (run as root) replaced /dev/null by the HTML file; a FIFO was replaced too.
    Refused before any work, the thing left as it was."""
    import os

    root, *_ = two_runs
    target = _not_regular(tmp_path / "r.html", kind)
    before = os.stat(target).st_mode
    assert_clean_failure(run("report", root / "a", "-o", target), "not a regular file")
    assert os.stat(target).st_mode == before and os.path.lexists(target)


def test_report_compare_and_export_take_a_tilde_as_the_home_folder(two_runs, tmp_path, monkeypatch):
    """K6 (the same kind for the other path arguments): `~` is the home folder for `report -o`, the
    PATHs of report and compare, and `export -o` (checked and written), never a folder named `~`."""
    import os
    import shutil

    import clipeval.export as export_pkg

    root, *_ = two_runs
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    shutil.copytree(root / "a", home / "a")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    r = run("report", "~/a", "-o", "~/r.html", "-q")
    assert r.exit_code == 0, r.output
    assert (home / "r.html").is_file()
    r = run("compare", "~/a", str(root / "a"), "-q")
    assert r.exit_code == 0, r.output
    seen = []
    monkeypatch.setattr(export_pkg, "export_checkpoint", lambda source, out, **kw: seen.append(out) or out)
    r = run("export", str(tmp_path), "-o", "~/bundle", "-q")
    assert r.exit_code == 0, r.output
    assert [os.fspath(p) for p in seen] == [os.fspath(home / "bundle")]
    assert not (cwd / "~").exists()
