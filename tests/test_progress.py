"""Progress on stderr: tqdm bars, what a cached stage says, logs that never tear a bar, --quiet."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from click.testing import CliRunner

from clipeval.cli.console import setup_logging
from clipeval.cli.main import cli
from clipeval.engine.progress import Progress


class TTY(io.StringIO):
    """A terminal, as far as tqdm and Progress can tell."""

    def isatty(self):
        return True


def _run(stream, total, cached=0, enabled=True, updates=None):
    with Progress("images", total, unit="img", enabled=enabled, stream=stream, cached=cached) as bar:
        for n in updates if updates is not None else [total]:
            bar.update(n)
    return stream.getvalue()


@pytest.mark.parametrize("stream_kind", [io.StringIO, TTY])
def test_a_stage_served_from_the_cache_says_so_in_one_line(stream_kind):
    assert _run(stream_kind(), 0, cached=300) == "images: 300 from cache\n"


@pytest.mark.parametrize("stream_kind", [io.StringIO, TTY])
def test_a_partly_cached_stage_has_a_bar_over_the_computed_items_only(stream_kind):
    out = _run(stream_kind(), 50, cached=250, updates=[20, 30])
    assert out.endswith("images: 250 from cache, 50 computed\n")
    bars = [seg for seg in re.split(r"[\r\n]", out) if "|" in seg]
    assert bars and all("/50 " in seg for seg in bars) and "/300" not in out
    assert "50/50" in bars[-1]


def test_outside_a_terminal_the_bar_is_plain_lines():
    out = _run(io.StringIO(), 30, updates=[10, 10, 10])
    assert "\r" not in out and out.endswith("\n")
    lines = out.splitlines()
    assert lines[-1].startswith("images: 100%|##########| 30/30 [")  # the final state, once
    assert len(lines) == len(set(lines)) and all("/30 [" in line for line in lines)


def test_on_a_terminal_the_bar_redraws_in_place():
    out = _run(TTY(), 30, updates=[10, 10, 10])
    assert out.count("\r") >= 2 and "30/30" in out and out.endswith("\n")


@pytest.mark.parametrize("stream_kind", [io.StringIO, TTY])
def test_disabled_progress_writes_nothing(stream_kind):
    assert _run(stream_kind(), 30, cached=5, enabled=False) == ""


@pytest.mark.parametrize("install", ["clipeval", "basicConfig"])
def test_log_records_do_not_tear_a_bar_on_a_terminal(monkeypatch, install):
    """A log line in the middle of a bar: the bar is cleared, the line written whole on its own
    line, the bar drawn again. With the CLI's handler and with a user's ``basicConfig``."""
    tty = TTY()
    monkeypatch.setattr("sys.stderr", tty)
    try:
        if install == "clipeval":
            setup_logging(True)
            expected = "\rWARNING clipeval.test: hello there\n"
        else:
            logging.basicConfig(force=True, format="%(levelname)s:%(name)s:%(message)s")
            expected = "\rWARNING:clipeval.test:hello there\n"
        with Progress("images", 10, unit="img") as bar:
            bar.update(3)
            logging.getLogger("clipeval.test").warning("hello there")
            bar.update(7)
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    out = tty.getvalue()
    assert out.count("hello there") == 1 and expected in out
    before, after = out.split(expected)
    assert before.rsplit("\r", 2)[-1].strip() == ""  # the bar was cleared first
    assert "images:" in after and after.endswith("\n")  # and drawn again


def test_a_second_run_from_the_cache_prints_no_bars_or_rates(tmp_path):
    args = ["eval", "--output-dir", tmp_path / "out", "--cache-dir", tmp_path / "cache"]
    first = CliRunner().invoke(cli, [str(a) for a in args])
    assert first.exit_code == 0, first.output
    assert "images: 100%" in first.stderr and "texts: 100%" in first.stderr and "from cache" not in first.stderr
    second = CliRunner().invoke(cli, [str(a) for a in args])
    assert second.exit_code == 0, second.output
    n_images, n_texts = (json.loads(second.stdout)["meta"][k] for k in ("num_images", "num_texts"))
    assert f"images: {n_images} from cache\n" in second.stderr
    assert f"texts: {n_texts} from cache\n" in second.stderr
    assert "img/s" not in second.stderr and "text/s" not in second.stderr and "%|" not in second.stderr
    quiet = CliRunner().invoke(cli, [str(a) for a in args] + ["--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
