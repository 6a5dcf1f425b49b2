"""The config of ``clipeval text-eval``: one text embedding model (and an optional reranker) on
one BEIR folder. A config of the ``text_retrieval`` task's own form (``task_name``), run by the
same runner as every other config; the command line checks each value where it enters."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..textio import read_json

log = logging.getLogger(__name__)


def bounded_max_seq_length(model: str | os.PathLike, value: int | None, where: str) -> int | None:
    """``value`` (a ``max_seq_length`` asked for model folder ``model``), bounded by the model's
    positions: a checkpoint's ``config.json`` ``max_position_embeddings`` (what the export would
    check, after loading the model). A larger value is lowered to it with a warning naming
    ``where`` (the config key or flag), before any model work, rather than left to fail the
    export (evalscope passes its default of 512 to any model). ``None``, a bundle folder (its
    length is fixed), a folder without a readable ``config.json`` or without the key: ``value``
    as it is (the export then checks it)."""
    if value is None:
        return None
    folder = Path(os.path.expanduser(os.fspath(model)))
    config = folder / "config.json"
    try:
        if (folder / "manifest.json").exists() or not config.is_file():
            return value
        data = read_json(config)
    except (OSError, ValueError):
        return value
    positions = data.get("max_position_embeddings") if isinstance(data, dict) else None
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 2 or value <= positions:
        return value
    log.warning("%s: max_seq_length %d is longer than the model's %d positions (max_position_embeddings in %s); "
                "texts are cut at %d", where, value, positions, config, positions)
    return positions


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
