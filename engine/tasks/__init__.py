"""Tasks: the registry of task names.

Each entry is ``fn(model: ModelContext, dataset_name, data_dir, params: TaskParams) -> (metrics, meta, per_query)``;
``per_query`` (:mod:`clipeval.engine.results.detail`) is what the runner writes beside the result.
"""

from .zeroshot_classification import classification_task
from .zeroshot_retrieval import TaskParams, retrieval_task

TASKS = {
    "zeroshot_retrieval": retrieval_task,
    "zeroshot_classification": classification_task,
}

__all__ = ["TASKS", "TaskParams"]
