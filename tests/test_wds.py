"""The webdataset reader: layout, streaming, bad samples, missing splits, member names."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from clipeval.engine.datasets import read_dataset
from clipeval.engine.datasets.wds import (ShardBytes, ShardImages, ShardRetrievalDataset, read_wds_classification,
                                          read_wds_retrieval, shard_paths)
from clipeval.engine.errors import DatasetError
from clipeval.engine.images import load_image
from wdsgen import png_bytes, write_classification_set, write_retrieval_set, write_split, write_tar


def expected_texts(samples):
    texts, t2i = [], []
    for i, s in enumerate(samples):
        caps = [c.replace("\\n", "\n") for c in s["txt"].decode().splitlines()]
        texts += caps
        t2i += [i] * len(caps)
    return texts, t2i


def test_three_shard_retrieval_set_reads_in_order(tmp_path):
    samples = write_retrieval_set(tmp_path, n=9, per_shard=3)
    ds = read_wds_retrieval(tmp_path, "test", name="x")
    texts, t2i = expected_texts(samples)
    assert isinstance(ds, ShardRetrievalDataset) and isinstance(ds.images, ShardImages)
    assert ds.texts == texts and ds.text_to_image.tolist() == t2i
    assert "two\nlines" in ds.texts  # the literal \n is unescaped
    assert [bytes(b) for b in ds.images] == [s["png"] for s in samples]
    assert bytes(ds.images[4]) == samples[4]["png"] and bytes(ds.images[-1]) == samples[-1]["png"]
    # a shard image is a source load_image accepts, labelled by shard and key, not by its bytes
    img = ds.images[0]
    assert isinstance(img, ShardBytes) and str(img) == "test/0.tar#s0000000" and f"{img}" == str(img)
    assert load_image(img).size == (40, 30)


def test_limit_and_drop_keep_the_gallery_lazy(tmp_path):
    samples = write_retrieval_set(tmp_path, n=9, per_shard=3)
    ds = read_dataset("flickr8k", tmp_path, "test", "fail")
    lim = ds.limit(5)
    assert isinstance(lim.images, ShardImages) and lim.num_images == 5 and lim.limited_from == 9
    texts, t2i = expected_texts(samples[:5])
    assert lim.texts == texts
    dropped, n_texts = lim.drop_images({1, 3})
    assert isinstance(dropped.images, ShardImages)
    assert [bytes(b) for b in dropped.images] == [samples[i]["png"] for i in (0, 2, 4)]
    assert n_texts == (1 + 1 % 3) + (1 + 3 % 3)
    assert dropped.text_to_image.tolist() == sorted(dropped.text_to_image.tolist())
    # reading with limit stops after exactly N images
    early = read_wds_retrieval(tmp_path, "test", name="x", limit=4)
    assert early.num_images == 4


def test_missing_split_names_the_existing_ones(tmp_path):
    write_retrieval_set(tmp_path, split="test")
    write_split(tmp_path, "train", [], 1, nshards_file=False)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "nshards.txt").write_text("1\n")
    with pytest.raises(DatasetError) as e:
        shard_paths(tmp_path, "valid")
    assert "split 'valid' not found" in e.value.message and "test, val" in e.value.message
    assert "--split test" in e.value.remedy


def test_shards_without_nshards_file_are_counted(tmp_path):
    write_split(tmp_path, "test", write_retrieval_set(tmp_path / "tmp"), 4, nshards_file=False)
    assert [p.name for p in shard_paths(tmp_path, "test")] == ["0.tar", "1.tar", "2.tar"]


def test_nshards_naming_a_missing_shard(tmp_path):
    write_retrieval_set(tmp_path, n=6, per_shard=3)
    (tmp_path / "test" / "nshards.txt").write_text("3\n")
    with pytest.raises(DatasetError, match="2.tar"):
        shard_paths(tmp_path, "test")


def bad_samples():
    return [
        {"__key__": "good0", "jpg": png_bytes(1), "cls": b"0"},
        {"__key__": "noimage", "cls": b"1"},
        {"__key__": "badlabel", "png": png_bytes(2), "cls": b"seven"},
        {"__key__": "outofrange", "png": png_bytes(3), "cls": b"9"},
        {"__key__": "good1", "png": png_bytes(4), "cls": b"1"},
    ]


def test_bad_samples_fail_together_or_are_skipped_and_named(tmp_path):
    write_tar(tmp_path / "test" / "0.tar", bad_samples())
    kw = dict(name="x", classnames=["a", "b"], templates=["{c}"])
    with pytest.raises(DatasetError) as e:
        read_wds_classification(tmp_path, "test", on_error="fail", **kw)
    msg = e.value.message
    assert "3 bad sample" in msg
    for key in ("test/0.tar#noimage", "test/0.tar#badlabel", "test/0.tar#outofrange"):
        assert key in msg
    ds = read_wds_classification(tmp_path, "test", on_error="skip", **kw)
    assert ds.labels.tolist() == [0, 1]
    assert sorted(it.where for it in ds.skipped) == ["test/0.tar#badlabel", "test/0.tar#noimage", "test/0.tar#outofrange"]
    assert [bytes(b) for b in ds.images] == [png_bytes(1), png_bytes(4)]


def test_image_extension_preference_and_case(tmp_path):
    write_tar(tmp_path / "test" / "0.tar", [
        {"__key__": "a", "JPG": b"jpeg-bytes", "webp": b"webp-bytes", "txt": b"x"},
        {"__key__": "b", "jpeg": b"jpeg-b", "png": b"png-b", "txt": b"y"},
    ])
    ds = read_wds_retrieval(tmp_path, "test", name="x")
    assert [bytes(b) for b in ds.images] == [b"webp-bytes", b"png-b"]


def test_truncated_shard_is_detected(tmp_path):
    samples = write_retrieval_set(tmp_path, n=6, per_shard=3)
    shard = tmp_path / "test" / "1.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as e:
        read_wds_retrieval(tmp_path, "test", name="x")
    assert "test/1.tar" in e.value.message and "truncated" in e.value.message
    ds = read_wds_retrieval(tmp_path, "test", name="x", on_error="skip")
    assert 3 <= ds.num_images < 6
    assert [bytes(b) for b in ds.images] == [s["png"] for s in samples[:ds.num_images]]


def test_member_names_are_never_paths(tmp_path):
    """Traversal names are only keys; links are ignored; nothing is written anywhere."""
    path = tmp_path / "data" / "test" / "0.tar"
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w") as tar:
        for name, data in (("../../evil.png", png_bytes(0)), ("../../evil.txt", b"caption"),
                           ("/abs/x.png", png_bytes(1)), ("/abs/x.txt", b"c2")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    ds = read_wds_retrieval(tmp_path / "data", "test", name="x")
    assert ds.texts == ["caption", "c2"] and ds.num_images == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_classification_and_multilabel_sets(tmp_path):
    samples = write_classification_set(tmp_path / "c", n=12, n_classes=6, per_shard=5)
    ds = read_wds_classification(tmp_path / "c", "test", name="c", classnames=[f"class{c}" for c in range(6)],
                                 templates=["{c}"], limit=7)
    assert ds.labels.tolist() == [i % 6 for i in range(7)] and ds.num_images == 7
    assert [bytes(b) for b in ds.images] == [s.get("png") or s.get("webp") for s in samples[:7]]
    ml = write_classification_set(tmp_path / "m", n=8, n_classes=4, per_shard=3, multilabel=True)
    ds = read_wds_classification(tmp_path / "m", "test", name="m", classnames=list("abcd"), templates=["{c}"])
    want = np.stack([np.load(io.BytesIO(s["npy"])) for s in ml]).astype(bool)
    assert ds.multilabel and np.array_equal(ds.targets, want)
