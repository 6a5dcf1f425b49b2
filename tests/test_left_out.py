"""Every reader uses a record or counts it as left out, with a reason (``meta.data_left_out``),
and never turns a missing value into text. Generators build damaged variants of each reader's
input: webdataset retrieval and classification shards, Flickr / Flickr30k-CN Karpathy files, COCO
and COCO-CN json. Checked: used + left out == records in the input, and no "None" text."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clipeval.engine.datasets import read_classification_dataset, read_dataset
from clipeval.engine.errors import DatasetError
from wdsgen import write_tar

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _total(left: dict, kind: str) -> int:
    return sum(left.get(kind, {}).values())


def _no_invented_text(texts):
    assert all(isinstance(t, str) and t.strip() == t and t for t in texts)
    assert "None" not in texts and "null" not in texts


# --- webdataset retrieval ----------------------------------------------------------------------

RETRIEVAL_KINDS = {
    # kind -> (.txt member or None, has image, left-out reason of the image or None)
    "good": (b"first caption\nsecond caption", True, None),
    "one caption": (b"only one", True, None),
    "blank lines": (b"a caption\n   \nanother\n\t\n", True, None),
    "empty txt": (b"", True, None),
    "only blank lines": (b" \n\t\n", True, None),
    "no txt": (None, True, "no_captions"),
    "no image": (b"orphan caption\nand another", False, "no_image"),
    "txt not utf-8": (b"\xff\xfe broken\nsecond line", True, "bad_member"),
}


@SETTINGS
@given(kinds=st.lists(st.sampled_from(sorted(RETRIEVAL_KINDS)), min_size=1, max_size=10),
       per_shard=st.integers(1, 4), damaged=st.none() | st.integers(0, 3))
def test_webdataset_retrieval_counts_every_sample_and_caption(kinds, per_shard, damaged):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = []
        for i, kind in enumerate(kinds):
            txt, image, _ = RETRIEVAL_KINDS[kind]
            s = {"__key__": f"s{i:04d}"}
            if image:
                s["png"] = b"image bytes %d" % i  # the reader does not decode images
            if txt is not None:
                s["txt"] = txt.replace(b"caption", b"caption %d" % i)
            samples.append(s)
        shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
        damaged = damaged if damaged is not None and damaged < len(shards) else None
        for n, shard in enumerate(shards):
            write_tar(root / "test" / f"{n}.tar", shard)
        if damaged is not None:
            (root / "test" / f"{damaged}.tar").write_bytes(b"<html>not a shard</html>" * 30)
        (root / "dataset_type.txt").write_text("retrieval\n")
        readable = [(kinds[i], samples[i]) for n, shard in enumerate(shards) if n != damaged
                    for i in range(n * per_shard, n * per_shard + len(shard))]
        bad = [k for k, _ in readable if RETRIEVAL_KINDS[k][2]]
        usable = [(k, s) for k, s in readable if not RETRIEVAL_KINDS[k][2]]
        if bad or damaged is not None:
            with pytest.raises(DatasetError):
                read_dataset("muge", root, "test", "fail")
        if not usable:
            with pytest.raises(DatasetError, match="no usable samples"):
                read_dataset("muge", root, "test", "skip")
            return
        ds = read_dataset("muge", root, "test", "skip")
        left = ds.left_out
        lines = {id(s): len(s.get("txt", b"").splitlines()) for _, s in readable}
        # images: used + left out == samples of the readable shards
        assert ds.num_images + _total(left, "images") == len(readable)
        for reason in ("no_captions", "no_image", "bad_member"):
            assert left.get("images", {}).get(reason, 0) == sum(RETRIEVAL_KINDS[k][2] == reason for k in bad)
        # texts: used + left out == caption lines of the readable shards
        assert ds.num_texts + _total(left, "texts") == sum(lines.values())
        assert left.get("texts", {}).get("image_left_out", 0) == sum(lines[id(s)] for k, s in readable
                                                                     if RETRIEVAL_KINDS[k][2])
        assert left.get("shards", {}) == ({"damaged": 1} if damaged is not None else {})
        _no_invented_text(ds.texts)
        # an image whose captions are all blank stays in the gallery, without a text
        without = sum(1 for k, s in usable if not s["txt"].strip() or not any(x.strip() for x in s["txt"].split(b"\n")))
        assert ds.num_images - len(set(ds.text_to_image.tolist())) == without


# --- webdataset classification -----------------------------------------------------------------

def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


CLASSIFICATION_KINDS = {
    # kind -> (label member(s), has image, reason)
    "good": ({"cls": b"1"}, True, None),
    "good zero": ({"cls": b" 0\n"}, True, None),
    "out of range": ({"cls": b"7"}, True, "label_out_of_range"),
    "negative": ({"cls": b"-1"}, True, "label_out_of_range"),
    "not an integer": ({"cls": b"seven"}, True, "bad_member"),
    "empty label": ({"cls": b""}, True, "bad_member"),
    "no label": ({}, True, "no_label"),
    "no image": ({"cls": b"0"}, False, "no_image"),
}
MULTILABEL_KINDS = {
    "good": ({"npy": _npy(np.array([1, 0, 1], dtype=np.float32))}, True, None),
    "good bool": ({"npy": _npy(np.array([False, True, False]))}, True, None),
    "wrong length": ({"npy": _npy(np.array([1, 0], dtype=np.float32))}, True, "target_shape"),
    "two dimensions": ({"npy": _npy(np.zeros((1, 3), dtype=np.float32))}, True, "target_shape"),
    "NaN": ({"npy": _npy(np.array([np.nan, 0, 1], dtype=np.float32))}, True, "target_values"),
    "strings": ({"npy": _npy(np.array(["a", "b", "c"]))}, True, "target_values"),
    "not npy": ({"npy": b"\x93NUMPY broken"}, True, "bad_member"),
    "no target": ({}, True, "no_label"),
    "no image": ({"npy": _npy(np.array([1, 1, 1], dtype=np.float32))}, False, "no_image"),
}


@SETTINGS
@given(multilabel=st.booleans(), picks=st.lists(st.integers(0, 100), min_size=1, max_size=10),
       per_shard=st.integers(1, 4))
def test_webdataset_classification_counts_every_sample(multilabel, picks, per_shard):
    table = MULTILABEL_KINDS if multilabel else CLASSIFICATION_KINDS
    kinds = [sorted(table)[p % len(table)] for p in picks]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = []
        for i, kind in enumerate(kinds):
            members, image, _ = table[kind]
            s = {"__key__": f"s{i:04d}", **({"webp": b"img %d" % i} if image else {}), **members}
            samples.append(s)
        for n in range(0, len(samples), per_shard):
            write_tar(root / "test" / f"{n // per_shard}.tar", samples[n:n + per_shard])
        (root / "classnames.txt").write_text("cat\ndog\nbird\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
        if multilabel:
            (root / "dataset_type.txt").write_text("multilabel\n")
        bad = [k for k in kinds if table[k][2]]
        if bad:
            with pytest.raises(DatasetError):
                read_classification_dataset("voc2007", root, "test", "fail")
        if len(bad) == len(kinds):
            with pytest.raises(DatasetError, match="no usable samples"):
                read_classification_dataset("voc2007", root, "test", "skip")
            return
        ds = read_classification_dataset("voc2007", root, "test", "skip")
        assert ds.num_images + _total(ds.left_out, "images") == len(kinds)
        for reason in {table[k][2] for k in bad}:
            assert ds.left_out["images"][reason] == sum(table[k][2] == reason for k in bad)
        assert [bytes(b) for b in ds.images] == [s["webp"] for s, k in zip(samples, kinds) if not table[k][2]]


# --- Flickr and Flickr30k-CN -------------------------------------------------------------------

FLICKR_LINES = {
    # kind -> (line, record?, reason) with {img} for an image that exists and {gone} for one that does not
    "good": ("{img},a dog runs", True, None),
    "comma in caption": ("{img},a dog, a cat, and a bird", True, None),
    "blank caption": ("{img},   ", True, "blank"),
    "empty caption": ("{img},", True, "blank"),
    "no .jpg,": ("just some text", True, "bad_line"),
    "no image name": (".jpg,a caption", True, "bad_line"),
    "missing image": ("{gone},a caption of nothing", True, "image_left_out"),
    "blank line": ("   ", False, None),
    "not utf-8": (b"\xff\xfe.jpg,broken", True, "bad_line"),
}
ZH = {"good": "{img},一只/m 狗/n 在/p 跑/v", "comma in caption": "{img},两个/m 人/n ，/w 一只/m 猫/n"}


@SETTINGS
@given(kinds=st.lists(st.sampled_from(sorted(FLICKR_LINES)), min_size=1, max_size=12),
       which=st.lists(st.integers(0, 2), min_size=12, max_size=12), chinese=st.booleans(),
       header=st.booleans(), crlf=st.booleans(), bom=st.booleans())
def test_flickr_files_count_every_line(kinds, which, chinese, header, crlf, bom):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = ["100.jpg", "200.jpg", "300.jpg"]
        for n in names:
            (root / n).write_bytes(b"jpeg")
        lines: list[bytes] = [b"image,caption"] if header else []
        records = []
        for i, kind in enumerate(kinds):
            line, record, reason = FLICKR_LINES[kind]
            if chinese and kind in ZH:
                line = ZH[kind]
            if isinstance(line, str):
                line = line.format(img=names[which[i]], gone=f"9{i}.jpg").encode()
            lines.append(line)
            if record:
                records.append((kind, reason, line))
        sep = b"\r\n" if crlf else b"\n"
        path = root / ("flickr30k_test_zh.txt" if chinese else "flickr30k_test_karpathy.txt")
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + sep.join(lines) + sep)
        name = "flickr30k-cn" if chinese else "flickr30k"
        shown = {n for k, _, line in records if k not in ("no .jpg,", "no image name", "not utf-8")
                 for n in [line.split(b".jpg,")[0].decode() + ".jpg"]}
        problems = [r for _, r, _ in records if r in ("bad_line", "image_left_out")]
        if not shown - {n for n in shown if n.startswith("9")}:
            with pytest.raises(DatasetError):
                read_dataset(name, root, "test", "skip")
            return
        if problems:
            with pytest.raises(DatasetError):
                read_dataset(name, root, "test", "fail")
        ds = read_dataset(name, root, "test", "skip")
        left = ds.left_out
        assert ds.num_texts + _total(left, "texts") == len(records)
        for reason in ("blank", "bad_line", "image_left_out"):
            assert left.get("texts", {}).get(reason, 0) == sum(r == reason for _, r, _ in records)
        missing = {n for n in shown if n.startswith("9")}
        assert ds.num_images + _total(left, "images") == len(shown)
        assert left.get("images", {}).get("missing_file", 0) == len(missing)
        _no_invented_text(ds.texts)
        if chinese:
            assert not any("/n" in t or "/m" in t for t in ds.texts)  # the part-of-speech tags are gone


# --- COCO and COCO-CN --------------------------------------------------------------------------

IMAGE_ENTRIES = {
    # kind -> (entry maker (index) -> entry, reason for the images kind or None)
    "good": (lambda i: {"id": i, "file_name": f"{i}.jpg"}, None),
    "string id": (lambda i: {"id": f"s{i}", "file_name": f"{i}.jpg"}, None),
    "missing file": (lambda i: {"id": i, "file_name": f"gone{i}.jpg"}, "missing_file"),
    "no id": (lambda i: {"file_name": f"{i}.jpg"}, "bad_entry"),
    "null file_name": (lambda i: {"id": i, "file_name": None}, "bad_entry"),
    "blank file_name": (lambda i: {"id": i, "file_name": "  "}, "bad_entry"),
    "list id": (lambda i: {"id": [i], "file_name": f"{i}.jpg"}, "bad_entry"),
    "bool id": (lambda i: {"id": True, "file_name": f"{i}.jpg"}, "bad_entry"),
    "not an object": (lambda i: f"{i}.jpg", "bad_entry"),
    "duplicate id": (lambda i: {"id": 0, "file_name": f"{i}.jpg"}, "dup"),
}
ANNOTATIONS = {
    # kind -> (caption value, reason for the texts kind or None)
    "good": ("a photo of something", None),
    "padded": ("  spaced out  ", None),
    "null caption": (None, "bad_annotation"),
    "number caption": (42, "bad_annotation"),
    "list caption": (["a", "b"], "bad_annotation"),
    "no caption": ("<absent>", "bad_annotation"),
    "blank caption": ("   ", "blank"),
    "empty caption": ("", "blank"),
    "unknown image": ("a caption of no image", "unknown"),
    "no image_id": ("a caption", "no image_id"),
    "not an object": ("<not an object>", "bad_annotation"),
}


@SETTINGS
@given(image_kinds=st.lists(st.sampled_from(sorted(IMAGE_ENTRIES)), min_size=1, max_size=6),
       annotations=st.lists(st.tuples(st.sampled_from(sorted(ANNOTATIONS)), st.integers(0, 5)), max_size=14),
       chinese=st.booleans(), bom=st.booleans())
@example(image_kinds=["bool id", "good"], annotations=[("blank caption", 0)], chinese=False, bom=False)
def test_coco_files_count_every_image_and_annotation(image_kinds, annotations, chinese, bom):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "val2014").mkdir()
        entries = []
        for i, kind in enumerate(image_kinds):
            entry = IMAGE_ENTRIES[kind][0](i)
            entries.append(entry)
            (root / "val2014" / f"{i}.jpg").write_bytes(b"jpeg")
        ids = [e["id"] for e in entries if isinstance(e, dict) and "id" in e]
        anns = []
        for n, (kind, target) in enumerate(annotations):
            caption, _ = ANNOTATIONS[kind]
            if caption == "<not an object>":
                anns.append(["not", "an", "object"])
                continue
            a = {"id": 1000 + n}
            if kind == "unknown image":
                a["image_id"] = 99999
            elif kind != "no image_id":
                a["image_id"] = ids[target % len(ids)] if ids else 12345
            if caption != "<absent>":
                a["caption"] = caption
            anns.append(a)
        raw = json.dumps({"images": entries, "annotations": anns}, ensure_ascii=False).encode()
        path = root / ("coco_test_karpathy_zh.json" if chinese else "coco_test_karpathy.json")
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
        name = "coco-cn" if chinese else "mscoco_captions"
        try:
            ds = read_dataset(name, root, "test", "skip")
        except DatasetError as exc:
            assert "names no usable image" in exc.message
            return
        left = ds.left_out
        # every image entry is a gallery image or left out; every annotation a text or left out
        assert ds.num_images + _total(left, "images") == len(entries)
        assert ds.num_texts + _total(left, "texts") == len(anns)
        _no_invented_text(ds.texts)
        strings = {a["caption"].strip() for a in anns if isinstance(a, dict) and isinstance(a.get("caption"), str)}
        assert set(ds.texts) <= strings  # every text is a caption string of the file, as written
        # an oracle of the rules: which image entries and annotations are usable
        seen, bad_entries, missing = set(), 0, 0
        for e in entries:
            image_id = e.get("id") if isinstance(e, dict) else None
            ok = (isinstance(e, dict) and isinstance(image_id, (int, str)) and not isinstance(image_id, bool)
                  and isinstance(e.get("file_name"), str) and e["file_name"].strip() and image_id not in seen)
            if ok:
                seen.add(image_id)
                missing += e["file_name"].startswith("gone")
            else:
                bad_entries += 1
        # (a bool id is no id: True == 1, so `True in seen` would find image 1)
        usable = [a for a in anns if isinstance(a, dict) and isinstance(a.get("caption"), str)
                  and isinstance(a.get("image_id"), (int, str)) and not isinstance(a["image_id"], bool)
                  and a["image_id"] in seen]
        assert left.get("images", {}).get("bad_entry", 0) == bad_entries
        assert left.get("images", {}).get("missing_file", 0) == missing
        assert left.get("texts", {}).get("bad_annotation", 0) == len(anns) - len(usable)
        assert left.get("texts", {}).get("blank", 0) == sum(1 for a in usable if not a["caption"].strip())
        # every image without a usable caption stays in the gallery (a distractor): the text -> image
        # direction still has exactly one positive per text
        assert len(ds.text_to_image) == ds.num_texts and (ds.text_to_image < ds.num_images).all()
        if bad_entries or missing or len(usable) < len(anns):
            with pytest.raises(DatasetError):
                read_dataset(name, root, "test", "fail")
        else:
            assert read_dataset(name, root, "test", "fail").texts == ds.texts


# --- custom -------------------------------------------------------------------------------------

CUSTOM_KINDS = {
    # kind -> (what is written at the row's image path, left-out reason or None)
    "good": ("image", None),
    "missing": (None, "missing_file"),
    "empty": (b"", "bad_header"),
    "not an image": (b"these bytes are no image at all", "bad_header"),
    "a folder": ("folder", "bad_header"),
}


@SETTINGS
@given(kinds=st.lists(st.sampled_from(sorted(CUSTOM_KINDS)), min_size=1, max_size=10),
       queries=st.lists(st.integers(1, 3), min_size=10, max_size=10), repeat=st.booleans())
def test_custom_rows_count_every_image_and_query(kinds, queries, repeat):
    from PIL import Image

    from clipeval.engine.datasets.custom import read_custom

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for i, kind in enumerate(kinds):
            content, _ = CUSTOM_KINDS[kind]
            name = f"{i}.png"
            if content == "image":
                Image.new("RGB", (8, 6), (i * 20 % 256, 0, 0)).save(root / name)
            elif content == "folder":
                (root / name).mkdir()
            elif content is not None:
                (root / name).write_bytes(content)
            rows.append({"image_path": name, "query": [f"q{i} {j}" for j in range(queries[i])]})
        if repeat:  # a row naming an image already listed: merged into it, whatever its kind
            rows.append({"image_path": "0.png", "query": ["again"]})
        (root / "image_queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if all(CUSTOM_KINDS[k][1] is not None for k in kinds):
            with pytest.raises(DatasetError, match="no usable rows"):
                read_custom(root, on_error="skip")
            return
        ds = read_custom(root, on_error="skip")
        left = ds.left_out
        bad = [i for i, k in enumerate(kinds) if CUSTOM_KINDS[k][1] is not None]
        expected_images = {}
        for i in bad:
            reason = CUSTOM_KINDS[kinds[i]][1]
            expected_images[reason] = expected_images.get(reason, 0) + 1
        assert left.get("images", {}) == expected_images
        bad_queries = sum(queries[i] for i in bad) + (1 if repeat and 0 in bad else 0)
        assert left.get("texts", {}).get("image_left_out", 0) == bad_queries
        # used + left out == the records of the input
        assert ds.num_images + _total(left, "images") == len(kinds)
        assert ds.num_texts + _total(left, "texts") == sum(len(r["query"]) for r in rows)
        assert len(ds.skipped) == len(bad) + (1 if repeat and 0 in bad else 0)
        _no_invented_text(ds.texts)


def test_custom_left_out_counts_reach_the_result(tmp_path):
    """`eval --on-error skip` on a custom folder: the reader's counts and the undecodable image's
    are in meta.data_left_out, once each (dropped_texts still counts every dropped query)."""
    from click.testing import CliRunner

    from clipeval.cli.main import cli
    from datagen import noise_image, write_dataset

    rows = [{"image_path": f"{i}.png", "query": [f"q{i}", f"r{i}"]} for i in range(4)]
    rows.append({"image_path": "gone.png", "query": ["lost", "also lost", "third"]})
    rows.append({"image_path": "cut.png", "query": ["cut"]})
    data = write_dataset(tmp_path / "ds", rows, {f"{i}.png": noise_image(i) for i in range(4)})
    buf = io.BytesIO()
    noise_image(9, size=(64, 64)).save(buf, format="PNG")
    (data / "cut.png").write_bytes(buf.getvalue()[:80])  # a whole header, pixel data cut short
    r = CliRunner().invoke(cli, ["eval", "--model", "demo", "--data-dir", str(data), "--on-error", "skip", "--no-cache",
                                 "--output-dir", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)["meta"]
    assert meta["data_left_out"] == {"images": {"missing_file": 1, "undecodable": 1},
                                     "texts": {"image_left_out": 3 + 1}}
    assert meta["dropped_texts"] == 3 + 1 and meta["num_images"] == 4 and meta["num_texts"] == 8
    assert "custom: left out 1 images (1 missing_file); 3 texts (3 image_left_out)" in r.stderr


# --- meta.num_skipped_images counts images, not records (finding F20) -----------------------------

def _eval_meta(tmp_path, *args):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    r = CliRunner().invoke(cli, ["eval", "--model", "demo", "--output-dir", str(tmp_path / "out"), "-q", "--no-cache",
                                 "--on-error", "skip", *map(str, args)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])["meta"]


@pytest.mark.parametrize("lines, images_left_out", [
    # the finding's file: three bad caption lines, one blank caption, no image left out
    ("0000.jpg,a circle, small\n0001.jpg,\n0002.jpg\n0003.JPG,a cross\n,x\n0000.jpg,\"quoted caption\"\n", 0),
    ("0000.jpg,a\n0009.jpg,missing image\n0001.jpg,b\n", 1),  # a missing image is a skipped image
    ("0000.jpg,a\n0009.jpg,x\n0009.jpg,y\nbad line\n", 1),  # two captions of one missing image: one image
])
def test_num_skipped_images_counts_images_left_out_not_caption_lines(tmp_path, lines, images_left_out):
    import shutil

    from clipeval.engine.demo import DEMO_DATA_DIR

    data = tmp_path / "f1"
    data.mkdir()
    for i in range(4):
        shutil.copy(DEMO_DATA_DIR / "images" / f"{i:04d}.jpg", data / f"{i:04d}.jpg")
    (data / "flickr8k_test_karpathy.txt").write_text("image,caption\n" + lines)
    meta = _eval_meta(tmp_path, "--dataset", "flickr8k", "--data-dir", data)
    assert meta["num_skipped_images"] == images_left_out == _total(meta["data_left_out"], "images")
    assert len(meta["skipped"]) >= images_left_out  # every skipped record is still listed
