"""Raw Karpathy annotations: Flickr txt (English and Flickr30k-CN with POS tags), COCO json."""

from __future__ import annotations

import json

import pytest

from clipeval.engine.datasets import read_dataset
from clipeval.engine.datasets.karpathy import strip_pos_tags
from clipeval.engine.errors import ConfigError, DatasetError
from datagen import noise_image


def images(root, names, folder="Images"):
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        noise_image(i).save(root / folder / n, format="JPEG")


def test_strip_pos_tags():
    assert strip_pos_tags("两个/m 年轻/a 的/u 男子/n 在/p 户外/s 。/w") == "两个年轻的男子在户外。"
    assert strip_pos_tags("一个/m T恤/n 上/f 写着/v Hello/nx World/nx") == "一个T恤上写着Hello World"
    assert strip_pos_tags("没有 标注 的 句子") == "没有 标注 的 句子"  # not fully tagged: left as is
    assert strip_pos_tags("1/2 of a cake") == "1/2 of a cake"


def test_flickr_english_and_chinese(tmp_path):
    images(tmp_path, ["1000.jpg", "2000.jpg"])
    (tmp_path / "flickr30k_test_karpathy.txt").write_text(
        "image,caption\n1000.jpg,A dog, running.\n1000.jpg,A brown dog\n2000.jpg,Two men\n", encoding="utf-8")
    (tmp_path / "flickr30k_test_zh.txt").write_text(
        "image,caption\n1000.jpg,一只/m 狗/n 在/p 跑/v\n2000.jpg,两个/m 男人/n\n2000.jpg,两个/m 人/n\n", encoding="utf-8")
    en = read_dataset("flickr30k", tmp_path, "test", "fail")
    assert en.texts == ["A dog, running.", "A brown dog", "Two men"]
    assert en.text_to_image.tolist() == [0, 0, 1] and en.images[0].endswith("Images/1000.jpg")
    for name, lang in (("flickr30k", "zh"), ("flickr30k", "cn"), ("flickr30k-cn", None)):
        zh = read_dataset(name, tmp_path, "test", "fail", language=lang)
        assert zh.texts == ["一只狗在跑", "两个男人", "两个人"] and zh.text_to_image.tolist() == [0, 1, 1]


def test_missing_images_and_bad_lines(tmp_path):
    images(tmp_path, ["1.jpg"], folder="")
    (tmp_path / "flickr8k_test_karpathy.txt").write_text("image,caption\n1.jpg,ok\n9.jpg,gone\n9.jpg,gone too\n")
    with pytest.raises(DatasetError) as e:
        read_dataset("flickr8k", tmp_path, "test", "fail")
    assert "1 image(s)" in e.value.message and "9.jpg" in e.value.message and ":3" in e.value.message
    ds = read_dataset("flickr8k", tmp_path, "test", "skip")
    assert ds.texts == ["ok"] and len(ds.skipped) == 1
    (tmp_path / "flickr8k_test_karpathy.txt").write_text("image,caption\nno comma here\n")
    with pytest.raises(DatasetError, match=":2"):
        read_dataset("flickr8k", tmp_path, "test", "fail")


def test_coco_json_and_coco_cn(tmp_path):
    images(tmp_path, ["a.jpg", "b.jpg"], folder="val2014")
    ann = {"images": [{"id": 7, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}],
           "annotations": [{"image_id": 3, "caption": "cap a1"}, {"image_id": 7, "caption": "cap b1"},
                           {"image_id": 3, "caption": " cap a2 "}]}
    (tmp_path / "coco_test_karpathy.json").write_text(json.dumps(ann))
    ds = read_dataset("mscoco_captions", tmp_path, "test", "fail")
    assert ds.texts == ["cap b1", "cap a1", "cap a2"] and ds.text_to_image.tolist() == [0, 1, 1]
    assert ds.images[0].endswith("val2014/b.jpg")
    with pytest.raises(DatasetError, match="coco_test_karpathy_zh.json"):
        read_dataset("coco-cn", tmp_path, "test", "fail")
    ann["annotations"] = [{"image_id": 3, "caption": "一只猫"}]
    (tmp_path / "coco_test_karpathy_zh.json").write_text(json.dumps(ann, ensure_ascii=False), encoding="utf-8")
    cn = read_dataset("coco-cn", tmp_path, "test", "fail")
    # b.jpg has no Chinese caption: it stays in the gallery as a distractor
    assert cn.texts == ["一只猫"] and cn.num_images == 2 and cn.text_to_image.tolist() == [1]


def test_unknown_language_and_dataset_are_listed():
    from clipeval.engine.config import make_eval_config

    with pytest.raises(ConfigError, match="en, zh"):
        make_eval_config({"language": "fr"})
    assert make_eval_config({"language": "CN"}).language == "zh"
    with pytest.raises(ConfigError) as e:
        read_dataset("flickr31k", None, "test", "fail")
    assert "flickr30k" in e.value.remedy and "vtab/cifar10" in e.value.remedy


def test_cli_on_a_karpathy_folder_and_a_dataset_list(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    names = [f"{i}.jpg" for i in range(6)]
    images(tmp_path / "d", names)
    lines = "".join(f"{n},a photo number {i}\n{n},another photo {i}\n" for i, n in enumerate(names))
    (tmp_path / "d" / "flickr8k_test_karpathy.txt").write_text("image,caption\n" + lines)
    (tmp_path / "d" / "flickr30k_test_karpathy.txt").write_text("image,caption\n" + lines)
    r = CliRunner().invoke(cli, ["eval", "--model", str(tiny_bundle), "--quiet", "--dataset", "flickr8k",
                                 "--dataset", "flickr30k", "--data-dir", str(tmp_path / "d"),
                                 "--output-dir", str(tmp_path / "o"), "--recall-k", "1", "--recall-k", "5"])
    assert r.exit_code == 0, (r.output, r.exception)
    out = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [o["dataset"] for o in out] == ["flickr8k", "flickr30k"]
    assert out[0]["metrics"] == out[1]["metrics"] and out[0]["meta"]["num_texts"] == 12


def _issue_coco_folder(root):
    """The issue's file: image 4 listed without annotation, annotation 13 with a null caption,
    annotation 15 only whitespace."""
    images(root, [f"{i}.jpg" for i in range(5)], folder="val2014")
    ann = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(5)],
           "annotations": [{"id": 10, "image_id": 0, "caption": "a red square"},
                           {"id": 11, "image_id": 0, "caption": "a square in red"},
                           {"id": 12, "image_id": 1, "caption": "a blue circle"},
                           {"id": 13, "image_id": 2, "caption": None},
                           {"id": 14, "image_id": 2, "caption": "a green triangle"},
                           {"id": 15, "image_id": 3, "caption": " \t "},
                           {"id": 16, "image_id": 3, "caption": "a yellow star"}]}
    (root / "coco_test_karpathy.json").write_text(json.dumps(ann))
    return ann


def test_the_issues_coco_file_keeps_the_distractor_and_reports_the_bad_caption(tiny_bundle, tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from clipeval.cli.main import cli
    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.engine.embedding.stage import embed_images, embed_texts
    from clipeval.engine.sessions.model import load_model

    _issue_coco_folder(tmp_path)
    args = ["eval", "--model", str(tiny_bundle), "--dataset", "mscoco_captions", "--data-dir", str(tmp_path),
            "--output-dir", str(tmp_path / "o"), "--quiet", "--recall-k", "1", "--recall-k", "2", "--num-workers", "0",
            "--no-cache"]
    failed = CliRunner().invoke(cli, args)
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    assert "annotation id 13" in failed.stderr and "'caption' is null" in failed.stderr
    assert "--on-error skip" in failed.stderr

    r = CliRunner().invoke(cli, args + ["--on-error", "skip"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    meta = result["meta"]
    assert meta["num_images"] == 5 and meta["num_texts"] == 5 and meta["images_without_texts"] == 1
    assert meta["data_left_out"] == {"texts": {"bad_annotation": 1, "blank": 1}}
    assert "left out 2 texts (1 bad_annotation, 1 blank)" in r.stderr
    assert any("annotation id 13" in s["where"] for s in meta["skipped"])
    ds = read_dataset("mscoco_captions", tmp_path, "test", "skip")
    assert ds.texts == ["a red square", "a square in red", "a blue circle", "a green triangle", "a yellow star"]
    assert ds.text_to_image.tolist() == [0, 0, 1, 2, 3] and ds.num_images == 5

    # oracle from the same embeddings: text -> image ranks among all 5 images (the distractor
    # competes), image -> text over the 4 images that have texts (the distractor has no positive)
    model = load_model(load_bundle(tiny_bundle), provider="cpu", threads=1)
    img = embed_images(model.vision, model.preprocessor, ds.images, batch_size=8, num_workers=0, progress=False).embeds
    txt = embed_texts(model.text, model.tokenizer, ds.texts, batch_size=8, progress=False).embeds
    s = txt.astype(np.float64) @ img.astype(np.float64).T
    t2i = np.array([(s[t] > s[t, i]).sum() + (s[t, :i] == s[t, i]).sum() for t, i in enumerate(ds.text_to_image)])
    i2t = np.array([min((s[:, j] > s[t, j]).sum() + (s[:t, j] == s[t, j]).sum()
                        for t in np.flatnonzero(ds.text_to_image == j)) for j in range(4)])
    m = result["metrics"]
    for k in (1, 2):
        assert m[f"image_retrieval_recall@{k}"] == pytest.approx(np.mean(t2i < k), abs=1e-12)
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(np.mean(i2t < k), abs=1e-12)
    assert m["image_retrieval_mean_rank"] == pytest.approx(np.mean(t2i + 1.0), abs=1e-12)
    assert m["text_retrieval_mean_rank"] == pytest.approx(np.mean(i2t + 1.0), abs=1e-12)
