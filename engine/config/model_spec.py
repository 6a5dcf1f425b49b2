"""CLIP_benchmark's ways of naming models, as ``models`` entries.

An ``eval`` block may name its models the evalscope way (``models: [{model_name: ...}, ...]``) or
the way CLIP_benchmark's command line does, which clipeval accepts as config keys:

* ``model`` and ``pretrained``, each a string or a list: every model with every pretrained value
  (the cartesian product, as ``clip_benchmark eval --model A B --pretrained x y`` evaluates);
  ``model`` alone names models that need no pretrained value (bundles, checkpoints, ``hf-hub:``);
* ``pretrained_model``: ``"model,pretrained"`` pairs (a string or a list), or the path of a text
  file with one pair per line (``#`` starts a comment); it replaces ``model`` / ``pretrained``, as
  in CLIP_benchmark. CLIP_benchmark's named collections (``openai``, ``openclip_base``...) are not
  shipped here: list the pairs.

A ``models`` entry may carry ``pretrained`` itself: ``{model_name: ViT-B-32, pretrained:
laion2b_s34b_b79k}``. :func:`normalize_models` returns the entries; ``engine.config`` calls it
before checking the block's keys.
"""

from __future__ import annotations

import os
from itertools import product
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SPELLINGS = ("model", "pretrained", "pretrained_model")
COLLECTIONS = ("openai", "openclip_base", "openclip_multilingual", "openclip_all")


def _names(key: str, value: Any, where: str) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        value = [os.fspath(value)]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (str, os.PathLike)) and str(v).strip() for v in value):
        raise ConfigError(f"{key} in {where} must be a name or a non-empty list of names, got {value!r}",
                          "e.g. model: ViT-B-32, pretrained: [laion2b_s34b_b79k, openai]")
    return [os.fspath(v).strip() for v in value]


def _pairs(value: Any, where: str) -> list[tuple[str, str]]:
    items = _names("pretrained_model", value, where)
    located = [(f"pretrained_model entry {i + 1} in {where}", item) for i, item in enumerate(items)]
    if len(items) == 1 and "," not in items[0]:
        item = items[0]
        path = Path(os.path.expanduser(item))
        if path.is_file():
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            located = [(f"{path}:{n}", line.split("#", 1)[0].strip()) for n, line in enumerate(lines, 1)]
            located = [(at, line) for at, line in located if line]
        elif item in COLLECTIONS:
            raise ConfigError(f"pretrained_model {item!r} in {where} is a CLIP_benchmark collection, which "
                              "clipeval does not ship",
                              "list the pairs instead: pretrained_model: [\"ViT-B-32,laion2b_s34b_b79k\", ...]")
    pairs = []
    for at, item in located:
        parts = [p.strip() for p in item.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{at} is {item!r}, not \"model,pretrained\"",
                              "write each as MODEL,PRETRAINED, e.g. ViT-B-32,laion2b_s34b_b79k")
        pairs.append((parts[0], parts[1]))
    return pairs


def normalize_models(block: dict[str, Any], where: str = "eval") -> list[dict[str, Any]]:
    """The ``models`` entries an ``eval`` block names, with CLIP_benchmark's spellings (module
    docstring) turned into ``{"model_name": ..., "pretrained": ...}`` entries. ``models`` itself is
    returned as given (its entries are checked by ``engine.config``).

    Raises :class:`ConfigError` for a spelling that is malformed, ``pretrained`` without ``model``,
    or ``models`` together with a CLIP_benchmark spelling."""
    given = [k for k in SPELLINGS if block.get(k) not in (None, "", [])]
    models = block.get("models")
    if not given:
        return models
    if models:
        raise ConfigError(f"{where} names models twice: models and {', '.join(given)}",
                          "use models: [{model_name: ..., pretrained: ...}] or CLIP_benchmark's model/pretrained, "
                          "not both")
    if "pretrained_model" in given:
        return [{"model_name": m, "pretrained": p} for m, p in _pairs(block["pretrained_model"], where)]
    if "model" not in given:
        raise ConfigError(f"pretrained in {where} has no model to go with",
                          "add model: ARCHITECTURE (e.g. model: ViT-B-32), or use pretrained_model pairs")
    names = _names("model", block["model"], where)
    if "pretrained" not in given:
        return [{"model_name": m} for m in names]
    tags = _names("pretrained", block["pretrained"], where)
    return [{"model_name": m, "pretrained": p} for m, p in product(names, tags)]


def apply_model_spellings(block: dict[str, Any], where: str = "eval") -> dict[str, Any]:
    """``block`` with CLIP_benchmark's ``model`` / ``pretrained`` / ``pretrained_model`` replaced by
    the ``models`` entries they name (the block itself when it has none of them)."""
    if not any(k in block for k in SPELLINGS):
        return block
    models = normalize_models(block, where)
    out = {k: v for k, v in block.items() if k not in SPELLINGS}
    out["models"] = models
    return out
