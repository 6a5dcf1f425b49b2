"""The registry of tasks: :data:`TASKS` maps each task's name to its instance (the contract is
:mod:`.base`). The runner and the config check iterate it; nothing else names a task.

To add a task: write a module with a :class:`~.base.Task` subclass (its ``metadata`` and
``evaluate``, and ``evaluations`` for an ``eval`` block), and :func:`register` an instance here.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Evaluation, ModelRef, Models, ResultSpec, Task, TaskMetadata, TaskOutput
from .image_caption import ImageCaption
from .text_retrieval import TextRetrieval
from .zeroshot import TaskParams
from .zeroshot_classification import ZeroShotClassification
from .zeroshot_retrieval import ZeroShotRetrieval

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` under its metadata name (replacing one of that name)."""
    TASKS[task.metadata.name] = task
    return task


for _task in (ZeroShotRetrieval(), ZeroShotClassification(), ImageCaption(), TextRetrieval()):
    register(_task)


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`ConfigError` listing the registered ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}", f"available tasks: {', '.join(TASKS)}") from None


__all__ = ["Evaluation", "ModelRef", "Models", "ResultSpec", "TASKS", "Task", "TaskMetadata", "TaskOutput",
           "TaskParams", "get_task", "register"]
