"""evalscope's text-retrieval config (``eval_backend: RAGEval``, ``eval_config.tool: mteb``).

The shapes evalscope accepted, both read here (``tool`` in any case: ``mteb``, ``MTEB``, and
the ``cmteb`` of its C-MTEB backend):

* current (``evalscope/backend/rag_eval/mteb/arguments.py``, ``MTEBToolConfig``)::

    eval_config:
      tool: MTEB
      models: [{model_name_or_path: DIR, is_cross_encoder: false, pooling_mode: cls,
                max_seq_length: 512, prompt: "...", prompts: {query: "...", document: "..."},
                model_kwargs: {torch_dtype: auto}, encode_kwargs: {batch_size: 64}}, ...]
      eval: {custom_tasks: [{name: CustomRetrieval, data_path: DIR, eval_splits: [test]}],
             top_k: 10, limits: 500, output_folder: outputs, overwrite_results: true}

* the tutorial's older one (``cmteb/arguments.py``): ``model: [...]`` instead of ``models``, and
  ``eval: {tasks: [CustomRetrieval], dataset_path: DIR, verbosity: 2, top_k: 5, ...}``.

One encoder alone is one-stage retrieval; one encoder plus one ``is_cross_encoder: true`` model
is two-stage retrieval (the encoder's top ``top_k`` reranked), as evalscope dispatches; several
encoders without a cross-encoder run one after the other. Every key is checked (pydantic,
``extra="forbid"``): an unknown key is an error naming its path and the accepted keys, and keys
that make no sense here (``hub``, ``revision``, API models, standard MTEB task selection) are
errors that say what to do instead. ``work_dir`` at the top is the output folder unless
``eval.output_folder`` is given.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ..errors import ConfigError
from ..numbers import INT64_MAX, MAX_BATCH, describe
from .task_cfg import split_problem

log = logging.getLogger(__name__)

__all__ = ["MTEB_TOOLS", "MtebConfig", "MtebConfigError", "MtebModel", "MtebTask", "parse_mteb_config",
           "problem_location"]

MTEB_TOOLS = ("mteb", "cmteb")
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
CUSTOM_TASK = "CustomRetrieval"
# evalscope's defaults: MTEBModelConfig.max_seq_length, encode_kwargs.batch_size; top_k of the
# current MTEBEvalConfig and of the older EvalArguments
DEFAULT_MAX_SEQ_LENGTH = 512
DEFAULT_BATCH_SIZE = 32
DEFAULT_TOP_K = {"current": 10, "older": 5}
DOCUMENT_PROMPT_KEYS = ("document", "passage", "corpus")

_LOCAL = "clipeval reads local folders only: download the model or data first and give its directory"
REFUSED_MODEL_KEYS = {
    "hub": f"`hub` picks where to download from; {_LOCAL} (remove `hub`)",
    "revision": f"`revision` picks a hub revision; {_LOCAL} (remove `revision`)",
    "model_name": "API embedding models are not supported; export a local checkpoint instead "
                  "(model_name_or_path: DIR)",
    "api_base": "API embedding and rerank services are not supported; give a local checkpoint "
                "(model_name_or_path: DIR)",
    "api_key": "API models are not supported; remove api_key and give a local checkpoint",
    "dimensions": "`dimensions` belongs to API models, which are not supported; remove it",
}
REFUSED_EVAL_KEYS = {
    "hub": f"`hub` picks where to download datasets from; {_LOCAL} (remove `hub`, use custom_tasks)",
    "task_names": "standard MTEB / C-MTEB tasks download their data; evaluate a local BEIR folder with "
                  "custom_tasks: [{name: CustomRetrieval, data_path: DIR}]",
    "task_types": "task selection by type needs the MTEB task registry; use custom_tasks with a local BEIR folder",
    "languages": "task selection by language needs the MTEB task registry; use custom_tasks with a local folder",
    "splits": "`splits` selects splits of registry tasks; set eval_splits in each custom_tasks entry",
}
MODEL_KWARGS = {"torch_dtype", "dtype", "attn_implementation", "trust_remote_code"}
FP32_DTYPES = ("auto", "float32", "fp32", "torch.float32", None)
ENCODE_KWARGS = {"batch_size", "show_progress_bar", "normalize_embeddings", "convert_to_tensor", "convert_to_numpy"}


# A path: a string, or an os.PathLike (a pathlib.Path in a Python config)
PathStr = Annotated[StrictStr, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MtebModel(_Strict):
    """One entry of ``models`` (evalscope's ``MTEBModelConfig``)."""

    model_name_or_path: PathStr
    is_cross_encoder: StrictBool = False
    pooling_mode: Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"] | None = None
    max_seq_length: StrictInt | None = Field(default=None, ge=2, le=INT64_MAX)
    prompt: StrictStr | None = None
    prompts: dict[StrictStr, StrictStr] | None = None
    model_kwargs: dict[StrictStr, Any] = Field(default_factory=dict)
    config_kwargs: dict[StrictStr, Any] = Field(default_factory=dict)
    encode_kwargs: dict[StrictStr, Any] = Field(default_factory=dict)


class CustomTaskEntry(_Strict):
    """One entry of ``custom_tasks`` (evalscope's ``CustomTaskConfig``)."""

    name: StrictStr = CUSTOM_TASK
    data_path: PathStr
    eval_splits: list[StrictStr] = Field(default_factory=lambda: ["test"], min_length=1)
    type: Literal["Retrieval"] = "Retrieval"
    data_format: Literal["jsonl"] = "jsonl"


def _bare_path(value: Any) -> Any:
    """evalscope's docs show bare paths in ``custom_tasks``: ``"DIR"`` means ``{data_path: DIR}``
    (turned into an entry before validation, so a wrong entry gets one message, not one per
    branch of a union)."""
    if isinstance(value, (str, os.PathLike)):
        return {"data_path": os.fspath(value)}
    return value


class EvalBlock(_Strict):
    """``eval`` of the current shape (evalscope's ``MTEBEvalConfig``)."""

    custom_tasks: list[Annotated[CustomTaskEntry, BeforeValidator(_bare_path)]] = Field(min_length=1)
    output_folder: PathStr | None = None
    overwrite_results: StrictBool = True
    limits: StrictInt | None = Field(default=None, ge=1, le=INT64_MAX)
    top_k: StrictInt = Field(default=DEFAULT_TOP_K["current"], ge=1, le=INT64_MAX)
    encode_kwargs: dict[StrictStr, Any] | None = None
    verbosity: StrictInt | None = Field(default=None, ge=0, le=3)


class OlderEvalBlock(_Strict):
    """``eval`` of the tutorial's older shape (evalscope's C-MTEB ``EvalArguments``)."""

    tasks: list[StrictStr] = Field(min_length=1)
    dataset_path: PathStr
    verbosity: StrictInt = Field(default=2, ge=0, le=3)
    output_folder: PathStr | None = None
    overwrite_results: StrictBool = True
    limits: StrictInt | None = Field(default=None, ge=1, le=INT64_MAX)
    top_k: StrictInt = Field(default=DEFAULT_TOP_K["older"], ge=1, le=INT64_MAX)


class ToolBlock(_Strict):
    tool: StrictStr
    models: list[MtebModel] = Field(min_length=1)
    eval: EvalBlock


class OlderToolBlock(_Strict):
    tool: StrictStr
    model: list[MtebModel] = Field(min_length=1)
    eval: OlderEvalBlock


class TopBlock(_Strict):
    eval_backend: Literal["RAGEval"] = "RAGEval"
    eval_config: dict[str, Any]
    work_dir: PathStr | None = None
    no_timestamp: StrictBool = False


REMEDY = "docs/text-retrieval.md shows both config shapes"


class MtebConfigError(ConfigError):
    """The problems of an mteb config, each ``"key.path: what"`` (:attr:`problems`); one problem
    is one line. ``clipeval run`` lists them with the file's line of each key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(problems) == 1:
            super().__init__(problems[0], f"fix it ({REMEDY})")
        else:
            super().__init__(f"{len(problems)} problems in the mteb config:\n    " + "\n    ".join(problems),
                             f"fix the keys listed ({REMEDY})")


def problem_location(problem: str) -> tuple:
    """The key path a problem starts with, as a location (``eval_config.models[0].x: ...`` ->
    ``("eval_config", "models", 0, "x")``)."""
    where = problem.split(": ", 1)[0]
    loc: list = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", where):
        loc.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(loc)


@dataclass
class MtebTask:
    """A custom retrieval task: a BEIR folder and the splits to evaluate."""

    name: str
    data_path: str
    splits: list[str]


@dataclass
class MtebConfig:
    """The checked job. ``encoders``: the bi-encoder entries; ``reranker``: the cross-encoder
    entry of a two-stage run, else ``None``."""

    encoders: list[MtebModel]
    reranker: MtebModel | None
    tasks: list[MtebTask]
    output_dir: str = "outputs"
    output_what: str = "output folder (eval_config.eval.output_folder, else work_dir)"  # for messages
    overwrite_results: bool = True
    limits: int | None = None
    top_k: int = DEFAULT_TOP_K["current"]
    batch_size: int | None = None
    verbose: bool = True
    shape: str = "current"
    cache_dir: str | None = None
    provider: str = "auto"
    num_threads: int | None = None
    notes: list[str] = field(default_factory=list)
    tool: str = "mteb"
    no_cache: bool = False  # the embedding cache (docs/speed.md): on, at the default cache root
    verify_cache: bool = False
    task_name: str = "text_retrieval"  # the task this config form is for (engine/tasks)


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sub_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model at ``loc`` below ``model`` (list indexes skipped)."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        ann = current.model_fields[part].annotation
        while True:
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                break
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if models:
                ann = models[0]
                break
            if args:
                ann = args[0]
                continue
            break
        current = ann
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _says(err: dict) -> str:
    """A pydantic error in clipeval's words (``must be ..., got ...``), naming no pydantic internals."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, describe(err.get("input"))
    if kind == "too_short":
        return f"must not be empty, got {got}" if ctx.get("min_length") == 1 else \
            f"must hold at least {ctx.get('min_length')} items, got {got}"
    words = {"string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
             "int_from_float": "an integer", "bool_type": "true or false", "bool_parsing": "true or false",
             "dict_type": "a mapping", "list_type": "a list", "model_type": "a mapping",
             "model_attributes_type": "a mapping"}
    if kind in words:
        return f"must be {words[kind]}, got {got}"
    if kind == "literal_error":
        return f"must be {'one of ' if ',' in str(ctx.get('expected')) else ''}{ctx.get('expected')}, got {got}"
    if kind in ("greater_than_equal", "less_than_equal"):
        word, bound = ("at least", ctx.get("ge")) if kind == "greater_than_equal" else ("at most", ctx.get("le"))
        return f"must be {word} {bound}, got {got}"
    return f"{err['msg']} (got {got})"


def _problems_of(exc: ValidationError, model: type[BaseModel], prefix: tuple) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _path(prefix + loc)
        if err["type"] == "extra_forbidden":
            parent = _sub_model(model, loc[:-1])
            accepted = ", ".join(parent.model_fields) if parent else "?"
            out.append(f"{where}: unknown key (accepted keys: {accepted})")
        elif err["type"] == "missing":
            out.append(f"{where}: missing")
        else:
            out.append(f"{where}: {_says(err)}")
    return out


def _validate(model: type[BaseModel], data: Any, prefix: tuple, problems: list[str]):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems_of(exc, model, prefix))
        return None


def _refuse(block: Any, refused: dict[str, str], prefix: tuple, problems: list[str]) -> Any:
    """Problems for the keys that make no sense here; ``block`` without them."""
    if not isinstance(block, dict):
        return block
    for key in [k for k in block if k in refused]:
        problems.append(f"{_path(prefix + (key,))}: {refused[key]}")
    return {k: v for k, v in block.items() if k not in refused}


def _check_model(m: MtebModel, i: int, prefix: tuple, task_names: set[str], problems: list[str]) -> None:
    where = _path(prefix + (i,))
    bad = sorted(set(m.model_kwargs) - MODEL_KWARGS)
    if bad:
        problems.append(f"{where}.model_kwargs: unknown key(s) {', '.join(bad)} (accepted keys: "
                        f"{', '.join(sorted(MODEL_KWARGS))}; the exported graph runs in float32)")
    for key in ("torch_dtype", "dtype"):
        if m.model_kwargs.get(key) not in FP32_DTYPES:
            problems.append(f"{where}.model_kwargs.{key}: {m.model_kwargs[key]!r} is not available: bundles "
                            "run in float32 (use 'auto' or remove it)")
    if m.config_kwargs:
        problems.append(f"{where}.config_kwargs: {', '.join(m.config_kwargs)} cannot change an exported model "
                        "(remove config_kwargs)")
    bad = sorted(set(m.encode_kwargs) - ENCODE_KWARGS)
    if bad:
        problems.append(f"{where}.encode_kwargs: unknown key(s) {', '.join(bad)} "
                        f"(accepted keys: {', '.join(sorted(ENCODE_KWARGS))})")
    _check_batch(m.encode_kwargs.get("batch_size"), where, problems)
    if m.prompts:
        accepted = ("query",) + DOCUMENT_PROMPT_KEYS + tuple(sorted(task_names))
        bad = [k for k in m.prompts if k not in accepted]
        if bad:
            problems.append(f"{where}.prompts: unknown prompt name(s) {', '.join(map(repr, bad))} "
                            f"(accepted: {', '.join(accepted)})")
    if m.is_cross_encoder:
        if m.pooling_mode is not None:
            problems.append(f"{where}.pooling_mode: a cross-encoder does not pool; remove it")
        if m.prompts:
            problems.append(f"{where}.prompts: a cross-encoder takes one `prompt` (prepended to the query); "
                            "remove prompts")


def _check_batch(batch: Any, where: str, problems: list[str]) -> None:
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH):
        problems.append(f"{where}.encode_kwargs.batch_size: must be an integer from 1 to {MAX_BATCH} (got {batch!r})")


def _tasks(entries: list, prefix: tuple, problems: list[str]) -> list[MtebTask]:
    """The tasks, each split checked as a name; a task or split given twice runs once (logged)."""
    tasks: list[MtebTask] = []
    for i, entry in enumerate(entries):
        splits: list[str] = []
        for j, split in enumerate(entry.eval_splits):
            why = split_problem(split)
            if why:
                problems.append(f"{_path(prefix + (i, 'eval_splits', j))}: {why}, got {describe(split)}")
            elif split in splits:
                log.warning("%s lists the split %r more than once: evaluated once",
                            _path(prefix + (i, "eval_splits")), split)
            else:
                splits.append(split)
        task = MtebTask(name=entry.name, data_path=entry.data_path, splits=splits)
        if task in tasks:
            log.warning("%s repeats the task %s on %s: evaluated once", _path(prefix + (i,)), task.name,
                        task.data_path)
            continue
        tasks.append(task)
    return tasks


def parse_mteb_config(eval_config: dict[str, Any], task_cfg: dict[str, Any] | None = None) -> MtebConfig:
    """Check ``eval_config`` (``tool: mteb``) and the task config around it; return the job.

    Raises :class:`ConfigError` listing every problem with its key path."""
    problems: list[str] = []
    task_cfg = task_cfg if task_cfg is not None else {"eval_config": eval_config}
    top = _validate(TopBlock, task_cfg, (), problems)
    older = "model" in eval_config or (isinstance(eval_config.get("eval"), dict)
                                       and ("tasks" in eval_config["eval"] or "dataset_path" in eval_config["eval"]))
    models_key = "model" if older else "models"
    cleaned = dict(eval_config)
    raw_models = cleaned.get(models_key)
    if isinstance(raw_models, list):
        cleaned[models_key] = [_refuse(m, REFUSED_MODEL_KEYS, ("eval_config", models_key, i), problems)
                               for i, m in enumerate(raw_models)]
    cleaned["eval"] = _refuse(cleaned.get("eval"), REFUSED_EVAL_KEYS, ("eval_config", "eval"), problems)
    block = _validate(OlderToolBlock if older else ToolBlock, cleaned, ("eval_config",), problems)
    if block is None or top is None:
        raise MtebConfigError(problems)
    models = block.model if older else block.models
    ev = block.eval
    if older:
        unknown = [t for t in ev.tasks if t != CUSTOM_TASK]
        if unknown:
            problems.append(f"eval_config.eval.tasks: {', '.join(map(repr, unknown))} cannot run here: standard "
                            f"MTEB / C-MTEB tasks download their data (use {CUSTOM_TASK!r} with dataset_path)")
        tasks = [MtebTask(name=CUSTOM_TASK, data_path=ev.dataset_path, splits=["test"])]
    else:
        tasks = _tasks(ev.custom_tasks, ("eval_config", "eval", "custom_tasks"), problems)
    names = {t.name for t in tasks}
    ev_encode = getattr(ev, "encode_kwargs", None) or {}
    bad = sorted(set(ev_encode) - ENCODE_KWARGS)
    if bad:
        problems.append(f"eval_config.eval.encode_kwargs: unknown key(s) {', '.join(bad)} "
                        f"(accepted keys: {', '.join(sorted(ENCODE_KWARGS))})")
    _check_batch(ev_encode.get("batch_size"), "eval_config.eval", problems)
    for i, m in enumerate(models):
        _check_model(m, i, ("eval_config", models_key), names, problems)
    encoders = [m for m in models if not m.is_cross_encoder]
    rerankers = [m for m in models if m.is_cross_encoder]
    if not encoders:
        problems.append(f"eval_config.{models_key}: no encoder (is_cross_encoder: false); a cross-encoder "
                        "only reranks what an encoder retrieved")
    elif rerankers and (len(rerankers) > 1 or len(encoders) > 1):
        problems.append(f"eval_config.{models_key}: two-stage retrieval takes one encoder and one cross-encoder "
                        f"(got {len(encoders)} and {len(rerankers)})")
    if problems:
        raise MtebConfigError(problems)
    from .text_eval import bounded_max_seq_length

    for i, m in enumerate(models):  # bounded here, before any model is exported (docs: "bounded")
        m.max_seq_length = bounded_max_seq_length(m.model_name_or_path, m.max_seq_length,
                                                  f"eval_config.{models_key}[{i}].max_seq_length")
    output = ev.output_folder or (top.work_dir if top.work_dir else None) or "outputs"
    batch = (getattr(ev, "encode_kwargs", None) or {}).get("batch_size")
    verbose = not (isinstance(ev.verbosity, int) and ev.verbosity == 0)
    return MtebConfig(encoders=encoders, reranker=rerankers[0] if rerankers else None, tasks=tasks,
                      output_dir=os.fspath(output), overwrite_results=ev.overwrite_results, limits=ev.limits,
                      top_k=ev.top_k, batch_size=batch, verbose=verbose, shape="older" if older else "current",
                      tool=str(block.tool).lower())
