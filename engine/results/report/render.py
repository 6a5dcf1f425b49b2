"""Render the report's context (:mod:`.build`) through the jinja2 template into one HTML file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ...errors import ConfigError
from ..read import find_results
from ...fsutil import refuse_non_regular, write_atomic

log = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
EXTRA = "pip install 'clipeval[report]'"


def _require_extra() -> None:
    missing = []
    for module in ("jinja2", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(f"clipeval report needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          "not installed", EXTRA)


def _check_output(output: Path) -> None:
    if output.is_dir():
        raise ConfigError(f"-o {output} is a folder", "name the HTML file to write, e.g. -o report.html")
    refuse_non_regular(output, "-o")  # a FIFO, a device (/dev/null): never replaced by the HTML file
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder of {output}: {exc.strerror or exc}",
                          "pass -o a path in a writable folder") from None
    if not os.access(output.parent, os.W_OK):
        raise ConfigError(f"the folder of {output} is not writable", "pass -o a path in a writable folder")


def render_html(context: dict) -> str:
    """The page for a :func:`.build.collect` context (curves drawn here)."""
    import jinja2

    from .plots import curves_svg

    for i, section in enumerate(context["sections"]):
        section["curves_svg"] = curves_svg(section["curves"], salt=str(i)) if section["curves"] else None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**context)


def write_report(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *, worst: int = 8,
                 resamples: int = 2000, seed: int = 0) -> dict:
    """Write the report of the results in ``paths`` (files, or output folders searched one level
    deep) to ``output`` atomically; returns ``{"report", "results", "bytes", "thumbnails"}``
    (``results``: the results the page shows; a file named twice counts once, and of two
    results of one model on the same data only the first is shown, with a warning).

    Raises:
        ConfigError: jinja2 or matplotlib is missing (remedy: the ``report`` extra), or
            ``output`` cannot be written.
        ResultError: a path holds no result, or a named file is not one.
    """
    from .build import collect

    _require_extra()
    if not os.fspath(output):  # Path("") would read as "."
        raise ConfigError("-o is empty", "name the HTML file to write, e.g. -o report.html")
    output = Path(os.path.expanduser(os.fspath(output)))  # `~` as in every path option
    _check_output(output)
    results = find_results(paths)
    context = collect(results, worst=worst, resamples=resamples, seed=seed)
    html = render_html(context).encode("utf-8")
    try:
        write_atomic(output, html)
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror or exc}", "pass -o a path in a writable folder") from None
    shown = len(context["facts"])  # one per result the page shows (a model's repeated result shows once)
    log.info("wrote %s (%d bytes, %d results, %d thumbnails)", output, len(html), shown,
             context["thumbnails"]["count"])
    return {"report": str(output), "results": shown, "bytes": len(html), "thumbnails": context["thumbnails"]}
