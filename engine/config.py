"""Configuration: the evalscope ``task_cfg`` shape, checked strictly.

Accepted forms (a dict, or a JSON / YAML file holding one):

* the whole evalscope task config::

    {"eval_backend": "RAGEval", "work_dir": "outputs",
     "eval_config": {"tool": "clip_benchmark", "eval": {"models": [...], "dataset_name": [...], ...}}}

* or just the ``eval`` block (``{"models": [...], "dataset_name": [...], ...}``).

An unknown key is an error naming the key and the accepted ones (the reference tool silently
ignores typos such as ``recall_k`` for ``recall_k_list``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model_spec import apply_model_spellings

TOP_KEYS = ("eval_backend", "eval_config", "work_dir", "no_timestamp")
EVAL_CONFIG_KEYS = ("tool", "eval")
MODEL_KEYS = ("model_name", "pretrained", "revision", "hub", "precision", "api_base", "api_key", "prompt")
ON_ERROR = ("fail", "skip")
PROVIDERS = ("auto", "cuda", "cpu")
DEFAULT_RECALL_K = (1, 5, 10)


@dataclass
class EvalConfig:
    """The ``eval`` block. Field names are the config keys and the CLI flags (``--batch-size``...)."""

    models: list[dict[str, Any]] = field(default_factory=list)
    dataset_name: list[str] = field(default_factory=lambda: ["custom"])
    data_dir: str | None = None
    split: str = "test"
    task: str | None = None
    batch_size: int = 128
    num_workers: int | None = None
    verbose: bool = True
    skip_existing: bool = False
    limit: int | None = None
    output_dir: str = "outputs"
    cache_dir: str | None = None
    recall_k: list[int] | None = None
    on_error: str = "fail"
    provider: str = "auto"
    precision: str | None = None
    fast_decode: bool = False
    # Decode backend: threads, processes, or auto (engine/embed.resolve_decode)
    decode: str = "auto"
    num_threads: int | None = None
    # Embedding cache (engine/cache.py): off with no_cache; verify_cache keys image files by the
    # sha256 of their content instead of path, size and mtime; cache_max_bytes bounds its size
    # (default: env CLIPEVAL_CACHE_MAX_BYTES, else 4 GiB). It lives under cache_dir/embeddings.
    no_cache: bool = False
    verify_cache: bool = False
    cache_max_bytes: int | None = None
    # Named datasets (docs/datasets.md): download base URL (``{name}`` is replaced by the dataset
    # name; default: env CLIPEVAL_DATASET_URL, else the reference tool's ModelScope URL), the
    # language of captions / class names (``en`` or ``zh``; ``cn`` means ``zh``), and custom class
    # names / templates files (one per line, or JSON keyed by dataset name).
    dataset_url: str | None = None
    language: str | None = None
    classnames_file: str | None = None
    templates_file: str | None = None
    # image_caption (OpenAI-compatible API)
    concurrency: int = 8
    max_tokens: int | None = 512
    temperature: float | None = 0.0
    timeout: float = 120.0
    max_failures: int = 0
    max_image_side: int | None = None
    id_style: str = "int"
    system_prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = [{k: ("***" if k == "api_key" and v else v) for k, v in m.items()} for m in self.models]
        return d


EVAL_KEYS = tuple(EvalConfig.__dataclass_fields__)
DECODE_CHOICES = ("auto", "threads", "processes")


def _unknown(keys, accepted, where: str) -> None:
    bad = [k for k in keys if k not in accepted]
    if bad:
        raise ConfigError(
            f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))} in {where}",
            f"accepted keys: {', '.join(accepted)}",
        )


def _int(name: str, value, minimum: int = 1, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _models(value) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        value = [{"model_name": str(value)}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"models must be a list of {{'model_name': ...}} entries, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if isinstance(m, (str, os.PathLike)):
            m = {"model_name": str(m)}
        if not isinstance(m, dict):
            raise ConfigError(f"models[{i}] must be a mapping with model_name, got {m!r}")
        _unknown(m, MODEL_KEYS, f"models[{i}]")
        if not m.get("model_name"):
            raise ConfigError(f"models[{i}] has no model_name", "give a bundle directory, checkpoint directory or hub id")
        if m.get("pretrained") is not None and not isinstance(m["pretrained"], str):
            raise ConfigError(f"models[{i}].pretrained must be a tag or a file path, got {m['pretrained']!r}")
        out.append(dict(m))
    return out


def _str_list(name: str, value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise ConfigError(f"{name} must be a name or a non-empty list of names, got {value!r}")


def _k_list(value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"recall_k must be a list of positive integers, got {value!r}")
    ks = [_int("recall_k", k) for k in value]
    return sorted(set(ks))


def _float(name: str, value, minimum: float, maximum: float | None = None, allow_none: bool = False,
           exclusive_min: bool = False):
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        value = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if value != value or (value <= minimum if exclusive_min else value < minimum) or (
            maximum is not None and value > maximum):
        bound = f"more than {minimum:g}" if exclusive_min else f"at least {minimum:g}"
        if maximum is not None:
            bound += f" and at most {maximum:g}"
        raise ConfigError(f"{name} must be {bound}, got {value:g}")
    return value


def _caption_keys(cfg: EvalConfig) -> None:
    """The keys of task image_caption."""
    cfg.concurrency = _int("concurrency", cfg.concurrency)
    cfg.max_tokens = _int("max_tokens", cfg.max_tokens, allow_none=True)
    cfg.max_failures = _int("max_failures", cfg.max_failures, minimum=0)
    cfg.max_image_side = _int("max_image_side", cfg.max_image_side, minimum=16, allow_none=True)
    cfg.temperature = _float("temperature", cfg.temperature, 0.0, 2.0, allow_none=True)
    cfg.timeout = _float("timeout", cfg.timeout, 0.0, exclusive_min=True)
    cfg.id_style = _choice("id_style", cfg.id_style, ("int", "prefixed"))
    if cfg.system_prompt is not None and not isinstance(cfg.system_prompt, str):
        raise ConfigError(f"system_prompt must be a string, got {cfg.system_prompt!r}")


def make_eval_config(block: dict[str, Any], where: str = "eval") -> EvalConfig:
    """Check an ``eval`` block and return an :class:`EvalConfig`."""
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(block).__name__}")
    block = apply_model_spellings(block, where)  # CLIP_benchmark's model/pretrained/pretrained_model
    _unknown(block, EVAL_KEYS, where)
    cfg = EvalConfig()
    for key, value in block.items():
        if value is None and key not in ("data_dir", "task", "limit", "num_workers", "cache_dir",
                                         "recall_k", "precision", "num_threads", "dataset_url", "language", "cache_max_bytes",
                                         "classnames_file", "templates_file",
                                         "max_tokens", "temperature", "max_image_side", "system_prompt"):
            continue
        setattr(cfg, key, value)
    cfg.models = _models(cfg.models)
    # CLIP_benchmark spells webdataset names "wds/<name>"; here every named set is a webdataset
    cfg.dataset_name = [n[4:] if n.startswith("wds/") else n for n in _str_list("dataset_name", cfg.dataset_name)]
    cfg.batch_size = _int("batch_size", cfg.batch_size)
    cfg.num_workers = _int("num_workers", cfg.num_workers, minimum=0, allow_none=True)
    cfg.num_threads = _int("num_threads", cfg.num_threads, allow_none=True)
    cfg.limit = _int("limit", cfg.limit, allow_none=True)
    cfg.verbose = _bool("verbose", cfg.verbose)
    cfg.skip_existing = _bool("skip_existing", cfg.skip_existing)
    cfg.fast_decode = _bool("fast_decode", cfg.fast_decode)
    cfg.no_cache = _bool("no_cache", cfg.no_cache)
    cfg.verify_cache = _bool("verify_cache", cfg.verify_cache)
    cfg.cache_max_bytes = _int("cache_max_bytes", cfg.cache_max_bytes, minimum=0, allow_none=True)
    cfg.on_error = _choice("on_error", cfg.on_error, ON_ERROR)
    cfg.decode = _choice("decode", cfg.decode, DECODE_CHOICES)
    cfg.provider = _choice("provider", cfg.provider, PROVIDERS)
    cfg.recall_k = _k_list(cfg.recall_k)
    _caption_keys(cfg)
    if cfg.precision is not None:
        cfg.precision = _choice("precision", cfg.precision, ("fp32", "fp16", "int8"))
    if cfg.language is not None:
        from .datasets.named import normalize_language

        cfg.language = normalize_language(cfg.language)
    for key in ("data_dir", "output_dir", "cache_dir", "split", "task", "dataset_url", "classnames_file",
                "templates_file"):
        value = getattr(cfg, key)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        if isinstance(value, os.PathLike):
            setattr(cfg, key, os.fspath(value))
    return cfg


def parse_task_cfg(task_cfg: dict[str, Any] | str | os.PathLike) -> EvalConfig:
    """Accept the evalscope ``task_cfg`` (or its ``eval`` block, or a file holding either)."""
    if isinstance(task_cfg, (str, os.PathLike)):
        task_cfg = load_config_file(task_cfg)
    if not isinstance(task_cfg, dict):
        raise ConfigError(f"a task config must be a mapping, got {type(task_cfg).__name__}")
    if "eval_config" not in task_cfg and "eval_backend" not in task_cfg:
        return make_eval_config(task_cfg, "the config")
    _unknown(task_cfg, TOP_KEYS, "the task config")
    backend = task_cfg.get("eval_backend", "RAGEval")
    if backend != "RAGEval":
        raise ConfigError(f"eval_backend {backend!r} is not supported", "use eval_backend: RAGEval")
    eval_config = task_cfg.get("eval_config")
    if not isinstance(eval_config, dict):
        raise ConfigError("eval_config is missing or not a mapping", "add eval_config: {tool: clip_benchmark, eval: {...}}")
    _unknown(eval_config, EVAL_CONFIG_KEYS, "eval_config")
    tool = str(eval_config.get("tool", "clip_benchmark"))
    if tool.lower() != "clip_benchmark":
        raise ConfigError(f"eval_config.tool {tool!r} is not supported", "use tool: clip_benchmark")
    cfg = make_eval_config(eval_config.get("eval") or {}, "eval_config.eval")
    work_dir = task_cfg.get("work_dir")
    if work_dir and "output_dir" not in (eval_config.get("eval") or {}):
        cfg.output_dir = os.fspath(work_dir)
    return cfg


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            import json

            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {path} must end in .json, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as exc:  # json / yaml parse errors carry line and column
        raise ConfigError(f"cannot parse {path}: {exc}", "fix the syntax at the place named") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data
