"""`clipeval text-eval`: score a text embedding model on a BEIR-format folder."""

from __future__ import annotations

import click

from .main import (
    batch_option,
    cli,
    emit,
    output_option,
    provider_option,
    setup_logging,
    threads_option,
    verbosity_option,
)


@cli.command("text-eval")
@click.option("--model", "model", required=True, metavar="BUNDLE|CHECKPOINT|demo",
              help="Text bundle directory, a sentence-transformers checkpoint directory "
                   "(exported once into the model cache), or demo (the embedded model's text tower).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv or qrels.jsonl.")
@click.option("--k", "k", type=click.IntRange(min=1), multiple=True,
              help="Cutoff for every metric (repeatable). Default: 1, 3, 5, 10, 100 "
                   "(those larger than the corpus are left out).")
@click.option("--split", default="test", show_default=True, help="Qrels split (qrels/SPLIT.tsv).")
@click.option("--dataset-name", default=None,
              help="Name in the result file (default: the data folder's name, or its parent's for retrieval_data).")
@click.option("--model-name", default=None, help="Name in the result path (default: from the bundle).")
@click.option("--cache-dir", default=None, help="Model cache (default: $CLIPEVAL_CACHE_DIR or ~/.cache/clipeval).")
@click.option("--skip-existing", is_flag=True, help="Reuse the result file if it holds this exact result.")
@output_option
@batch_option
@provider_option
@threads_option
@verbosity_option
def text_eval_cmd(model, data_dir, k, split, dataset_name, model_name, cache_dir, skip_existing, output_dir,
                  batch_size, provider, num_threads, quiet):
    """Text retrieval on a BEIR folder: nDCG, MAP, recall and MRR at k (trec_eval definitions).

    Writes OUTPUT_DIR/MODEL/DATASET_text_retrieval.json and the ranked run (TREC format) beside it,
    and prints the result as one JSON line. See docs/text-retrieval.md.
    """
    from clipeval.engine.tasks.text_retrieval import TextRetrievalParams, text_retrieval_task
    from clipeval.engine.textret.embed import load_text_model
    from clipeval.export.text_model import resolve_text_bundle

    setup_logging(not quiet)
    bundle = resolve_text_bundle(model, cache_dir)
    text_model = load_text_model(bundle, provider=provider, threads=num_threads)
    params = TextRetrievalParams(k=list(k) or None, batch_size=batch_size, split=split, num_threads=num_threads,
                                 progress=not quiet)
    emit(text_retrieval_task(text_model, data_dir, params, output_dir=output_dir, dataset_name=dataset_name,
                             model_name=model_name, skip_existing=skip_existing))
