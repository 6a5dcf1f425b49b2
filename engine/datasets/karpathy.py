"""Raw Karpathy-split annotation files (as CLIP_benchmark's native loaders read them).

The splits are Karpathy and Fei-Fei's, from "Deep Visual-Semantic Alignments for Generating Image
Descriptions" (CVPR 2015; https://cs.stanford.edu/people/karpathy/deepimagesent/): 1,000 test
images for Flickr8k and Flickr30k, 5,000 for MS-COCO. The annotation files read here are the ones
CLIP_benchmark downloads for its ``flickr8k`` / ``flickr30k`` / ``mscoco_captions`` loaders, from
the releases of https://github.com/mehdidc/retrieval_annotations (``{name}_{split}_karpathy.txt``,
``coco_{split}_karpathy.json``), and their Chinese counterparts (Flickr8k-CN, Flickr30k-CN,
COCO-CN) in the same shapes.

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
Every record is used or counted in the dataset's ``left_out`` (see :mod:`.leftout`); a missing
value never becomes a text. Images listed without a caption stay in the gallery as distractors.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..errors import DatasetError, listing
from ..textio import read_json, strip_bom
from .base import BadItem, RetrievalDataset
from .leftout import LeftOut

log = logging.getLogger(__name__)

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
        try:
            p = data_dir / folder / rel
            if p.is_file():
                return p
        except (OSError, ValueError):  # a name too long for the file system, or holding a NUL byte
            return None
    return None


def _build(name: str, data_dir: Path, ann: Path, images: list[tuple[str, str]],
           captions: list[tuple[int, str, str]], bad: list[BadItem], left: LeftOut, on_error: str) -> RetrievalDataset:
    """The dataset from the records of an annotation file.

    ``images``: ``(file name, where)`` of every image listed, in gallery order; ``captions``:
    ``(index into images, caption, where)``; ``bad``: records that could not be used (already
    counted in ``left``). Images whose file is missing are bad too; with ``on_error`` fail every
    bad record and missing image is listed in one error, else they are left out, counted and
    listed in ``skipped``. An image listed without a caption stays in the gallery as a distractor.
    """
    keep: list[int] = []
    paths: list[str] = []
    missing: list[BadItem] = []
    for name_, where in images:
        path = _find_image(data_dir, name_)
        if path is None:
            tried = ", ".join(str(data_dir / f / name_) for f in IMAGE_FOLDERS[:4])
            missing.append(BadItem(where, f"image {name_} not found (tried {tried}, ...)", source=name_))
            keep.append(-1)
        else:
            keep.append(len(paths))
            paths.append(str(path))
    problems = bad + missing
    if problems and on_error != "skip":
        summary = ", ".join(x for x in (f"{len(missing)} image(s) missing" if missing else "",
                                        f"{len(bad)} bad record(s)" if bad else "") if x)
        raise DatasetError(f"{ann}: {summary}:\n    {listing(problems)}",
                           (f"put the images under {data_dir} (or one of its folders {', '.join(IMAGE_FOLDERS[1:4])})"
                            if missing else "fix or remove these records")
                           + ", or pass --on-error skip to leave them out")
    left.add("images", "missing_file", len(missing))
    for it in problems[:50]:
        log.warning("skipping %s: %s", it.where, it.reason)
    texts: list[str] = []
    t2i: list[int] = []
    for index, caption, _where in captions:
        if keep[index] < 0:
            left.add("texts", "image_left_out")
            continue
        texts.append(caption)
        t2i.append(keep[index])
    left.report(name, log)
    if not paths:
        raise DatasetError(f"{ann} names no usable image",
                           f"check that it lists images and that they are under {data_dir} (see the warnings above)")
    without = len(paths) - len(set(t2i))
    if without:
        log.warning("%s: %d image(s) have no caption; they stay in the gallery as distractors "
                    "(meta.images_without_texts)", name, without)
    return RetrievalDataset(name=name, images=paths, texts=texts, text_to_image=t2i,
                            image_where=[w for (_, w), k in zip(images, keep) if k >= 0], skipped=problems,
                            left_out=left.as_dict())


def flickr_file(data_dir: Path, base: str, split: str, language: str) -> Path:
    return Path(data_dir) / (f"{base}_{split}_zh.txt" if language == "zh" else f"{base}_{split}_karpathy.txt")


def coco_file(data_dir: Path, split: str, language: str) -> Path:
    return Path(data_dir) / (f"coco_{split}_karpathy_zh.json" if language == "zh" else f"coco_{split}_karpathy.json")


def read_flickr(data_dir, split: str, *, name: str, base: str, language: str = "en",
                on_error: str = "fail") -> RetrievalDataset:
    """A Flickr8k / Flickr30k Karpathy file: ``{data_dir}/{base}_{split}_karpathy.txt``
    (``{base}_{split}_zh.txt`` for ``language`` ``zh``), ``IMAGE.jpg,CAPTION`` lines after a
    header, from the releases of github.com/mehdidc/retrieval_annotations that CLIP_benchmark
    downloads (Karpathy's splits, "Deep Visual-Semantic Alignments", CVPR 2015).

    Returns a :class:`RetrievalDataset` named ``name``: images in order of first appearance (paths
    found under ``data_dir`` in :data:`IMAGE_FOLDERS`), captions in file order, each with the index
    of its image (int64 ``text_to_image``). Every line is one caption record: used, or counted in
    ``left_out`` as ``texts: bad_line`` (no ``.jpg,``, no image name, not UTF-8: an error unless
    ``on_error`` is skip), ``texts: blank`` (an empty caption: its image still joins the gallery)
    or ``texts: image_left_out``. Raises :class:`DatasetError` for a missing or unreadable file,
    and (``on_error`` ``fail``) for bad lines and missing images, all listed in one error.
    """
    data_dir = Path(data_dir)
    ann = flickr_file(data_dir, base, split, language)
    if not ann.is_file():
        raise DatasetError(f"{ann} does not exist", f"put {ann.name} (and the images) in {data_dir}")
    try:
        raw = strip_bom(ann.read_bytes())
    except OSError as exc:
        raise DatasetError(f"{ann} cannot be read ({exc.strerror or exc})",
                           "check the file and its permissions") from None
    index: dict[str, int] = {}
    images: list[tuple[str, str]] = []
    captions: list[tuple[int, str, str]] = []
    bad: list[BadItem] = []
    left = LeftOut()
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{ann}:{lineno}"
        try:
            line = line_bytes.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            bad.append(BadItem(where, f"not UTF-8 text (byte 0x{line_bytes[exc.start]:02x})", lineno))
            left.add("texts", "bad_line")
            continue
        if not line.strip() or (lineno == 1 and line.lower().startswith("image,")):
            continue
        head, sep, caption = line.partition(".jpg,")
        if not sep or not head.strip():
            bad.append(BadItem(where, "expected 'IMAGE.jpg,CAPTION'", lineno))
            left.add("texts", "bad_line")
            continue
        image = head.strip() + ".jpg"
        i = index.get(image)
        if i is None:
            i = index[image] = len(images)
            images.append((image, where))
        if language == "zh":
            caption = strip_pos_tags(caption)
        caption = caption.strip()
        if not caption:
            left.add("texts", "blank")
            continue
        captions.append((i, caption, where))
    return _build(name, data_dir, ann, images, captions, bad, left, on_error)


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(data_dir, split: str, *, name: str, language: str = "en", on_error: str = "fail") -> RetrievalDataset:
    """A COCO captions file: ``{data_dir}/coco_{split}_karpathy.json`` (``..._karpathy_zh.json``
    for COCO-CN), ``images: [{id, file_name}]`` and ``annotations: [{image_id, caption}]``, as in the
    releases of github.com/mehdidc/retrieval_annotations that CLIP_benchmark downloads (Karpathy's
    5,000-image test split, "Deep Visual-Semantic Alignments", CVPR 2015).

    Returns a :class:`RetrievalDataset` named ``name``. Raises :class:`DatasetError` for a
    missing, unreadable or malformed file, and (``on_error`` ``fail``) for bad records and
    missing images, all listed in one error.

    Every image listed is a gallery image, in the order of ``images``, with or without captions
    (CLIP_benchmark's reader keeps an image without annotation too); every annotation is one
    caption record: used, or counted in ``left_out``: ``texts: bad_annotation`` (not an object,
    no or unknown ``image_id``, a ``caption`` that is null or not a string: an error unless
    ``on_error`` is skip; never turned into text), ``texts: blank`` (whitespace only),
    ``texts: image_left_out``. An image entry without a usable ``id`` / ``file_name``, or with an
    ``id`` seen before, is ``images: bad_entry``.
    """
    data_dir = Path(data_dir)
    ann = coco_file(data_dir, split, language)
    if not ann.is_file():
        raise DatasetError(f"{ann} does not exist", f"put {ann.name} (and the images) in {data_dir}")
    shape = 'expected {"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}'
    try:
        data = read_json(ann)
    except OSError as exc:
        raise DatasetError(f"{ann} cannot be read ({exc.strerror or exc})",
                           "check the file and its permissions") from None
    except ValueError as exc:
        raise DatasetError(f"{ann} is not valid JSON ({exc})", shape) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        got = type(data).__name__ if not isinstance(data, dict) else \
            ", ".join(f"{k}: {type(data.get(k)).__name__}" for k in ("images", "annotations"))
        raise DatasetError(f"{ann} is not a COCO captions file ({got})", shape)
    left = LeftOut()
    bad: list[BadItem] = []
    position: dict = {}
    images: list[tuple[str, str]] = []
    for n, entry in enumerate(data["images"]):
        where = f"{ann}: images[{n}]"
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        reason = None
        if not isinstance(entry, dict):
            reason = f"an image entry must be an object, not {_kind(entry)}"
        elif not _is_id(image_id):
            reason = f"'id' must be an integer or a string, not {_kind(image_id)}"
        elif not isinstance(file_name, str) or not file_name.strip():
            reason = f"image id {image_id!r}: 'file_name' must be a non-empty string, not {_kind(file_name)}"
        elif image_id in position:
            reason = f"image id {image_id!r} is listed twice (first at images[{position[image_id][1]}])"
        if reason:
            bad.append(BadItem(where, reason, n))
            left.add("images", "bad_entry")
            continue
        position[image_id] = (len(images), n)
        images.append((file_name.strip(), f"{ann}: image id {image_id!r}"))
    order: list[tuple[int, int, str, str]] = []
    for n, a in enumerate(data["annotations"]):
        aid = a.get("id") if isinstance(a, dict) else None
        where = f"{ann}: annotation id {aid!r} (annotations[{n}])" if _is_id(aid) else f"{ann}: annotations[{n}]"
        image_id = a.get("image_id") if isinstance(a, dict) else None
        caption = a.get("caption") if isinstance(a, dict) else None
        reason = None
        if not isinstance(a, dict):
            reason = f"an annotation must be an object, not {_kind(a)}"
        elif not _is_id(image_id):
            reason = f"'image_id' must be an integer or a string, not {_kind(image_id)}"
        elif image_id not in position:
            reason = f"image id {image_id!r} is not in 'images' (or its entry there is bad)"
        elif not isinstance(caption, str):
            reason = f"'caption' is {_kind(caption)}, not a string"
        if reason:
            bad.append(BadItem(where, reason, n))
            left.add("texts", "bad_annotation")
            continue
        if not caption.strip():
            left.add("texts", "blank")
            continue
        order.append((position[image_id][0], n, caption.strip(), where))
    order.sort(key=lambda o: o[:2])  # images in 'images' order, captions in annotation order within each
    captions = [(i, caption, where) for i, _, caption, where in order]
    return _build(name, data_dir, ann, images, captions, bad, left, on_error)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (list, dict)):
        return f"a JSON {'list' if isinstance(value, list) else 'object'}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"the {type(value).__name__} {value!r}"[:60]
