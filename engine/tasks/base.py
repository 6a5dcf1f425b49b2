"""The task contract: what every task of clipeval declares and provides, in the spirit of mteb's
``AbsTask`` and ``TaskMetadata`` (``mteb/abstasks/AbsTask.py``, ``mteb/abstasks/TaskMetadata.py``).

A task is one class: a :class:`TaskMetadata` that says what it is (its name, the dataset kinds
it reads, what it embeds, which models it takes, where its definitions come from), and the
methods the runner (:mod:`clipeval.engine.runner`) calls, in this order, for every evaluation a
config asks for:

1. :meth:`Task.check` (once per config, before any work): what the config must hold for the task;
2. :meth:`Task.evaluations`: the :class:`Evaluation` s of one (model entry, dataset) of an
   ``eval`` block, or :meth:`Task.config_evaluations` for a config written for this task alone
   (the mteb form, ``clipeval text-eval``). An evaluation carries everything the result layout
   needs (:mod:`clipeval.engine.results.layout`: the slot, the skip key, the file names), so the
   runner can find a finished result before any model work;
3. :meth:`Task.fingerprint`: what the data read looks like (part of the skip key);
4. :meth:`Task.evaluate`: read the data, get embeddings from the run's embedding stage
   (:class:`~clipeval.engine.embedding.stage.EmbeddingStage`, the only way a task embeds
   anything, through the cache), turn them into metrics; one :class:`TaskOutput` per result file.

The runner builds the rest of every result the same way for every task: the file name, the
``meta`` block every result shares, the detail or run files beside it, the atomic write.

Adding a task is one module that defines a subclass and one entry in
:data:`clipeval.engine.tasks.TASKS` (``register``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

from ..errors import ConfigError

MODEL_KINDS = ("image_text", "text", "api")
EMBEDS = ("images", "texts", "class_prompts", "corpus", "queries", "pairs")


@dataclass(frozen=True)
class TaskMetadata:
    """What a task is.

    ``name``: the registry key, the ``task`` of its results and the config's ``task`` value;
    ``description``: one line; ``reference``: where its definitions come from;
    ``dataset_kinds``: the dataset kinds it reads (``custom``, ``karpathy``, ``webdataset``,
    ``beir``); ``embeds``: what it asks the embedding stage for (:data:`EMBEDS`; empty for a task
    that embeds nothing); ``models``: what its model entries name (``image_text``: a CLIP-style
    bundle; ``text``: a text embedding bundle, and a reranker; ``api``: an OpenAI-compatible
    server); ``main_score``: its headline metric; ``packages``: whose versions its results record
    (``meta.versions``); ``default_model``: the model a config without ``models`` runs."""

    name: str
    description: str
    reference: str
    dataset_kinds: tuple[str, ...]
    embeds: tuple[str, ...]
    models: str
    main_score: str | None = None
    packages: tuple[str, ...] = ("onnxruntime", "numpy", "numba")
    default_model: str | None = None

    def __post_init__(self):
        if self.models not in MODEL_KINDS:
            raise ValueError(f"models must be one of {MODEL_KINDS}, got {self.models!r}")
        unknown = set(self.embeds) - set(EMBEDS)
        if unknown:
            raise ValueError(f"embeds must be among {EMBEDS}, got {sorted(unknown)}")


@dataclass
class ModelRef:
    """A model of an evaluation, resolved: ``name`` (its folder in the output), ``bundle`` and
    ``precision`` (``None`` for an API model), ``identity`` (the bundle identity, or what
    identifies an API model), ``own_precision`` (the bundle's own variant: other variants get a
    file-name tag) and ``describe`` (``meta.bundle`` of its results)."""

    name: str
    identity: str
    describe: dict[str, Any]
    bundle: Any = None
    precision: str | None = None
    own_precision: str | None = None
    entry: Any = None


@dataclass
class ResultSpec:
    """One result file of an evaluation: ``name``, the model name it is filed under (the folder
    ``{output_dir}/{name}/`` and the result's ``model``), an optional folder of the output
    directory above that (``folder``: two-stage retrieval's ``stage1`` / ``stage2``), and the parts
    its slot has beyond the common ones (``slot_parts``, see
    :class:`clipeval.engine.results.layout.Slot`)."""

    name: str
    folder: str | None = None
    slot_parts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """One unit of work of a task: a model on one dataset (split), and the result files it
    writes (:attr:`results`, usually one).

    ``data_dir``: the data as given (a folder, a URL, or ``None`` for a named set to download);
    ``data_key``: where the data is, for the slot (an absolute folder, or ``url:`` + the base
    URL); ``params``: what changes the result besides the slot (the skip key is their digest,
    with the data fingerprint); ``settings``: the task's own run settings; ``targets``: the
    result files, filled in by the runner before :meth:`Task.evaluate` (a task that writes a
    folder beside its result, as captioning does, places it from there)."""

    task: "Task"
    model: ModelRef
    dataset: str
    data_dir: str | None
    data_key: str
    split: str
    params: dict[str, Any]
    settings: Any
    results: list[ResultSpec]
    language: str | None = None
    limit: int | None = None
    skip_existing: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    targets: list[Path] = field(default_factory=list)

    @property
    def downloaded(self) -> bool:
        """Whether the data is fetched during the evaluation (a named set, or a URL): its
        fingerprint is taken again afterwards."""
        return self.data_dir is None or "://" in str(self.data_dir)


@dataclass
class TaskOutput:
    """One result of :meth:`Task.evaluate`: ``metrics`` (the reference's key names), the task's
    own ``meta`` keys (counts, what was left out, the timings of its stages, ``cache`` hit
    counts), and ``write_beside(result_file, meta)``: what it writes beside the result (the
    per-query detail, a TREC run), called by the runner once the file name is known; it may add
    keys to ``meta`` (``detail``, ``run_file``)."""

    metrics: dict[str, Any]
    meta: dict[str, Any]
    write_beside: Callable[[Path, dict[str, Any]], None] | None = None


def data_key(data_dir: str | None, dataset_url: str | None = None) -> str:
    """Where the data is, for a result's slot: the absolute folder, the URL as given, or (no
    ``data_dir``: a named set downloaded by name) ``url:`` + the download base URL."""
    if data_dir is None:
        from ..datasets.sources import base_url

        return f"url:{base_url('{name}', dataset_url)}"
    data_dir = str(data_dir)
    return data_dir if "://" in data_dir else os.path.abspath(os.path.expanduser(data_dir))


class Models:
    """How tasks get their models: ``bundle(entry, kind)`` resolves a config's model entry to a
    bundle once per run (``kind``: ``image_text``, ``text`` or ``reranker``), through the
    runner's resolver (the engine's: the demo or a bundle folder; the CLI's also exports
    checkpoints on first use)."""

    def __init__(self, resolve: Callable[..., Any], cfg: Any):
        self._resolve = resolve
        self.cfg = cfg
        self._bundles: dict[tuple[str, str], Any] = {}

    def bundle(self, entry: Any, kind: str):
        key = (kind, repr(entry))
        if key not in self._bundles:
            self._bundles[key] = self._resolve(entry, self.cfg, kind=kind)
        return self._bundles[key]


class Task(ABC):
    """The base of every task (see the module docstring). Subclasses set :attr:`metadata` and
    implement :meth:`evaluate` and :meth:`evaluations` (or :meth:`config_evaluations`)."""

    metadata: ClassVar[TaskMetadata]

    @property
    def name(self) -> str:
        return self.metadata.name

    def check(self, cfg: Any) -> None:
        """Raise :class:`ConfigError` for what ``cfg`` lacks for this task (before any work)."""

    def model_entries(self, cfg: Any) -> list[Any]:
        """The model entries of an ``eval`` block this task runs: ``models``, else the
        metadata's ``default_model``."""
        if getattr(cfg, "models", None):
            return list(cfg.models)
        if self.metadata.default_model:
            return [{"model_name": self.metadata.default_model}]
        raise ConfigError(f"task {self.name} needs models", "add models: [{model_name: ...}] to the config")

    def evaluations(self, cfg: Any, entry: Any, dataset: str, models: Models) -> list[Evaluation]:
        """The evaluations of model ``entry`` on ``dataset`` of an ``eval`` block."""
        raise ConfigError(f"task {self.name} does not run from an eval block",
                          f"write the config in the form docs/ shows for {self.name}")

    def config_evaluations(self, cfg: Any, models: Models) -> Iterator[Evaluation]:
        """Every evaluation of a config written for this task alone (``cfg.task_name``)."""
        raise ConfigError(f"task {self.name} has no config form of its own", "use an eval block")

    def fingerprint(self, ev: Evaluation) -> str | None:
        """A digest of the data as read (files, sizes, limit...; no image is read), part of the
        skip key; ``None`` when it cannot be told."""
        return None

    def complete(self, path: Path, result: dict[str, Any], ev: Evaluation) -> bool:
        """Whether a finished result found for ``ev`` is whole (its files beside it are there)."""
        return True

    def side_files(self, result_file: Path) -> list[Path]:
        """The files this task writes beside the result file ``result_file`` (a per-query detail, a
        TREC run): :func:`clipeval.engine.results.layout.destination` passes over a name whose side
        files are taken by something that is not a regular file (a folder, a FIFO)."""
        return []

    @abstractmethod
    def evaluate(self, ev: Evaluation, stage) -> list[TaskOutput]:
        """Run ``ev`` with the run's embedding stage; one :class:`TaskOutput` per ``ev.results``."""
