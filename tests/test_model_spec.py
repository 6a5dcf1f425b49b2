"""CLIP_benchmark's model spellings in the config form and on the command line (engine/model_spec.py)."""

from __future__ import annotations

import itertools
import os
import re

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.config import make_eval_config, parse_task_cfg
from clipeval.engine.errors import ConfigError
from clipeval.engine.config.model_spec import normalize_models


def _entries(block):
    return make_eval_config(block).models


def test_model_and_pretrained_are_the_cartesian_product():
    got = _entries({"model": ["ViT-B-32", "RN50"], "pretrained": ["openai", "laion400m_e32"]})
    assert got == [{"model_name": m, "pretrained": p}
                   for m, p in itertools.product(["ViT-B-32", "RN50"], ["openai", "laion400m_e32"])]
    assert _entries({"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}) == [
        {"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}]
    assert _entries({"model": ["hf-hub:org/a", "bundles/b"]}) == [{"model_name": "hf-hub:org/a"},
                                                                   {"model_name": "bundles/b"}]


def test_pretrained_model_pairs_strings_lists_and_files(tmp_path):
    assert _entries({"pretrained_model": "ViT-B-32,openai"}) == [{"model_name": "ViT-B-32", "pretrained": "openai"}]
    assert _entries({"pretrained_model": [" ViT-B-32 , openai", "RN50,yfcc15m"]}) == [
        {"model_name": "ViT-B-32", "pretrained": "openai"}, {"model_name": "RN50", "pretrained": "yfcc15m"}]
    pairs = tmp_path / "models.txt"
    pairs.write_text("\ufeff# CLIP_benchmark's benchmark/models.txt style\nViT-B-32,openai\n\nRN50,openai  # trailing\n")
    assert _entries({"pretrained_model": str(pairs)}) == [{"model_name": "ViT-B-32", "pretrained": "openai"},
                                                          {"model_name": "RN50", "pretrained": "openai"}]
    bad = tmp_path / "bad.txt"
    bad.write_text("ViT-B-32,openai\n\n# a comment\nRN50\n")
    with pytest.raises(ConfigError) as err:
        _entries({"pretrained_model": str(bad)})
    assert f"{bad}:4 is 'RN50'" in str(err.value)  # the file and the line
    # pretrained_model replaces model/pretrained, as in CLIP_benchmark
    assert _entries({"pretrained_model": ["RN50,openai"], "model": "ViT-B-32", "pretrained": "x"}) == [
        {"model_name": "RN50", "pretrained": "openai"}]


def test_entries_may_carry_pretrained_and_the_whole_task_cfg_takes_them():
    cfg = parse_task_cfg({"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {
        "models": [{"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}], "dataset_name": ["custom"]}}})
    assert cfg.models == [{"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}]
    cfg = parse_task_cfg({"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {
        "model": "ViT-B-32", "pretrained": ["a", "b"]}}})
    assert [m["pretrained"] for m in cfg.models] == ["a", "b"]


@pytest.mark.parametrize("block,needle", [
    ({"pretrained": "openai"}, "has no model to go with"),
    ({"model": "ViT-B-32", "models": [{"model_name": "x"}]}, "names models twice"),
    ({"pretrained_model": "openai"}, "CLIP_benchmark collection"),
    ({"pretrained_model": ["ViT-B-32"]}, "not \"model,pretrained\""),
    ({"pretrained_model": ["a,b,c"]}, "not \"model,pretrained\""),
    ({"pretrained_model": [",openai"]}, "not \"model,pretrained\""),
    ({"model": ["ViT-B-32", 3]}, "must be a name or a non-empty list"),
    ({"model": "ViT-B-32", "pretrained": {"tag": "x"}}, "must be a name or a non-empty list"),
    ({"model": "ViT-B-32", "pretrained": ["  "]}, "must be a name or a non-empty list"),
    ({"models": [{"model_name": "ViT-B-32", "pretrained": 5}]}, "pretrained must be a tag or a file"),
    ({"models": [{"model_name": "ViT-B-32", "pretrain": "x"}]}, "unknown key 'pretrain'"),
])
def test_malformed_spellings_name_the_key(block, needle):
    with pytest.raises(ConfigError) as err:
        make_eval_config(block)
    assert needle in str(err.value)


NAMES = st.lists(st.sampled_from(["ViT-B-32", "RN50", "hf-hub:o/m", "ViT-L-14"]), min_size=1, max_size=3)
TAGS = st.lists(st.sampled_from(["openai", "laion2b_s34b_b79k", "/w/x.pt", "yfcc15m"]), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(models=st.one_of(st.none(), NAMES, NAMES.map(lambda x: x[0])),
       pretrained=st.one_of(st.none(), TAGS, TAGS.map(lambda x: x[0])),
       pairs=st.one_of(st.none(), st.lists(st.tuples(NAMES.map(lambda x: x[0]), TAGS.map(lambda x: x[0])),
                                           min_size=1, max_size=3)))
def test_every_combination_is_the_reference_tools_list_or_a_config_error(models, pretrained, pairs):
    block = {}
    if models is not None:
        block["model"] = models
    if pretrained is not None:
        block["pretrained"] = pretrained
    if pairs is not None:
        block["pretrained_model"] = [f"{m},{p}" for m, p in pairs]
    as_list = lambda v: [v] if isinstance(v, str) else list(v)  # noqa: E731
    if pairs is not None:
        want = [{"model_name": m, "pretrained": p} for m, p in pairs]
    elif models is not None and pretrained is not None:
        want = [{"model_name": m, "pretrained": p} for m, p in itertools.product(as_list(models), as_list(pretrained))]
    elif models is not None:
        want = [{"model_name": m} for m in as_list(models)]
    elif pretrained is not None:
        with pytest.raises(ConfigError):
            normalize_models(block)
        return
    else:
        assert normalize_models(block) is None and _entries(block) == []
        return
    assert normalize_models(block) == want
    once = [w for i, w in enumerate(want) if w not in want[:i]]  # a model named twice is evaluated once
    assert _entries(block) == once


def test_cli_pretrained_takes_every_model_with_every_tag(monkeypatch, tmp_path):
    seen = []

    def fake_run(cfg):
        seen.extend(cfg.models)

    monkeypatch.setattr("clipeval.cli.commands._run_config", fake_run)
    res = CliRunner().invoke(cli, ["eval", "--model", "ViT-B-32", "--model", "RN50", "--pretrained", "openai",
                                   "--pretrained", "yfcc15m", "--data-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert seen == [{"model_name": m, "pretrained": p}
                    for m, p in itertools.product(["ViT-B-32", "RN50"], ["openai", "yfcc15m"])]
    res = CliRunner().invoke(cli, ["eval", "--pretrained", "openai"])
    assert res.exit_code == 2 and "has no model to go with" in res.stderr and "Traceback" not in res.output


# --- a pretrained_model file as users have them (brk2 K3) ---------------------------------------

PAIRS = [{"model_name": "ViT-B-32", "pretrained": "openai"}, {"model_name": "RN50", "pretrained": "yfcc15m"}]

# file bytes -> the pairs, or the words of the error
PAIR_FILES = [
    (b"ViT-B-32,openai\nRN50,yfcc15m\n", PAIRS),
    (b"ViT-B-32,openai\r\nRN50,yfcc15m\r\n", PAIRS),
    (b"ViT-B-32,openai\rRN50,yfcc15m", PAIRS),  # CR-only line ends: two lines, as text mode reads them
    (b"\xef\xbb\xbfViT-B-32,openai\n# c\n\nRN50,yfcc15m # t\n", PAIRS),
    (b"ViT-B-32,\xff\xfe\n", ("error", ":1: not UTF-8 text", "byte 0xff")),
    (b"ViT-B-32,openai\nRN50,yfcc\xe915m\n", ("error", ":2: not UTF-8 text", "byte 0xe9")),
    (b"ViT-B-32,openai\rRN50,\xc3\n", ("error", ":2: not UTF-8")),
    (b"", ("error", "names no model")),
    (b"# only a comment\n\n", ("error", "names no model")),
    (b"ViT-B-32,openai\nRN50\n", ("error", ":2 is 'RN50'", "not \"model,pretrained\"")),
]


@pytest.mark.parametrize("content,expected", PAIR_FILES)
def test_a_pretrained_model_file_is_read_or_refused_in_one_message(tmp_path, content, expected):
    path = tmp_path / "models.txt"
    path.write_bytes(content)
    if isinstance(expected, list):
        assert _entries({"pretrained_model": str(path)}) == expected
        return
    with pytest.raises(ConfigError) as err:
        _entries({"pretrained_model": str(path)})
    assert all(w in str(err.value) for w in expected[1:]), str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo"])
def test_a_pretrained_model_path_that_is_no_file_says_so(tmp_path, kind):
    import os

    path = tmp_path / "models.txt"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ConfigError) as err:
        _entries({"pretrained_model": str(path)})
    words = {"missing": "no such file exists", "folder": "is a directory", "fifo": "FIFO"}[kind]
    assert words in str(err.value) and str(path) in str(err.value)


def test_the_issues_non_utf8_pairs_file_is_an_error_with_exit_status_2(tmp_path):
    """The repro: a config naming a pretrained_model file that is not UTF-8 ended in
    'internal error: UnicodeDecodeError' (exit 1)."""
    pairs = tmp_path / "pm.txt"
    pairs.write_bytes(b"ViT-B-32,\xff\xfe\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval_backend: RAGEval\neval_config:\n  tool: clip_benchmark\n  eval:\n"
                   f"    pretrained_model: {pairs}\n    dataset_name: [custom]\n    data_dir: {tmp_path}\n")
    res = CliRunner().invoke(cli, ["run", str(cfg)])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and f"{pairs}:1: not UTF-8" in res.stderr and "internal" not in res.stderr


# --- pretrained_model lists that mix files and pairs (brk3 K2) -----------------------------------


def clip_benchmark_pairs(items):
    """CLIP_benchmark's reading of --pretrained_model (nargs='+'): each item is a file of pairs
    (checked first), else a ``model,pretrained`` pair; lines stripped, blank lines and ``#``
    comments left out (the form clipeval documents for files)."""
    out = []
    for item in items:
        if os.path.isfile(item):
            for line in open(item, encoding="utf-8-sig").read().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    out.append(tuple(p.strip() for p in line.split(",")))
        else:
            model, pretrained = item.split(",")
            out.append((model.strip(), pretrained.strip()))
    return [{"model_name": m, "pretrained": p} for m, p in out]


@pytest.mark.parametrize("layout", [
    ["F1", "ViT-B-16,openai"],        # the repro: a file and a pair
    ["ViT-B-16,openai", "F1"],
    ["F1", "F2"],
    ["F2", "F1", "F1"],
    ["F1"],
    ["RN50,yfcc15m", "F2", "ViT-L-14,openai"],
    ["F,comma"],                      # a file whose name holds a comma: a file, as CLIP_benchmark reads it
    ["F,comma", "F2"],
])
def test_a_pretrained_model_list_may_mix_files_and_pairs(tmp_path, layout):
    files = {"F1": "ViT-B-32,openai\nRN50,yfcc15m\n", "F2": "# two\nViT-H-14,laion2b_s32b_b79k\r\n",
             "F,comma": "convnext_base,laion400m_s13b_b51k\n"}
    items = []
    for item in layout:
        if item in files:
            path = tmp_path / item
            path.write_text(files[item])
            items.append(str(path))
        else:
            items.append(item)
    once = []  # a model named twice is evaluated once (README), in first-named order
    for entry in clip_benchmark_pairs(items):
        if entry not in once:
            once.append(entry)
    assert _entries({"pretrained_model": items}) == once


@pytest.mark.parametrize("items,words", [
    (["{d}/missing.txt", "ViT-B-32,openai"], ["entry 1", "missing.txt", "no such file exists"]),
    (["ViT-B-32,openai", "openai"], ["entry 2", "CLIP_benchmark collection"]),
    (["ViT-B-32,openai", "{d}/bad.txt"], ["bad.txt:2 is 'RN50'"]),
    (["{d}/empty.txt", "ViT-B-32,openai"], ["empty.txt", "names no model"]),
])
def test_a_bad_item_of_a_mixed_list_is_named(tmp_path, items, words):
    (tmp_path / "bad.txt").write_text("ViT-B-32,openai\nRN50\n")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError) as err:
        _entries({"pretrained_model": [i.format(d=tmp_path) for i in items]})
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("source,model,pretrained", [("ViT-B-32,openai", "ViT-B-32", "openai"),
                                                     ("RN50, yfcc15m", "RN50", "yfcc15m"),
                                                     ("convnext_base,laion400m_s13b_b51k", "convnext_base",
                                                      "laion400m_s13b_b51k")])
def test_a_pair_given_as_a_model_says_how_to_name_it(tmp_path, source, model, pretrained):
    """brk3: `--model ViT-B-32,openai` (CLIP_benchmark's pair where a model goes) said only 'neither a
    local directory nor a hub id'."""
    res = CliRunner().invoke(cli, ["export", source, "-o", str(tmp_path / "b")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "MODEL,PRETRAINED pair" in res.stderr and f"--model {model} --pretrained {pretrained}" in res.stderr
    res = CliRunner().invoke(cli, ["eval", "--model", source, "--dataset", "custom", "--data-dir", str(tmp_path)])
    assert res.exit_code == 2 and "MODEL,PRETRAINED pair" in res.stderr, res.output


# --- clipeval eval --pretrained-model: the config key pretrained_model as a flag -----------------

def _cli_models(args):
    """``(models, result)`` of ``clipeval eval ARGS``: the models it would evaluate (``None`` when
    it failed) and its click result."""
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("clipeval.cli.commands._run_config", lambda cfg: seen.append(cfg.models))
        res = CliRunner().invoke(cli, ["eval", *args])
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return (seen[0] if res.exit_code == 0 else None), res


def _flags(model=None, pretrained=None, pairs=None) -> list[str]:
    out = []
    for flag, values in (("--model", model), ("--pretrained", pretrained), ("--pretrained-model", pairs)):
        for v in values or ():
            out += [flag, v]
    return out


def _block(model=None, pretrained=None, pairs=None) -> dict:
    return {k: list(v) for k, v in (("model", model), ("pretrained", pretrained), ("pretrained_model", pairs)) if v}


def _as_flags(message: str) -> str:
    """A config problem's text as the command line says it (the same words, the flags named)."""
    for key, flag in (("pretrained_model", "--pretrained-model"), ("pretrained", "--pretrained"),
                      ("model", "--model")):
        message = re.sub(rf"(?<![\w-]){key}(?= (entry|in eval|has|names|must|file))", flag, message)
    return message.replace(" in eval", " on the command line")


FLAG_CASES = [  # (--model, --pretrained, --pretrained-model), with {d} the folder of the files below
    (None, None, ["ViT-B-32,openai"]),
    (None, None, [" ViT-B-32 , openai", "RN50,yfcc15m"]),
    (None, None, ["{d}/pairs.txt"]),
    (None, None, ["{d}/pairs.txt", "ViT-L-14,openai", "{d}/crlf.txt"]),
    (None, None, ["ViT-B-32,openai", "ViT-B-32,openai"]),  # named twice: evaluated once
    (None, None, ["hf-hub:timm/ViT-B-16-SigLIP,x"]),
    (["ViT-B-32"], ["openai"], ["RN50,yfcc15m"]),           # replaces --model/--pretrained (a warning)
    (["ViT-B-32"], None, ["RN50,yfcc15m"]),
    (None, ["openai"], ["RN50,yfcc15m"]),
    (["ViT-B-32", "RN50"], ["openai", "yfcc15m"], None),
    # the bad ones: exit 2, one error line naming the flag, and a remedy
    (None, None, ["openai"]),                                # a collection clipeval does not ship
    (None, None, ["ViT-B-32"]),                              # neither a pair nor a file
    (None, None, ["a,b,c"]),
    (None, None, [",openai"]),
    (None, None, ["ViT-B-32,"]),
    (None, None, ["ViT-B-32,openai", "{d}/missing.txt"]),
    (None, None, ["{d}/bad.txt"]),                           # a file line that is no pair: file and line named
    (None, None, ["{d}/empty.txt"]),
    (None, None, ["{d}/latin1.txt"]),
    (None, None, ["{d}"]),                                   # a folder
    (None, None, ["  "]),
    (None, ["openai"], None),                                # --pretrained without a model
]


@pytest.fixture
def pair_files(tmp_path):
    (tmp_path / "pairs.txt").write_text("\ufeff# models\nViT-B-32,openai\n\nRN50,yfcc15m  # trailing\n")
    (tmp_path / "crlf.txt").write_bytes(b"ViT-H-14,laion2b_s32b_b79k\r\nViT-B-32,openai\r\n")
    (tmp_path / "bad.txt").write_text("ViT-B-32,openai\n\n# c\nRN50\n")
    (tmp_path / "empty.txt").write_text("# nothing here\n")
    (tmp_path / "latin1.txt").write_bytes("ViT-B-32,caf\xe9\n".encode("latin-1"))
    return tmp_path


@pytest.mark.parametrize("model,pretrained,pairs", FLAG_CASES)
def test_the_flags_read_as_the_config_keys(pair_files, model, pretrained, pairs, caplog):
    pairs = [p.format(d=pair_files) for p in pairs] if pairs else None
    block = _block(model, pretrained, pairs)
    try:
        want = _entries(block)
    except ConfigError as exc:
        want, problem = None, exc
    got, res = _cli_models(_flags(model, pretrained, pairs))
    if want is not None:
        assert res.exit_code == 0 and got == want, res.output
        replaced = pairs and (model or pretrained)
        assert ("replaces" in res.stderr) == bool(replaced) and ("replaces" in caplog.text) == bool(replaced)
        return
    assert res.exit_code == 2 and res.stdout == "", res.output
    lines = res.stderr.rstrip("\n").split("\n")
    assert len(lines) == 2 and lines[1].startswith("  -> ") and len(lines[1]) > 10, res.stderr
    assert lines[0] == "error: " + _as_flags(problem.message), (lines[0], problem.message)
    # the flag is named, or the file and line at fault
    assert ("--pretrained" in lines[0] or f"{pair_files}" in lines[0]) and "pretrained_model" not in lines[0]


@settings(max_examples=150, deadline=None)
@given(models=st.one_of(st.none(), NAMES), pretrained=st.one_of(st.none(), TAGS),
       pairs=st.one_of(st.none(), st.lists(st.sampled_from(["ViT-B-32,openai", "RN50,yfcc15m", "openai", "a,b,c",
                                                            "ViT-L-14 , laion2b_s32b_b79k", "nofile.txt"]),
                                           min_size=1, max_size=3)))
def test_any_flags_give_the_config_keys_models_or_the_same_error(models, pretrained, pairs):
    block = _block(models, pretrained, pairs)
    try:
        want, problem = _entries(block), None
    except ConfigError as exc:
        want, problem = None, exc
    got, res = _cli_models(_flags(models, pretrained, pairs))
    if problem is None:
        assert res.exit_code == 0 and got == want, res.output
    else:
        assert res.exit_code == 2 and res.stderr.startswith("error: " + _as_flags(problem.message)), res.stderr
