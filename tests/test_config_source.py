"""Config files read strictly (engine/config/source.py): repeated keys, self-referring and
exploding aliases, and syntax errors are one ``error: FILE:LINE...`` line with a remedy, never a
traceback; everything else reads exactly as PyYAML's ``safe_load`` / ``json.loads`` read it."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.config import parse_task_cfg
from clipeval.engine.config.source import MAX_VALUES, parse_config_text
from clipeval.engine.errors import ConfigError


def error_of(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_task_cfg(path)
    return str(info.value)


def run_cli(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return CliRunner().invoke(cli, ["run", str(path)], catch_exceptions=True)


def assert_one_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  -> "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, result.stderr)


# --- F3: aliases that refer to themselves, alias bombs, deep nesting ------------------------------

SELF_ALIASES = [
    # the finding's repro: a merge key inside the mapping it names
    ("eval: &a\n  models: [{model_name: demo}]\n  data_dir: d1\n  output_dir: oc\n  <<: *a\n", 5),
    ("a: &x {b: *x}\n", 1),
    ("a: &x [1, *x]\n", 1),
    ("a: &x\n  - 1\n  - [2, [3, *x]]\n", 3),
    ("models: &m\n  - model_name: demo\n    prompt: *m\n", 3),
    ("a: &x {b: {c: {<<: *x}}}\n", 1),
]


@pytest.mark.parametrize("text, line", SELF_ALIASES)
def test_an_alias_inside_its_own_node_is_an_error_with_its_line(tmp_path, text, line):
    result = run_cli(tmp_path, "c.yaml", text)
    assert_one_error(result, f"c.yaml:{line}:", "refers to the node that holds it")


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["models: *a8"]
    result = run_cli(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    assert_one_error(result, "bomb.yaml:", f"expand to more than {MAX_VALUES} values")


@pytest.mark.parametrize("name, text", [("deep.yaml", "[" * 50_000), ("deep.json", "[" * 50_000),
                                        ("deep2.yaml", "a: " + "{b: " * 20_000)])
def test_nesting_deeper_than_the_interpreter_follows_is_an_error(tmp_path, name, text):
    assert_one_error(run_cli(tmp_path, name, text), name)


def test_aliases_and_merge_keys_that_do_not_loop_read_as_safe_load_reads_them(tmp_path):
    text = ("defaults: &d {batch_size: 4, limit: 3}\n"
            "eval_backend: RAGEval\n"
            "eval_config:\n"
            "  tool: clip_benchmark\n"
            "  eval:\n"
            "    <<: *d\n"
            "    limit: 2\n"  # overriding a merged key is what merge keys are for, not a repeat
            "    models: &m [{model_name: some/bundle}]\n"
            "    dataset_name: [custom]\n")
    data, lines = parse_config_text(tmp_path / "c.yaml", text)
    assert data == yaml.safe_load(text)
    assert data["eval_config"]["eval"]["limit"] == 2 and data["eval_config"]["eval"]["batch_size"] == 4
    assert lines[("eval_config", "eval", "limit")] == 7


# --- F4: repeated keys ---------------------------------------------------------------------------

REPEATS = [
    # (file name, text, key, line of the repeat, line of the first)
    ("c.yaml", "models: [{model_name: demo}]\ndata_dir: d1\nbatch_size: 2\nbatch_size: 3\n", "batch_size", 4, 3),
    ("c.yaml", "models: [{model_name: a}]\nmodels: [{model_name: b}]\n", "models", 2, 1),
    ("c.yaml", "data_dir: d1\n'data_dir': d2\n", "data_dir", 2, 1),
    ("c.yaml", 'eval_config:\n  eval:\n    split: test\n    "split": val\n', "split", 4, 3),
    ("c.yaml", "models:\n  - model_name: a\n    precision: fp16\n    precision: int8\n", "precision", 4, 3),
    ("c.yaml", "{limit: 1, limit: 2}\n", "limit", 1, 1),
    ("c.json", '{"models": [{"model_name": "demo"}],\n "batch_size": 2,\n "batch_size": 3}', "batch_size", 3, 2),
    ("c.json", '{"eval_config": {"eval": {"limit": 1, "limit": 2}}}', "limit", 1, 1),
    ("c.json", '{\n\t"limit": 1,\n\t"limit": 2}', "limit", 3, 2),  # tab-indented JSON (not YAML)
]


@pytest.mark.parametrize("name, text, key, line, first", REPEATS)
def test_a_repeated_key_is_an_error_naming_both_places(tmp_path, name, text, key, line, first):
    result = run_cli(tmp_path, name, text)
    assert_one_error(result, f"{name}:{line}", repr(key))
    assert (f"line {first}" if line != first else "column") in result.stderr


def test_problems_of_tab_indented_json_carry_their_lines(tmp_path):
    message = error_of(tmp_path, "c.json", '{\n\t"models": ["m"],\n\t"limit": 1.5\n}')
    assert "c.json:3: limit must be an integer" in message, message


def test_every_repeated_key_is_listed(tmp_path):
    text = "limit: 1\nlimit: 2\nsplit: a\nsplit: b\n"
    message = error_of(tmp_path, "c.yaml", text)
    assert "2 repeated keys" in message and "c.yaml:2:" in message and "c.yaml:4:" in message


KEYS = st.sampled_from(["batch_size", "limit", "split", "data_dir", "models", "a", "b", "ключ", "k k"])
VALUES = st.one_of(st.integers(-5, 5), st.sampled_from(["x", "y z", "ü"]), st.booleans(), st.none())


@st.composite
def documents(draw):
    """A nested mapping as (key, value) pairs that may repeat keys, and whether any mapping does."""
    def mapping(depth):
        pairs = draw(st.lists(st.tuples(KEYS, VALUES if depth > 1 else st.one_of(VALUES, st.just(None))),
                              min_size=1, max_size=5))
        if depth < 2 and draw(st.booleans()):
            pairs.append((draw(KEYS), mapping(depth + 1)))
        return pairs

    return mapping(0)


def has_repeat(pairs) -> bool:
    keys = [k for k, _ in pairs]
    return len(keys) != len(set(keys)) or any(isinstance(v, list) and has_repeat(v) for _, v in pairs)


def as_json(pairs) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {as_json(v) if isinstance(v, list) else json.dumps(v)}"
                           for k, v in pairs) + "}"


def as_yaml(pairs, indent=0) -> str:
    out = ""
    for k, v in pairs:
        if isinstance(v, list):
            out += " " * indent + f"{json.dumps(k)}:\n" + as_yaml(v, indent + 2)
        else:
            out += " " * indent + f"{json.dumps(k)}: {json.dumps(v)}\n"
    return out


@settings(max_examples=150, deadline=None, derandomize=True)
@given(documents(), st.sampled_from(["json", "yaml"]))
def test_repeated_keys_anywhere_are_refused_and_other_documents_read_as_the_plain_loaders(doc, form):
    import pathlib

    text = as_json(doc) if form == "json" else as_yaml(doc)
    path = pathlib.Path(f"generated.{form}")
    if has_repeat(doc):
        with pytest.raises(ConfigError, match="repeat"):
            parse_config_text(path, text)
    else:
        data, _ = parse_config_text(path, text)
        assert data == (json.loads(text) if form == "json" else yaml.safe_load(text))


# --- F5: syntax errors are one line naming FILE:LINE:COLUMN ---------------------------------------

SYNTAX = [
    ("c.yaml", "models: [{model_name: demo}]\ndata_dir: d1\n  output_dir: oc\n", "c.yaml:3:13: mapping values"),
    ("c.yaml", "a: b\n---\nc: d\n", "c.yaml:2:1: expected a single document"),
    ("c.yaml", "eval: [a, b\n", "c.yaml:2:1:"),
    ("c.yaml", "a: *nope\n", "c.yaml:1:4: found undefined alias"),
    ("c.yaml", 'a: "\x01"\n', "c.yaml:1:5: special characters"),
    ("c.yaml", "a: 'unclosed\n", "c.yaml:2:1:"),
    ("c.yaml", "\ta: 1\n", "c.yaml:1:1:"),
    ("c.json", '{"a": [1,\n "b"\n', "c.json:3:1: Expecting"),
    ("c.json", '{"a": 1,}', "c.json:1:9:"),
]


@pytest.mark.parametrize("name, text, needle", SYNTAX)
def test_a_syntax_error_is_one_line_naming_the_file_line_and_column(tmp_path, name, text, needle):
    result = run_cli(tmp_path, name, text)
    assert_one_error(result, needle)
    assert "<unicode string>" not in result.stderr


def test_a_config_path_that_is_not_a_regular_file_is_named_as_such_and_never_opened(tmp_path):
    import os

    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    broken = tmp_path / "b.yaml"
    broken.symlink_to(tmp_path / "nowhere.yaml")
    for path, needle in ((fifo, "is a FIFO, not a regular file"), ("/dev/null", "is a character device"),
                         (broken, "is a broken symbolic link"), (tmp_path / "none.yaml", "does not exist")):
        result = CliRunner().invoke(cli, ["run", str(path)])
        assert_one_error(result, f"config file {path} {needle}")


# --- text that is not Unicode (lone surrogates): no result file could hold it ----------------------

def _string_paths(data, loc=()):
    if isinstance(data, str):
        yield loc
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _string_paths(v, loc + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _string_paths(v, loc + (i,))


FULL_CFGS = [
    {"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {
        "models": [{"model_name": "m", "prompt": "p", "api_base": "http://h/v1"}], "dataset_name": ["custom"],
        "data_dir": "d", "split": "test", "output_dir": "o", "system_prompt": "s", "limit": "3"}}},
    {"eval_backend": "RAGEval", "work_dir": "w", "eval_config": {"tool": "MTEB", "models": [
        {"model_name_or_path": "enc", "prompt": "q", "prompts": {"query": "q", "document": "d"}}],
        "eval": {"custom_tasks": [{"name": "CustomRetrieval", "data_path": "d", "eval_splits": ["test"]}]}}},
]


@pytest.mark.parametrize("cfg", FULL_CFGS, ids=["clip_benchmark", "mteb"])
@pytest.mark.parametrize("form", ["value", "yaml", "json"])
def test_every_string_that_is_not_unicode_text_is_refused_with_its_key(tmp_path, cfg, form):
    for loc in _string_paths(cfg):
        bad = json.loads(json.dumps(cfg))
        target = bad
        for part in loc[:-1]:
            target = target[part]
        target[loc[-1]] = target[loc[-1]] + "\udc80"
        if form == "value":
            with pytest.raises(ConfigError, match="is not Unicode text") as info:
                parse_task_cfg(bad)
        else:  # the escape as a user writes it in the file
            path = tmp_path / f"c.{form}"
            path.write_text(json.dumps(bad) if form == "json" else yaml.safe_dump(bad), encoding="utf-8",
                            errors="backslashreplace")
            with pytest.raises(ConfigError, match="is not Unicode text") as info:
                parse_task_cfg(path)
        assert str(loc[-1]) in str(info.value)
        for word in ("Input should", "pydantic"):
            assert word not in str(info.value)


def test_command_line_arguments_that_are_not_utf8_are_refused_for_every_command():
    for args in (["eval", "--split", "a\udcff"], ["text-eval", "--model", "demo", "--data-dir", "d",
                                                  "--query-prompt", "\udcff"], ["run", "c\udcff.yaml"]):
        assert_one_error(CliRunner().invoke(cli, args), "is not UTF-8 text", "\\xff")
