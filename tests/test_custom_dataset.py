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
