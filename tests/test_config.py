import json

import pytest

from clipeval.engine.config import make_eval_config, parse_task_cfg
from clipeval.engine.errors import ConfigError

# The evalscope documentation's clip_benchmark task config, unchanged.
EVALSCOPE_TASK_CFG = {
    "eval_backend": "RAGEval",
    "eval_config": {
        "tool": "clip_benchmark",
        "eval": {
            "models": [{"model_name": "AI-ModelScope/chinese-clip-vit-large-patch14-336px"}],
            "dataset_name": ["muge", "flickr8k"],
            "split": "test",
            "batch_size": 128,
            "num_workers": 1,
            "verbose": True,
            "skip_existing": False,
            "cache_dir": "cache",
            "limit": 1000,
        },
    },
}


def test_evalscope_task_cfg_is_accepted_unchanged():
    cfg = parse_task_cfg(EVALSCOPE_TASK_CFG)
    assert cfg.models == [{"model_name": "AI-ModelScope/chinese-clip-vit-large-patch14-336px"}]
    assert cfg.dataset_name == ["muge", "flickr8k"]
    assert (cfg.batch_size, cfg.num_workers, cfg.limit, cfg.split) == (128, 1, 1000, "test")
    assert cfg.verbose is True and cfg.skip_existing is False
    assert cfg.output_dir == "outputs"


def test_work_dir_sets_the_output_dir():
    cfg = parse_task_cfg({**EVALSCOPE_TASK_CFG, "work_dir": "runs/x"})
    assert cfg.output_dir == "runs/x"


def test_eval_block_alone_is_accepted_and_defaults_hold():
    cfg = parse_task_cfg({"models": ["some/bundle"], "dataset_name": "custom", "data_dir": "d"})
    assert cfg.models == [{"model_name": "some/bundle"}]
    assert cfg.dataset_name == ["custom"]
    assert cfg.recall_k is None and cfg.on_error == "fail" and cfg.provider == "auto"


@pytest.mark.parametrize("where, cfg, key", [
    ("eval_config.eval", {"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {"recal_k": [5]}}}, "recal_k"),
    ("the task config", {"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {}}, "wrk_dir": "x"}, "wrk_dir"),
    ("eval_config", {"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {}, "evl": {}}}, "evl"),
    ("models[0]", {"models": [{"model_name": "m", "revison": "v1"}]}, "revison"),
])
def test_unknown_keys_name_the_key_and_the_accepted_ones(where, cfg, key):
    with pytest.raises(ConfigError) as info:
        parse_task_cfg(cfg)
    text = str(info.value)
    assert repr(key) in text and where in text and "accepted keys:" in text


@pytest.mark.parametrize("block, match", [
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"batch_size": "many"}, "batch_size must be an integer"),
    ({"limit": -3}, "limit must be at least 1"),
    ({"on_error": "ignore"}, "on_error must be one of fail, skip"),
    ({"provider": "tpu"}, "provider must be one of auto, cuda, cpu"),
    ({"decode": "gpu"}, "decode must be one of auto, threads, processes"),
    ({"recall_k": [0, 5]}, "recall_k must be at least 1"),
    ({"recall_k": []}, "recall_k must be a list"),
    ({"verbose": "perhaps"}, "verbose must be true or false"),
    ({"models": [{"revision": "x"}]}, "has no model_name"),
    ({"dataset_name": []}, "dataset_name must be"),
])
def test_bad_values_are_clear_errors(block, match):
    with pytest.raises(ConfigError, match=match):
        make_eval_config(block)


def test_recall_k_is_sorted_and_deduplicated():
    assert make_eval_config({"recall_k": [10, 1, 5, 5]}).recall_k == [1, 5, 10]
    assert make_eval_config({"recall_k": 3}).recall_k == [3]


def test_other_backends_and_tools_are_refused():
    with pytest.raises(ConfigError, match="eval_backend 'OpenCompass'"):
        parse_task_cfg({"eval_backend": "OpenCompass", "eval_config": {}})
    with pytest.raises(ConfigError, match="tool 'ragas'"):
        parse_task_cfg({"eval_backend": "RAGEval", "eval_config": {"tool": "ragas", "eval": {}}})
    # tool: mteb is evalscope's text-retrieval config (tests/test_text_two_stage.py): its own keys are checked
    with pytest.raises(ConfigError, match=r"eval_config\.models: missing"):
        parse_task_cfg({"eval_backend": "RAGEval", "eval_config": {"tool": "mteb", "eval": {}}})


def test_json_and_yaml_files(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps(EVALSCOPE_TASK_CFG))
    y = tmp_path / "c.yaml"
    y.write_text(
        "eval_backend: RAGEval\n"
        "eval_config:\n"
        "  tool: clip_benchmark\n"
        "  eval:\n"
        "    models:\n"
        "      - model_name: AI-ModelScope/chinese-clip-vit-large-patch14-336px\n"
        "    dataset_name: [muge, flickr8k]\n"
        "    split: test\n"
        "    batch_size: 128\n"
        "    num_workers: 1\n"
        "    verbose: true\n"
        "    skip_existing: false\n"
        "    cache_dir: cache\n"
        "    limit: 1000\n"
    )
    assert parse_task_cfg(j) == parse_task_cfg(y) == parse_task_cfg(EVALSCOPE_TASK_CFG)


def test_unparsable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval_config: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_task_cfg(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_task_cfg(tmp_path / "none.json")
    other = tmp_path / "c.toml"
    other.write_text("")
    with pytest.raises(ConfigError, match=r"must end in \.json, \.yaml or \.yml"):
        parse_task_cfg(other)


def test_api_key_is_masked_in_the_config_dump():
    cfg = make_eval_config({"models": [{"model_name": "m", "api_base": "http://x", "api_key": "sekrit"}]})
    assert "sekrit" not in json.dumps(cfg.to_dict())


def test_clip_benchmark_wds_prefix_is_accepted():
    assert make_eval_config({"dataset_name": ["wds/flickr8k", "vtab/cifar10"]}).dataset_name == ["flickr8k", "vtab/cifar10"]


def test_decode_auto_picks_processes_only_on_many_cores():
    from clipeval.engine.embed import PROCESS_DECODE_MIN_WORKERS, resolve_decode

    assert make_eval_config({}).decode == "auto"
    assert resolve_decode("auto", PROCESS_DECODE_MIN_WORKERS) == "processes"
    assert resolve_decode("auto", PROCESS_DECODE_MIN_WORKERS - 1) == "threads"
    assert resolve_decode("auto", 0) == "threads"
    assert resolve_decode("threads", 64) == "threads" and resolve_decode("processes", 2) == "processes"


def test_decode_auto_falls_back_to_threads_when_shared_memory_is_short(monkeypatch, caplog):
    from clipeval.engine import decode_procs
    from clipeval.engine.embed import PROCESS_DECODE_MIN_WORKERS, resolve_decode

    workers = PROCESS_DECODE_MIN_WORKERS
    need = decode_procs.ring_bytes(128, workers, 2, (224, 224))
    assert need == (decode_procs.batches_ahead(128, workers, 2) + 1) * 128 * 3 * 224 * 224 * 4
    monkeypatch.setattr(decode_procs, "shm_free_bytes", lambda: need - 1)  # a container's small /dev/shm
    with caplog.at_level("INFO", logger="clipeval.engine.embed"):
        assert resolve_decode("auto", workers, batch_size=128, pixel_shape=(224, 224)) == "threads"
    assert "shm-size" in caplog.text
    assert resolve_decode("processes", workers, batch_size=128, pixel_shape=(224, 224)) == "processes"
    monkeypatch.setattr(decode_procs, "shm_free_bytes", lambda: need)
    assert resolve_decode("auto", workers, batch_size=128, pixel_shape=(224, 224)) == "processes"
    monkeypatch.setattr(decode_procs, "shm_free_bytes", lambda: None)  # cannot tell: as configured
    assert resolve_decode("auto", workers, batch_size=128, pixel_shape=(224, 224)) == "processes"


def test_decode_auto_keeps_threads_under_a_users_own_script(monkeypatch):
    import sys
    import types

    from clipeval.engine.embed import PROCESS_DECODE_MIN_WORKERS, resolve_decode

    def main_module(file=None, spec_name=None):
        module = types.ModuleType("__main__")
        if file is not None:
            module.__file__ = file
        module.__spec__ = types.SimpleNamespace(name=spec_name) if spec_name else None
        monkeypatch.setitem(sys.modules, "__main__", module)

    workers = PROCESS_DECODE_MIN_WORKERS
    main_module("/home/me/evaluate.py")  # may call run_task without a __main__ guard
    assert resolve_decode("auto", workers) == "threads"
    assert resolve_decode("processes", workers) == "processes"  # asked for explicitly
    main_module("/usr/lib/python3/site-packages/clipeval/__main__.py", "clipeval.__main__")  # python -m clipeval
    assert resolve_decode("auto", workers) == "processes"
    main_module("/venv/bin/clipeval")  # the console script
    assert resolve_decode("auto", workers) == "processes"
    main_module()  # interactive / python -c
    assert resolve_decode("auto", workers) == "processes"
