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
