"""Dataset side files (issue 10's kind): nshards.txt (tests/test_wds.py), dataset_type.txt,
classnames.txt, zeroshot_classification_templates.txt, --classnames-file / --templates-file
(text, or JSON: a list, keyed by dataset, CuPL). Each problem names the file and its line or
entry; no content ends in a traceback."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.datasets import read_classification_dataset, read_dataset
from clipeval.engine.errors import ClipevalError, DatasetError
from wdsgen import write_classification_set

NAMES = [f"class{c}" for c in range(6)]
BOM = "\ufeff"


@pytest.fixture
def folder(tmp_path):
    write_classification_set(tmp_path / "mnist", n=12, n_classes=6, per_shard=5)
    return tmp_path / "mnist"


def _read(root, **files):
    return read_classification_dataset("mnist", root, "test", "fail", **files)


# file name -> content -> expected: ("ok", classnames or templates) or ("error", words...)
FOLDER_FILES = [
    ("classnames.txt", "", ("error", "classnames.txt holds no class names")),
    ("classnames.txt", "\n  \n\n", ("error", "holds no class names")),
    ("classnames.txt", BOM + "".join(f"{n}\n" for n in NAMES), ("ok", NAMES)),
    ("classnames.txt", "".join(f"{n}\r\n" for n in NAMES), ("ok", NAMES)),
    ("classnames.txt", "\n".join(NAMES[:3] + ["", "   "] + NAMES[3:]) + "\n\n", ("ok", NAMES)),
    ("classnames.txt", "\n".join(NAMES[:5] + ["class1"]), ("error", "duplicate class name", "'class1'",
                                                            "classnames.txt:2", "classnames.txt:6")),
    ("classnames.txt", b"class0\nclass\xff1\n", ("error", "classnames.txt:2", "not UTF-8")),
    ("classnames.txt", None, ("error", "classnames.txt is a directory")),
    ("zeroshot_classification_templates.txt", "a photo of a {c}.\na photo\nthe {C}\n",
     ("error", "2 bad template", "templates.txt:2", "templates.txt:3", "has no {c}")),
    ("zeroshot_classification_templates.txt", "", ("error", "holds no templates")),
    ("zeroshot_classification_templates.txt", BOM + "{c}\n a {c} \n", ("ok", ["{c}", "a {c}"])),
    ("zeroshot_classification_templates.txt", "{c} and {c}, {0} {}\n", ("ok", ["{c} and {c}, {0} {}"])),
    ("zeroshot_classification_templates.txt", b"a \xc3\x28 {c}\n", ("error", "templates.txt:1", "not UTF-8")),
    ("dataset_type.txt", "multi label\n", ("error", "dataset_type.txt:1", "'multi label'", "classification")),
    ("dataset_type.txt", "", ("error", "dataset_type.txt is empty")),
    ("dataset_type.txt", "classification\nretrieval\n", ("error", "dataset_type.txt:2", "a second line")),
    ("dataset_type.txt", BOM + "Classification\r\n", ("ok", NAMES)),
    ("dataset_type.txt", "<html><body>Not Found</body></html>", ("error", "dataset_type.txt is a web page")),
    # a web page saved in place of a side file (brk2 K1): its lines would pass for names or templates
    ("classnames.txt", "<!DOCTYPE html>\n<html>\n<head>\n<title>x</title>\n</head>\n<body>\nlogin\n</body>\n</html>\n",
     ("error", "classnames.txt is a web page", "'<!DOCTYPE html>")),
    ("classnames.txt", BOM + "\n <HTML><BODY>Just a moment...</BODY></HTML>", ("error", "is a web page")),
    ("zeroshot_classification_templates.txt", "<html><body>a photo of a {c}</body></html>\n",
     ("error", "templates.txt is a web page")),
    ("classnames.txt", "<unk>\n<b>bold</b>\nhtml\nclass3\nclass4\nclass5\n",
     ("ok", ["<unk>", "<b>bold</b>", "html", "class3", "class4", "class5"])),
    ("dataset_type.txt", "retrieval", ("error", "is a retrieval dataset")),
]


@pytest.mark.parametrize("name, content, expected", FOLDER_FILES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FOLDER_FILES)])
def test_folder_side_files(folder, name, content, expected):
    path = folder / name
    if content is None:
        path.unlink(missing_ok=True)
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    if expected[0] == "ok":
        ds = _read(folder)
        assert (ds.templates if "templates" in name else ds.classnames) == expected[1]
        return
    with pytest.raises(DatasetError) as err:
        _read(folder)
    text = str(err.value)
    for words in expected[1:]:
        assert words in text, (words, text)
    assert err.value.remedy


# (suffix, content, which file) -> expected
CUSTOM_FILES = [
    (".json", {"mnist": NAMES}, "classnames", ("ok", NAMES)),
    (".json", {"other": NAMES, "mnist-x": NAMES}, "classnames", ("error", "no entry for dataset 'mnist'", "'other'")),
    (".json", NAMES, "classnames", ("ok", NAMES)),
    (".json", {"mnist": 3}, "classnames", ("error", "['mnist']", "must be a list", "int 3")),
    (".json", [1, "b"], "classnames", ("error", "names.json[0]", "not int 1")),
    (".json", ["a", None, ""], "classnames", ("error", "names.json[1]", "not null", "names.json[2]")),
    (".json", [], "classnames", ("error", "holds no class names")),
    (".json", NAMES[:5] + ["class0"], "classnames", ("error", "duplicate class name", "names.json[0]", "names.json[5]")),
    (".json", None, "classnames", ("error", "must be a list", "null")),
    (".json", json.dumps("class0"), "classnames", ("error", "must be a list", "str")),
    (".json", "{not json", "classnames", ("error", "is not valid JSON")),
    (".json", BOM + json.dumps(NAMES), "classnames", ("ok", NAMES)),
    (".txt", "\n".join(NAMES), "classnames", ("ok", NAMES)),
    (".txt", json.dumps(NAMES), "classnames", ("ok", NAMES)),  # JSON in a .txt file is read as JSON
    (".txt", "", "classnames", ("error", "holds no class names")),
    (".json", ["a photo of a {c}."], "templates", ("ok", ["a photo of a {c}."])),
    (".json", {"mnist": ["{c}", "a {c}"]}, "templates", ("ok", ["{c}", "a {c}"])),
    (".json", ["a photo"], "templates", ("error", "templates.json[0]", "has no {c}")),
    (".json", [], "templates", ("error", "holds no templates")),
    (".json", {"mnist": "a {c}"}, "templates", ("error", "must be a list")),
    (".json", {n: [f"a photo of {n}", f"{n}!"] for n in NAMES}, "templates", ("cupl", 2)),
    (".json", {"mnist": {n: [f"a photo of {n}"] for n in NAMES}}, "templates", ("cupl", 1)),
    (".json", {n: [f"a photo of {n}"] for n in NAMES[:4]}, "templates", ("error", "['class4']", "no prompts")),
    (".json", {**{n: [f"a photo of {n}"] for n in NAMES[:5]}, "class5": []}, "templates",
     ("error", "['class5']", "non-empty list")),
    (".json", {**{n: [f"a photo of {n}"] for n in NAMES[:5]}, "class5": [None]}, "templates",
     ("error", "['class5'][0]", "null")),
    (".txt", "a {c}\nno class here\n", "templates", ("error", "templates.txt:2", "has no {c}")),
]


@pytest.mark.parametrize("suffix, content, which, expected", CUSTOM_FILES,
                         ids=[f"{w}-{i}" for i, (_, _, w, _) in enumerate(CUSTOM_FILES)])
def test_custom_classnames_and_templates_files(folder, tmp_path, suffix, content, which, expected):
    path = tmp_path / (("names" if which == "classnames" else "templates") + suffix)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    files = {f"{which}_file": path}
    if expected[0] == "ok":
        ds = _read(folder, **files)
        assert (ds.classnames if which == "classnames" else ds.templates) == expected[1]
        return
    if expected[0] == "cupl":
        ds = _read(folder, **files)
        assert sorted(ds.templates) == NAMES and all(len(v) == expected[1] for v in ds.templates.values())
        return
    with pytest.raises(DatasetError) as err:
        _read(folder, **files)
    text = str(err.value)
    assert path.name in text
    for words in expected[1:]:
        assert words in text, (words, text)


def test_a_missing_custom_file_is_named(folder, tmp_path):
    with pytest.raises(ClipevalError, match="does not exist"):
        _read(folder, classnames_file=tmp_path / "nope.json")


def test_cli_says_it_in_one_line_with_exit_status_2(tiny_bundle, folder, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"mnist": ["a photo"]}))
    r = CliRunner().invoke(cli, ["eval", "--model", str(tiny_bundle), "--dataset", "mnist", "--data-dir", str(folder),
                                 "--templates-file", str(tmp_path / "t.json"), "--output-dir", str(tmp_path / "o"),
                                 "--quiet"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.startswith("error: ") and "t.json ['mnist'][0]" in r.stderr and "{c}" in r.stderr


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("side-files") / "mnist"
    write_classification_set(root, n=4, n_classes=6, per_shard=2)
    return root


_content = st.one_of(st.binary(max_size=60), st.text(max_size=60),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                                  | st.text(max_size=8),
                                  lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                                      st.sampled_from(["mnist", "cifar10", "class0", "a"]), inner, max_size=3),
                                  max_leaves=8).map(lambda v: json.dumps(v)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(["classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt",
                              "test/nshards.txt", "custom classnames.json", "custom templates.json",
                              "custom templates.txt"]),
       content=_content)
def test_any_side_file_content_is_read_or_refused_with_a_dataset_error(base_folder, which, content):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mnist"
        shutil.copytree(base_folder, root)
        files = {}
        target = Path(tmp) / which.split()[-1] if which.startswith("custom") else root / which
        if which.startswith("custom"):
            files[f"{which.split()[1].split('.')[0]}_file"] = target
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
        try:
            ds = _read(root, **files)
        except ClipevalError as exc:
            assert exc.message.strip() and "Traceback" not in str(exc)
            return
        assert ds.num_images == 4 and len(ds.classnames) >= 1
        assert all(isinstance(c, str) and c for c in ds.classnames)


def test_retrieval_side_files_too(tmp_path):
    from wdsgen import write_retrieval_set

    write_retrieval_set(tmp_path, n=3, per_shard=3)
    (tmp_path / "dataset_type.txt").write_bytes(b"\xef\xbb\xbfretrieval\r\n")
    assert read_dataset("muge", tmp_path, "test", "fail").num_images == 3
    (tmp_path / "dataset_type.txt").write_text("retrievals\n")
    with pytest.raises(DatasetError, match="dataset_type.txt:1"):
        read_dataset("muge", tmp_path, "test", "fail")


# --- files that never end or block: a FIFO, /dev/zero, a huge file (finding F35) -----------------

import os  # noqa: E402


def _not_regular(tmp_path, kind, name="x"):
    """A path of ``kind``: ``fifo`` (no writer: opening it for reading would block), ``zero`` (a
    link to /dev/zero: reading it never ends) or ``dir``."""
    path = tmp_path / f"{kind}-{name}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    return path


KINDS = {"fifo": "a FIFO (named pipe), not a regular file", "zero": "a character device, not a regular file",
         "dir": "is a directory"}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("which", ["classnames", "templates"])
def test_a_custom_side_file_that_is_not_a_regular_file_is_refused(folder, tmp_path, kind, which):
    path = _not_regular(tmp_path, kind, which)
    with pytest.raises(DatasetError) as err:
        _read(folder, **{f"{which}_file": path})
    assert str(path) in err.value.message and KINDS[kind] in err.value.message


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", ["classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt"])
def test_a_folder_side_file_that_is_not_a_regular_file_is_refused(folder, tmp_path, kind, name):
    shutil.rmtree(folder / name, ignore_errors=True)
    (folder / name).unlink(missing_ok=True) if (folder / name).is_file() else None
    made = _not_regular(tmp_path, kind, name)
    os.symlink(made, folder / name) if kind != "dir" else shutil.move(made, folder / name)
    with pytest.raises(DatasetError) as err:
        _read(folder)
    assert name in err.value.message and KINDS[kind] in err.value.message


def test_a_side_file_larger_than_the_bound_is_refused_after_reading_the_bound(folder, tmp_path, monkeypatch):
    from clipeval.engine.datasets import sidefiles

    monkeypatch.setattr(sidefiles, "MAX_SIDE_FILE_BYTES", 1000)
    big = tmp_path / "names.txt"
    big.write_text("".join(f"class{i}\n" for i in range(500)))  # about 4 kB
    with pytest.raises(DatasetError, match="larger than"):
        _read(folder, classnames_file=big)
    small = tmp_path / "few.txt"
    small.write_text("".join(f"{n}\n" for n in NAMES))
    assert _read(folder, classnames_file=small).classnames == NAMES


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_rows_files_and_annotation_files_that_are_not_regular_are_refused(tmp_path, kind):
    from clipeval.engine.datasets.beir import read_beir

    for folder, name, read in [
        ("custom", "image_queries.jsonl", lambda d: read_dataset("custom", d, "test", "fail")),
        ("coco", "coco_test_karpathy.json", lambda d: read_dataset("mscoco_captions", d, "test", "fail")),
        ("flickr", "flickr8k_test_karpathy.txt", lambda d: read_dataset("flickr8k", d, "test", "fail")),
        ("beir", "corpus.jsonl", read_beir),
        ("beir2", "qrels/test.tsv", read_beir),
    ]:
        d = tmp_path / kind / folder
        (d / "qrels").mkdir(parents=True)
        for other in ("corpus.jsonl", "queries.jsonl"):
            (d / other).write_text('{"_id": "a", "text": "t"}\n')
        (d / "qrels.jsonl").write_text('{"query-id": "a", "corpus-id": "a"}\n')
        target = d / name
        target.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(target)
        else:
            target.symlink_to("/dev/zero")
        with pytest.raises(DatasetError) as err:
            read(d)
        assert f"{target} is {KINDS[kind]}" in err.value.message, (name, err.value.message)


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_result_file_that_is_not_regular_is_passed_over_never_read(tmp_path, kind):
    """--skip-existing reads results back (README: one that cannot be read is computed again):
    a FIFO or /dev/zero at a result's name is neither read nor replaced."""
    from clipeval.engine.results.layout import Slot, destination, find_existing, read_result

    primary = tmp_path / "m" / "custom_zeroshot_retrieval.json"
    primary.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(primary)
    else:
        primary.symlink_to("/dev/zero")
    slot = Slot.make("b" * 64, "fp32", None, str(tmp_path), "test")
    assert read_result(primary) is None
    assert find_existing(primary, slot, "k") is None
    assert destination(primary, slot) == primary.with_name(f"custom_zeroshot_retrieval.{slot.digest[:8]}.json")


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_the_data_fingerprint_never_reads_a_fifo_or_a_device(tmp_path, kind):
    from clipeval.engine.datasets.fingerprint import data_fingerprint

    d = tmp_path / "d"
    d.mkdir()
    target = d / "image_queries.jsonl"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    names = tmp_path / "names"
    os.mkfifo(names)
    assert len(data_fingerprint("custom", d, "test", classnames_file=names)) == 64


PAGE_STARTS = ["<!DOCTYPE html>", "<!doctype HTML PUBLIC>", "<html>", "<HTML lang=en>", "<head>", "<body>",
               '<?xml version="1.0"?>', "<html/>", "<html", "<BODY\tclass=x>"]
NOT_PAGES = ["cat\ndog", "<unk>", "<b>bold</b>", "a photo of a <{c}>", "", "  ", "html", "htm<html>", "<htm",
             "<bodyguard>", "<header>x</header>", "<htmlish>", "<?xmlfoo", "1\n"]


@pytest.mark.parametrize("start", PAGE_STARTS)
@pytest.mark.parametrize("before", ["", "\ufeff", "\n\n", " \t\r\n", "\ufeff  \n"])
def test_html_page_sees_a_page_however_it_starts(start, before):
    from clipeval.engine.datasets.sidefiles import html_page

    assert html_page((before + start + "\n<p>x</p>").encode("utf-8"))


@pytest.mark.parametrize("text", NOT_PAGES)
def test_html_page_passes_side_files(text):
    from clipeval.engine.datasets.sidefiles import html_page

    assert not html_page(text.encode("utf-8"))
