"""Dataset side files, checked where they are read: ``nshards.txt``, ``dataset_type.txt``,
``classnames.txt``, ``zeroshot_classification_templates.txt`` (and their ``zh_`` versions), and
the files of ``--classnames-file`` / ``--templates-file`` (text, or JSON: a list, or an object
keyed by dataset name as CLIP_benchmark's ``--custom_classname_file``, or CuPL-style templates).

Text files are read as UTF-8; a leading byte-order mark is dropped
(:func:`clipeval.engine.textio.strip_bom`). A file that is a web page (:func:`html_page`: what a
hub sends with status 200 for a login wall or a "just a moment" check) is refused: its lines would
otherwise pass for class names or templates. Every problem is a :class:`SideFileError` that names
the file, and the line (or the JSON entry) where it applies; no content of a side file ends in a
traceback.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import orjson

from ..errors import ConfigError, DatasetError, listing
from ..textio import FileTooLarge, NotRegularFile, read_regular, strip_bom

log = logging.getLogger(__name__)

NSHARDS = "nshards.txt"
DATASET_TYPE = "dataset_type.txt"
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
DATASET_TYPES = ("classification", "retrieval", "multilabel")
# The largest side file read (the class names of ImageNet-21k take about 1 MB, CuPL's per-class
# prompts for ImageNet a few MB); anything larger is not a side file.
MAX_SIDE_FILE_BYTES = 64 << 20
# More shards than this is not a shard count (LAION-5B has about 230,000 shards of 10,000 samples).
MAX_SHARDS = 1_000_000


class SideFileError(DatasetError):
    """A side file is missing, unreadable or holds something else than its format; ``path``
    names it (a download cache drops such a file so that the next run fetches it again)."""

    def __init__(self, path, message: str, remedy: str | None = None):
        super().__init__(message, remedy)
        self.path = Path(path)


# --------------------------------------------------------------------------------------------
# Text


# How a web page starts (after a BOM and blank space, any case): an HTML document or fragment, or XML;
# the tag name ends there (``<bodyguard>`` is no page).
_PAGE_START = re.compile(rb"<(?:!doctype\s+html|html|head|body|\?xml)(?:[\s>/]|$)")


def html_page(data: bytes) -> bool:
    """Whether ``data`` is a web page rather than a side file: after a byte-order mark and blank
    space it starts with the tag ``<!DOCTYPE html``, ``<html``, ``<head``, ``<body`` or ``<?xml``
    (any case, the name ending in a space, ``>``, ``/`` or the end). No class name list, template list, shard count or dataset type starts so."""
    return _PAGE_START.match(strip_bom(data[:4096]).lstrip().lower()) is not None


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of a side file, without a leading BOM.

    Raises :class:`SideFileError` when it is not a regular file (a folder, a FIFO, a device such
    as ``/dev/zero``: never read, so nothing blocks or runs for ever), is larger than
    :data:`MAX_SIDE_FILE_BYTES`, cannot be read, is not UTF-8 (with the line and byte of the
    first bad byte), or is a web page (:func:`html_page`).
    """
    p = Path(path)
    if p.is_dir():
        raise SideFileError(p, f"{p} is a directory, not a file", f"put the file {p.name} there instead")
    try:
        data = read_regular(p, MAX_SIDE_FILE_BYTES)
    except NotRegularFile as exc:
        raise SideFileError(p, f"{p} is {exc.strerror}", f"put a regular file {p.name} there instead") from None
    except FileTooLarge:
        raise SideFileError(p, f"{p} is larger than {MAX_SIDE_FILE_BYTES // (1 << 20)} MiB, too large for a "
                            "side file (class names, templates, shard counts)",
                            "check that the path names the file you mean") from None
    except OSError as exc:
        raise SideFileError(p, f"{p} cannot be read ({exc.strerror or exc})", "check the file and its permissions") from None
    if html_page(data):
        raise SideFileError(p, f"{p} is a web page (it starts with {strip_bom(data).lstrip()[:40]!r}), not {p.name}",
                            f"put the real {p.name} there (a server answered with a web page, e.g. a login or "
                            "'just a moment' page)")
    data = strip_bom(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SideFileError(p, f"{p}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                            "save the file as UTF-8") from None


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of the non-blank lines (split as :meth:`str.splitlines`,
    which is how the reference tools read these files)."""
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_lines(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a text side file, stripped (see :func:`read_text`)."""
    return [line for _, line in numbered_lines(read_text(path))]


# --------------------------------------------------------------------------------------------
# nshards.txt, dataset_type.txt


def parse_count(text: str, where: str, path=None) -> int:
    """The number of shards written in ``nshards.txt``: ASCII digits, with surrounding whitespace.

    Raises :class:`SideFileError` for an empty file, anything else than one number (a sign, a
    decimal point, Unicode digits, a second line, HTML...), 0, or more than :data:`MAX_SHARDS`.
    """
    path = path if path is not None else where
    value = text.strip()
    remedy = "write the number of shards in it (3 for 0.tar, 1.tar, 2.tar)"
    if not value:
        raise SideFileError(path, f"{where} is empty", remedy)
    if not re.fullmatch(r"[0-9]+", value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise SideFileError(path, f"{where}:1 holds {shown!r}, not a number of shards", remedy)
    if len(value) > 7 or int(value) > MAX_SHARDS:
        raise SideFileError(path, f"{where} says {value[:20]} shards: more than {MAX_SHARDS:,}, not a shard count",
                            remedy)
    n = int(value)
    if n < 1:
        raise SideFileError(path, f"{where} says {value} shards; a split has at least one", remedy)
    return n


def read_count(path: str | os.PathLike) -> int:
    return parse_count(read_text(path), str(path), path)


def dataset_type(root: str | os.PathLike) -> str:
    """``dataset_type.txt`` of a webdataset folder: ``classification`` (also when absent),
    ``retrieval`` or ``multilabel`` (case is ignored)."""
    path = Path(root) / DATASET_TYPE
    if not path.exists():
        return "classification"
    lines = numbered_lines(read_text(path))
    remedy = f"write one of {', '.join(DATASET_TYPES)} in it (or delete it: absent means classification)"
    if not lines:
        raise SideFileError(path, f"{path} is empty", remedy)
    if len(lines) > 1:
        raise SideFileError(path, f"{path}:{lines[1][0]}: a second line ({lines[1][1][:40]!r}); it holds one word",
                            remedy)
    number, value = lines[0]
    if value.lower() not in DATASET_TYPES:
        raise SideFileError(path, f"{path}:{number} holds {value[:40]!r}", remedy)
    return value.lower()


# --------------------------------------------------------------------------------------------
# Class names and templates


def check_classnames(entries: list[tuple[str, object]], source) -> list[str]:
    """``entries``: ``(where, value)`` in class order. Each must be a non-empty string, and no
    name may appear twice (two classes of the same name get the same embedding, so the second
    could never be predicted)."""
    bad = [(w, f"a class name must be a non-empty string, not {_shown(v)}") for w, v in entries
           if not isinstance(v, str) or not v.strip()]
    if bad:
        raise SideFileError(source, f"{len(bad)} bad class name(s) in {source}:\n    {listing(bad)}",
                            "give one non-empty class name per line (or per JSON list entry)")
    seen: dict[str, list[str]] = {}
    for where, name in entries:
        seen.setdefault(name.strip(), []).append(where)
    dups = [(", ".join(places), f"class name {name!r} appears {len(places)} times")
            for name, places in seen.items() if len(places) > 1]
    if dups:
        raise SideFileError(source, f"{len(dups)} duplicate class name(s) in {source}:\n    {listing(dups)}",
                            "make the names distinct (e.g. 'crane (bird)' and 'crane (machine)'); "
                            "classes of one name share one embedding")
    return [name.strip() for _, name in entries]


def check_templates(entries: list[tuple[str, object]], source) -> list[str]:
    """Templates: non-empty strings holding ``{c}``, the place of the class name."""
    bad = []
    for where, t in entries:
        if not isinstance(t, str) or not t.strip():
            bad.append((where, f"a template must be a non-empty string, not {_shown(t)}"))
        elif "{c}" not in t:
            bad.append((where, f"template {t[:60]!r} has no {{c}}"))
    if bad:
        raise SideFileError(source, f"{len(bad)} bad template(s) in {source}:\n    {listing(bad)}",
                            "write the class name's place as {c}, e.g. 'a photo of a {c}.'")
    if not entries:
        raise SideFileError(source, f"{source} holds no templates", "give at least one template with {c}")
    return [t.strip() for _, t in entries]


def check_cupl(data: dict, classnames: list[str], source) -> dict[str, list[str]]:
    """Per-class prompts (CuPL style): every class name maps to a non-empty list of non-blank strings."""
    bad = []
    for name in classnames:
        prompts = data.get(name)
        if prompts is None:
            bad.append((f"[{name!r}]", "no prompts for this class"))
        elif not isinstance(prompts, list) or not prompts:
            bad.append((f"[{name!r}]", f"must be a non-empty list of prompts, not {_shown(prompts)}"))
        else:
            bad += [(f"[{name!r}][{i}]", f"a prompt must be a non-empty string, not {_shown(p)}")
                    for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise SideFileError(source, f"{len(bad)} problem(s) in the per-class prompts of {source}:\n    {listing(bad)}",
                            "give every class name a list of finished prompts")
    return {name: [p.strip() for p in data[name]] for name in classnames}


def read_classnames(path: str | os.PathLike) -> list[str]:
    """``classnames.txt``: one class name per line; blank lines are skipped (as the reference
    reader does: a class's index counts the non-blank lines before it)."""
    text = read_text(path)
    lines = numbered_lines(text)
    if not lines:
        raise SideFileError(path, f"{path} holds no class names", "write one class name per line")
    inner_blank = [n for n, line in enumerate(text.splitlines(), start=1) if not line.strip() and n < lines[-1][0]]
    if inner_blank:
        log.warning("%s: blank line(s) %s skipped; class indices count the non-blank lines", path,
                    ", ".join(map(str, inner_blank[:10])) + (" ..." if len(inner_blank) > 10 else ""))
    return check_classnames([(f"{path}:{n}", line) for n, line in lines], path)


def read_templates(path: str | os.PathLike) -> list[str]:
    """``zeroshot_classification_templates.txt``: one template with ``{c}`` per line."""
    lines = numbered_lines(read_text(path))
    if not lines:
        raise SideFileError(path, f"{path} holds no templates", "write one template with {c} per line")
    return check_templates([(f"{path}:{n}", line) for n, line in lines], path)


def load_custom_file(path, dataset: str, aliases: tuple[str, ...], what: str):
    """The content of ``--classnames-file`` / ``--templates-file`` for ``dataset``.

    A ``.json`` file (or a file whose text starts with ``[`` or ``{`` and parses as JSON) holds a
    list, or an object keyed by dataset name (``dataset`` or one of ``aliases``); a templates
    object that is not keyed by the dataset maps class names to their own prompts (CuPL style).
    Any other file has one entry per line. Returns ``(entries, source)`` where ``entries`` is a
    list of ``(where, value)`` for a list, or the CuPL dict.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{what} file {p} does not exist", f"pass an existing file to --{what}-file")
    text = read_text(p)
    data, is_json = None, False
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data, is_json = orjson.loads(text), True
        except orjson.JSONDecodeError as exc:
            if p.suffix.lower() == ".json":
                raise SideFileError(p, f"{p} is not valid JSON ({exc})", "fix the JSON, or give one entry per line "
                                    "in a text file") from None
    if not is_json:
        return [(f"{p}:{n}", line) for n, line in numbered_lines(text)], p
    where = str(p)
    if isinstance(data, dict):
        key = next((k for k in (dataset, *aliases) if k in data), None)
        if key is not None:
            data, where = data[key], f"{p} [{key!r}]"
        elif what == "templates" and _looks_cupl(data):
            return data, p
        else:
            keys = ", ".join(map(repr, list(data)[:20])) or "none"
            raise SideFileError(p, f"{p} has no entry for dataset {dataset!r} (keys there: {keys})",
                                f"add \"{dataset}\": [...] to it, or pass a file with a plain list")
    if what == "templates" and isinstance(data, dict):
        return data, p
    if not isinstance(data, list):
        raise SideFileError(p, f"{where} must be a list of {what}, not {_shown(data)}",
                            f"give a JSON list of strings, or an object keyed by dataset name")
    return [(f"{where}[{i}]", v) for i, v in enumerate(data)], p


def _looks_cupl(data: dict) -> bool:
    """An object of class name -> list of finished prompts (none holds ``{c}``)."""
    return bool(data) and all(isinstance(v, list) for v in data.values()) and not any(
        isinstance(t, str) and "{c}" in t for v in data.values() for t in v)


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value[:40])
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
    except TypeError:  # an integer beyond 64 bits
        text = repr(value)
    return f"{type(value).__name__} {text[:40]}"
