"""The named datasets (the reference tool's list), their default tasks, and how each is read.

Retrieval: ``flickr8k``, ``flickr30k``, ``mscoco_captions``, ``mscoco_captions2017``, ``muge``,
plus ``flickr8k-cn``, ``flickr30k-cn`` and ``coco-cn`` (the same readers with language ``zh``).
Classification: the 38 sets of evalscope's list (imagenet1k ... vtab/svhn).

A named dataset is read from

1. ``data_dir`` holding raw Karpathy annotations (flickr / coco names only; see
   :mod:`.karpathy`), else
2. ``data_dir`` holding the webdataset layout (:mod:`.wds`), else
3. a download of the webdataset into the cache (:mod:`.sources`).

Languages: ``en`` (default) and ``zh`` (``cn`` is accepted and means ``zh``). For classification,
language ``zh`` reads ``zh_classnames.txt`` and ``zh_zeroshot_classification_templates.txt`` of
the dataset folder (the reference keeps its Chinese class names beside the English ones the same
way, as ``cn_classnames.json``), unless custom files are given.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from ..errors import ConfigError, DatasetError
from . import karpathy, sources, wds
from .base import RetrievalDataset

log = logging.getLogger(__name__)

RETRIEVAL = ("flickr8k", "flickr30k", "mscoco_captions", "mscoco_captions2017", "muge",
             "flickr8k-cn", "flickr30k-cn", "coco-cn")
CLASSIFICATION = (
    "imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "imagenet-o", "objectnet",
    "fer2013", "voc2007", "voc2007_multilabel", "sun397", "cars", "fgvc_aircraft", "mnist", "stl10", "gtsrb",
    "country211", "renderedsst2",
    "vtab/caltech101", "vtab/cifar10", "vtab/cifar100", "vtab/clevr_count_all", "vtab/clevr_closest_object_distance",
    "vtab/diabetic_retinopathy", "vtab/dmlab", "vtab/dsprites_label_orientation", "vtab/dsprites_label_x_position",
    "vtab/dsprites_label_y_position", "vtab/dtd", "vtab/eurosat", "vtab/kitti_closest_vehicle_distance",
    "vtab/flowers", "vtab/pets", "vtab/pcam", "vtab/resisc45", "vtab/smallnorb_label_azimuth",
    "vtab/smallnorb_label_elevation", "vtab/svhn",
)
# The Chinese-only names: (reader name, forced language)
_ALIASES = {"flickr8k-cn": ("flickr8k", "zh"), "flickr30k-cn": ("flickr30k", "zh"), "coco-cn": ("mscoco_captions", "zh")}
LANGUAGES = ("en", "zh")
LANGUAGE_ALIASES = {"cn": "zh", "zh-cn": "zh", "zh_cn": "zh", "chinese": "zh", "english": "en"}


def normalize_language(value: str | None) -> str:
    """``None`` -> ``en``; ``cn`` (and a few spellings) -> ``zh``; anything else is an error."""
    if value is None:
        return "en"
    code = LANGUAGE_ALIASES.get(str(value).lower(), str(value).lower())
    if code not in LANGUAGES:
        raise ConfigError(f"unknown language {value!r}", f"use one of {', '.join(LANGUAGES)} (cn is accepted for zh)")
    return code


def wds_name(name: str) -> str:
    """The repository name of a dataset (``vtab/cifar10`` -> ``vtab-cifar10``, as the hubs spell it)."""
    return name.replace("/", "-")


def _has_wds(root: Path, split: str) -> bool:
    return (root / split).is_dir() or bool(wds.existing_splits(root))


def read_named_retrieval(name: str, data_dir, split: str, on_error: str, *, language: str | None = None,
                         dataset_url: str | None = None, cache_dir=None, progress: bool = True,
                         limit: int | None = None) -> RetrievalDataset:
    base, forced = _ALIASES.get(name, (name, None))
    lang = forced or normalize_language(language)
    if data_dir and not sources.is_url(str(data_dir)):
        root = Path(data_dir).expanduser()
        if base in ("flickr8k", "flickr30k") and karpathy.flickr_file(root, base, split, lang).is_file():
            return karpathy.read_flickr(root, split, name=name, base=base, language=lang, on_error=on_error)
        if base.startswith("mscoco") and karpathy.coco_file(root, split, lang).is_file():
            return karpathy.read_coco(root, split, name=name, language=lang, on_error=on_error)
        if forced or (lang == "zh" and base in ("flickr8k", "flickr30k", "mscoco_captions")):
            want = (karpathy.coco_file(root, split, lang) if base.startswith("mscoco")
                    else karpathy.flickr_file(root, base, split, lang))
            if not _has_wds(root, split):
                raise DatasetError(f"{name} in Chinese needs {want}", f"put {want.name} and the images in {root}")
    if forced and not data_dir:
        raise DatasetError(f"{name} is not hosted as a webdataset", "pass --data-dir with the raw annotations and images")
    root = sources.dataset_root(wds_name(base), data_dir, split, dataset_url=dataset_url, cache_dir=cache_dir,
                                progress=progress, need_classes=False)
    kind = wds.dataset_type(root)
    if kind != "retrieval" and (root / wds.CLASSNAMES).is_file():
        raise DatasetError(f"{root} holds a {kind} dataset, not a retrieval one", "use --task zeroshot_classification")
    return wds.read_wds_retrieval(root, split, name=name, on_error=on_error, limit=limit)


def _load_list_file(path, name: str, what: str):
    """A custom classnames/templates file: ``.json`` (a list, or a mapping keyed by dataset name,
    as CLIP_benchmark's ``--custom_*_file``) or text with one entry per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc})") from None
        if isinstance(data, dict) and not (what == "templates" and _is_cupl(data)):
            key = name if name in data else wds_name(name) if wds_name(name) in data else None
            if key is None:
                raise ConfigError(f"{path} has no entry for dataset {name!r}",
                                  f"keys there: {', '.join(list(data)[:20])}")
            data = data[key]
        return data
    return wds.read_lines(path)


def _is_cupl(data: dict) -> bool:
    return all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()) and \
        not any("{c}" in t for v in data.values() for t in v)


def _check_templates(templates, classnames: list[str], where: str):
    if isinstance(templates, dict):
        missing = [c for c in classnames if not templates.get(c)]
        if missing:
            raise DatasetError(f"{where}: per-class templates lack {len(missing)} class(es), e.g. {missing[:5]}")
        return templates
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise DatasetError(f"{where}: templates must be a non-empty list of strings")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise DatasetError(f"{where}: template(s) without {{c}}: {bad[:3]}", "write the class name's place as {c}")
    return templates


def class_texts(root: Path, name: str, language: str, classnames_file=None, templates_file=None):
    """(classnames, templates) for a classification set: custom files first, then the folder's."""
    prefix = "" if language == "en" else f"{language}_"
    if classnames_file:
        classnames = _load_list_file(classnames_file, name, "classnames")
        where_c = str(classnames_file)
    else:
        path = root / f"{prefix}{wds.CLASSNAMES}"
        if not path.is_file():
            raise DatasetError(f"no class names for {name} in language {language}: {path} does not exist",
                               "pass --classnames-file (one class name per line, or JSON keyed by dataset)")
        classnames, where_c = wds.read_lines(path), str(path)
    if not isinstance(classnames, list) or not classnames or not all(isinstance(c, str) and c for c in classnames):
        raise DatasetError(f"{where_c}: class names must be a non-empty list of strings")
    if templates_file:
        templates, where_t = _load_list_file(templates_file, name, "templates"), str(templates_file)
    else:
        path = root / f"{prefix}{wds.TEMPLATES}"
        if not path.is_file():
            raise DatasetError(f"no zero-shot templates for {name} in language {language}: {path} does not exist",
                               "pass --templates-file (one template with {c} per line, or JSON keyed by dataset)")
        templates, where_t = wds.read_lines(path), str(path)
    return classnames, _check_templates(templates, classnames, where_t)


def read_named_classification(name: str, data_dir, split: str, on_error: str, *, language: str | None = None,
                              dataset_url: str | None = None, cache_dir=None, progress: bool = True,
                              limit: int | None = None, classnames_file=None, templates_file=None):
    lang = normalize_language(language)
    root = sources.dataset_root(wds_name(name), data_dir, split, dataset_url=dataset_url, cache_dir=cache_dir,
                                progress=progress, need_classes=True)
    if lang != "en" and not (classnames_file and templates_file):
        # the language files are optional on a hub: fetch them when the folder is a cache
        _fetch_language_files(root, lang)
    classnames, templates = class_texts(root, name, lang, classnames_file, templates_file)
    return wds.read_wds_classification(root, split, name=name, classnames=classnames, templates=templates,
                                       on_error=on_error, limit=limit)


def _fetch_language_files(root: Path, lang: str) -> None:
    manifest = root / sources.MANIFEST
    if not manifest.is_file():
        return
    import asyncio

    import aiohttp

    url = orjson.loads(manifest.read_bytes()).get("url")
    fetcher = sources.Fetcher(url, root, progress=False)

    async def go():
        async with aiohttp.ClientSession() as session:
            for f in (f"{lang}_{wds.CLASSNAMES}", f"{lang}_{wds.TEMPLATES}"):
                await fetcher.fetch(session, f, optional=True)

    asyncio.run(go())


def default_task_of(name: str) -> str:
    return "zeroshot_retrieval" if name in RETRIEVAL else "zeroshot_classification"


__all__ = ["RETRIEVAL", "CLASSIFICATION", "LANGUAGES", "normalize_language", "read_named_retrieval",
           "read_named_classification", "default_task_of", "class_texts", "wds_name"]
