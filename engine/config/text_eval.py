"""The config of ``clipeval text-eval``: one text embedding model (and an optional reranker) on
one BEIR folder. A config of the ``text_retrieval`` task's own form (``task_name``), run by the
same runner as every other config; the command line checks each value where it enters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TextEvalConfig:
    """``model``: a text bundle, a sentence-transformers checkpoint folder or ``demo``;
    ``reranker``: a reranker bundle or cross-encoder checkpoint (two-stage retrieval);
    ``data_dir``: the BEIR folder; ``k``: the cut-offs (``None``: the list ``k_list`` names,
    ``default`` or ``mteb``); ``top_k``: documents per query the reranker re-scores;
    ``query_prompt`` / ``document_prompt``: prefixes (``None``: the checkpoint's);
    ``pooling_mode`` / ``max_seq_length``: given to the export of a checkpoint;
    ``dataset_name`` / ``model_name``: names in the result path (``None``: from the folder and
    the bundle). The rest as in the ``eval`` block (:class:`clipeval.engine.config.EvalConfig`)."""

    model: str
    data_dir: str
    reranker: str | None = None
    k: list[int] | None = None
    k_list: str = "default"
    top_k: int = 10
    query_prompt: str | None = None
    document_prompt: str | None = None
    pooling_mode: str | None = None
    max_seq_length: int | None = None
    split: str = "test"
    dataset_name: str | None = None
    model_name: str | None = None
    output_dir: str = "outputs"
    batch_size: int = 128
    provider: str = "auto"
    num_threads: int | None = None
    cache_dir: str | None = None
    no_cache: bool = False
    verify_cache: bool = False
    cache_max_bytes: int | None = None
    skip_existing: bool = False
    verbose: bool = True
    task_name: str = "text_retrieval"
