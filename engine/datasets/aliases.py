"""CLIP_benchmark's dataset names, resolved to clipeval's named sets (or refused, saying why).

LAION's CLIP_benchmark (``clip_benchmark/datasets/builder.py``, ``build_dataset``) takes plain
names that it builds itself (``cifar10`` from torchvision, ``vtab/cifar10`` from VTAB's splits of
TensorFlow Datasets), ``wds/NAME`` for the webdataset export of ``NAME`` (the clip-benchmark hub
repositories ``wds_{NAME with / as -}``, which evalscope and clipeval read), ``tfds/NAME`` and a
few sets of other tasks. clipeval serves the webdatasets, so a CLIP_benchmark name is

* **its own set** when clipeval has a set of that name (``mnist``, ``vtab/svhn``, ``flickr30k``);
* **another name of a set** (:data:`ALIASES`) when CLIP_benchmark's builder reads the same images
  with the same class names and templates for it as for that set: ``cifar10`` is ``vtab/cifar10``
  on the test split (VTAB's train split is the first 90 % of CIFAR's training images, torchvision's
  all of them), ``dtd`` is ``vtab/dtd`` (both DTD's first official partition), ``pcam`` is
  ``vtab/pcam`` (PatchCamelyon's official splits, the same class names),
  ``imagenet1k-unverified`` is ``imagenet1k`` (ImageNet's folders read without torchvision's
  check, the same class names);
* **refused** (:data:`NOT_SERVED`, and any ``tfds/`` name) when clipeval has no set holding the
  same evaluation: the error names the nearest clipeval set(s) and how they differ
  (``caltech101`` is torchvision's whole Caltech-101, ``vtab/caltech101`` VTAB's test split in
  another class order).

A ``wds/`` prefix is dropped first (``wds/vtab/cifar10`` is ``vtab/cifar10``), once, as
CLIP_benchmark does (``wds/wds/cifar10`` and a bare ``wds/`` are errors). A name of none of
these kinds is left to the registry (:func:`clipeval.engine.datasets.default_task`), whose error
lists the known names; :func:`suggest` finds the nearest ones for it (``svhn`` -> ``vtab/svhn``:
CLIP_benchmark itself knows SVHN only as ``vtab/svhn``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ALIASES", "NOT_SERVED", "Alias", "DatasetNameError", "Refusal", "refusal", "resolve_name", "suggest"]

WDS_PREFIX = "wds/"
TFDS_PREFIX = "tfds/"


class DatasetNameError(ConfigError):
    """A dataset name clipeval cannot serve. ``problem`` is the message without its subject
    (``'caltech101' is ...``), for a config error that names the key first."""

    def __init__(self, problem: str, remedy: str):
        super().__init__(f"dataset {problem}", remedy)
        self.problem = problem


@dataclass(frozen=True)
class Alias:
    """``target``: the clipeval set a CLIP_benchmark name stands for; ``splits``: the splits for
    which the two are the same data (``None``: every split); ``other_splits``: what CLIP_benchmark
    reads for the others, for the error."""

    target: str
    splits: tuple[str, ...] | None = None
    other_splits: str = ""


@dataclass(frozen=True)
class Refusal:
    """A name CLIP_benchmark builds that clipeval cannot serve: ``why`` (what CLIP_benchmark reads
    for it, and how the ``nearest`` clipeval sets differ), ``remedy`` when there is no nearest set."""

    nearest: tuple[str, ...]
    why: str
    remedy: str = ""


_CIFAR_SPLITS = ("CLIP_benchmark's {n} has torchvision's splits (train: all 50,000 training images; test), while "
                 "vtab/{n} has VTAB's (train: the first 45,000 of them; val: the last 5,000; test)")

ALIASES: dict[str, Alias] = {
    "cifar10": Alias("vtab/cifar10", ("test",), _CIFAR_SPLITS),
    "cifar100": Alias("vtab/cifar100", ("test",), _CIFAR_SPLITS),
    "dtd": Alias("vtab/dtd"),
    "pcam": Alias("vtab/pcam"),
    "imagenet1k-unverified": Alias("imagenet1k"),
}

_NO_WDS = "there is no webdataset of it in the clip-benchmark collection clipeval reads"
_SELECTION = ("it is an image_caption_selection set (one image, several captions, pick the right one): a task "
              "clipeval does not run")
_SELECTION_REMEDY = "evaluate it with CLIP_benchmark (--task image_caption_selection)"
_MULTILINGUAL_REMEDY = ("put its images and captions in an image_queries.jsonl and evaluate it as --dataset custom "
                        "(--data-dir FOLDER)")

NOT_SERVED: dict[str, Refusal] = {
    "caltech101": Refusal(("vtab/caltech101",), (
        "CLIP_benchmark reads torchvision's whole Caltech-101 for it (the split is ignored) with its `caltech101` "
        "class list, while vtab/caltech101 is VTAB's test split (6,084 images) with the `caltech101_vtab` class "
        "order")),
    "eurosat": Refusal(("vtab/eurosat",), (
        "CLIP_benchmark reads all 27,000 EuroSAT images for it (the split is ignored), while vtab/eurosat is "
        "VTAB's split of them (test: the last 20 %)")),
    "pets": Refusal(("vtab/pets",), (
        "CLIP_benchmark names its classes with torchvision's Oxford-IIIT Pet names, and those of vtab/pets with "
        "its own `pets` list, so the zero-shot prompts differ")),
    "flowers": Refusal(("vtab/flowers",), (
        "CLIP_benchmark names its classes with its own `flowers` list, and those of vtab/flowers with TensorFlow "
        "Datasets' label names, so the zero-shot prompts differ")),
    "food101": Refusal((), f"CLIP_benchmark reads torchvision's Food-101 for it, and {_NO_WDS}",
                       "evaluate it with CLIP_benchmark"),
    "imagenet-w": Refusal(("imagenet1k",), (
        "it is ImageNet's validation set with a watermark that CLIP_benchmark draws into every image in its "
        "transform; clipeval reads images as they are")),
    "babel_imagenet": Refusal(("imagenet1k",), (
        "it is ImageNet's validation set with Babel-ImageNet's per-language class subsets and prompts, which "
        "clipeval does not ship")),
    "multilingual_mscoco_captions": Refusal(("mscoco_captions",), (
        "it is XTD10: 1,000 COCO images with one caption each in 11 languages, while mscoco_captions is the "
        "Karpathy COCO test split (5,000 images, about 5 captions each)"), _MULTILINGUAL_REMEDY),
    "xtd10": Refusal(("mscoco_captions",), (
        "it is 1,000 COCO images with one caption each in 11 languages, while mscoco_captions is the Karpathy "
        "COCO test split (5,000 images, about 5 captions each)"), _MULTILINGUAL_REMEDY),
    "xtd200": Refusal(("mscoco_captions",), (
        "it is XTD10's 1,000 COCO images with one caption each, machine-translated into 200 languages (NLLB), "
        "while mscoco_captions is the Karpathy COCO test split (5,000 images, about 5 captions each)"),
        _MULTILINGUAL_REMEDY),
    "flickr30k-200": Refusal(("flickr30k", "flickr30k-cn"), (
        "it is Flickr30k's test images with one caption each, machine-translated into 200 languages (NLLB), "
        "while flickr30k is the Karpathy test split with 5 captions an image (flickr30k-cn: its Chinese "
        "captions)"), _MULTILINGUAL_REMEDY),
    "crossmodal3600": Refusal((), "it is Crossmodal-3600 (36 languages), for which clipeval has no reader",
                              _MULTILINGUAL_REMEDY),
    "winoground": Refusal((), _SELECTION, _SELECTION_REMEDY),
    **{f"sugar_crepe/{part}": Refusal((), _SELECTION, _SELECTION_REMEDY)
       for part in ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")},
    "dummy": Refusal((), "it is CLIP_benchmark's one blank image for trying the pipeline",
                     "run clipeval eval without --dataset: it evaluates the embedded demo model on its demo data"),
    # VTAB tasks CLIP_benchmark builds from TensorFlow Datasets that have no webdataset
    "vtab/cars": Refusal(("cars",), (
        f"it is VTAB's split of Stanford Cars with TensorFlow Datasets' class names, and {_NO_WDS}; cars is the "
        "webdataset of CLIP_benchmark's torchvision Stanford Cars")),
    "vtab/sun397": Refusal(("sun397",), (
        f"it is VTAB's split of SUN397, and {_NO_WDS}; sun397 is the webdataset of CLIP_benchmark's torchvision "
        "SUN397")),
    **{f"vtab/{name}": Refusal((), f"it is a VTAB task of TensorFlow Datasets, and {_NO_WDS}",
                               "evaluate it with CLIP_benchmark")
       for name in ("food101", "cub", "inaturalist")},
    **{f"vtab/dsprites_label_{name}": Refusal(
        ("vtab/dsprites_label_orientation", "vtab/dsprites_label_x_position", "vtab/dsprites_label_y_position"),
        f"it is another dSprites task of VTAB, and {_NO_WDS}") for name in ("shape", "scale")},
    **{f"vtab/smallnorb_label_{name}": Refusal(
        ("vtab/smallnorb_label_azimuth", "vtab/smallnorb_label_elevation"),
        f"it is another smallNORB task of VTAB, and {_NO_WDS}") for name in ("category", "lighting")},
}


def _strip_wds(name: str) -> str:
    return name[len(WDS_PREFIX):] if name.startswith(WDS_PREFIX) else name


def refusal(name: str) -> Refusal | None:
    """Why clipeval cannot serve the CLIP_benchmark name ``name`` (``wds/`` dropped), or ``None``
    when it can or does not know the name."""
    name = _strip_wds(name)
    if name in NOT_SERVED:
        return NOT_SERVED[name]
    if name.startswith(TFDS_PREFIX):
        tail = name[len(TFDS_PREFIX):]
        alias = ALIASES.get(tail)
        nearest = tuple(dict.fromkeys([alias.target] if alias else suggest(tail)))
        return Refusal(nearest, "it is a TensorFlow Datasets build (CLIP_benchmark needs tensorflow for it): "
                                "clipeval reads the clip-benchmark webdatasets, whose splits and class names are "
                                "those of CLIP_benchmark's own builders, not TensorFlow Datasets'",
                       "evaluate it with CLIP_benchmark")
    return None


def resolve_name(name: str, split: str | None = None) -> str:
    """The clipeval set ``name`` stands for: ``wds/`` dropped, a CLIP_benchmark alias replaced
    by its set (:data:`ALIASES`); any other name as it is (the registry checks it).

    ``split`` (``None``: not known yet) is checked against the splits an alias holds for.
    Raises :class:`DatasetNameError` for a name CLIP_benchmark builds that clipeval cannot serve
    (:data:`NOT_SERVED`, ``tfds/``), naming the nearest sets and why, and for an alias on a
    split where it is not the same data."""
    given = name
    name = _strip_wds(name)
    if given.startswith(WDS_PREFIX) and (not name.strip() or name.startswith(WDS_PREFIX)):
        # CLIP_benchmark drops wds/ once: wds/wds/NAME is the webdataset wds_wds-NAME, which no hub holds
        rest = name
        while rest.startswith(WDS_PREFIX):
            rest = rest[len(WDS_PREFIX):]
        problem = ("names no set after wds/" if not rest.strip() else
                   f"has wds/ more than once: CLIP_benchmark drops it once and reads the webdataset "
                   f"wds_{name.replace('/', '-')}, which does not exist")
        raise DatasetNameError(f"{given!r} {problem}",
                               f"write wds/NAME or NAME once (e.g. {rest or 'vtab/cifar10'}); docs/datasets.md "
                               "lists the names")
    refused = refusal(name)
    if refused is not None:
        raise _refused(given, refused)
    alias = ALIASES.get(name)
    if alias is None:
        return name
    if split is not None and alias.splits is not None and split not in alias.splits:
        shown = ", ".join(alias.splits)
        raise DatasetNameError(
            f"{given!r} with split {split!r} is not a set clipeval has: clipeval takes {name} as {alias.target}, "
            f"which is the same data as CLIP_benchmark's {name} only for split {shown}; "
            + alias.other_splits.format(n=name),
            f"use split {shown}, or name {alias.target} for its own {split!r} split")
    return alias.target


def _refused(given: str, refused: Refusal) -> DatasetNameError:
    if refused.nearest:
        nearest = " or ".join(refused.nearest)
        remedy = (f"the nearest clipeval set{'s' if len(refused.nearest) > 1 else ''}: {nearest} (not the same "
                  "evaluation: see why above)" + (f"; or {refused.remedy}" if refused.remedy else ""))
    else:
        remedy = refused.remedy
    return DatasetNameError(f"{given!r} is a set CLIP_benchmark builds that clipeval cannot serve: {refused.why}",
                            remedy)


def suggest(name: str, known=None) -> list[str]:
    """The known set names nearest to ``name``: those ending in the same part after ``/``
    (``svhn`` -> ``vtab/svhn``), then those it begins (``mscoco`` -> ``mscoco_captions``), then close spellings (:func:`difflib.get_close_matches`), an
    alias standing for its set. ``known``: the names to choose from (default: every named set)."""
    if known is None:
        from .named import CLASSIFICATION, RETRIEVAL

        known = ("custom", *RETRIEVAL, *CLASSIFICATION)
    known = list(known)
    pool = {k: k for k in known}
    pool.update({a: alias.target for a, alias in ALIASES.items()})
    name = _strip_wds(name).strip()
    tail = name.rsplit("/", 1)[-1].lower()
    same_tail = [k for k in known if k.rsplit("/", 1)[-1].lower() == tail]
    # a name cut short (mscoco -> mscoco_captions), shortest first: too far for difflib's ratio
    longer = sorted((k for k in known if len(tail) >= 3 and k.rsplit("/", 1)[-1].lower().startswith(tail)),
                    key=lambda k: (len(k), k))
    close = [pool[k] for k in difflib.get_close_matches(name.lower(), list(pool), n=3, cutoff=0.75)]
    return list(dict.fromkeys(same_tail + longer + close))[:3]
