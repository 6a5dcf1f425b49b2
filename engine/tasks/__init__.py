"""Tasks: the registry of task names."""

TASKS = ("zeroshot_retrieval",)
