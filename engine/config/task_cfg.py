"""Configuration: the evalscope ``task_cfg`` shape, checked strictly (pydantic models, no extra keys).

Accepted forms (a dict, or a JSON / YAML file holding one):

* the whole evalscope task config::

    {"eval_backend": "RAGEval", "work_dir": "outputs",
     "eval_config": {"tool": "clip_benchmark", "eval": {"models": [...], "dataset_name": [...], ...}}}

* or just the ``eval`` block (``{"models": [...], "dataset_name": [...], ...}``).

Every problem of a config is collected and reported in one :class:`ConfigError` that names each
key with its path (``eval_config.eval.batch_size``; the flag, ``--batch-size``, for the command
line; ``file:line:`` for a file), what was expected and what was found. An unknown key is an
error that lists the accepted ones (the reference tool silently ignores typos such as
``recall_k`` for ``recall_k_list``).

Values, as the reference's pydantic config reads them, but stricter where a silent conversion
would hide a mistake:

* integers: ``int`` or a string of ASCII digits; not a float (``128.0``), a boolean, a string of
  other digits (``"²"``, ``"١٢"``), spaces, ``+`` or ``_``, nor beyond the key's range (every
  one fits int64); the command line's integer flags follow the same rule
  (:mod:`clipeval.engine.numbers`);
* numbers: ``int`` / ``float`` or an ASCII decimal string, finite (no NaN / inf);
* booleans: ``true`` / ``false``, or one of the strings ``true false yes no 1 0``;
* strings: ``str`` only (a list, a mapping, a number or a boolean is an error: YAML reads an
  unquoted ``yes`` / ``no`` / ``on`` / ``off`` as a boolean, and the message says to quote it);
  paths also hold no NUL character and no name longer than the file system allows;
* URLs (``dataset_url``, ``api_base``, a ``data_dir`` URL): ``http`` / ``https`` with a host;
  ``api_base`` (an API root) without ``?query`` or ``#fragment``; a password in a URL is shown
  as ``***``, and ``api_key`` is never shown, not even when it is of the wrong type.

Two extension points: :data:`TOOLS` (the parser of each ``eval_config.tool``) and
:func:`model_entries` (one entry of ``models``).
"""

from __future__ import annotations

import logging
import re
import os
from pathlib import Path
from typing import Annotated, Any, Callable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from ..results.detail import DETAIL_MODES
from ..errors import ConfigError
from ..fsutil import check_path_text, not_a_file
from ..http_retry import shown_url
from ..numbers import INT64_MAX, MAX_BATCH, MAX_WORKERS, NumberProblem, describe, parse_float, parse_int, show
from .model_spec import apply_model_spellings
from .source import parse_config_text
from ..textio import lone_surrogate, to_utf8

log = logging.getLogger(__name__)

TOP_KEYS = ("eval_backend", "eval_config", "work_dir", "no_timestamp")
EVAL_CONFIG_KEYS = ("tool", "eval")
ON_ERROR = ("fail", "skip")
PROVIDERS = ("auto", "cuda", "cpu")
PRECISIONS = ("fp32", "fp16", "int8")
DECODE_CHOICES = ("auto", "threads", "processes")
ID_STYLES = ("int", "prefixed")
EXECUTORS = ("local", "ray")  # where the embedding stage and the pairs run (engine/executors/)
DEFAULT_RECALL_K = (1, 5, 10)
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
CLI_FLAGS = {"models": "--model", "model_name": "--model", "dataset_name": "--dataset", "num_threads": "--threads",
             "recall_k": "--recall-k"}

_YAML_BOOL = "YAML reads an unquoted yes/no/on/off/true/false as a boolean: put the value in quotes"


# --- value checkers (each raises a pydantic error whose message follows the key's name) ---------

_show = show
_kind = describe


def _fail(message: str, hint: str | None = None):
    raise PydanticCustomError("clipeval", "{message}", {"message": message, "hint": hint})


def _int(lo: int, hi: int = INT64_MAX, nullable: bool = False):
    def check(value):
        if value is None and nullable:
            return None
        try:
            return parse_int(value, lo, hi)
        except NumberProblem as exc:
            _fail(exc.message, exc.hint)

    return PlainValidator(check)


def _float(lo: float, hi: float, nullable: bool = False, exclusive_min: bool = False):
    def check(value):
        if value is None and nullable:
            return None
        try:
            return parse_float(value, lo, hi, exclusive_min=exclusive_min)
        except NumberProblem as exc:
            _fail(exc.message, exc.hint)

    return PlainValidator(check)


def _bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    _fail(f"must be true or false, got {_kind(value)}", "write true or false")


def _choice(choices: tuple[str, ...], nullable: bool = False):
    def check(value):
        if value is None and nullable:
            return None
        if not isinstance(value, str) or value not in choices:
            _fail(f"must be one of {', '.join(choices)}, got {_kind(value)}",
                  _YAML_BOOL if isinstance(value, bool) else None)
        return value

    return PlainValidator(check)


def _text(value, *, what: str = "a string", allow_empty: bool = False) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        _fail(f"must be {what}, got {_kind(value)}", _YAML_BOOL if isinstance(value, bool) else None)
    if not allow_empty and not value.strip():
        _fail(f"must be {what}, got an empty string")
    return value


def _str(nullable: bool = False, allow_empty: bool = False, what: str = "a string"):
    def check(value):
        if value is None and nullable:
            return None
        return _text(value, what=what, allow_empty=allow_empty)

    return PlainValidator(check)


def _path(nullable: bool = True, what: str = "a path"):
    def check(value):
        if value is None and nullable:
            return None
        text = _text(value, what=what)
        problem = check_path_text(text)
        if problem:
            _fail(f"{problem}: {_show(text)}")
        return text

    return PlainValidator(check)


def _secret(value):
    """A secret (``api_key``): a string; any other value is refused without showing it."""
    if value is None:
        return None
    if not isinstance(value, str):
        kind = {bool: "a boolean", int: "an integer", float: "a number", list: "a list", dict: "a mapping"}.get(
            type(value), "a " + type(value).__name__)
        _fail(f"must be a string, got {kind} (value hidden)",
              "put the key in quotes" if isinstance(value, (int, float, bool)) else "give the key as one string")
    return value


def split_problem(split: str) -> str | None:
    """Why ``split`` cannot be a split's name (``None`` when it can): a split names a file or
    folder inside the data (``qrels/SPLIT.tsv``, ``SPLIT/0.tar``), so it holds no path separator,
    is not ``.`` or ``..``, and holds no control character."""
    if not split.strip() or split in (".", "..") or any(c in split for c in "/\\") or \
            any(ord(c) < 32 or ord(c) == 127 for c in split):
        return "must name a split (e.g. test, dev): no path separators, '.', '..' or control characters"
    return None


def _split(value):
    text = _text(value)
    problem = split_problem(text)
    if problem:
        _fail(f"{problem}, got {_show(text)}")
    return text


def check_url(value: str, api_root: bool = False) -> str | None:
    """Why ``value`` is not a usable ``http(s)://host...`` URL (``None`` when it is); an
    ``api_root`` (a base that paths are appended to) also holds no ``?query`` or ``#fragment``."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        return "holds whitespace or control characters"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if api_root and (parts.query or parts.fragment or "?" in value or "#" in value):
        return "is an API root, to which /chat/completions is appended: it cannot hold a ?query or #fragment"
    return None


def _url(nullable: bool = True, api_root: bool = False):
    def check(value):
        if value is None and nullable:
            return None
        text = _text(value, what="an http(s) URL")
        problem = check_url(text, api_root)
        if problem:
            _fail(f"{problem}, got {_show(shown_url(text))}", "give an http:// or https:// URL with a host, "
                                                               "e.g. http://localhost:8008/v1")
        return text

    return PlainValidator(check)


def _path_or_url(value):
    if value is None:
        return None
    text = _text(value, what="a folder or an http(s) URL")
    problem = check_url(text) if "://" in text else check_path_text(text)
    if problem:
        _fail(f"{problem}: {_show(text)}")
    return text


_HOST_PORT = re.compile(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")


def _ray_address(value):
    """``auto`` (a running cluster, found as Ray finds it), ``HOST:PORT`` (a head node's GCS) or
    ``ray://HOST:PORT`` (Ray Client)."""
    if value is None:
        return None
    match = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
    if value != "auto" and not (match and 1 <= int(match.group(2)) <= 65535):
        _fail(f"must be auto, HOST:PORT or ray://HOST:PORT, got {_kind(value) if value != '' else 'an empty string'}",
              "give the head node's address as `ray start --head` prints it (e.g. 10.0.0.5:6379), or auto")
    return value


def _names(value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        _fail(f"must be a name or a non-empty list of names, got {_kind(value)}")
    for v in value:
        if not isinstance(v, str) or not v.strip() or "\0" in v:
            _fail(f"must be a name or a non-empty list of names, got {_show(v)} in {_show(value)}")
    return list(value)  # resolved (CLIP_benchmark's names) once the split is known: _dataset_names


def _dataset_names(names: list[str], split: str, loc: Loc, problems: "Problems") -> list[str]:
    """``names`` resolved to clipeval's sets for ``split`` (:func:`clipeval.engine.datasets.aliases.resolve_name`:
    CLIP_benchmark's ``wds/NAME`` is ``NAME``, ``cifar10`` is ``vtab/cifar10`` on the test split,
    a set clipeval cannot serve is a problem naming the nearest ones), each once."""
    from ..datasets.aliases import DatasetNameError, resolve_name

    out = []
    for i, name in enumerate(names):
        try:
            resolved = resolve_name(name, split)
        except DatasetNameError as exc:
            problems.add(loc + (i,), exc.problem, exc.remedy)
            continue
        if resolved != name.removeprefix("wds/"):
            log.info("dataset %s is CLIP_benchmark's name of %s (the same images, class names and templates)",
                     name, resolved)
        out.append(resolved)
    return _once(out, "dataset_name", "dataset")


def _once(items: list, key: str, what: str) -> list:
    """``items`` with repeats left out (the first kept, in order), each repeat logged: evaluating
    it again would only write the same result file twice (as ``recall_k: [5, 5]`` is one k)."""
    out: list = []
    for item in items:
        if item in out:
            log.warning("%s lists the %s %s more than once: evaluated once", key, what,
                        _show(item.get("model_name", item) if isinstance(item, dict) else item))
        else:
            out.append(item)
    return out


_K_INT = _int(1).func


def _k_list(value):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        value = [value]
    if not value:
        _fail("must be a list of positive integers, got an empty list")
    try:
        return sorted({_K_INT(k) for k in value})
    except PydanticCustomError as exc:
        _fail(f"{exc.message()} (in {_show(value)})", "give positive whole numbers, e.g. [1, 5, 10]")


def _language(value):
    if value is None:
        return None
    from ..datasets.named import normalize_language

    from ..datasets.named import LANGUAGES

    text = _text(value, what="a language code")
    try:
        return normalize_language(text)
    except ConfigError as exc:
        _fail(f"must be one of {', '.join(LANGUAGES)}, got {_show(text)}", exc.remedy)


def _task(value):
    """A task of the registry (:data:`clipeval.engine.tasks.TASKS`, read when the value is
    checked, so a task registered later is accepted), or ``None``."""
    if value is None:
        return None
    text = _text(value, what="a task name")
    from ..tasks import TASKS

    if text not in TASKS:
        _fail(f"must be one of {', '.join(TASKS)}, got {_show(text)}",
              "leave task out to run each dataset's own task")
    return text


# --- the models ----------------------------------------------------------------------------------

class ModelEntry(BaseModel):
    """One entry of ``models`` (evalscope's keys): a model to evaluate, or a captioning API."""

    model_config = ConfigDict(extra="forbid")

    model_name: Annotated[str, _path(nullable=False, what="a model name")]
    # open_clip: a pretrained tag or weights file for an architecture name (CLIP_benchmark's key)
    pretrained: Annotated[str | None, _str(nullable=True, what="a tag or a file path")] = None
    revision: Annotated[str | None, _str(nullable=True)] = None
    hub: Annotated[str | None, _str(nullable=True)] = None
    precision: Annotated[str | None, _choice(PRECISIONS, nullable=True)] = None
    api_base: Annotated[str | None, _url(api_root=True)] = None
    api_key: Annotated[str | None, PlainValidator(_secret)] = None
    prompt: Annotated[str | None, _str(nullable=True)] = None


MODEL_KEYS = tuple(ModelEntry.model_fields)


def model_entries(raw: Any) -> list[dict[str, Any]]:
    """One entry of ``models`` -> the model dicts it stands for (one).

    An entry is a mapping of :data:`MODEL_KEYS` or a bare name (``"path/to/bundle"``, meaning
    ``{"model_name": ...}``). Returns only the keys given, checked. Raises
    :class:`pydantic.ValidationError` (locations relative to the entry); a mapping without
    ``model_name`` is an error that says what to give.
    """
    if isinstance(raw, (str, os.PathLike)):
        raw = {"model_name": os.fspath(raw)}
    if not isinstance(raw, dict):
        _fail(f"must be a mapping with model_name (or a model name), got {_kind(raw)}")
    if not raw.get("model_name") and "model_name" not in raw:
        _fail("has no model_name: give a bundle directory, a checkpoint directory or a hub id")
    return [ModelEntry.model_validate(raw).model_dump(exclude_unset=True)]


class EvalConfig(BaseModel):
    """The ``eval`` block. Field names are the config keys and the CLI flags (``--batch-size``...)."""

    model_config = ConfigDict(extra="forbid")

    models: list[dict[str, Any]] = []
    dataset_name: Annotated[list[str], PlainValidator(_names)] = ["custom"]
    data_dir: Annotated[str | None, PlainValidator(_path_or_url)] = None
    split: Annotated[str, PlainValidator(_split)] = "test"
    # one of the registered tasks (engine/tasks: TASKS); None: each dataset's own
    task: Annotated[str | None, PlainValidator(_task)] = None
    batch_size: Annotated[int, _int(1, MAX_BATCH)] = 128
    num_workers: Annotated[int | None, _int(0, MAX_WORKERS, nullable=True)] = None
    verbose: Annotated[bool, PlainValidator(_bool)] = True
    skip_existing: Annotated[bool, PlainValidator(_bool)] = False
    limit: Annotated[int | None, _int(1, nullable=True)] = None
    output_dir: Annotated[str, _path(nullable=False)] = "outputs"
    cache_dir: Annotated[str | None, _path()] = None
    recall_k: Annotated[list[int] | None, PlainValidator(_k_list)] = None
    on_error: Annotated[str, _choice(ON_ERROR)] = "fail"
    provider: Annotated[str, _choice(PROVIDERS)] = "auto"
    precision: Annotated[str | None, _choice(PRECISIONS, nullable=True)] = None
    fast_decode: Annotated[bool, PlainValidator(_bool)] = False
    # Decode backend: threads, processes, or auto (engine/embed.resolve_decode)
    decode: Annotated[str, _choice(DECODE_CHOICES)] = "auto"
    num_threads: Annotated[int | None, _int(1, MAX_WORKERS, nullable=True)] = None
    # Per-query detail beside each result (engine/detail.py): auto (when under 8 MiB), on, off
    detail: Annotated[str, _choice(DETAIL_MODES)] = "auto"
    # Embedding cache (engine/cache.py): off with no_cache; verify_cache keys image files by the
    # sha256 of their content instead of path, size and mtime; cache_max_bytes bounds its size
    # (default: env CLIPEVAL_CACHE_MAX_BYTES, else 4 GiB). It lives under cache_dir/embeddings.
    no_cache: Annotated[bool, PlainValidator(_bool)] = False
    verify_cache: Annotated[bool, PlainValidator(_bool)] = False
    cache_max_bytes: Annotated[int | None, _int(0, nullable=True)] = None
    # Named datasets (docs/datasets.md): download base URL (``{name}`` is replaced by the dataset
    # name; default: env CLIPEVAL_DATASET_URL, else the reference tool's ModelScope URL), the
    # language of captions / class names (``en`` or ``zh``; ``cn`` means ``zh``), and custom class
    # names / templates files (one per line, or JSON keyed by dataset name).
    dataset_url: Annotated[str | None, _url()] = None
    language: Annotated[str | None, PlainValidator(_language)] = None
    classnames_file: Annotated[str | None, _path()] = None
    templates_file: Annotated[str | None, _path()] = None
    # image_caption (OpenAI-compatible API)
    concurrency: Annotated[int, _int(1, MAX_WORKERS)] = 8
    max_tokens: Annotated[int | None, _int(1, 2**31 - 1, nullable=True)] = 512
    temperature: Annotated[float | None, _float(0.0, 2.0, nullable=True)] = 0.0
    timeout: Annotated[float, _float(0.0, 7 * 86400.0, exclusive_min=True)] = 120.0
    max_failures: Annotated[int, _int(0)] = 0
    max_image_side: Annotated[int | None, _int(16, 65535, nullable=True)] = None
    id_style: Annotated[str, _choice(ID_STYLES)] = "int"
    system_prompt: Annotated[str | None, _str(nullable=True)] = None
    # Where the work runs (engine/executors/, docs/scale.md): local (this process) or ray (a Ray
    # cluster: the embedding stage as a Ray Dataset, several (model, dataset) pairs as Ray tasks);
    # ray_address: auto (a running cluster), HOST:PORT, ray://HOST:PORT, or unset (RAY_ADDRESS,
    # else a Ray instance started on this machine for the run).
    executor: Annotated[str, _choice(EXECUTORS)] = "local"
    ray_address: Annotated[str | None, PlainValidator(_ray_address)] = None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, with every ``api_key`` masked."""
        d = self.model_dump()
        d["models"] = [{k: ("***" if k == "api_key" and v else v) for k, v in m.items()} for m in self.models]
        return d


EVAL_KEYS = tuple(EvalConfig.model_fields)
# Keys whose ``None`` means "unset"; for the others ``None`` means "the default".
NULLABLE_KEYS = ("data_dir", "task", "limit", "num_workers", "cache_dir", "recall_k", "precision", "num_threads",
                 "dataset_url", "language", "cache_max_bytes", "classnames_file", "templates_file", "max_tokens",
                 "temperature", "max_image_side", "system_prompt", "ray_address")


class TaskConfig(BaseModel):
    """The top of an evalscope task config (``eval_config`` is read by its tool's parser)."""

    model_config = ConfigDict(extra="forbid")

    eval_backend: Annotated[str, _str()] = "RAGEval"
    eval_config: Any = None
    work_dir: Annotated[str | None, _path()] = None
    no_timestamp: Annotated[bool, PlainValidator(_bool)] = False


class ClipBenchmarkToolConfig(BaseModel):
    """``eval_config`` of ``tool: clip_benchmark``."""

    model_config = ConfigDict(extra="forbid")

    tool: Any = "clip_benchmark"
    eval: Any = None


# --- problems -> one ConfigError ----------------------------------------------------------------

Loc = tuple  # of str (keys) and int (list positions)


class Whole(str):
    """A problem's text that names its key itself (shown after the file and line, not after the key)."""


class Problems:
    """Problems found in one config, each ``(location from the document root, text, hint)``; an
    unknown key is located at the key itself (for its line) and named by the mapping holding it."""

    def __init__(self, label: str, flags: bool = False, flag_names: dict[str, str] | None = None):
        self.label = label  # "the task config", "the config", "the command line", "eval" ...
        self.flags = flags  # name keys by their command-line flag
        self.flag_names = {**CLI_FLAGS, **(flag_names or {})}  # key -> flag, where not --key-with-dashes
        self.items: list[tuple[Loc, str, str | None]] = []
        self.lines: dict[Loc, int] = {}
        self.file: str | None = None

    def add(self, loc: Loc, text: str, hint: str | None = None) -> None:
        self.items.append((tuple(loc), text, hint))

    def add_validation(self, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> None:
        unknown: dict[Loc, list[str]] = {}
        for err in exc.errors():
            loc = tuple(prefix) + tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            elif err["type"] == "clipeval":
                self.add(loc, err["msg"], (err.get("ctx") or {}).get("hint"))
            else:
                self.add(loc, f"is invalid: {err['msg']}")
        for parent, keys in unknown.items():
            accepted = ", ".join(model.model_fields)
            text = f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))}"
            self.items.append((parent + (keys[0],), text, f"accepted keys: {accepted}"))

    def name(self, loc: Loc) -> str:
        if self.flags:
            key = next((k for k in reversed(loc) if isinstance(k, str)), "")
            return self.flag_names.get(key, "--" + key.replace("_", "-"))
        out = ""
        for part in loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    def _line(self, loc: Loc) -> str:
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                return f"{self.file}:{self.lines[loc[:n]]}: "
        return f"{self.file}: " if self.file else ""

    def _text(self, loc: Loc, text: str) -> str:
        if isinstance(text, Whole):
            return f"{self._line(loc)}{text}"
        if text.startswith("unknown key"):  # located at the (first) key, named by the mapping holding it
            return f"{self._line(loc)}{text} in {self.name(loc[:-1]) or self.label}"
        return f"{self._line(loc)}{self.name(loc) or self.label} {text}"

    def _fix(self, loc: Loc) -> str:
        name = self.name(loc) or "it"
        if self.flags:
            return f"change {name} (clipeval COMMAND -h lists the accepted values)"
        return f"fix {name} in {self.file}" if self.file else f"fix {name}"

    def raise_if_any(self) -> None:
        if not self.items:
            return
        if len(self.items) == 1:
            loc, text, hint = self.items[0]
            raise ConfigError(self._text(loc, text), hint or self._fix(loc))
        lines = [self._text(loc, text) + (f" ({hint})" if hint else "") for loc, text, hint in self.items]
        raise ConfigError(f"{len(lines)} problems in {self.file or self.label}:\n    " + "\n    ".join(lines),
                          "fix the keys named above")


def validate_model(problems: Problems, model: type[BaseModel], data: dict, prefix: Loc) -> BaseModel | None:
    """``model`` validated from the mapping ``data`` found at ``prefix``; ``None`` after adding
    every problem to ``problems`` (each located under ``prefix``). For a tool's parser too."""
    odd = [k for k in data if not isinstance(k, str)]
    if odd:  # YAML reads `1: x` or `null: x` as a key that is not a string
        problems.add(prefix + (str(odd[0]),),
                     f"unknown key{'s' if len(odd) > 1 else ''} {', '.join(map(_show, odd))} (not text)",
                     f"accepted keys: {', '.join(model.model_fields)}")
        data = {k: v for k, v in data.items() if isinstance(k, str)}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.add_validation(exc, prefix, model)
        return None


# --- parsing -------------------------------------------------------------------------------------

def _eval_block(block: Any, prefix: Loc, problems: Problems) -> EvalConfig | None:
    if not isinstance(block, dict):
        problems.add(prefix, f"must be a mapping of eval keys, got {_kind(block)}")
        return None
    try:  # CLIP_benchmark's model / pretrained / pretrained_model spellings -> models entries
        block = apply_model_spellings(block, (problems.name(prefix) if prefix else "") or problems.label)
    except ConfigError as exc:  # its message names the key and the block itself
        problems.add(prefix, Whole(exc.message), exc.remedy)
        return None
    fields = {k: v for k, v in block.items() if v is not None or k in NULLABLE_KEYS or k not in EVAL_KEYS}
    raw_models = fields.pop("models", None)
    cfg = validate_model(problems, EvalConfig, fields, prefix)
    models = _models(raw_models, prefix + ("models",), problems)
    if cfg is None:
        return None
    before = len(problems.items)
    names = _dataset_names(cfg.dataset_name, cfg.split, prefix + ("dataset_name",), problems)
    if models is None or len(problems.items) > before:
        return None
    cfg.models = models
    cfg.dataset_name = names
    return cfg


def _models(value: Any, loc: Loc, problems: Problems) -> list[dict[str, Any]] | None:
    """The checked ``models`` entries; ``[]`` (the embedded demo model) when the key is absent or
    null. An explicitly empty list names no model and is a problem: a templated config whose
    list came out empty must not evaluate the demo model as if it had been asked for."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike, dict)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        problems.add(loc, f"must be a list of {{model_name: ...}} entries, got {_kind(value)}")
        return None
    if not value:
        problems.add(loc, "is an empty list: it names no model",
                     "name at least one model (or leave models out to evaluate the embedded demo model)")
        return None
    out: list[dict[str, Any]] | None = []
    for i, raw in enumerate(value):
        try:
            entries = model_entries(raw)
        except ValidationError as exc:
            problems.add_validation(exc, loc + (i,), ModelEntry)
            out = None
        except PydanticCustomError as exc:
            problems.add(loc + (i,), exc.message(), (exc.context or {}).get("hint"))
            out = None
        else:
            if out is not None:
                out.extend(entries)
    return None if out is None else _once(out, "models", "model")


def not_unicode(data: Any, prefix: Loc, problems: Problems) -> None:
    """Add a problem for every key or string value of ``data`` that holds a lone surrogate: not
    Unicode text (a ``"\\udc80"`` escape in YAML or JSON, or bytes of another encoding on the
    command line), which no result file (UTF-8 JSON) can hold."""
    seen: set[int] = set()
    stack = [(data, tuple(prefix))]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, str):
            at = lone_surrogate(value)
            if at >= 0:
                problems.add(loc, f"is not Unicode text: character {at + 1} is a lone surrogate "
                                  f"({ascii(value[at])[1:-1]})", "write it as UTF-8 text (a file name too: rename it)")
        elif isinstance(value, (dict, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and lone_surrogate(key) >= 0:
                    problems.add(loc + (key.encode("utf-8", "backslashreplace").decode(),),
                                 "is a key that is not Unicode text (a lone surrogate)", "write it as UTF-8 text")
                    continue
                stack.append((item, loc + (key,)))
        elif isinstance(value, os.PathLike):
            stack.append((os.fspath(value), loc))


def make_eval_config(block: dict[str, Any], where: str = "eval", flag_names: dict[str, str] | None = None) -> EvalConfig:
    """Check an ``eval`` block and return an :class:`EvalConfig`.

    ``where`` names the block in messages: a dotted path (``eval``, ``eval_config.eval``), ``the
    config`` (a file holding only the block) or ``the command line`` (keys named as flags).
    ``flag_names`` names keys whose flag is not the default of the command (``--model-name`` for
    ``model_name`` in ``clipeval caption``). Raises :class:`ConfigError` listing every problem.
    """
    flags = where == "the command line"
    problems = Problems(where, flags=flags, flag_names=flag_names)
    prefix = () if flags or where == "the config" else tuple(where.split("."))
    not_unicode(block, prefix, problems)
    problems.raise_if_any()  # text that is not Unicode first: the checks below would trip over it
    cfg = _eval_block(block, prefix, problems)
    problems.raise_if_any()
    assert cfg is not None
    return cfg


def _clip_benchmark(eval_config: dict[str, Any], task_cfg: dict[str, Any], problems: Problems) -> EvalConfig | None:
    """``eval_config`` of ``tool: clip_benchmark`` -> :class:`EvalConfig`."""
    tool_cfg = validate_model(problems, ClipBenchmarkToolConfig, eval_config, ("eval_config",))
    block = eval_config.get("eval")
    block = {} if block is None else block
    cfg = _eval_block(block, ("eval_config", "eval"), problems)
    if tool_cfg is None or cfg is None:
        return None
    work_dir = task_cfg.get("work_dir")  # checked by TaskConfig; of another type it is a problem listed already
    if isinstance(work_dir, (str, os.PathLike)) and work_dir and "output_dir" not in block:
        cfg.output_dir = os.fspath(work_dir)
    return cfg


# eval_config.tool (lower case) -> the parser of that tool's eval_config; called as
# parser(eval_config, task_cfg, problems) and returning the config the runner takes (or None when
# it added problems). Another module registers its tool here.
def _mteb(eval_config: dict[str, Any], task_cfg: dict[str, Any], problems: Problems) -> Any:
    """``tool: mteb`` (also ``MTEB``, ``cmteb``): evalscope's text-retrieval config, checked by
    :mod:`clipeval.engine.config.mteb`; its problems join ``problems`` (with their lines)."""
    from .mteb import MtebConfigError, parse_mteb_config, problem_location

    try:
        return parse_mteb_config(eval_config, task_cfg)
    except MtebConfigError as exc:  # listed with the others, each with its line in a file
        for text in exc.problems:
            problems.add(problem_location(text), Whole(text))
        return None


TOOLS: dict[str, Callable[[dict[str, Any], dict[str, Any], Problems], Any]] = {
    "clip_benchmark": _clip_benchmark,
    "mteb": _mteb,
    "cmteb": _mteb,
}


def _task_cfg(task_cfg: dict[str, Any], problems: Problems) -> Any:
    if "eval_config" not in task_cfg and "eval_backend" not in task_cfg:
        problems.label = "the config"
        return _eval_block(task_cfg, (), problems)
    validate_model(problems, TaskConfig, task_cfg, ())  # problems here are listed with those of eval_config
    backend = task_cfg.get("eval_backend", "RAGEval")
    if isinstance(backend, str) and backend != "RAGEval":
        problems.add(("eval_backend",), f"{backend!r} is not supported", "use eval_backend: RAGEval")
        return None
    eval_config = task_cfg.get("eval_config")
    if not isinstance(eval_config, dict):
        problems.add(("eval_config",), f"is missing or not a mapping (got {_kind(eval_config)})",
                     "add eval_config: {tool: clip_benchmark, eval: {...}}")
        return None
    tool = eval_config.get("tool", "clip_benchmark")
    parser = TOOLS.get(tool.lower()) if isinstance(tool, str) else None
    if parser is None:
        problems.add(("eval_config", "tool"), f"{tool!r} is not supported",
                     f"use tool: {' or '.join(TOOLS)}")
        return None
    return parser(eval_config, task_cfg, problems)


def parse_task_cfg(task_cfg: dict[str, Any] | str | os.PathLike) -> Any:
    """Accept the evalscope ``task_cfg`` (or its ``eval`` block, or a JSON / YAML file holding
    either) and return the checked config of its tool (:class:`EvalConfig` for clip_benchmark).

    Raises :class:`ConfigError` listing every problem, each with its key's path (and, for a
    file, its line).
    """
    problems = Problems("the task config")
    if isinstance(task_cfg, (str, os.PathLike)):
        if not os.fspath(task_cfg):  # Path("") would read as ".", the working directory
            raise ConfigError("the config file path is empty", "pass the path of a JSON or YAML file, or a mapping")
        path = Path(os.path.expanduser(os.fspath(task_cfg)))
        task_cfg, problems.lines = parse_config_text(path, _read_config_text(path))
        problems.file = str(path)
    if not isinstance(task_cfg, dict):
        raise ConfigError(f"a task config must be a mapping, got {_kind(task_cfg)}",
                          "give the evalscope task_cfg (eval_backend, eval_config) or its eval block")
    not_unicode(task_cfg, (), problems)
    problems.raise_if_any()  # text that is not Unicode first: the checks below would trip over it
    cfg = _task_cfg(task_cfg, problems)
    problems.raise_if_any()
    return cfg


def _read_config_text(path: Path) -> str:
    problem = check_path_text(str(path))
    if problem:
        raise ConfigError(f"config file name {problem}", "pass the path of a JSON or YAML file")
    try:
        if not path.is_file():  # never opened: a FIFO would block
            raise ConfigError(f"config file {path} {not_a_file(path)}", "pass the path of a JSON or YAML file")
        if path.suffix.lower() not in (".json", ".yaml", ".yml"):
            raise ConfigError(f"config file {path} must end in .json, .yaml or .yml",
                              "rename it, or write the config as JSON or YAML")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}",
                          "check the path and its permissions") from None
    try:
        return to_utf8(data).decode("utf-8")  # a UTF-8, UTF-16 or UTF-32 byte-order mark is allowed
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})",
                          "save it as UTF-8") from None


def _parse_text(path: Path, text: str) -> Any:
    return parse_config_text(path, text)[0]


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a JSON or YAML config file. Raises :class:`ConfigError`."""
    path = Path(path)
    data = _parse_text(path, _read_config_text(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


__all__ = ["EvalConfig", "ModelEntry", "Problems", "TOOLS", "make_eval_config", "model_entries", "parse_task_cfg",
           "validate_model", "load_config_file", "check_path_text", "check_url", "EVAL_KEYS", "MODEL_KEYS"]
