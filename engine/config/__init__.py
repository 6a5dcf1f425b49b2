"""Configuration: what a run is asked to do, checked where it enters.

* :mod:`.task_cfg`: evalscope's ``task_cfg`` (``eval_backend: RAGEval``, ``tool: clip_benchmark``)
  and its ``eval`` block, the command-line flags, and the registry of config tools;
* :mod:`.mteb`: evalscope's text-retrieval config (``tool: mteb``);
* :mod:`.model_spec`: CLIP_benchmark's ways of naming models (``model`` / ``pretrained`` /
  ``pretrained_model``).
"""

from .task_cfg import (
    EVAL_KEYS,
    MODEL_KEYS,
    TOOLS,
    EvalConfig,
    ModelEntry,
    Problems,
    check_path_text,
    check_url,
    load_config_file,
    make_eval_config,
    model_entries,
    parse_task_cfg,
    validate_model,
)

__all__ = ["EVAL_KEYS", "EvalConfig", "MODEL_KEYS", "ModelEntry", "Problems", "TOOLS", "check_path_text", "check_url",
           "load_config_file", "make_eval_config", "model_entries", "parse_task_cfg", "validate_model"]
