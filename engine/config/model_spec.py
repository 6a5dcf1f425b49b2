"""CLIP_benchmark's ways of naming models, as ``models`` entries.

An ``eval`` block may name its models the evalscope way (``models: [{model_name: ...}, ...]``) or
the way CLIP_benchmark's command line does, which clipeval accepts as config keys:

* ``model`` and ``pretrained``, each a string or a list: every model with every pretrained value
  (the cartesian product, as ``clip_benchmark eval --model A B --pretrained x y`` evaluates);
  ``model`` alone names models that need no pretrained value (bundles, checkpoints, ``hf-hub:``);
* ``pretrained_model``: a string or a list whose items are ``"model,pretrained"`` pairs or paths
  of text files with one pair per line (``#`` starts a comment), mixed as CLIP_benchmark's
  ``--pretrained_model`` takes them; it replaces ``model`` / ``pretrained``, as
  in CLIP_benchmark. CLIP_benchmark's named collections (``openai``, ``openclip_base``...) are not
  shipped here: list the pairs.

A ``models`` entry may carry ``pretrained`` itself: ``{model_name: ViT-B-32, pretrained:
laion2b_s34b_b79k}``. :func:`normalize_models` returns the entries; ``engine.config`` calls it
before checking the block's keys. ``clipeval eval`` takes the same three as flags (``--model``,
``--pretrained``, ``--pretrained-model``), read by the same code: its messages name the flags
(:class:`Spelling`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..textio import FileTooLarge, NotRegularFile, read_regular, strip_bom

log = logging.getLogger(__name__)

SPELLINGS = ("model", "pretrained", "pretrained_model")
COLLECTIONS = ("openai", "openclip_base", "openclip_multilingual", "openclip_all")
COMMAND_LINE = "the command line"
FLAGS = {"model": "--model", "pretrained": "--pretrained", "pretrained_model": "--pretrained-model",
         "models": "--model"}


@dataclass(frozen=True)
class Spelling:
    """How messages name the keys: ``where`` the block is (``eval``, ``the config``, or
    :data:`COMMAND_LINE`, where each key is named by its flag, :data:`FLAGS`)."""

    where: str = "eval"
    keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, where: str) -> "Spelling":
        return cls(where, FLAGS if where == COMMAND_LINE else {})

    def key(self, name: str) -> str:
        return self.keys.get(name, name)

    @property
    def at(self) -> str:
        return "on the command line" if self.where == COMMAND_LINE else f"in {self.where}"

    def example(self, key: str, *values: str) -> str:
        """``values`` given to ``key`` as this form writes them (``--pretrained-model A --pretrained-model B``
        or ``pretrained_model: [A, B]``)."""
        if key in self.keys:
            return " ".join(f"{self.keys[key]} {v}" for v in values)
        return f"{key}: {values[0]}" if len(values) == 1 else f"{key}: [{', '.join(values)}]"


def _spelling(where: str | Spelling) -> Spelling:
    return where if isinstance(where, Spelling) else Spelling.of(where)


def _names(key: str, value: Any, sp: Spelling) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        value = [os.fspath(value)]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (str, os.PathLike)) and str(v).strip() for v in value):
        raise ConfigError(f"{sp.key(key)} {sp.at} must be a name or a non-empty list of names, got {value!r}",
                          f"e.g. {sp.example('model', 'ViT-B-32')}, "
                          f"{sp.example('pretrained', 'laion2b_s34b_b79k', 'openai')}")
    return [os.fspath(v).strip() for v in value]


PAIR_EXAMPLE = "ViT-B-32,laion2b_s34b_b79k"


def _pairs(value: Any, sp: Spelling) -> list[tuple[str, str]]:
    """The pairs of ``pretrained_model``: each item (CLIP_benchmark's ``--pretrained_model`` is
    ``nargs='+'`` and reads every item the same way) is the path of an existing file of pairs
    (as CLIP_benchmark checks first), a collection name (not shipped: an error) or a
    ``model,pretrained`` pair; a list may mix them, in order."""
    key = sp.key("pretrained_model")
    items = _names("pretrained_model", value, sp)
    located: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        entry = f"{key} entry {i + 1} {sp.at}"
        at = entry if len(items) > 1 else f"{key} {sp.at}"
        path = Path(os.path.expanduser(item))
        if os.path.lexists(path) and ("," not in item or path.is_file()):
            lines = [(line_at, line) for line_at, line in _pair_lines(path, key) if line]
            if not lines:
                raise ConfigError(f"{item} ({at}) names no model",
                                  "write one MODEL,PRETRAINED per line (# starts a comment)")
            located.extend(lines)
        elif "," in item:
            located.append((entry, item))
        elif item in COLLECTIONS:
            raise ConfigError(f"{at} is {item!r}: a CLIP_benchmark collection, which clipeval does not ship",
                              f"list the pairs instead: {sp.example('pretrained_model', PAIR_EXAMPLE, '...')}")
        else:
            raise ConfigError(f"{at} is {item!r}: not \"model,pretrained\", and no such file exists",
                              "give the path of an existing file with one MODEL,PRETRAINED per line, or the pairs "
                              f"themselves (e.g. {sp.example('pretrained_model', PAIR_EXAMPLE)})")
    pairs = []
    for at, item in located:
        parts = [p.strip() for p in item.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{at} is {item!r}, not \"model,pretrained\"",
                              f"write each as MODEL,PRETRAINED, e.g. {PAIR_EXAMPLE}")
        pairs.append((parts[0], parts[1]))
    return pairs


MAX_PAIRS_FILE_BYTES = 16 << 20  # a list of (model, pretrained) pairs; anything larger is not one


def _pair_lines(path: Path, key: str = "pretrained_model") -> list[tuple[str, str]]:
    """``(where, line without comment, stripped)`` of a ``pretrained_model`` file: UTF-8 (a leading
    byte-order mark allowed), lines ending at ``\n``, ``\r\n`` or ``\r``; ``key`` names the file's
    key (or flag) in messages. Raises :class:`ConfigError` for a file that is not a regular file,
    cannot be read, is larger than :data:`MAX_PAIRS_FILE_BYTES` or is not UTF-8 (naming the line
    and byte)."""
    try:
        data = strip_bom(read_regular(path, MAX_PAIRS_FILE_BYTES))
    except NotRegularFile as exc:
        raise ConfigError(f"{key} file {path} is {exc.strerror}",
                          "give a regular text file with one MODEL,PRETRAINED per line") from None
    except FileTooLarge:
        raise ConfigError(f"{key} file {path} is larger than {MAX_PAIRS_FILE_BYTES >> 20} MiB: not a "
                          "list of model,pretrained pairs", "check that the path names the file you mean") from None
    except OSError as exc:
        raise ConfigError(f"{key} file {path} cannot be read ({exc.strerror or exc})",
                          "check the file and its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(re.findall(rb"\r\n|\r|\n", data[:exc.start])) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                          f"save the {key} file as UTF-8") from None
    lines = re.split(r"\r\n|\r|\n", text)
    return [(f"{path}:{n}", line.split("#", 1)[0].strip()) for n, line in enumerate(lines, 1)]


def normalize_models(block: dict[str, Any], where: str | Spelling = "eval") -> list[dict[str, Any]]:
    """The ``models`` entries an ``eval`` block names, with CLIP_benchmark's spellings (module
    docstring) turned into ``{"model_name": ..., "pretrained": ...}`` entries. ``models`` itself is
    returned as given (its entries are checked by ``engine.config``). ``where``: the block's name
    in messages (or a :class:`Spelling`; :data:`COMMAND_LINE` names the flags).

    ``pretrained_model`` replaces ``model`` / ``pretrained``, as in CLIP_benchmark, with a warning
    that names what it replaces. Raises :class:`ConfigError` for a spelling that is malformed,
    ``pretrained`` without ``model``, or ``models`` together with a CLIP_benchmark spelling."""
    sp = _spelling(where)
    given = [k for k in SPELLINGS if block.get(k) not in (None, "", [])]
    models = block.get("models")
    empty = [k for k in SPELLINGS if k in block and isinstance(block[k], (str, list, tuple)) and not block[k]]
    if empty and (given or not models):  # named explicitly as nothing: neither the demo model nor "no weights"
        what = "no pretrained value" if empty[0] == "pretrained" else "no model"
        raise ConfigError(f"{sp.key(empty[0])} {sp.at} names {what} (got {block[empty[0]]!r})",
                          f"name at least one, or leave {sp.key(empty[0])} out"
                          + (" to evaluate the embedded demo model" if not given else ""))
    if not given:
        return models
    if models:
        raise ConfigError(f"{sp.where} names models twice: {sp.key('models')} and "
                          f"{', '.join(sp.key(k) for k in given)}",
                          "use models: [{model_name: ..., pretrained: ...}] or CLIP_benchmark's model/pretrained, "
                          "not both")
    if "pretrained_model" in given:
        pairs = _pairs(block["pretrained_model"], sp)
        replaced = [k for k in ("model", "pretrained") if k in given]
        if replaced:
            log.warning("%s %s replaces %s, as in CLIP_benchmark: only its pairs are evaluated",
                        sp.key("pretrained_model"), sp.at, " and ".join(sp.key(k) for k in replaced))
        return [{"model_name": m, "pretrained": p} for m, p in pairs]
    if "model" not in given:
        raise ConfigError(f"{sp.key('pretrained')} {sp.at} has no model to go with",
                          f"add {sp.example('model', 'ARCHITECTURE')} (e.g. {sp.example('model', 'ViT-B-32')}), "
                          f"or use {sp.key('pretrained_model')} pairs")
    names = _names("model", block["model"], sp)
    if "pretrained" not in given:
        return [{"model_name": m} for m in names]
    tags = _names("pretrained", block["pretrained"], sp)
    return [{"model_name": m, "pretrained": p} for m, p in product(names, tags)]


def apply_model_spellings(block: dict[str, Any], where: str | Spelling = "eval") -> dict[str, Any]:
    """``block`` with CLIP_benchmark's ``model`` / ``pretrained`` / ``pretrained_model`` replaced by
    the ``models`` entries they name (the block itself when it has none of them)."""
    if not any(k in block for k in SPELLINGS):
        return block
    models = normalize_models(block, where)
    out = {k: v for k, v in block.items() if k not in SPELLINGS}
    out["models"] = models
    return out
