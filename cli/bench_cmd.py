"""``clipeval bench``: per-stage throughput, end-to-end wall time and peak memory, optionally side
by side with the reference pipeline (PyTorch + transformers, see :mod:`clipeval.export.reference`).

The table goes to stderr, one JSON object to stdout. End-to-end runs are child processes (a
``clipeval eval`` and ``python -m clipeval.export.reference``), so each one's wall time counts its
imports and its peak memory is its own. The engine's first run starts from an empty embedding
cache in a temporary folder; its second run is the same command again, served from that cache.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import tempfile
from pathlib import Path

import click

from .console import emit, setup_logging
from .options import batch_option, decode_option, provider_option, threads_option, verbosity_option


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _require_reference_deps() -> None:
    from clipeval.engine.errors import ClipevalError

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ClipevalError(f"--vs-reference runs the PyTorch reference pipeline, which needs {', '.join(missing)}",
                            "install the export extra: pip install 'clipeval[export]'")


def _reference_open_clip(bundle) -> tuple[str, str | None]:
    """``(model_name, pretrained)`` for open_clip of an open_clip bundle, from its manifest."""
    from clipeval.engine.errors import ClipevalError

    m = bundle.manifest
    source, pretrained = str(m.get("source") or ""), m.get("pretrained")
    if m.get("hub") is None:  # a local folder, recorded as its absolute path
        if not (Path(source) / "open_clip_config.json").is_file():
            raise ClipevalError(
                f"--vs-reference needs the open_clip folder {bundle.path} was exported from, {source}, "
                "which no longer exists",
                "restore it, or bench a bundle whose source is at hand",
            )
        return f"local-dir:{source}", None
    if pretrained and m.get("hub") == "open_clip" and os.path.isabs(str(pretrained)) \
            and not os.path.isfile(str(pretrained)):
        raise ClipevalError(f"--vs-reference needs the weights file {pretrained}, which no longer exists",
                            "restore it, or bench a bundle whose weights are at hand")
    return source, pretrained


def _reference_checkpoint(model_arg: str, bundle, checkpoint: str | None) -> Path:
    from clipeval.engine.errors import ClipevalError
    from clipeval.export.hub import is_hub_id, local_checkpoint

    if checkpoint:
        return local_checkpoint(checkpoint)
    given = Path(os.path.expanduser(model_arg))
    if (given / "config.json").is_file():
        return given
    source = bundle.manifest.get("source")
    local = Path(os.path.expanduser(str(source))) if source else None
    if local is not None and (local / "config.json").is_file():
        return local
    # The manifest says hub null for a local directory (clipeval export records its absolute path).
    if source and bundle.manifest.get("hub") is None:
        state = "holds no config.json" if local.is_dir() else "no longer exists"
        raise ClipevalError(
            f"--vs-reference needs the checkpoint {bundle.path} was exported from, {source}, which {state}",
            "pass the checkpoint directory with --checkpoint DIR",
        )
    if source and is_hub_id(str(source)):
        return local_checkpoint(str(source), hub=bundle.manifest.get("hub") or "hf",
                                revision=bundle.manifest.get("revision"))
    raise ClipevalError(f"the checkpoint bundle {bundle.path} was exported from ({source!r}) is not at hand",
                        "pass the checkpoint directory with --checkpoint DIR")


def child_argv(cfg, path: Path) -> list[str]:
    """The command of a child run of the eval config ``cfg`` (an
    :class:`~clipeval.engine.config.EvalConfig`): ``clipeval run PATH`` on the config written as
    JSON to ``path``, in a fresh interpreter (its wall time counts its imports)."""
    import orjson

    path.write_bytes(orjson.dumps(cfg.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    return [sys.executable, "-c", "from clipeval.cli.main import main; main()", "run", str(path), "--quiet"]


def _check(run, what: str):
    from clipeval.engine.errors import ClipevalError

    if run.returncode != 0:
        tail = "\n    ".join(run.stderr.strip().splitlines()[-8:])
        raise ClipevalError(f"the {what} failed (exit status {run.returncode}):\n    {tail}")
    import json

    return json.loads(run.stdout.strip().splitlines()[-1])


def _ratio(a, b):
    return a / b if a and b else None


@click.command("bench")
@click.option("--model", required=True, metavar="BUNDLE|CHECKPOINT|demo",
              help="Model bundle or checkpoint directory, or demo (the embedded model).")
@click.option("--data-dir", required=True, help="A custom dataset folder (image_queries.jsonl).")
@click.option("--vs-reference", is_flag=True,
              help="Also run the PyTorch reference pipeline on the same data and checkpoint (needs the export extra).")
@click.option("--checkpoint", default=None, metavar="DIR",
              help="Checkpoint for --vs-reference (default: the model itself, or the bundle's manifest source).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use exactly the first N gallery images.")
@batch_option
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Decode workers (default: all cores).")
@click.option("--reference-workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="DataLoader workers of the reference pipeline (the reference tool's default is 1).")
@provider_option
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Bundle variant to run (default: the bundle's own).")
@click.option("--fast-decode", is_flag=True, help="Decode JPEGs with DCT scaling.")
@decode_option
@click.option("--no-second-run", is_flag=True, help="Skip the cached second run.")
@threads_option
@verbosity_option
def bench_cmd(model, data_dir, vs_reference, checkpoint, limit, batch_size, num_workers, reference_workers,
              provider, precision, fast_decode, decode, no_second_run, num_threads, quiet):
    """Time each stage and the whole evaluation (table on stderr, JSON on stdout)."""
    from clipeval.engine.bench import bench_stages, run_child
    from clipeval.engine.datasets import read_dataset
    from clipeval.engine.images.pipeline import resolve_decode
    from clipeval.engine.sessions.model import load_model
    from clipeval.engine.sessions.onnx import default_threads
    from clipeval.export.resolve import resolve_model

    from .commands import eval_config

    setup_logging(not quiet)
    if vs_reference:
        _require_reference_deps()
    # the same config object `clipeval eval` builds from these options; the child runs take it as it is
    cfg = eval_config(models=(model,), data_dir=data_dir, limit=limit, batch_size=batch_size, num_workers=num_workers,
                      provider=provider, precision=precision, fast_decode=fast_decode, decode=decode,
                      num_threads=num_threads, quiet=True)
    bundle = resolve_model(cfg.models[0], cfg)
    open_clip_ref = _reference_open_clip(bundle) if vs_reference and bundle.family == "open_clip" else None
    ckpt = _reference_checkpoint(model, bundle, checkpoint) if vs_reference and open_clip_ref is None else None
    workers = num_workers if num_workers is not None else default_threads()
    dataset = read_dataset("custom", data_dir, "test", "fail", progress=False, limit=limit).limit(limit)

    context = load_model(bundle, provider=provider, precision=precision, threads=num_threads)
    backend = resolve_decode(decode, workers, batch_size=batch_size, pixel_shape=context.preprocessor.output_size)
    stages = bench_stages(context, dataset, batch_size=batch_size, num_workers=workers, fast_decode=fast_decode,
                          decode=backend, num_threads=num_threads)
    report = {
        "model": model, "bundle": str(bundle.path), "identity": bundle.identity, "precision": context.precision,
        "provider": context.provider, "data_dir": os.path.abspath(data_dir), "images": dataset.num_images,
        "texts": dataset.num_texts, "batch_size": batch_size, "num_workers": workers, "decode": backend,
        "machine": {"cpu": _cpu_name(), "cores": default_threads(), "python": platform.python_version()},
        "engine": {"stages": {k: s.to_dict() for k, s in stages.items()}},
    }
    del context

    with tempfile.TemporaryDirectory(prefix="clipeval-bench-") as tmp:
        child = cfg.model_copy(update={"models": [{"model_name": str(bundle.path)}],
                                       "output_dir": os.path.join(tmp, "out"), "cache_dir": os.path.join(tmp, "cache"),
                                       "num_workers": workers, "decode": backend, "verbose": False})
        argv = child_argv(child, Path(tmp) / "eval.json")
        env = None
        click.echo("engine: first run ...", err=True)
        first = run_child(argv, env)
        first_result = _check(first, "engine's first run")
        report["engine"]["first_run"] = {"wall_s": first.wall_s, "peak_rss_mb": first.peak_rss_mb,
                                         "timings": first_result["meta"]["timings"],
                                         "metrics": first_result["metrics"]}
        if not no_second_run:
            click.echo("engine: second run (embedding cache) ...", err=True)
            second = run_child(argv, env)
            second_result = _check(second, "engine's second run")
            report["engine"]["second_run"] = {"wall_s": second.wall_s, "peak_rss_mb": second.peak_rss_mb,
                                              "timings": second_result["meta"]["timings"],
                                              "cache": second_result["meta"].get("cache")}
        if vs_reference:
            click.echo(f"reference: PyTorch + {'open_clip' if open_clip_ref else 'transformers'}, DataLoader with "
                       f"{reference_workers} worker(s) ...", err=True)
            which = ["--open-clip", open_clip_ref[0]] + (["--pretrained", str(open_clip_ref[1])]
                                                          if open_clip_ref[1] else []) \
                if open_clip_ref else ["--checkpoint", str(ckpt)]
            rargv = [sys.executable, "-m", "clipeval.export.reference", *which,
                     "--data-dir", data_dir, "--batch-size", str(batch_size),
                     "--num-workers", str(reference_workers)]
            if limit is not None:
                rargv += ["--limit", str(limit)]
            if provider == "cpu":
                rargv += ["--device", "cpu"]
            ref = run_child(rargv)
            ref_result = _check(ref, "reference pipeline")
            report["reference"] = {"checkpoint": str(ckpt) if ckpt else " ".join(map(str, filter(None, open_clip_ref))),
                                   "wall_s": ref.wall_s, "peak_rss_mb": ref.peak_rss_mb, **ref_result}
    report["ratios"] = _ratios(report)
    _table(report)
    emit(report)


def _ratios(report: dict) -> dict:
    eng = report["engine"]
    out = {}
    if "second_run" in eng:
        out["first_over_second_run"] = _ratio(eng["first_run"]["wall_s"], eng["second_run"]["wall_s"])
    ref = report.get("reference")
    if ref:
        out["reference_over_engine_first_run"] = _ratio(ref["wall_s"], eng["first_run"]["wall_s"])
        t = ref["timings"]
        st = eng["stages"]
        if "vision" in st:
            out["vision_tower"] = _ratio(t["vision_s"], st["vision"]["seconds"])
        if "text" in st:
            out["text_tower"] = _ratio(t["text_s"], st["text"]["seconds"])
        if "ranking" in st:
            out["ranking"] = _ratio(t["ranking_s"], st["ranking"]["seconds"])
        common = set(ref["metrics"]) & set(eng["first_run"]["metrics"])
        if common:
            out["max_recall_difference"] = max(abs(ref["metrics"][k] - eng["first_run"]["metrics"][k]) for k in common)
    return out


def _table(report: dict) -> None:
    eng, ref, ratios = report["engine"], report.get("reference"), report["ratios"]
    n_img, n_txt = report["images"], report["texts"]
    rows = [("", "engine", "reference" if ref else "", "ratio" if ref else "")]

    def rate(stage, key, unit):
        s = eng["stages"].get(stage)
        return f"{s['per_s']:.1f} {unit}/s" if s else "-"

    def ref_rate(key, n, unit):
        return f"{n / ref['timings'][key]:.1f} {unit}/s" if ref and ref["timings"].get(key) else ""

    def x(v):
        return f"x{v:.2f}" if v else ""

    rows.append((f"decode+preprocess ({report['num_workers']} {report.get('decode', 'threads')})", rate("decode", "", "img"),
                 f"(waited {ref['timings']['decode_wait_s']:.1f} s)" if ref else "", ""))
    rows.append(("vision tower", rate("vision", "", "img"), ref_rate("vision_s", n_img, "img"),
                 x(ratios.get("vision_tower"))))
    rows.append(("text tower", rate("text", "", "text"), ref_rate("text_s", n_txt, "text"),
                 x(ratios.get("text_tower"))))
    if "ranking" in eng["stages"]:
        rows.append(("ranking", f"{eng['stages']['ranking']['seconds']:.3f} s",
                     f"{ref['timings']['ranking_s']:.3f} s" if ref else "", x(ratios.get("ranking"))))
    first = eng["first_run"]
    rows.append(("end-to-end, first run", f"{first['wall_s']:.2f} s, {first['peak_rss_mb']:.0f} MB",
                 f"{ref['wall_s']:.2f} s, {ref['peak_rss_mb']:.0f} MB" if ref else "",
                 x(ratios.get("reference_over_engine_first_run"))))
    if "second_run" in eng:
        second = eng["second_run"]
        rows.append(("end-to-end, second run (cache)", f"{second['wall_s']:.2f} s, {second['peak_rss_mb']:.0f} MB",
                     "", f"x{ratios['first_over_second_run']:.1f} vs first"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    click.echo(f"{report['images']} images, {report['texts']} texts; {report['precision']} on {report['provider']}; "
               f"{report['machine']['cpu']} ({report['machine']['cores']} cores)", err=True)
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), err=True)
    if "max_recall_difference" in ratios:
        click.echo(f"recall@k, engine vs reference: largest difference {ratios['max_recall_difference']:.4f}", err=True)
