"""A config that names nothing runs nothing (F7), and a model or dataset named twice is evaluated
once (F8), as ``recall_k: [5, 5]`` is one k."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.config import make_eval_config, parse_task_cfg
from clipeval.engine.errors import ConfigError


@pytest.mark.parametrize("block, key", [
    ({"models": []}, "models is an empty list"),
    ({"models": ()}, "models is an empty list"),
    ({"model": []}, "model in the config names no model"),
    ({"model": ""}, "model in the config names no model"),
    ({"pretrained_model": []}, "pretrained_model in the config names no model"),
    ({"models": [], "model": []}, "names no model"),
    ({"model": "ViT-B-32", "pretrained": []}, "pretrained in the config names no pretrained value"),
    ({"model": [], "pretrained": "openai"}, "model in the config names no model"),
])
def test_an_explicitly_empty_model_list_is_an_error_not_the_demo_model(block, key):
    with pytest.raises(ConfigError) as info:
        parse_task_cfg({**block, "data_dir": "d"})
    assert key in str(info.value) and "leave" in str(info.value), str(info.value)


@pytest.mark.parametrize("block", [{}, {"models": None}, {"model": None}])
def test_no_models_key_still_means_the_embedded_demo_model(block):
    assert parse_task_cfg({**block, "data_dir": "d"}).models == []


def test_the_findings_config_with_models_empty_fails_before_any_work(tmp_path):
    cfg = tmp_path / "cm.yaml"
    cfg.write_text(f"models: []\ndata_dir: {tmp_path}\noutput_dir: {tmp_path / 'oc'}\nverbose: false\n")
    r = CliRunner().invoke(cli, ["run", str(cfg)])
    assert r.exit_code == 2 and r.stdout == "" and "cm.yaml:1: models is an empty list" in r.stderr, r.output
    assert not (tmp_path / "oc").exists()


@pytest.mark.parametrize("block, models, datasets", [
    ({"models": ["demo", "demo"]}, [{"model_name": "demo"}], ["custom"]),
    ({"model": ["demo", "demo"]}, [{"model_name": "demo"}], ["custom"]),
    ({"model": "ViT-B-32", "pretrained": ["openai", "openai"]}, [{"model_name": "ViT-B-32", "pretrained": "openai"}],
     ["custom"]),
    ({"models": ["a", {"model_name": "a"}, "b", "a"]}, [{"model_name": "a"}, {"model_name": "b"}], ["custom"]),
    ({"models": [{"model_name": "a", "precision": "fp16"}, {"model_name": "a"}]},  # different runs: both kept
     [{"model_name": "a", "precision": "fp16"}, {"model_name": "a"}], ["custom"]),
    ({"dataset_name": ["custom", "custom"]}, [], ["custom"]),
    ({"dataset_name": ["wds/cifar10", "cifar10", "mnist", "cifar10"]}, [], ["vtab/cifar10", "mnist"]),  # one set
])
def test_repeated_models_and_datasets_are_evaluated_once_in_order(block, models, datasets, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = make_eval_config(block)
    assert cfg.models == models and cfg.dataset_name == datasets
    repeated = len(cfg.models) < len(block.get("models", block.get("model", []))) or \
        len(datasets) < len(block.get("dataset_name", ["custom"])) or block.get("pretrained") == ["openai", "openai"]
    assert ("more than once" in caplog.text) == repeated


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["a", "b", "wds/a", "c"]), min_size=1, max_size=8),
       st.lists(st.sampled_from(["m1", "m2", "m3"]), min_size=1, max_size=6))
def test_any_repeats_leave_each_name_once_in_first_seen_order(datasets, models):
    cfg = make_eval_config({"dataset_name": datasets, "models": models})
    assert cfg.dataset_name == list(dict.fromkeys(d.removeprefix("wds/") for d in datasets))
    assert cfg.models == [{"model_name": m} for m in dict.fromkeys(models)]


def test_repeated_flags_run_once(tmp_path):
    from clipeval.engine.demo import DEMO_DATA_DIR

    r = CliRunner().invoke(cli, ["eval", "--dataset", "custom", "--dataset", "custom", "--model", "demo", "--model",
                                 "demo", "--data-dir", str(DEMO_DATA_DIR), "--limit", "4", "--output-dir",
                                 str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 1 and "more than once" in r.stderr
