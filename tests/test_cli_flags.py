"""Flags: one number rule with the config (engine/numbers.py), every integer within int64, and
every flag mistake click finds in the form of every user mistake (``error: WHAT`` + ``  -> remedy``,
exit status 2), for every command of the group."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.cli.options import Float, Int
from clipeval.engine.config import make_eval_config
from clipeval.engine.errors import ConfigError
from clipeval.engine.numbers import INT64_MAX, MAX_RESAMPLES, NumberProblem, parse_float, parse_int
from clipeval.engine.results.compare import bootstrap_intervals, PairedStatistic

# The arguments each command needs besides the flag under test (none of them is read before the
# flags are checked).
REQUIRED = {
    ("bench",): [],
    ("cache", "clear"): [],
    ("cache", "info"): [],
    ("caption",): ["--api-base", "http://127.0.0.1:9/v1", "--model-name", "m"],
    ("compare",): ["a.json", "b.json"],
    ("eval",): [],
    ("export",): ["src", "-o", "out"],
    ("report",): ["x", "-o", "r.html"],
    ("run",): ["c.yaml"],
    ("text-eval",): ["--model", "demo", "--data-dir", "d"],
}


def commands(group=cli, path=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))
        else:
            yield path + (name,), command


def number_flags():
    for path, command in commands():
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, (Int, Float)):
                yield path, param.opts[0], param.type


NUMBER_FLAGS = list(number_flags())


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_flag_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == "" and "Traceback" not in result.output and "Usage:" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  -> "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, result.stderr)


def test_every_command_is_covered_and_no_flag_reads_numbers_with_python_int_or_float():
    assert {path for path, _ in commands()} == set(REQUIRED)
    assert len(NUMBER_FLAGS) >= 20
    for path, command in commands():
        for param in command.params:
            # click's INT / FLOAT / IntRange / FloatRange take "٣", "3_0", " 3", NaN and unbounded integers
            assert not isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)), (path, param)
            if isinstance(param.type, Int):
                assert param.type.hi <= INT64_MAX


ODD_INTEGERS = ["٣", "१", "３", "²", "3_0", " 3", "3 ", "+3", "3.0", "1e3", "0x10", "", "nan", "three"]


@pytest.mark.parametrize("path, flag, kind", [f for f in NUMBER_FLAGS if isinstance(f[2], Int)],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_integer_flag_refuses_odd_spellings_and_numbers_beyond_its_bounds(path, flag, kind):
    for value in ODD_INTEGERS:
        assert_flag_error(invoke(*path, *REQUIRED[path], flag, value), f"{flag} must be an integer")
    assert_flag_error(invoke(*path, *REQUIRED[path], flag, kind.hi + 1), f"{flag} must be at most {kind.hi}")
    assert_flag_error(invoke(*path, *REQUIRED[path], flag, 10**25), f"{flag} must be at most {kind.hi}")
    assert_flag_error(invoke(*path, *REQUIRED[path], flag, kind.lo - 1), f"{flag} must be at least {kind.lo}")


@pytest.mark.parametrize("path, flag, kind", [f for f in NUMBER_FLAGS if isinstance(f[2], Float)],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_number_flag_refuses_nan_infinity_and_odd_spellings(path, flag, kind):
    for value in ("nan", "NaN", "inf", "-inf", "1_0", " 1", "١", "½", "0x1"):
        assert_flag_error(invoke(*path, *REQUIRED[path], flag, value), f"{flag} must be")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(st.text(alphabet=st.sampled_from("0123456789٣१３²_+-. eE\n\t"), max_size=8),
                 st.integers(-10, 10**20).map(str)))
def test_flags_and_config_keys_take_exactly_the_same_integers(text):
    try:
        flag = Int(1).convert(text, None, None)
    except click.BadParameter as exc:
        flag = ("refused", exc.message)
    try:
        key = make_eval_config({"limit": text}).limit
    except ConfigError as exc:
        key = ("refused", exc.message.removeprefix("eval.limit "))
    assert flag == key
    if not isinstance(flag, tuple):  # accepted: exactly the ASCII-digit strings, read as int() reads them
        assert text.lstrip("-").isascii() and text.lstrip("-").isdigit() and flag == int(text)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.text(alphabet=st.sampled_from("0123456789.eE+-_ naif"), max_size=8)))
def test_number_flags_and_config_keys_take_exactly_the_same_numbers(text):
    try:
        flag = Float(0.0, 2.0).convert(text, None, None)
    except click.BadParameter as exc:
        flag = ("refused", exc.message)
    try:
        key = make_eval_config({"temperature": text}).temperature
    except ConfigError as exc:
        key = ("refused", exc.message.removeprefix("eval.temperature "))
    assert flag == key


def test_the_number_rule_by_hand():
    assert parse_int("12", 0) == 12 and parse_int(12, 0) == 12 and parse_int("-0", 0) == 0
    assert parse_int(str(INT64_MAX), 0) == INT64_MAX
    for bad in (True, 1.0, "1.0", " 1", "+1", "1_000", "١٢", None, [1]):
        with pytest.raises(NumberProblem, match="must be an integer"):
            parse_int(bad, 0)
    with pytest.raises(NumberProblem, match="must be at most 9223372036854775807, got a number of 101 digits"):
        parse_int("9" * 101, 0)
    assert parse_float("1e2", 0, 1000) == 100.0 and parse_float(2, 0, 2) == 2.0
    with pytest.raises(NumberProblem, match="more than 0"):
        parse_float(0, 0, 1, exclusive_min=True)


# --- the findings' examples ----------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["eval", "--limit", "0"], "--limit must be at least 1, got 0"),  # F14
    (["eval", "--bogus"], "no such option '--bogus'"),
    (["eval", "--on-error", "maybe"], "'maybe' is not one of 'fail', 'skip'"),
    (["eval", "--provider"], "option '--provider' requires an argument"),
    (["compare", "a.json", "b.json", "--resamples", "999"], "--resamples must be at least 1000, got 999"),
    (["compare", "a.json"], "missing argument 'RESULT_B'"),
    (["text-eval", "--data-dir", "d"], "missing option '--model'"),
    (["nosuch"], "no such command 'nosuch'"),
    (["--bogus"], "no such option '--bogus'"),
    (["cache", "info", "--bogus"], "no such option '--bogus'"),
    (["compare", "a.json", "b.json", "--confidence", "nan"], "--confidence must be a number"),  # F9
    (["compare", "a.json", "b.json", "--confidence", "1e400"], "--confidence must be a finite number"),
    (["compare", "a.json", "b.json", "--seed", "99999999999999999999999"], "--seed must be at most"),  # F10
    (["compare", "a.json", "b.json", "--resamples", "100000000000"], f"--resamples must be at most {MAX_RESAMPLES}"),
    (["eval", "--limit", "٣"], "--limit must be an integer, got '٣'"),  # F41
    (["eval", "--recall-k", "१"], "--recall-k must be an integer"),
    (["eval", "--limit", "3_0"], "--limit must be an integer, got '3_0'"),
    (["eval", "--batch-size", " 3"], "--batch-size must be an integer"),
    (["compare", "a.json", "b.json", "--seed", "٣"], "--seed must be an integer"),
    (["text-eval", "--model", "demo", "--data-dir", "d", "--k", "99999999999999999999"], "--k must be at most"),  # F42
    (["text-eval", "--model", "demo", "--data-dir", "d", "--k", "٣"], "--k must be an integer"),
    (["text-eval", "--model", "demo", "--data-dir", "d", "--k", "0"], "--k must be at least 1"),
    (["report", "x", "-o", "r.html", "--seed", str(2**63)], "--seed must be at most"),
])
def test_flag_mistakes_are_one_error_line_with_a_remedy(tmp_path, args, needle):
    (tmp_path / "d").mkdir()
    import os

    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert_flag_error(invoke(*args), needle)
    finally:
        os.chdir(old)


def test_help_and_no_command_still_print_help():
    for args in (["-h"], ["eval", "-h"], ["cache", "--help"]):
        r = invoke(*args)
        assert r.exit_code == 0 and r.output.startswith("Usage:"), (args, r.output)
    r = invoke()
    assert "Usage:" in r.output and "error:" not in r.output


def test_bootstrap_refuses_nan_levels_seeds_beyond_int64_and_too_many_resamples():
    import numpy as np

    s = PairedStatistic("m", "q", "mean", np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    for kwargs in ({"confidence": float("nan")}, {"seed": 2**63}, {"seed": -1}, {"resamples": MAX_RESAMPLES + 1}):
        with pytest.raises(ValueError):
            bootstrap_intervals([s], **kwargs)
    assert bootstrap_intervals([s], seed=INT64_MAX, resamples=1000)[0][0] <= 0


def test_cache_max_bytes_from_the_environment_follows_the_rule(monkeypatch):
    from clipeval.engine.embedding.cache import default_max_bytes

    monkeypatch.setenv("CLIPEVAL_CACHE_MAX_BYTES", "123")
    assert default_max_bytes() == 123
    for bad in ("٣", "3_0", " 3", str(2**63), "-1"):
        monkeypatch.setenv("CLIPEVAL_CACHE_MAX_BYTES", bad)
        with pytest.raises(ConfigError, match="CLIPEVAL_CACHE_MAX_BYTES must be"):
            default_max_bytes()


@pytest.mark.parametrize("where, value", [("limits", 10**20), ("top_k", 10**20), ("limits", 2**63),
                                          ("verbosity", 10**20)])
def test_mteb_integers_stay_within_int64(where, value):
    """F42: ``limits: 99999999999999999999`` failed after the model was loaded (orjson)."""
    from clipeval.engine.config import parse_task_cfg

    cfg = {"eval_backend": "RAGEval", "eval_config": {
        "tool": "MTEB", "models": [{"model_name_or_path": "m"}],
        "eval": {"custom_tasks": [{"name": "CustomRetrieval", "data_path": "d"}], where: value}}}
    with pytest.raises(ConfigError, match=f"eval_config.eval.{where}"):
        parse_task_cfg(cfg)
    cfg["eval_config"]["eval"][where] = 3 if where != "verbosity" else 1
    parse_task_cfg(cfg)
    cfg["eval_config"]["eval"]["encode_kwargs"] = {"batch_size": 2**40}
    with pytest.raises(ConfigError, match="encode_kwargs.batch_size"):
        parse_task_cfg(cfg)


def test_a_flag_checked_by_the_config_names_the_command_in_its_remedy(tmp_path):
    r = invoke("eval", "--split", "../t", "--output-dir", tmp_path)
    assert_flag_error(r, "--split must name a split")
    assert " eval -h lists the accepted values)" in r.stderr and "COMMAND" not in r.stderr
