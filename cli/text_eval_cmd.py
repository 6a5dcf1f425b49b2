"""`clipeval text-eval`: score a text embedding model (and optionally a reranker) on a BEIR-format folder."""

from __future__ import annotations

import click

from .console import emit, setup_logging
from .options import (
    Int,
    batch_option,
    cache_options,
    output_option,
    provider_option,
    threads_option,
    verbosity_option,
)


@click.command("text-eval")
@click.option("--model", "model", required=True, metavar="BUNDLE|CHECKPOINT|demo",
              help="Text bundle directory, a sentence-transformers checkpoint directory "
                   "(exported once into the model cache), or demo (the embedded model's text tower).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv or qrels.jsonl.")
@click.option("--k", "k", multiple=True, metavar="K|mteb",
              help="Cutoff for every metric (repeatable), or `mteb` for mteb's list 1, 3, 5, 10, 20, 100, 1000. "
                   "Default: 1, 3, 5, 10, 100 (from a list, those larger than the corpus are left out).")
@click.option("--reranker", default=None, metavar="BUNDLE|CHECKPOINT",
              help="Two-stage retrieval: rerank each query's first --top-k documents with this cross-encoder "
                   "(reranker bundle, or CrossEncoder / sequence-classification checkpoint, exported once).")
@click.option("--top-k", type=Int(1), default=10, show_default=True,
              help="Documents per query the reranker re-scores.")
@click.option("--query-prompt", default=None, help="Prefix of every query (default: the checkpoint's `query` prompt).")
@click.option("--document-prompt", default=None,
              help="Prefix of every document (default: the checkpoint's `document`/`passage` prompt).")
@click.option("--pooling-mode", default=None,
              type=click.Choice(["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]),
              help="Pooling of a checkpoint exported here (default: the checkpoint's own).")
@click.option("--max-seq-length", type=Int(2), default=None,
              help="Token limit of a checkpoint exported here (default: the checkpoint's own).")
@click.option("--split", default="test", show_default=True, help="Qrels split (qrels/SPLIT.tsv).")
@click.option("--dataset-name", default=None,
              help="Name in the result file (default: the data folder's name, or its parent's for retrieval_data).")
@click.option("--model-name", default=None, help="Name in the result path (default: from the bundle).")
@click.option("--cache-dir", default=None,
              help="Cache root: exported models and the embedding cache (default: $CLIPEVAL_CACHE_DIR or "
                   "~/.cache/clipeval).")
@click.option("--skip-existing", is_flag=True, help="Reuse the result file if it holds this exact result.")
@cache_options
@output_option
@batch_option
@provider_option
@threads_option
@verbosity_option
def text_eval_cmd(model, data_dir, k, reranker, top_k, query_prompt, document_prompt, pooling_mode, max_seq_length,
                  split, dataset_name, model_name, cache_dir, skip_existing, no_cache, verify_cache, output_dir,
                  batch_size, provider, num_threads, quiet):
    """Text retrieval on a BEIR folder: nDCG, MAP, recall, precision, MRR and hit rate at k
    (trec_eval definitions), optionally reranked by a cross-encoder.

    Writes OUTPUT_DIR/MODEL/DATASET_text_retrieval.json (with --reranker: OUTPUT_DIR/stage1/... and
    OUTPUT_DIR/stage2/...) and the ranked run (TREC format) beside each, and prints each result as
    one JSON line. See docs/text-retrieval.md.
    """
    from clipeval.engine.config.text_eval import TextEvalConfig
    from clipeval.engine.fsutil import check_writable_dir
    from clipeval.engine.runner import iter_results
    from clipeval.export.resolve import resolve_model

    from clipeval.engine.config.task_cfg import split_problem

    from .options import FlagValueError

    problem = split_problem(split)
    if problem:
        raise FlagValueError(f"{problem}, got {split!r}", "name a file of qrels/ without .tsv",
                             param_hint="--split", ctx=click.get_current_context())
    ctx = click.get_current_context()
    if reranker is None and ctx.get_parameter_source("top_k") is click.core.ParameterSource.COMMANDLINE:
        raise FlagValueError("is given without --reranker: it sets how many documents per query the reranker "
                             "re-scores", "add --reranker BUNDLE|CHECKPOINT, or leave --top-k out",
                             param_hint="--top-k", ctx=ctx)
    setup_logging(not quiet)
    check_writable_dir(output_dir, "output folder (--output-dir)")
    ks, k_list = _parse_k(k)
    cfg = TextEvalConfig(model=str(model), data_dir=str(data_dir), reranker=None if reranker is None else str(reranker),
                         k=ks, k_list=k_list, top_k=top_k, query_prompt=query_prompt, document_prompt=document_prompt,
                         pooling_mode=pooling_mode, max_seq_length=max_seq_length, split=split,
                         dataset_name=dataset_name, model_name=model_name, output_dir=output_dir,
                         batch_size=batch_size, provider=provider, num_threads=num_threads, cache_dir=cache_dir,
                         no_cache=no_cache, verify_cache=verify_cache, skip_existing=skip_existing,
                         verbose=not quiet)
    for result in iter_results(cfg, resolve_model):
        emit(result)


def _parse_k(values) -> tuple[list[int] | None, str]:
    """``--k`` values: integers by the config's rule (:func:`clipeval.engine.numbers.parse_int`,
    at least 1, within int64), or the one word ``mteb`` (mteb's list)."""
    from clipeval.engine.numbers import NumberProblem, parse_int

    from .options import FlagValueError

    if list(values) == ["mteb"]:
        return None, "mteb"
    ks = []
    for value in values:
        try:
            ks.append(parse_int(value, 1))
        except NumberProblem as exc:
            hint = "give positive whole numbers (--k 1 --k 10), or --k mteb alone"
            alone = " (or the word mteb alone)" if exc.hint else ""
            raise FlagValueError(f"{exc.message}{alone}", hint, param_hint="--k",
                                 ctx=click.get_current_context(silent=True)) from None
    return ks or None, "default"
