"""Raw Karpathy-split annotation files (as CLIP_benchmark's native loaders read them).

* Flickr8k / Flickr30k: ``{data_dir}/{name}_{split}_karpathy.txt`` (English) or
  ``{name}_{split}_zh.txt`` (Flickr8k-CN / Flickr30k-CN), one ``image,caption`` per line after
  a header line (``image,caption``). The image name ends at the first ``.jpg,`` (captions may
  hold commas). Flickr30k-CN's file tags every word with its part of speech (``两个/m 男子/n``);
  the tags are stripped and the words joined (``两个男子``), as Chinese-CLIP's own data has them.
* COCO: ``{data_dir}/coco_{split}_karpathy.json`` in COCO captions format
  (``images: [{id, file_name}]``, ``annotations: [{image_id, caption}]``); with language ``zh``
  ``coco_{split}_karpathy_zh.json`` (COCO-CN captions in the same format).

Images are looked up under ``data_dir`` in the folders ``IMAGE_FOLDERS`` name, in that order;
a missing image is a bad item (``on_error`` decides), named with the annotation line.
Images keep annotation order (first appearance); every caption is one text.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from ..errors import DatasetError, listing
from .base import BadItem, RetrievalDataset

IMAGE_FOLDERS = ("", "Images", "images", "flickr30k-images", "Flicker8k_Dataset", "val2014", "train2014", "val2017")

# a word, a slash, a part-of-speech tag of ASCII letters (ICTCLAS/PKU style: n, v, nr, vn, w ...)
_POS = re.compile(r"^(.+)/([A-Za-z]{1,4})$")
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")


def strip_pos_tags(caption: str) -> str:
    """``"两个/m 年轻/a 男子/n"`` -> ``"两个年轻男子"``; a caption that is not fully tagged is left as is.

    Spaces are dropped only between two tokens that both hold CJK characters, so Latin words
    inside a caption stay separated.
    """
    tokens = caption.split()
    matches = [_POS.match(t) for t in tokens]
    if not tokens or not all(matches):
        return caption.strip()
    words = [m.group(1) for m in matches]
    out = words[0]
    for prev, word in zip(words, words[1:]):
        out += word if (_CJK.search(prev[-1]) or _CJK.search(word[0])) else " " + word
    return out


def _find_image(data_dir: Path, name: str) -> Path | None:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    for folder in IMAGE_FOLDERS:
        p = data_dir / folder / rel
        if p.is_file():
            return p
    return None


def _build(name: str, data_dir: Path, entries: list[tuple[str, str, str]], on_error: str, ann: Path) -> RetrievalDataset:
    """``entries``: (image name, caption, where) in annotation order."""
    images: list[str] = []
    where_img: list[str] = []
    texts: list[str] = []
    t2i: list[int] = []
    index: dict[str, int] = {}
    bad: list[BadItem] = []
    missing: set[str] = set()
    for image, caption, where in entries:
        if image in missing:
            continue
        i = index.get(image)
        if i is None:
            path = _find_image(data_dir, image)
            if path is None:
                missing.add(image)
                tried = ", ".join(str(data_dir / f / image) for f in IMAGE_FOLDERS[:4])
                bad.append(BadItem(where, f"image {image} not found (tried {tried}, ...)", source=image))
                continue
            i = index[image] = len(images)
            images.append(str(path))
            where_img.append(where)
        texts.append(caption)
        t2i.append(i)
    if bad and on_error != "skip":
        raise DatasetError(f"{len(bad)} image(s) named in {ann} are missing:\n    {listing(bad)}",
                           f"put the images under {data_dir} (or one of its folders {', '.join(IMAGE_FOLDERS[1:4])}), "
                           "or pass --on-error skip")
    if not images:
        raise DatasetError(f"{ann} names no usable image")
    return RetrievalDataset(name=name, images=images, texts=texts, text_to_image=t2i, image_where=where_img, skipped=bad)


def flickr_file(data_dir: Path, base: str, split: str, language: str) -> Path:
    return Path(data_dir) / (f"{base}_{split}_zh.txt" if language == "zh" else f"{base}_{split}_karpathy.txt")


def coco_file(data_dir: Path, split: str, language: str) -> Path:
    return Path(data_dir) / (f"coco_{split}_karpathy_zh.json" if language == "zh" else f"coco_{split}_karpathy.json")


def read_flickr(data_dir, split: str, *, name: str, base: str, language: str = "en",
                on_error: str = "fail") -> RetrievalDataset:
    data_dir = Path(data_dir)
    ann = flickr_file(data_dir, base, split, language)
    if not ann.is_file():
        raise DatasetError(f"{ann} does not exist", f"put {ann.name} (and the images) in {data_dir}")
    entries = []
    bad = []
    with open(ann, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or (lineno == 1 and line.lower().startswith("image,")):
                continue
            head, sep, caption = line.partition(".jpg,")
            if not sep or not caption.strip():
                bad.append(BadItem(f"{ann}:{lineno}", "expected 'IMAGE.jpg,CAPTION'", lineno))
                continue
            if language == "zh":
                caption = strip_pos_tags(caption)
            entries.append((head + ".jpg", caption.strip(), f"{ann}:{lineno}"))
    if bad:
        raise DatasetError(f"{len(bad)} bad line(s) in {ann}:\n    {listing(bad)}", "fix or remove these lines")
    return _build(name, data_dir, entries, on_error, ann)


def read_coco(data_dir, split: str, *, name: str, language: str = "en", on_error: str = "fail") -> RetrievalDataset:
    data_dir = Path(data_dir)
    ann = coco_file(data_dir, split, language)
    if not ann.is_file():
        raise DatasetError(f"{ann} does not exist", f"put {ann.name} (and the images) in {data_dir}")
    try:
        data = orjson.loads(ann.read_bytes())
        files = {im["id"]: im["file_name"] for im in data["images"]}
        anns = [(a["image_id"], a["caption"]) for a in data["annotations"]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{ann} is not a COCO captions file ({type(exc).__name__}: {exc})",
                           "expected {\"images\": [{\"id\", \"file_name\"}], \"annotations\": [{\"image_id\", \"caption\"}]}") from None
    unknown = sorted({i for i, _ in anns if i not in files}, key=str)
    if unknown:
        raise DatasetError(f"{ann}: {len(unknown)} annotation(s) name image ids not in 'images' (e.g. {unknown[:5]})")
    # images in the order of the 'images' list; captions in annotation order within each image
    order = {image_id: n for n, image_id in enumerate(files)}
    anns.sort(key=lambda a: order[a[0]])
    entries = [(files[i], str(c).strip(), f"{ann}: image id {i}") for i, c in anns if str(c).strip()]
    return _build(name, data_dir, entries, on_error, ann)
