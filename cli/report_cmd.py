"""``clipeval report``: one self-contained HTML page of results."""

from __future__ import annotations

import click

from .console import emit, setup_logging
from .options import verbosity_option


@click.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), metavar="FILE.html",
              help="The HTML file to write (self-contained: opens offline).")
@click.option("--worst", type=click.IntRange(min=0, max=50), default=8, show_default=True,
              help="Worst queries shown per direction, model and dataset.")
@click.option("--resamples", type=click.IntRange(min=1000), default=2000, show_default=True,
              help="Bootstrap resamples of the comparisons with each dataset's leader.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the resamples.")
@verbosity_option
def report_cmd(paths, output, worst, resamples, seed, quiet):
    """Write one HTML report of the results in PATHS (result files, or output folders of
    clipeval eval, searched one level deep): a sortable leaderboard with intervals against each
    dataset's leader, recall@k curves, the worst queries with thumbnails, and each run's facts.

    Needs the report extra: pip install 'clipeval[report]'. Prints one JSON line (the file written).
    """
    from clipeval.engine.results.report import write_report

    setup_logging(not quiet)
    emit(write_report(paths, output, worst=worst, resamples=resamples, seed=seed))
