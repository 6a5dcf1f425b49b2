"""CLIP_benchmark's model spellings in the config form and on the command line (engine/model_spec.py)."""

from __future__ import annotations

import itertools

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
    assert _entries(block) == want


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
