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
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, DatasetError
from . import karpathy, sidefiles, sources, wds
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
        # exists(), not is_file(): a FIFO or a device there is the reader's to refuse, not a reason
        # to look for a webdataset
        if base in ("flickr8k", "flickr30k") and karpathy.flickr_file(root, base, split, lang).exists():
            return karpathy.read_flickr(root, split, name=name, base=base, language=lang, on_error=on_error)
        if base.startswith("mscoco") and karpathy.coco_file(root, split, lang).exists():
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
    with _cache_repairs(root, downloaded=_downloaded(data_dir)) as repair:
        kind = wds.dataset_type(root)
        if kind != "retrieval" and (root / wds.CLASSNAMES).is_file():
            raise DatasetError(f"{root} holds a {kind} dataset, not a retrieval one", "use --task zeroshot_classification")
        return wds.read_wds_retrieval(root, split, name=name, on_error=on_error, limit=limit, **repair)


_CACHE_REMEDY = ("the damaged file(s) were removed from the download cache: run again to fetch them anew "
                 "(if they come back damaged, check --dataset-url)")


def _downloaded(data_dir) -> bool:
    """Whether the dataset is read from the download cache (no local ``data_dir``)."""
    return not data_dir or sources.is_url(str(data_dir))


@contextmanager
def _cache_repairs(root: Path, downloaded: bool):
    """Inside a download cache folder, a side file or shard found damaged is forgotten (deleted and
    dropped from the manifest) so that the next run fetches it again, and the error says so.
    A local folder (``--data-dir``) is never touched. Yields the keyword arguments for the
    webdataset readers (``on_damaged``, ``damaged_remedy``)."""
    if not downloaded or not sources.is_cache_folder(root):
        yield {}
        return
    try:
        yield {"on_damaged": lambda path: sources.forget(root, path), "damaged_remedy": _CACHE_REMEDY}
    except sidefiles.SideFileError as exc:
        sources.forget(root, exc.path)
        raise DatasetError(exc.message, _CACHE_REMEDY) from None


def class_texts(root: Path, name: str, language: str, classnames_file=None, templates_file=None):
    """(classnames, templates) for a classification set: custom files first, then the folder's.

    Every file is checked (see :mod:`.sidefiles`): class names non-empty and distinct, templates
    holding ``{c}`` (or per-class prompts covering every class)."""
    prefix = "" if language == "en" else f"{language}_"
    aliases = (wds_name(name),)
    if classnames_file:
        entries, source = sidefiles.load_custom_file(classnames_file, name, aliases, "classnames")
        if isinstance(entries, dict):
            raise sidefiles.SideFileError(source, f"{source} maps names to lists; class names are a list",
                                          "give a JSON list of class names (or an object keyed by dataset name)")
        if not entries:
            raise sidefiles.SideFileError(source, f"{source} holds no class names", "give one class name per entry")
        classnames = sidefiles.check_classnames(entries, source)
    else:
        path = root / f"{prefix}{wds.CLASSNAMES}"
        if not path.exists():
            raise DatasetError(f"no class names for {name} in language {language}: {path} does not exist",
                               "pass --classnames-file (one class name per line, or JSON keyed by dataset)")
        classnames = sidefiles.read_classnames(path)
    if templates_file:
        entries, source = sidefiles.load_custom_file(templates_file, name, aliases, "templates")
        templates = (sidefiles.check_cupl(entries, classnames, source) if isinstance(entries, dict)
                     else sidefiles.check_templates(entries, source))
    else:
        path = root / f"{prefix}{wds.TEMPLATES}"
        if not path.exists():
            raise DatasetError(f"no zero-shot templates for {name} in language {language}: {path} does not exist",
                               "pass --templates-file (one template with {c} per line, or JSON keyed by dataset)")
        templates = sidefiles.read_templates(path)
    return classnames, templates


def read_named_classification(name: str, data_dir, split: str, on_error: str, *, language: str | None = None,
                              dataset_url: str | None = None, cache_dir=None, progress: bool = True,
                              limit: int | None = None, classnames_file=None, templates_file=None):
    lang = normalize_language(language)
    root = sources.dataset_root(wds_name(name), data_dir, split, dataset_url=dataset_url, cache_dir=cache_dir,
                                progress=progress, need_classes=True)
    if lang != "en" and not (classnames_file and templates_file):
        # the language files are optional on a hub: fetch them when the folder is a cache
        _fetch_language_files(root, lang)
    with _cache_repairs(root, downloaded=_downloaded(data_dir)) as repair:
        classnames, templates = class_texts(root, name, lang, classnames_file, templates_file)
        return wds.read_wds_classification(root, split, name=name, classnames=classnames, templates=templates,
                                           on_error=on_error, limit=limit, **repair)


def _fetch_language_files(root: Path, lang: str) -> None:
    manifest = sources.load_manifest(root)
    if manifest is None:
        return
    import asyncio

    import aiohttp

    fetcher = sources.Fetcher(manifest["url"], root, progress=False)

    async def go():
        async with aiohttp.ClientSession() as session:
            for f in (f"{lang}_{wds.CLASSNAMES}", f"{lang}_{wds.TEMPLATES}"):
                await fetcher.fetch(session, f, optional=True)

    asyncio.run(go())


def default_task_of(name: str) -> str:
    return "zeroshot_retrieval" if name in RETRIEVAL else "zeroshot_classification"


__all__ = ["RETRIEVAL", "CLASSIFICATION", "LANGUAGES", "normalize_language", "read_named_retrieval",
           "read_named_classification", "default_task_of", "class_texts", "wds_name"]
