"""Task ``image_caption``: caption every gallery image through an OpenAI-compatible chat API and
write the result as a BEIR text-retrieval folder (the reference tool's layout):

    {output_dir}/{model}/{dataset}/retrieval_data/corpus.jsonl     one {"_id", "text"} per image (its caption)
    {output_dir}/{model}/{dataset}/retrieval_data/queries.jsonl    one {"_id", "text"} per original query
    {output_dir}/{model}/{dataset}/retrieval_data/qrels/test.tsv   query-id, corpus-id, score 1
    {output_dir}/{model}/{dataset}/retrieval_data/qrels.jsonl      the same pairs as JSON lines
    {output_dir}/{model}/{dataset}/captions.journal.jsonl          the journal (resume)
    {output_dir}/{model}/{dataset}_image_caption.json              the summary

``{model}`` is the last path component of ``model_name``, as in the reference tool. The folder
``retrieval_data`` is written beside itself and renamed into place, so it is only ever seen whole.
The summary's name follows the result layout of every task (:mod:`clipeval.engine.results.layout`):
its slot is the model (served name and API base), the language, the data and the split; a
summary of another slot under the readable name is never replaced, and this run's summary then
gets the slot digest in its name (``custom_image_caption.1a2b3c4d.json``), as does the data
folder beside it (``{output_dir}/{model}/custom.1a2b3c4d/retrieval_data``) and its journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..datasets.beir import write_beir
from ..datasets import read_dataset
from ..datasets.fingerprint import data_fingerprint
from ..errors import ConfigError, DatasetError, ImageError, listing
from ..fsutil import publish_dir, remove_stale_stages, staging_dir
from ..results.layout import side_name

from .base import Evaluation, ModelRef, Models, ResultSpec, Task, TaskMetadata, TaskOutput, data_key

log = logging.getLogger(__name__)

TASK = "image_caption"
ID_STYLES = ("int", "prefixed")
API_KEY_ENV = ("CLIPEVAL_API_KEY", "OPENAI_API_KEY")


def model_label(model_name: str) -> str:
    """The folder name of a model: the last component of its name (``org/Model-8B`` -> ``Model-8B``)."""
    return os.path.basename(str(model_name).rstrip("/\\")) or str(model_name)


def api_key_for(model: dict[str, Any]) -> str | None:
    """The model entry's ``api_key``, else ``CLIPEVAL_API_KEY``, else ``OPENAI_API_KEY``."""
    if model.get("api_key"):
        return str(model["api_key"])
    for name in API_KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def public_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def image_key(source: Any, data_dir: Path | None) -> str:
    """What identifies an image in the journal: its path relative to ``data_dir`` when inside it
    (so the dataset folder may move), else its absolute path; in-memory images by content."""
    if isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        root = os.path.abspath(data_dir) if data_dir is not None else None
        if root is not None and path.startswith(root + os.sep):
            return os.path.relpath(path, root).replace(os.sep, "/")
        return path
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(source)).hexdigest()
    from PIL import Image

    if isinstance(source, Image.Image):
        h = hashlib.sha256(f"{source.mode}{source.size}".encode())
        h.update(source.tobytes())
        return "pixels-sha256:" + h.hexdigest()
    raise ImageError(f"cannot caption an image given as a {type(source).__name__}")


def image_keys(dataset, data_dir: Path | None) -> tuple[list[str], list[str]]:
    """(journal key, label for messages) of every gallery image, without decoding any.

    Sources that are paths are keyed by path (see :func:`image_key`); a lazy gallery read from
    shards is keyed by its labels (``shard#key``, the shard relative to ``data_dir``), so nothing
    is read until it is sent.
    """
    labels = getattr(dataset.images, "labels", None)
    if labels is not None:
        root = str(data_dir.resolve()) + os.sep if data_dir is not None else None
        keys = [lab[len(root):] if root and lab.startswith(root) else lab for lab in labels]
        return keys, list(dataset.image_where or labels)
    keys = [image_key(s, data_dir) for s in dataset.images]
    return keys, list(dataset.image_where or [str(s) for s in dataset.images])


def _run_coroutine(coro):
    """``asyncio.run`` that also works when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="clipeval-caption")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def publish_beir(folder: Path, corpus, queries, qrels) -> None:
    """Write the BEIR files into a fresh folder beside ``folder``, then swap it into place
    (:func:`~clipeval.engine.fsutil.publish_dir`: the old folder comes back if the swap fails).

    Call with the journal held: its lock keeps other runs from publishing into the same place,
    which is what makes removing the leftovers of a killed run safe here.
    """
    remove_stale_stages(folder)
    stage = staging_dir(folder)  # the user's umask
    try:
        write_beir(stage, corpus, queries, qrels)
        publish_dir(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def beir_rows(captions: list[str], texts: list[str], text_to_image, id_style: str):
    """corpus, queries and qrels for captions of images 0..N-1 and their texts.

    ``int`` ids are the reference tool's (corpus ids 0..N-1, query ids 0..Q-1, both integers, so a
    query and a document may share an id); ``prefixed`` ids are ``d0..`` and ``q0..``.
    """
    if id_style == "prefixed":
        doc_id, query_id = (lambda i: f"d{i}"), (lambda t: f"q{t}")
    else:
        doc_id = query_id = int
    corpus = [{"_id": doc_id(i), "text": c} for i, c in enumerate(captions)]
    queries = [{"_id": query_id(t), "text": q} for t, q in enumerate(texts)]
    qrels = [(query_id(t), doc_id(int(i)), 1) for t, i in enumerate(text_to_image)]
    return corpus, queries, qrels


def check_models(cfg) -> None:
    if not cfg.models:
        raise ConfigError(f"task {TASK} needs a model entry with model_name and api_base",
                          "pass --model-name and --api-base, or add "
                          "models: [{model_name: ..., api_base: http://host:port/v1}] to the config")
    missing = [f"models[{i}] ({m.get('model_name')})" for i, m in enumerate(cfg.models) if not m.get("api_base")]
    if missing:
        raise ConfigError(f"task {TASK} asks an OpenAI-compatible server, but {', '.join(missing)} has no api_base",
                          "add api_base, e.g. http://localhost:8008/v1")


def api_model(entry: dict[str, Any]) -> ModelRef:
    """The model of a captioning entry: named by the last component of ``model_name``, identified
    by the served name and the API base (without any ``user:password@``)."""
    base = public_url(str(entry["api_base"]))
    name = str(entry["model_name"])
    identity = hashlib.sha256(f"api\0{base}\0{name}".encode()).hexdigest()
    return ModelRef(name=model_label(name), identity=identity,
                    describe={"identity": identity, "kind": "api", "api_base": base, "model_name": name},
                    entry=entry)


class ImageCaption(Task):
    metadata = TaskMetadata(
        name=TASK,
        description="caption every gallery image through an OpenAI-compatible multimodal API into a BEIR "
                    "text-retrieval folder (captions the corpus, the original captions the queries)",
        reference="evalscope RAGEval clip_benchmark task image_caption (its BEIR layout and integer ids)",
        dataset_kinds=("custom", "karpathy", "webdataset"),
        embeds=(),
        models="api",
        packages=("aiohttp",),
    )

    def check(self, cfg: Any) -> None:
        check_models(cfg)
        for name in cfg.dataset_name:
            if name == "custom" and not cfg.data_dir:
                raise DatasetError("dataset custom needs a data folder", "pass --data-dir (config key data_dir)")

    def evaluations(self, cfg: Any, entry: Any, dataset: str, models: Models) -> list[Evaluation]:
        return [self.evaluation(cfg, entry, dataset, cfg.data_dir)]

    def evaluation(self, cfg: Any, entry: dict[str, Any], dataset: str, data_dir, **client_options) -> Evaluation:
        """The evaluation of ``entry`` on ``dataset``; ``client_options`` override
        :class:`ClientSettings` fields (``backoff_base``, ``max_attempts``, ``seed``...)."""
        if cfg.id_style not in ID_STYLES:
            raise ConfigError(f"id_style must be one of {', '.join(ID_STYLES)}, got {cfg.id_style!r}")
        from ..caption.client import DEFAULT_PROMPT  # aiohttp: imported by a captioning run only

        model = api_model(entry)
        data_dir = None if data_dir is None else str(data_dir)
        prompt = entry.get("prompt") or DEFAULT_PROMPT
        params = {"task": TASK, "model_name": str(entry["model_name"]), "api_base": public_url(str(entry["api_base"])),
                  "prompt": prompt, "system_prompt": cfg.system_prompt, "max_tokens": cfg.max_tokens,
                  "temperature": cfg.temperature, "max_image_side": cfg.max_image_side, "id_style": cfg.id_style,
                  "limit": cfg.limit, "on_error": cfg.on_error}
        return Evaluation(task=self, model=model, dataset=dataset, data_dir=data_dir,
                          data_key=data_key(data_dir, cfg.dataset_url), split=cfg.split, params=params, settings=cfg,
                          results=[ResultSpec(model.name)], language=cfg.language, limit=cfg.limit,
                          skip_existing=False,  # the journal makes a re-run cheap: it resumes
                          options={"client": client_options})

    def fingerprint(self, ev: Evaluation) -> str | None:
        cfg = ev.settings
        return data_fingerprint(ev.dataset, ev.data_dir, cfg.split, limit=cfg.limit, language=cfg.language,
                                dataset_url=cfg.dataset_url, cache_dir=cfg.cache_dir)

    def evaluate(self, ev: Evaluation, stage: Any) -> list[TaskOutput]:
        return [caption_dataset(ev.settings, ev.model.entry, ev.dataset, ev.data_dir, ev.targets[0],
                                **ev.options.get("client", {}))]


def caption_dataset(cfg, model: dict[str, Any], dataset_name: str, data_dir: str | os.PathLike | None,
                    summary_path: Path, **client_options) -> TaskOutput:
    """Caption one dataset with one model entry and publish its BEIR folder beside
    ``summary_path`` (the summary itself is written by the runner)."""
    from ..caption.client import DEFAULT_PROMPT, ClientSettings
    from ..caption.journal import JOURNAL_NAME, Journal
    from ..caption.pool import Item, caption_pool

    t_start = time.perf_counter()
    dataset = read_dataset(dataset_name, data_dir, cfg.split, cfg.on_error, language=cfg.language,
                           dataset_url=cfg.dataset_url, cache_dir=cfg.cache_dir, progress=cfg.verbose,
                           limit=cfg.limit).limit(cfg.limit)
    data_dir = Path(data_dir) if data_dir is not None and "://" not in str(data_dir) else None
    data_root = summary_path.parent / side_name(summary_path, dataset_name, TASK)
    retrieval_dir = data_root / "retrieval_data"

    prompt = model.get("prompt") or DEFAULT_PROMPT
    settings = ClientSettings(
        api_base=str(model["api_base"]), model_name=str(model["model_name"]), api_key=api_key_for(model),
        prompt=prompt, system_prompt=cfg.system_prompt, max_tokens=cfg.max_tokens,
        temperature=cfg.temperature, timeout=cfg.timeout, concurrency=cfg.concurrency,
    )
    for name, value in client_options.items():
        if not hasattr(settings, name):
            raise TypeError(f"unknown client option {name!r}")
        setattr(settings, name, value)
    caption_settings = {"model_name": settings.model_name, "prompt": prompt, "system_prompt": cfg.system_prompt,
                        "max_tokens": cfg.max_tokens, "temperature": cfg.temperature,
                        "max_image_side": cfg.max_image_side}

    keys, where = image_keys(dataset, data_dir)
    with Journal.open(data_root / JOURNAL_NAME, caption_settings) as journal:  # locked until the files are written
        resumed = sum(1 for k in set(keys) if k in journal.captions)
        pending, queued = [], set()
        for i, (key, w) in enumerate(zip(keys, where)):
            if key not in journal.captions and key not in queued:
                queued.add(key)
                pending.append(Item(key, partial(dataset.images.__getitem__, i), w))  # read when sent
        if resumed:
            log.info("resuming: %d of %d image(s) already captioned in %s", resumed, len(set(keys)), journal.path)
        t0 = time.perf_counter()
        failures: list[tuple[str, str]] = []
        image_errors: list[tuple[str, str]] = []
        stats: dict[str, Any] = {"requests": 0, "retries": 0, "captions": 0, "outcomes": {}}
        if pending:
            report = _run_coroutine(caption_pool(pending, settings, journal, max_failures=cfg.max_failures,
                                                 max_image_side=cfg.max_image_side, progress=cfg.verbose))
            failures = [(it.where, reason) for it, reason in report.failures]
            image_errors = [(it.where, reason) for it, reason in report.image_errors]
            stats = report.stats
        caption_s = time.perf_counter() - t0
        captions = dict(journal.captions)

        if image_errors and cfg.on_error != "skip":
            raise ImageError(
                f"{len(image_errors)} image(s) could not be read:\n    {listing(image_errors)}",
                "replace or remove these images, or pass --on-error skip to leave them out "
                "(the captions made so far are kept; running again resumes)",
            )
        missing = {i for i, k in enumerate(keys) if k not in captions}
        kept, dropped_queries = dataset.drop_images(missing)
        if kept.num_images == 0:
            raise DatasetError(f"no image of dataset {dataset_name} got a caption", "see the failures listed above")
        kept_captions = [captions[k] for i, k in enumerate(keys) if i not in missing]
        corpus, queries, qrels = beir_rows(kept_captions, kept.texts, kept.text_to_image, cfg.id_style)
        publish_beir(retrieval_dir, corpus, queries, qrels)

        skipped = [it.to_dict() for it in dataset.skipped] + [{"where": w, "reason": r} for w, r in image_errors]
        meta = {
            "num_images": kept.num_images,
            "num_queries": kept.num_texts,
            "num_qrels": len(qrels),
            "dataset_images": dataset.num_images,
            "captioned_this_run": stats.get("captions", 0),
            "from_journal": resumed,
            "failed": [{"where": w, "reason": r} for w, r in failures],
            "skipped": skipped,
            "dropped_queries": dropped_queries,
            "data_left_out": dataset.left_out,
            "merged_rows": dataset.merged_rows,
            "id_style": cfg.id_style,
            "requests": stats,
            "api_base": public_url(settings.api_base),
            "model_name": settings.model_name,
            "prompt": prompt,
            "system_prompt": cfg.system_prompt,
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
            "timeout": cfg.timeout,
            "concurrency": cfg.concurrency,
            "max_image_side": cfg.max_image_side,
            "max_failures": cfg.max_failures,
            "journal": str(data_root / JOURNAL_NAME),
            "files": {"corpus": str(retrieval_dir / "corpus.jsonl"), "queries": str(retrieval_dir / "queries.jsonl"),
                      "qrels": str(retrieval_dir / "qrels" / "test.tsv"), "qrels_jsonl": str(retrieval_dir / "qrels.jsonl")},
            "timings": {"captioning_s": caption_s,
                        "captions_per_s": (stats.get("captions", 0) / caption_s) if caption_s > 0 else 0.0},
        }
        if dataset.limited_from is not None:
            meta["limited_from_images"] = dataset.limited_from
        log.info("wrote %s", retrieval_dir)
        return TaskOutput({"convertion_successful": True, "save_path": str(retrieval_dir)}, meta)


def run_caption(cfg, model: dict[str, Any], dataset_name: str, data_dir: str | os.PathLike | None,
                **client_options) -> dict[str, Any]:
    """Caption one dataset with one model entry and write its BEIR folder and summary (the result
    object, also returned), through the runner like every result. ``client_options`` override
    :class:`ClientSettings` fields (e.g. ``backoff_base``, ``max_attempts``, ``seed``)."""
    from ..runner import run_evaluation

    ev = ImageCaption().evaluation(cfg, model, dataset_name, data_dir, **client_options)
    (result,) = run_evaluation(ev, None, cfg.output_dir)
    return result
