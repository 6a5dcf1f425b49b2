"""``clipeval compare``: two results (or two output folders) metric by metric, with paired intervals."""

from __future__ import annotations

import click

from .console import emit, setup_logging
from .options import MAX_RESAMPLES, MIN_RESAMPLES, Float, Int, verbosity_option


@click.command("compare")
@click.argument("result_a", type=click.Path())
@click.argument("result_b", type=click.Path())
@click.option("--resamples", type=Int(MIN_RESAMPLES, MAX_RESAMPLES), default=2000, show_default=True,
              help="Bootstrap resamples (queries drawn jointly for both results).")
@click.option("--seed", type=Int(0), default=0, show_default=True, help="Seed of the resamples.")
@click.option("--confidence", type=Float(0.5, 0.999), default=0.95, show_default=True,
              help="Level of the bootstrap interval of B - A.")
@verbosity_option
def compare_cmd(result_a, result_b, resamples, seed, confidence, quiet):
    """Compare RESULT_A with RESULT_B: two result files of one dataset, or two output folders
    (every dataset they share). Needs the results' .detail.npz files (clipeval eval --detail on).

    Prints one JSON line per dataset on stdout (A, B, B - A with a paired bootstrap interval per
    metric, McNemar's exact test for recall@k and acc@k) and a table on stderr.
    """
    import os
    from pathlib import Path

    from clipeval.engine.results.compare import compare_results
    from clipeval.engine.errors import ResultError
    from clipeval.engine.results.read import find_results, pair_results

    setup_logging(not quiet)
    result_a, result_b = (os.path.expanduser(p) for p in (result_a, result_b))  # `~` as in every path option
    a_is_dir, b_is_dir = Path(result_a).is_dir(), Path(result_b).is_dir()
    if a_is_dir != b_is_dir:
        raise ResultError(f"one of {result_a} and {result_b} is a folder and the other is not",
                          "pass two result files, or two output folders")
    side_a, side_b = find_results([result_a]), find_results([result_b])
    if a_is_dir:
        pairs, notes = pair_results(side_a, side_b)
        for note in notes:
            click.echo(f"note: {note}", err=True)
        if not pairs:
            raise ResultError(f"{result_a} and {result_b} share no dataset measured on the same data (the notes "
                              "above say what each holds)",
                              "compare output folders of evaluations on the same datasets, or two result files")
    else:
        pairs = [(side_a[0], side_b[0])]
    for a, b in pairs:
        comparison = compare_results(a, b, resamples=resamples, seed=seed, confidence=confidence)
        click.echo(format_table(comparison), err=True)
        emit(comparison)


def format_table(c: dict) -> str:
    """The comparison as a plain-text table (for stderr)."""
    level = f"{c['bootstrap']['confidence']:.0%}"
    head = (f"{c['dataset']} {c['task']}: A = {c['a']['model']} ({c['a']['precision']}), "
            f"B = {c['b']['model']} ({c['b']['precision']}); {c['bootstrap']['resamples']} paired resamples")
    rows = [("metric", "A", "B", "B - A", f"{level} interval", "McNemar p")]
    for name, m in c["metrics"].items():
        p = m.get("mcnemar", {}).get("p_value")
        rows.append((name, f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['diff']:+.4f}",
                     f"[{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}]", "" if p is None else f"{p:.3g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head] + ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
                      for r in rows]
    lines += [f"  not compared: {name}: {why}" for name, why in c["not_compared"].items()]
    return "\n".join(lines)
