import json
import os

import numpy as np
import pytest
from PIL import Image

from clipeval.engine.datasets import read_dataset
from clipeval.engine.datasets.custom import read_custom
from clipeval.engine.errors import ConfigError, DatasetError


def _img(path, color=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def _write(data_dir, rows):
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "image_queries.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
            f.write("\n")


def test_reads_rows_merges_duplicates_and_resolves_paths(tmp_path, monkeypatch, caplog):
    d = tmp_path / "ds"
    _img(d / "images" / "a.png")
    _img(d / "images" / "b.png")
    absolute = _img(tmp_path / "elsewhere" / "c.png")
    _write(d, [
        {"image_path": "images/a.png", "query": ["a dog", "a puppy"]},
        {"image_path": "images/b.png", "query": "a cat"},            # bare string query
        {"image_path": str(absolute), "query": ["a bird"]},
        {"image_path": "images/./a.png", "query": ["a hound"]},      # same image again: merged
        "",                                                           # blank lines are ignored
    ])
    monkeypatch.chdir(tmp_path)
    ds = read_custom(d)
    assert ds.num_images == 3
    assert ds.texts == ["a dog", "a puppy", "a cat", "a bird", "a hound"]
    assert ds.text_to_image.tolist() == [0, 0, 1, 2, 0]
    assert ds.merged_rows == 1
    assert "merged" in caplog.text


def test_path_relative_to_working_directory_is_tried_first(tmp_path, monkeypatch):
    d = tmp_path / "ds"
    cwd_img = _img(tmp_path / "work" / "x.png", (0, 255, 0))
    _img(d / "x.png", (0, 0, 255))
    _write(d, [{"image_path": "x.png", "query": ["q"]}])
    monkeypatch.chdir(tmp_path / "work")
    ds = read_custom(d)
    assert os.path.samefile(ds.images[0], cwd_img)


def test_every_bad_row_is_reported_together_with_line_numbers(tmp_path):
    d = tmp_path / "ds"
    _img(d / "ok.png")
    _write(d, [
        {"image_path": "ok.png", "query": ["fine"]},
        '{"image_path": "ok.png", "query": ["broken"',
        {"query": ["no path"]},
        {"image_path": "ok.png", "query": []},
        {"image_path": "gone.png", "query": ["missing"]},
        {"image_path": "ok.png", "query": ["", "x"]},
        '["not", "an", "object"]',
        {"image_path": 3, "query": ["x"]},
    ])
    with pytest.raises(DatasetError) as info:
        read_custom(d)
    msg = str(info.value)
    assert "7 bad row(s)" in msg
    for line in range(2, 9):
        assert f"image_queries.jsonl:{line}:" in msg
    assert "not valid JSON" in msg
    assert 'no "image_path"' in msg
    assert "empty list" in msg
    assert "image not found (tried gone.png or" in msg
    assert str(d / "gone.png") in msg


def test_missing_images_can_be_skipped_and_are_listed(tmp_path):
    d = tmp_path / "ds"
    _img(d / "a.png")
    _write(d, [{"image_path": "gone.png", "query": ["x"]}, {"image_path": "a.png", "query": ["y"]}])
    with pytest.raises(DatasetError, match="--on-error skip"):
        read_custom(d)
    ds = read_custom(d, on_error="skip")
    assert ds.num_images == 1 and ds.texts == ["y"]
    assert len(ds.skipped) == 1 and "gone.png" in ds.skipped[0].reason


def test_malformed_rows_fail_even_when_skipping(tmp_path):
    d = tmp_path / "ds"
    _img(d / "a.png")
    _write(d, ["{oops", {"image_path": "a.png", "query": ["y"]}])
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_custom(d, on_error="skip")


def test_missing_jsonl_and_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="has no image_queries.jsonl"):
        read_custom(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_custom(tmp_path / "nope")


def test_limit_takes_exactly_the_first_images(tmp_path):
    d = tmp_path / "ds"
    rows = []
    for i in range(5):
        _img(d / f"{i}.png")
        rows.append({"image_path": f"{i}.png", "query": [f"q{i}a", f"q{i}b"]})
    _write(d, rows)
    ds = read_custom(d).limit(3)
    assert ds.num_images == 3
    assert ds.texts == ["q0a", "q0b", "q1a", "q1b", "q2a", "q2b"]
    assert ds.text_to_image.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.limited_from == 5


def test_drop_images_renumbers_texts(tmp_path):
    d = tmp_path / "ds"
    rows = []
    for i in range(4):
        _img(d / f"{i}.png")
        rows.append({"image_path": f"{i}.png", "query": [f"q{i}"]})
    _write(d, rows)
    ds, dropped = read_custom(d).drop_images({1})
    assert dropped == 1
    assert ds.texts == ["q0", "q2", "q3"]
    assert ds.text_to_image.tolist() == [0, 1, 2]
    assert np.issubdtype(ds.text_to_image.dtype, np.integer)


def test_unicode_path_with_spaces(tmp_path):
    d = tmp_path / "数据 集"
    _img(d / "图 片" / "猫 咪.png")
    _write(d, [{"image_path": "图 片/猫 咪.png", "query": ["一只猫"]}])
    ds = read_custom(d)
    assert ds.images[0].endswith("猫 咪.png") and ds.texts == ["一只猫"]


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available datasets: custom"):
        read_dataset("nope", None, "test", "fail")


# --- encodings: a byte-order mark, CRLF, blank lines, UTF-16/32 --------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BOM8 = b"\xef\xbb\xbf"

ROWS = [
    {"image_path": "a.png", "query": ["a red square", "ünïcödé 一只猫 😀"]},
    {"image_path": "b.png", "query": "line\u2028separator and \u0085 next-line inside a string"},
    {"image_path": "c.png", "query": ["tab\there", "  spaced  "]},
]


def _encode_rows(rows, *, bom=b"", newline="\n", encoding="utf-8", blank_first=0, trailing=True,
                 blank_between=False):
    lines = [""] * blank_first
    for r in rows:
        lines.append(json.dumps(r, ensure_ascii=False))
        if blank_between:
            lines.append("   ")
    text = newline.join(lines) + (newline if trailing else "")
    return bom + text.encode(encoding)


ENCODINGS = {
    "plain": {},
    "bom": {"bom": BOM8},
    "bom+crlf": {"bom": BOM8, "newline": "\r\n"},
    "bom+blank first line": {"bom": BOM8, "blank_first": 1},
    "bom+crlf+blank lines": {"bom": BOM8, "newline": "\r\n", "blank_first": 2, "blank_between": True},
    "bom+no final newline": {"bom": BOM8, "trailing": False},
    "crlf": {"newline": "\r\n"},
    "cr-less blank lines": {"blank_first": 3, "blank_between": True},
    "utf-16-le bom+crlf (PowerShell 5)": {"bom": b"\xff\xfe", "newline": "\r\n", "encoding": "utf-16-le"},
    "utf-16-be bom": {"bom": b"\xfe\xff", "encoding": "utf-16-be"},
    "utf-32-le bom": {"bom": b"\xff\xfe\x00\x00", "encoding": "utf-32-le"},
    "utf-32-be bom+crlf": {"bom": b"\x00\x00\xfe\xff", "newline": "\r\n", "encoding": "utf-32-be"},
}


def _oracle(rows):
    texts, owner = [], []
    for i, r in enumerate(rows):
        q = [r["query"]] if isinstance(r["query"], str) else r["query"]
        texts += q
        owner += [i] * len(q)
    return texts, owner


@pytest.mark.parametrize("variant", sorted(ENCODINGS))
def test_every_encoding_variant_reads_like_plain_utf8(tmp_path, variant):
    d = tmp_path / "ds"
    for name in ("a.png", "b.png", "c.png"):
        _img(d / name)
    (d / "image_queries.jsonl").write_bytes(_encode_rows(ROWS, **ENCODINGS[variant]))
    ds = read_custom(d)
    texts, owner = _oracle(ROWS)
    assert ds.texts == texts and ds.text_to_image.tolist() == owner
    assert [os.path.basename(p) for p in ds.images] == ["a.png", "b.png", "c.png"]


@pytest.mark.parametrize("variant", sorted(ENCODINGS))
def test_bad_row_line_numbers_count_every_physical_line_in_every_variant(tmp_path, variant):
    d = tmp_path / "ds"
    _img(d / "a.png")
    opts = ENCODINGS[variant]
    lines = [""] * opts.get("blank_first", 0) + [json.dumps(ROWS[0])] + (["   "] if opts.get("blank_between") else [])
    lines.append('{"image_path": "a.png", "query": [')  # the broken row, on the last physical line
    newline = opts.get("newline", "\n")
    text = newline.join(lines) + (newline if opts.get("trailing", True) else "")
    (d / "image_queries.jsonl").write_bytes(opts.get("bom", b"") + text.encode(opts.get("encoding", "utf-8")))
    with pytest.raises(DatasetError) as info:
        read_custom(d)
    assert f"image_queries.jsonl:{len(lines)}: not valid JSON" in str(info.value)
    assert "1 bad row(s)" in str(info.value)


@settings(max_examples=40, deadline=None)
@given(
    queries=st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
                              .filter(lambda q: q.strip()), min_size=1, max_size=3), min_size=1, max_size=5),
    variant=st.sampled_from(sorted(ENCODINGS)),
)
def test_generated_rows_read_back_in_every_encoding(tmp_path_factory, queries, variant):
    d = tmp_path_factory.mktemp("gen")
    rows = []
    for i, q in enumerate(queries):
        _img(d / f"{i}.png")
        rows.append({"image_path": f"{i}.png", "query": q})
    (d / "image_queries.jsonl").write_bytes(_encode_rows(rows, **ENCODINGS[variant]))
    ds = read_custom(d)
    texts, owner = _oracle(rows)
    assert ds.texts == texts and ds.text_to_image.tolist() == owner


def test_a_bom_is_only_skipped_at_the_start_of_the_file(tmp_path):
    d = tmp_path / "ds"
    _img(d / "a.png")
    row = json.dumps(ROWS[0]).encode()
    (d / "image_queries.jsonl").write_bytes(BOM8 + row + b"\n" + BOM8 + row + b"\n")  # two files glued
    with pytest.raises(DatasetError, match=r"image_queries.jsonl:2: not valid JSON"):
        read_custom(d)


# --- images checked before model work -------------------------------------------------------------

def _bad_files(d):
    """One file of each kind a header probe catches, and a truncated one it cannot catch."""
    import io

    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image\n")
    (d / "cut-header.jpg").write_bytes(jpeg[:40])
    (d / "cut-data.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = bytearray(_png_bytes())
    ihdr = png.index(b"IHDR")
    import struct
    import zlib

    png[ihdr + 4: ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    png[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr: ihdr + 17])) & 0xFFFFFFFF)
    (d / "bomb.png").write_bytes(bytes(png))
    (d / "folder.png").mkdir()
    return {"empty.jpg": "empty", "text.jpg": "not an image", "cut-header.jpg": "cannot be opened",
            "bomb.png": "pixels", "folder.png": "directory", "gone.png": "image not found",
            "x" * 300 + ".png": "image not found"}


def _png_bytes():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()


def test_missing_and_unusable_images_are_one_error_with_the_bad_rows(tmp_path):
    d = tmp_path / "ds"
    kinds = _bad_files(d)
    _img(d / "ok.png")
    rows = [{"image_path": "ok.png", "query": ["fine"]}, "{broken"]
    rows += [{"image_path": name, "query": [f"q {name[:10]}"]} for name in kinds]
    rows += [{"image_path": "cut-data.jpg", "query": ["decodes only partly"]}]
    _write(d, rows)
    with pytest.raises(DatasetError) as info:
        read_custom(d)
    msg = str(info.value)
    assert f"{1 + len(kinds)} bad row(s)" in msg
    for line, (name, reason) in enumerate(kinds.items(), start=3):
        assert f"image_queries.jsonl:{line}:" in msg and reason in msg, (name[:20], msg)
    assert "not valid JSON" in msg and "cut-data.jpg" not in msg  # past the header: found when decoding
    with pytest.raises(DatasetError) as info:  # malformed rows fail even when skipping
        read_custom(d, on_error="skip")
    assert "1 bad row(s)" in str(info.value) and "image_queries.jsonl:2: not valid JSON" in str(info.value)
    _write(d, [r for r in rows if r != "{broken"])
    ds = read_custom(d, on_error="skip")
    assert [os.path.basename(p) for p in ds.images] == ["ok.png", "cut-data.jpg"]
    assert len(ds.skipped) == len(kinds) and all(it.texts == 1 for it in ds.skipped)
    assert [it.line for it in ds.skipped] == list(range(2, 2 + len(kinds)))


def test_the_remedy_names_skip_only_when_images_are_the_only_problem(tmp_path):
    d = tmp_path / "ds"
    _img(d / "a.png")
    (d / "e.png").write_bytes(b"")
    _write(d, [{"image_path": "a.png", "query": ["x"]}, {"image_path": "e.png", "query": ["y"]}])
    with pytest.raises(DatasetError) as info:
        read_custom(d)
    assert "--on-error skip" in info.value.remedy


def test_limit_checks_only_the_images_it_keeps(tmp_path, monkeypatch):
    from clipeval.engine.datasets import custom

    d = tmp_path / "ds"
    rows = []
    for i in range(6):
        _img(d / f"{i}.png")
        rows.append({"image_path": f"{i}.png", "query": [f"q{i}"]})
    rows.insert(2, {"image_path": "gone.png", "query": ["lost"]})
    rows.append({"image_path": "1.png", "query": ["again 1"]})  # merged into a kept image
    rows.append({"image_path": "empty.png", "query": ["past the limit"]})
    (d / "empty.png").write_bytes(b"")
    _write(d, rows)
    probed = []
    real = custom.probe_image
    monkeypatch.setattr(custom, "probe_image", lambda p, **kw: probed.append(os.path.basename(p)) or real(p, **kw))
    with pytest.raises(DatasetError, match="gone.png"):  # a missing image among the first 3: an error
        read_custom(d, limit=3)
    ds = read_custom(d, limit=3, on_error="skip")
    assert [os.path.basename(p) for p in ds.images] == ["0.png", "1.png", "2.png"]
    assert ds.texts == ["q0", "q1", "q2", "again 1"] and ds.text_to_image.tolist() == [0, 1, 2, 1]
    assert ds.limited_from == 7  # 0-5 and empty.png: found, not opened
    assert "empty.png" not in probed and "5.png" not in probed
    assert ds.limit(3) is ds  # what the task applies after reading changes nothing


@pytest.mark.parametrize("split", ["train", "val", "validation", "Test", "", "test "])
def test_a_split_other_than_test_is_refused_for_custom(tmp_path, split):
    d = tmp_path / "ds"
    _img(d / "a.png")
    _write(d, [{"image_path": "a.png", "query": ["x"]}])
    with pytest.raises(DatasetError) as info:
        read_dataset("custom", d, split, "fail")
    assert repr(split) in info.value.message and "--data-dir" in info.value.remedy
    assert read_dataset("custom", d, "test", "fail").num_images == 1
    assert read_custom(d, split=None).num_images == 1


@pytest.mark.parametrize("no_cache", [False, True])
def test_bad_images_fail_the_run_before_a_tower_is_opened(tmp_path, monkeypatch, no_cache):
    from clipeval import run_task
    from clipeval.engine.embedding import local

    def no_model_work(*args, **kwargs):
        raise AssertionError("a tower was opened before the data was checked")

    monkeypatch.setattr(local, "open_tower", no_model_work)
    d = tmp_path / "ds"
    _img(d / "a.png")
    (d / "empty.png").write_bytes(b"")
    _write(d, [{"image_path": "a.png", "query": ["x"]}, {"image_path": "empty.png", "query": ["y"]},
               {"image_path": "gone.png", "query": ["z"]}])
    with pytest.raises(DatasetError) as info:
        run_task({"models": [{"model_name": "demo"}], "data_dir": str(d), "output_dir": str(tmp_path / "out"),
                  "verbose": False, "no_cache": no_cache})
    assert "2 bad row(s)" in info.value.message and "empty.png" in info.value.message and "gone.png" in info.value.message


def test_a_cached_rerun_reads_no_headers_and_a_changed_file_is_probed_again(tmp_path, monkeypatch):
    from clipeval import run_task
    from clipeval.engine.datasets import custom

    d = tmp_path / "ds"
    rows = []
    for i in range(5):
        _img(d / f"{i}.png", (40 * i, 0, 0))
        rows.append({"image_path": f"{i}.png", "query": [f"q{i}"]})
    _write(d, rows)
    probed = []
    real = custom.probe_image
    monkeypatch.setattr(custom, "probe_image", lambda p, **kw: probed.append(os.path.basename(p)) or real(p, **kw))
    block = {"models": [{"model_name": "demo"}], "data_dir": str(d), "output_dir": str(tmp_path / "out"),
             "verbose": False, "cache_dir": str(tmp_path / "cache"), "recall_k": [1]}
    run_task(block)
    assert sorted(probed) == [f"{i}.png" for i in range(5)]  # first run: every header
    probed.clear()
    (second,) = run_task(block)
    assert probed == [] and second["meta"]["cache"]["image_hits"] == 5  # cached: none
    (d / "3.png").write_text("no longer an image\n")  # a new size and mtime: not the cached file
    with pytest.raises(DatasetError, match=r"image_queries.jsonl:4: .*3.png is not an image"):
        run_task(block)
    assert probed == ["3.png"]
    with pytest.raises(DatasetError):  # --verify-cache keys by content: every header is read
        probed.clear()
        run_task({**block, "verify_cache": True})
    assert sorted(probed) == [f"{i}.png" for i in range(5)]
