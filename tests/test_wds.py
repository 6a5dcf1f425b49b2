"""The webdataset reader: layout, streaming, bad samples, missing splits, member names."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.engine.datasets import read_dataset
from clipeval.engine.datasets.wds import (ShardBytes, ShardImages, ShardRetrievalDataset, read_wds_classification,
                                          read_wds_retrieval, shard_paths)
from clipeval.engine.errors import DatasetError
from clipeval.engine.images.load import load_image
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


# --- shard numbering and nshards.txt: every mismatch is an error --------------------------------

def _shard_folder(root, names, nshards=None):
    """A split folder: ``names`` maps file names to 'shard' (a 1-sample tar), 'dir' or raw bytes."""
    folder = root / "test"
    folder.mkdir(parents=True)
    for i, (name, kind) in enumerate(names.items()):
        if kind == "shard":
            write_tar(folder / name, [{"__key__": f"k{i}", "png": png_bytes(i), "txt": f"caption {i}".encode()}])
        elif kind == "dir":
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(kind)
    if nshards is DIR:
        (folder / "nshards.txt").mkdir()
    elif isinstance(nshards, str):
        (folder / "nshards.txt").write_text(nshards, encoding="utf-8")
    elif isinstance(nshards, bytes):
        (folder / "nshards.txt").write_bytes(nshards)
    return folder


S = "shard"
DIR = object()
# (shards present, nshards.txt content or None) -> the shard names read, or words of the error
SHARD_TABLE = {
    "0 1 2, no nshards": ({"0.tar": S, "1.tar": S, "2.tar": S}, None, ["0.tar", "1.tar", "2.tar"]),
    "0 1 3, no nshards (the issue)": ({"0.tar": S, "1.tar": S, "3.tar": S}, None, ("2.tar", "missing", "no nshards.txt")),
    "1 2, no nshards": ({"1.tar": S, "2.tar": S}, None, ("0.tar", "missing")),
    "0 1 2, nshards 3": ({"0.tar": S, "1.tar": S, "2.tar": S}, "3\n", ["0.tar", "1.tar", "2.tar"]),
    "fewer than nshards": ({"0.tar": S, "1.tar": S}, "3\n", ("2.tar", "nshards.txt lists are missing")),
    "a gap under nshards": ({"0.tar": S, "2.tar": S}, "3", ("1.tar", "missing")),
    "more than nshards": ({"0.tar": S, "1.tar": S, "2.tar": S}, "2", ("beyond the 2", "2.tar")),
    "far beyond nshards": ({"0.tar": S, "7.tar": S}, "1", ("beyond", "7.tar")),
    "zero-padded names": ({"00.tar": S, "01.tar": S}, None, ("not named as shards", "00.tar", "01.tar")),
    "zero-padded beside plain": ({"0.tar": S, "1.tar": S, "01.tar": S}, "2", ("not named as shards", "01.tar")),
    "a non-numeric name": ({"0.tar": S, "extra.tar": S}, None, ("not named as shards", "extra.tar")),
    "an upper-case suffix": ({"0.tar": S, "1.TAR": S}, None, ("not named as shards", "1.TAR")),
    "a signed name": ({"0.tar": S, "-1.tar": S}, None, ("not named as shards", "-1.tar")),
    "a directory named as a shard": ({"0.tar": S, "1.tar": "dir"}, None, ("1.tar (not a file)",)),
    "other files are fine": ({"0.tar": S, "README.md": b"x", "0.tar.part": b"partial", ".DS_Store": b""}, None,
                             ["0.tar"]),
    "nshards garbage": ({"0.tar": S}, "three\n", ("nshards.txt:1", "'three'", "not a number of shards")),
    "nshards negative": ({"0.tar": S}, "-1", ("'-1'", "not a number")),
    "nshards zero": ({"0.tar": S}, "0\n", ("says 0 shards", "at least one")),
    "nshards decimal": ({"0.tar": S}, "1.0", ("'1.0'",)),
    "nshards exponent": ({"0.tar": S}, "1e3", ("'1e3'",)),
    "nshards plus sign": ({"0.tar": S}, "+1", ("'+1'",)),
    "nshards unicode digit": ({"0.tar": S}, "\u00b2", ("not a number of shards",)),
    "nshards arabic digit": ({"0.tar": S}, "\u0661", ("not a number of shards",)),
    "nshards two lines": ({"0.tar": S}, "1\n2\n", ("not a number of shards",)),
    "nshards html": ({"0.tar": S}, "<!DOCTYPE html><html><body>404</body></html>", ("not a number of shards",)),
    "nshards huge": ({"0.tar": S}, "99999999999999999999999", ("more than 1,000,000",)),
    "nshards just over the bound": ({"0.tar": S}, "1000001", ("more than 1,000,000",)),
    "nshards at the bound": ({"0.tar": S}, "1000000", ("999999 of the 1000000", "1.tar", "more)")),
    "nshards empty": ({"0.tar": S}, "", ("nshards.txt is empty",)),
    "nshards blank lines": ({"0.tar": S}, "\n \n", ("nshards.txt is empty",)),
    "nshards with a BOM": ({"0.tar": S, "1.tar": S}, "\ufeff2\n", ["0.tar", "1.tar"]),
    "nshards with CRLF and spaces": ({"0.tar": S, "1.tar": S}, " 2 \r\n", ["0.tar", "1.tar"]),
    "nshards zero-padded": ({"0.tar": S, "1.tar": S}, "02", ["0.tar", "1.tar"]),
    "nshards not UTF-8": ({"0.tar": S}, b"\xff\xfe3", ("not UTF-8",)),
    "nshards a directory": ({"0.tar": S}, DIR, ("is a directory",)),
}


@pytest.mark.parametrize("case", list(SHARD_TABLE))
def test_shard_numbering_and_nshards_mismatches(tmp_path, case):
    names, nshards, expected = SHARD_TABLE[case]
    _shard_folder(tmp_path, names, nshards)
    if isinstance(expected, list):
        assert [p.name for p in shard_paths(tmp_path, "test")] == expected
        return
    with pytest.raises(DatasetError) as err:
        shard_paths(tmp_path, "test")
    text = str(err.value)
    for words in expected:
        assert words in text, (words, text)
    assert err.value.remedy  # every one says what to do


def test_the_issues_muge_folder_is_an_error_naming_the_missing_shard(tmp_path):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    samples = write_retrieval_set(tmp_path / "tmp", n=12, per_shard=3)
    for i, chunk in ((0, samples[0:3]), (1, samples[3:6]), (3, samples[9:12])):
        write_tar(tmp_path / "muge" / "test" / f"{i}.tar", chunk)
    (tmp_path / "muge" / "dataset_type.txt").write_text("retrieval\n")
    r = CliRunner().invoke(cli, ["eval", "--model", "demo", "--dataset", "muge", "--data-dir", str(tmp_path / "muge"),
                                 "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 2 and "Traceback" not in r.output and r.stdout == ""
    assert r.stderr.startswith("error: ") and "2.tar" in r.stderr and "->" in r.stderr


def _tar_bytes(samples) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for s in samples:
            for suffix, data in s.items():
                if suffix != "__key__":
                    info = tarfile.TarInfo(f"{s['__key__']}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# a shard's content -> (words of its problem); the other shards are whole
SHARD_BODIES = {
    "0 bytes": (b"", "is empty (0 bytes)"),
    "a tar without members": (_tar_bytes([]), "holds no samples"),
    "garbage": (bytes(range(256)) * 20, "not a readable tar"),
    "HTML": (b"<!DOCTYPE html><html><body>Not found</body></html>" * 40, "not a readable tar"),
    "gzip": (__import__("gzip").compress(_tar_bytes([{"__key__": "z", "png": png_bytes(9), "txt": b"c"}])),
             "not a readable tar"),
    "cut at a member boundary": (_tar_bytes([{"__key__": "z", "png": png_bytes(9), "txt": b"c"}])[:512 * 4],
                                 "truncated"),
    "cut inside a member": (_tar_bytes([{"__key__": "z", "png": png_bytes(9), "txt": b"c"}])[:700], "truncated"),
}


@pytest.mark.parametrize("case", list(SHARD_BODIES))
def test_damaged_shards_fail_or_are_counted_as_left_out(tmp_path, case):
    body, words = SHARD_BODIES[case]
    samples = write_retrieval_set(tmp_path, n=6, per_shard=2)  # 0.tar 1.tar 2.tar
    (tmp_path / "test" / "1.tar").write_bytes(body)
    with pytest.raises(DatasetError) as err:
        read_wds_retrieval(tmp_path, "test", name="x")
    assert "test/1.tar" in err.value.message and words in err.value.message
    assert "replace the damaged shard" in err.value.remedy
    ds = read_wds_retrieval(tmp_path, "test", name="x", on_error="skip")
    assert ds.left_out["shards"] == {"damaged": 1}
    kept = [s for i, s in enumerate(samples) if i // 2 != 1]
    texts, t2i = expected_texts(kept)
    assert [bytes(b) for b in ds.images] == [s["png"] for s in kept]
    assert ds.texts == texts and ds.text_to_image.tolist() == t2i


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=16)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**6))
def test_any_damage_to_a_shard_is_a_bad_shard_or_sample_never_a_crash(edits, cut):
    """Bytes overwritten anywhere (headers, checksums, sizes, data) or the file cut anywhere:
    the reader names a bad shard or sample (DatasetError), or reads what is intact."""
    import tempfile
    from pathlib import Path

    good = _tar_bytes([{"__key__": f"s{i}", "png": b"image %d" % i, "txt": b"caption %d\nanother" % i}
                       for i in range(4)])
    data = bytearray(good)
    for at, chunk in edits:
        at %= len(data)
        data[at:at + len(chunk)] = chunk
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "test").mkdir()
        (root / "test" / "0.tar").write_bytes(bytes(data))
        write_tar(root / "test" / "1.tar", [{"__key__": "z", "png": b"fine", "txt": b"a fine caption"}])
        try:
            ds = read_wds_retrieval(root, "test", name="x", on_error="skip")
        except DatasetError:
            return
        assert ds.num_images >= 1 and all(isinstance(t, str) and t for t in ds.texts)
        assert bytes(ds.images[-1]) == b"fine"
