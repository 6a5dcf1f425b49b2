"""Byte-order marks and Unicode encodings in every JSON file the project reads: the helper
(engine/textio.py) and the readers that use it (configs, bundles, result files)."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipeval.engine.sessions.bundle import load_bundle
from clipeval.engine.config import load_config_file
from clipeval.engine.demo import DEMO_MODEL_DIR
from clipeval.engine.results.layout import Slot, find_existing
from clipeval.engine.textio import json_lines, read_json, to_utf8

# (name, BOM bytes, codec): what editors and shells write
ENCODINGS = [
    ("utf-8", b"", "utf-8"),
    ("utf-8 bom", b"\xef\xbb\xbf", "utf-8"),
    ("utf-16-le bom", b"\xff\xfe", "utf-16-le"),
    ("utf-16-be bom", b"\xfe\xff", "utf-16-be"),
    ("utf-32-le bom", b"\xff\xfe\x00\x00", "utf-32-le"),
    ("utf-32-be bom", b"\x00\x00\xfe\xff", "utf-32-be"),
]


def encoded(text: str, bom: bytes, codec: str) -> bytes:
    return bom + text.encode(codec)


@given(text=st.text(st.characters(blacklist_categories=("Cs",))), which=st.sampled_from(ENCODINGS))
def test_to_utf8_round_trips_every_encoding(text, which):
    _, bom, codec = which
    if codec == "utf-16-le" and text.startswith("\x00"):
        text = "a" + text  # FF FE 00 00 is UTF-32-LE's mark: that file is read as UTF-32 (the next test)
    assert to_utf8(encoded(text, bom, codec)) == text.encode("utf-8")


def test_a_utf16_le_file_that_starts_with_nul_reads_as_the_utf32_le_mark_it_spells():
    """``FF FE 00 00`` is both UTF-16-LE's mark before a NUL and UTF-32-LE's mark; the longer mark
    wins, as every reader that sniffs marks decides (a text file does not begin with NUL)."""
    assert to_utf8(b"\xff\xfe\x00\x00" + "ab".encode("utf-32-le")) == b"ab"


def test_to_utf8_leaves_plain_bytes_alone_and_only_strips_a_leading_bom():
    assert to_utf8(b"abc") == b"abc"
    assert to_utf8(b"a\xef\xbb\xbfb") == b"a\xef\xbb\xbfb"  # a BOM in the middle is data
    assert to_utf8(b"\xff\xfe" + b"a\x00b\x00") == b"ab"
    assert to_utf8(b"\xff\xfea") == "\ufffd".encode()  # an odd byte of UTF-16 is marked, not fatal
    assert to_utf8(b"\xc3") == b"\xc3"  # invalid UTF-8 is left for the JSON parser to report


@pytest.mark.parametrize("name, bom, codec", ENCODINGS, ids=[e[0] for e in ENCODINGS])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_json_lines_and_read_json_in_every_encoding(tmp_path, name, bom, codec, newline):
    rows = [{"a": 1, "t": "ünï 猫 😀 \u2028"}, {"b": [1, 2]}]
    path = tmp_path / "x.jsonl"
    path.write_bytes(encoded(newline + newline.join(json.dumps(r, ensure_ascii=False) for r in rows) + newline,
                             bom, codec))
    assert [(n, json.loads(raw)) for n, raw in json_lines(path)] == [(2, rows[0]), (3, rows[1])]
    single = tmp_path / "x.json"
    single.write_bytes(encoded(json.dumps(rows, ensure_ascii=False), bom, codec))
    assert read_json(single) == rows


CONFIG = {"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {"batch_size": 4}}}
YAML = "eval_backend: RAGEval\neval_config:\n  tool: clip_benchmark\n  eval:\n    batch_size: 4\n"


@pytest.mark.parametrize("name, bom, codec", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_config_files_in_every_encoding(tmp_path, name, bom, codec):
    (tmp_path / "c.json").write_bytes(encoded(json.dumps(CONFIG), bom, codec))
    (tmp_path / "c.yaml").write_bytes(encoded(YAML.replace("\n", "\r\n"), bom, codec))
    assert load_config_file(tmp_path / "c.json") == CONFIG
    assert load_config_file(tmp_path / "c.yaml") == CONFIG


def test_a_bundle_whose_json_files_start_with_a_bom(tmp_path):
    from clipeval.engine.sessions.bundle import write_manifest

    root = tmp_path / "bundle"
    shutil.copytree(DEMO_MODEL_DIR, root)
    plain = load_bundle(DEMO_MODEL_DIR)
    pre = root / "preprocess.json"
    pre.write_bytes(b"\xef\xbb\xbf" + pre.read_bytes().replace(b"\n", b"\r\n"))
    write_manifest(root, json.loads((root / "manifest.json").read_bytes()))  # the new sha256 of preprocess.json
    (root / "manifest.json").write_bytes(b"\xef\xbb\xbf" + (root / "manifest.json").read_bytes())
    bundle = load_bundle(root)
    assert bundle.preprocess == plain.preprocess
    assert {k: v for k, v in bundle.manifest.items() if k != "files"} == \
        {k: v for k, v in plain.manifest.items() if k != "files"}


def test_a_result_file_with_a_bom_is_reused_by_skip_existing(tmp_path):
    result = {"dataset": "custom", "model": "m", "task": "zeroshot_retrieval", "metrics": {},
              "meta": {"bundle": {"identity": "abc"}, "precision": "fp32", "data_dir": "/d", "split": "test",
                       "params_key": "k1"}}
    slot = Slot("abc", "fp32", "en", "/d", "test")
    path = tmp_path / "r.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(result).encode())
    assert find_existing(path, slot, "k1") == (path, result)
    assert find_existing(path, slot, "k2") is None


# --- only regular files are read, and within a bound (finding F35) --------------------------------

def test_read_regular_refuses_fifos_devices_and_folders_and_bounds_size(tmp_path):
    import os

    import pytest

    from clipeval.engine.textio import FileTooLarge, NotRegularFile, read_json, read_regular

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    for path, kind in [(fifo, "a FIFO (named pipe)"), (zero, "a character device"), (tmp_path, "a directory")]:
        with pytest.raises(NotRegularFile) as err:
            read_regular(path)
        assert err.value.strerror == f"{kind}, not a regular file"
        with pytest.raises(OSError):
            read_json(path)
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert read_regular(f, 10) == b"x" * 10 and read_regular(f) == b"x" * 10
    with pytest.raises(FileTooLarge):
        read_regular(f, 9)
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")
