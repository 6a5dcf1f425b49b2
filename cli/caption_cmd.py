"""``clipeval caption``: caption images through an OpenAI-compatible API into a BEIR folder."""

from __future__ import annotations

import click

from .console import emit, setup_logging
from .options import output_option, verbosity_option


@click.command("caption")
@click.option("--api-base", required=True, metavar="URL",
              help="Root of the OpenAI-compatible API, e.g. http://localhost:8008/v1 (POST URL/chat/completions).")
@click.option("--model-name", required=True, metavar="NAME",
              help="Model name the server serves (also names the output folder: its last path component).")
@click.option("--dataset", "datasets", multiple=True, metavar="NAME", help="Dataset name (repeatable). Default: custom.")
@click.option("--data-dir", default=None,
              help="Dataset folder (for custom, required: the folder holding image_queries.jsonl; for a named set: "
                   "a local copy or URL, else it is downloaded).")
@click.option("--split", default="test", show_default=True, help="Dataset split.")
@click.option("--prompt", default=None, help="Instruction sent as user text with each image. Default: the reference tool's.")
@click.option("--system-prompt", default=None, help="System message sent before the prompt (none by default).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Caption length limit.")
@click.option("--temperature", type=click.FloatRange(0.0, 2.0), default=0.0, show_default=True, help="Sampling temperature.")
@click.option("--timeout", type=click.FloatRange(min=0.0, min_open=True), default=120.0, show_default=True,
              help="Seconds one request may take before it is retried.")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests in flight at once (and connections to the server).")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True,
              help="Images that may end without a caption (after retries) before the run stops; "
                   "such images and their queries are left out of the output.")
@click.option("--max-image-side", type=click.IntRange(min=16), default=None,
              help="Downscale images so their longer side is at most this many pixels before sending.")
@click.option("--id-style", type=click.Choice(["int", "prefixed"]), default="int", show_default=True,
              help="int: ids 0..N-1 for both queries and documents (the reference tool's); prefixed: q0.. and d0.. "
                   "(see docs/caption.md: BEIR's evaluator drops a hit whose query id equals the document id).")
@output_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Caption exactly the first N gallery images.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="What to do with missing or undecodable images.")
@verbosity_option
def caption_cmd(api_base, model_name, datasets, data_dir, split, prompt, system_prompt, max_tokens, temperature,
                timeout, concurrency, max_failures, max_image_side, id_style, output_dir, limit, on_error, quiet):
    """Caption every image with a multimodal LLM and write BEIR text-retrieval data.

    The API key comes from CLIPEVAL_API_KEY or OPENAI_API_KEY (or api_key in a config file run with
    `clipeval run`); it is never printed or written. Finished captions are journaled as they arrive:
    running the same command again resumes where an interrupted run stopped. Prints one JSON line
    (the summary) per dataset on stdout.
    """
    from clipeval.engine.config import make_eval_config
    from clipeval.engine.runner import iter_results

    setup_logging(not quiet)
    model = {"model_name": model_name, "api_base": api_base}
    if prompt is not None:
        model["prompt"] = prompt
    block = {
        "models": [model], "task": "image_caption",
        "dataset_name": list(datasets) or ["custom"], "data_dir": data_dir, "split": split,
        "output_dir": output_dir, "limit": limit, "on_error": on_error, "verbose": not quiet,
        "system_prompt": system_prompt, "max_tokens": max_tokens, "temperature": temperature, "timeout": timeout,
        "concurrency": concurrency, "max_failures": max_failures, "max_image_side": max_image_side,
        "id_style": id_style,
    }
    for result in iter_results(make_eval_config(block, "the command line")):
        emit(result)
