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

import os
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ..errors import ConfigError

__all__ = ["MTEB_TOOLS", "MtebConfig", "MtebModel", "MtebTask", "parse_mteb_config"]

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
    max_seq_length: StrictInt | None = Field(default=None, ge=2)
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


class EvalBlock(_Strict):
    """``eval`` of the current shape (evalscope's ``MTEBEvalConfig``)."""

    custom_tasks: list[CustomTaskEntry | PathStr] = Field(min_length=1)
    output_folder: PathStr | None = None
    overwrite_results: StrictBool = True
    limits: StrictInt | None = Field(default=None, ge=1)
    top_k: StrictInt = Field(default=DEFAULT_TOP_K["current"], ge=1)
    encode_kwargs: dict[StrictStr, Any] | None = None
    verbosity: StrictInt | None = Field(default=None, ge=0, le=3)


class OlderEvalBlock(_Strict):
    """``eval`` of the tutorial's older shape (evalscope's C-MTEB ``EvalArguments``)."""

    tasks: list[StrictStr] = Field(min_length=1)
    dataset_path: PathStr
    verbosity: StrictInt = Field(default=2, ge=0, le=3)
    output_folder: PathStr | None = None
    overwrite_results: StrictBool = True
    limits: StrictInt | None = Field(default=None, ge=1)
    top_k: StrictInt = Field(default=DEFAULT_TOP_K["older"], ge=1)


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


def _problems_of(exc: ValidationError, model: type[BaseModel], prefix: tuple) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # a str-or-entry union reports both branches; keep the entry's
        if "str" in [str(p) for p in loc] and err["type"] == "string_type":
            continue
        loc = tuple(p for p in loc if p not in ("CustomTaskEntry", "str"))
        where = _path(prefix + loc)
        if err["type"] == "extra_forbidden":
            parent = _sub_model(model, loc[:-1])
            accepted = ", ".join(parent.model_fields) if parent else "?"
            out.append(f"{where}: unknown key (accepted keys: {accepted})")
        elif err["type"] == "missing":
            out.append(f"{where}: missing")
        else:
            out.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
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
    batch = m.encode_kwargs.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        problems.append(f"{where}.encode_kwargs.batch_size: must be a positive integer (got {batch!r})")
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


def _tasks(entries: list, prefix: tuple, problems: list[str]) -> list[MtebTask]:
    tasks = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):  # evalscope's docs show bare paths
            entry = CustomTaskEntry(data_path=entry)
        tasks.append(MtebTask(name=entry.name, data_path=entry.data_path, splits=list(entry.eval_splits)))
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
        raise ConfigError("the mteb config has problems:\n    " + "\n    ".join(problems),
                          "fix the keys listed (docs/text-retrieval.md shows both config shapes)")
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
        raise ConfigError("the mteb config has problems:\n    " + "\n    ".join(problems),
                          "fix the keys listed (docs/text-retrieval.md shows both config shapes)")
    output = ev.output_folder or (top.work_dir if top.work_dir else None) or "outputs"
    batch = (getattr(ev, "encode_kwargs", None) or {}).get("batch_size")
    verbose = not (isinstance(ev.verbosity, int) and ev.verbosity == 0)
    return MtebConfig(encoders=encoders, reranker=rerankers[0] if rerankers else None, tasks=tasks,
                      output_dir=os.fspath(output), overwrite_results=ev.overwrite_results, limits=ev.limits,
                      top_k=ev.top_k, batch_size=batch, verbose=verbose, shape="older" if older else "current",
                      tool=str(block.tool).lower())
