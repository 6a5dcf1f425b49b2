"""Text retrieval: text embedding with an ONNX text bundle, exact blocked top-k search, trec_eval
metrics and TREC run files. The task itself is :mod:`clipeval.engine.tasks.text_retrieval`."""

from .embed import TextModel, load_text_model
from .ir_metrics import DEFAULT_K, RankedRun, score_ranked, score_run_dict
from .search import top_k
from .trec import read_run, write_run

__all__ = ["DEFAULT_K", "RankedRun", "TextModel", "load_text_model", "read_run", "score_ranked",
           "score_run_dict", "top_k", "write_run"]
