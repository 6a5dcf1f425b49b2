"""Tasks: the registry of task names.

Each entry is ``fn(model: ModelContext, dataset_name, data_dir, params: TaskParams) -> (metrics, meta, per_query)``;
``per_query`` (:mod:`clipeval.engine.detail`) is what the runner writes beside the result.
"""

from .classification import classification_task
from .retrieval import TaskParams, retrieval_task

TASKS = {
    "zeroshot_retrieval": retrieval_task,
    "zeroshot_classification": classification_task,
}

__all__ = ["TASKS", "TaskParams"]
