"""Every command of the click group, found by walking it (so a new command is covered without
touching this file): its help works with -h and --help, and each of its options is named in
README.md or docs/*.md (in the spirit of sqlite-utils' tests/test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clipeval.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
GENERIC = {"--help", "-h"}  # click's own, on every command


def walk(group: click.Group, path=()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = list(walk(cli))


def long_flags(command: click.Command) -> list[str]:
    flags = []
    for param in command.params:
        if isinstance(param, click.Option):
            names = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
            flags.extend(n for n in names if n not in GENERIC)
    return flags


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"eval", "run", "export", "caption", "text-eval", "compare", "report", "bench", "cache", "cache info",
            "cache clear"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p))
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_works(path, flag):
    result = CliRunner().invoke(cli, [*path, flag])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: cli {' '.join(path)}") or result.output.startswith("Usage: ")


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_is_documented(path, command):
    missing = [flag for flag in long_flags(command) if not re.search(re.escape(flag) + r"(?![\w-])", DOCS)]
    assert not missing, f"clipeval {' '.join(path)}: {missing} appear in no README.md or docs/*.md"


@pytest.mark.parametrize("path", [p for p, c in COMMANDS if not isinstance(c, click.Group)], ids=lambda p: " ".join(p))
def test_every_command_is_documented(path):
    assert f"clipeval {' '.join(path)}" in DOCS, f"clipeval {' '.join(path)} appears in no README.md or docs/*.md"
