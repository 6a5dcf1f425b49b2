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
    with pytest.raises(ConfigError, match=r"bad\.yaml:2:1: while parsing a flow sequence"):
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
    from clipeval.engine.images.pipeline import PROCESS_DECODE_MIN_WORKERS, resolve_decode

    assert make_eval_config({}).decode == "auto"
    assert resolve_decode("auto", PROCESS_DECODE_MIN_WORKERS) == "processes"
    assert resolve_decode("auto", PROCESS_DECODE_MIN_WORKERS - 1) == "threads"
    assert resolve_decode("auto", 0) == "threads"
    assert resolve_decode("threads", 64) == "threads" and resolve_decode("processes", 2) == "processes"


def test_decode_auto_falls_back_to_threads_when_shared_memory_is_short(monkeypatch, caplog):
    from clipeval.engine.images import decode_procs
    from clipeval.engine.images.pipeline import PROCESS_DECODE_MIN_WORKERS, resolve_decode

    workers = PROCESS_DECODE_MIN_WORKERS
    need = decode_procs.ring_bytes(128, workers, 2, (224, 224))
    assert need == (decode_procs.batches_ahead(128, workers, 2) + 1) * 128 * 3 * 224 * 224 * 4
    monkeypatch.setattr(decode_procs, "shm_free_bytes", lambda: need - 1)  # a container's small /dev/shm
    with caplog.at_level("INFO", logger="clipeval.engine.images.pipeline"):
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

    from clipeval.engine.images.pipeline import PROCESS_DECODE_MIN_WORKERS, resolve_decode

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


# --- the kinds of bad values (issue 10): each names its key, with its path ---------------------

INT_KEYS = {"batch_size": (1, 1 << 20), "num_workers": (0, 1024), "num_threads": (1, 1024), "limit": (1, 2**63 - 1),
            "cache_max_bytes": (0, 2**63 - 1), "concurrency": (1, 1024), "max_tokens": (1, 2**31 - 1),
            "max_failures": (0, 2**63 - 1), "max_image_side": (16, 65535)}
FLOAT_KEYS = {"temperature": (0.0, 2.0), "timeout": (0.0, 7 * 86400.0)}
BOOL_KEYS = ("verbose", "skip_existing", "fast_decode", "no_cache", "verify_cache")
STR_KEYS = ("split", "task", "system_prompt")
PATH_KEYS = ("data_dir", "output_dir", "cache_dir", "classnames_file", "templates_file")
CHOICE_KEYS = {"on_error": ("fail", "skip"), "provider": ("auto", "cuda", "cpu"), "precision": ("fp32", "fp16", "int8"),
               "decode": ("auto", "threads", "processes"), "id_style": ("int", "prefixed")}
URL_KEYS = ("dataset_url",)


def config_error(block, where="eval_config.eval"):
    with pytest.raises(ConfigError) as info:
        make_eval_config(block, where)
    return str(info.value)


@pytest.mark.parametrize("key", sorted(INT_KEYS))
@pytest.mark.parametrize("value", ["²", "١٢", "½", "12abc", "", 5.0, 5.5, float("nan"), float("inf"), True, [3], {"a": 1},
                                   10**30, 2**63])
def test_integers_refuse_odd_digits_floats_booleans_and_huge_numbers(key, value):
    text = config_error({key: value})
    assert f"eval_config.eval.{key} must be" in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("key", sorted(INT_KEYS))
def test_integer_bounds_are_inclusive_and_ascii_digit_strings_are_read(key):
    lo, hi = INT_KEYS[key]
    assert getattr(make_eval_config({key: lo}), key) == lo
    assert getattr(make_eval_config({key: hi}), key) == hi
    assert getattr(make_eval_config({key: str(lo)}), key) == lo
    for spelled in (f" {lo} ", f"+{lo}", f"{lo}_0", f"{lo}\n"):  # int() takes these; the rule is ASCII digits only
        assert f"{key} must be an integer" in config_error({key: spelled})
    assert f"{key} must be at least {lo}" in config_error({key: lo - 1})
    assert f"{key} must be at most {hi}" in config_error({key: hi + 1})


@pytest.mark.parametrize("key", sorted(FLOAT_KEYS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "nan", "inf", "½", "1,5", [1.0], True,
                                   10**400])
def test_numbers_are_finite_ascii_numbers(key, value):
    text = config_error({key: value})
    assert f"eval_config.eval.{key} must be" in text, text


def test_numbers_take_ints_floats_and_ascii_strings():
    assert make_eval_config({"temperature": 1}).temperature == 1.0
    assert make_eval_config({"temperature": "0.5"}).temperature == 0.5
    assert make_eval_config({"timeout": "1e2"}).timeout == 100.0


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("value", ["perhaps", "ja", "t", "", 2, 1.0, [True], {"x": True}])
def test_booleans_spelled_otherwise_are_errors(key, value):
    assert f"eval_config.eval.{key} must be true or false" in config_error({key: value})


@pytest.mark.parametrize("key", BOOL_KEYS)
def test_booleans_take_the_words_the_reference_config_takes(key):
    for word, expected in (("true", True), ("False", False), ("yes", True), ("NO", False), ("1", True), ("0", False),
                           (True, True), (False, False)):
        assert getattr(make_eval_config({key: word}), key) is expected


@pytest.mark.parametrize("key", STR_KEYS + PATH_KEYS + URL_KEYS + tuple(CHOICE_KEYS))
@pytest.mark.parametrize("value", [["a", "b"], {"a": 1}, 3, 2.5, True])
def test_lists_mappings_numbers_and_booleans_where_a_string_is_wanted(key, value):
    text = config_error({key: value})
    assert f"eval_config.eval.{key} must be" in text, text
    if value is True:  # YAML's unquoted yes / on: say to quote it
        assert "quotes" in text


@pytest.mark.parametrize("key", ["prompt", "api_key", "revision", "hub", "model_name", "api_base", "precision"])
@pytest.mark.parametrize("value", [["describe"], {"text": "describe"}, 7, True])
def test_model_entry_values_of_the_wrong_type(key, value):
    entry = {"model_name": "m", key: value}
    text = config_error({"models": [entry]})
    assert f"eval_config.eval.models[0].{key} must be" in text, text


@pytest.mark.parametrize("key", PATH_KEYS + ("model_name",))
@pytest.mark.parametrize("value, reason", [("a\0b", "NUL"), ("x/" + "n" * 256, "file names are limited to 255"),
                                           ("d/" * 2100, "paths are limited to 4096"), ("\ud800", "surrogate")])
def test_paths_that_no_file_system_takes(key, value, reason):
    block = {"models": [{"model_name": value}]} if key == "model_name" else {key: value}
    text = config_error(block)
    assert key in text and reason in text, text


@pytest.mark.parametrize("url, reason", [
    ("ftp://host/x", "http:// or https://"), ("file:///etc/passwd", "http:// or https://"), ("http://", "no host"),
    ("https:///path", "no host"), ("localhost:8000", "http:// or https://"), ("http://[::1", "not a valid URL"),
    ("http://host:99999/", "not a valid URL"), ("http://ho st/", "whitespace"), ("http://host/\n", "whitespace"),
    ("", "empty"),
])
def test_urls_need_http_or_https_and_a_host(url, reason):
    for block, name in (({"dataset_url": url}, "dataset_url"), ({"models": [{"model_name": "m", "api_base": url}]},
                                                                 "models[0].api_base")):
        text = config_error(block)
        assert f"eval_config.eval.{name}" in text and reason in text, text
    if "://" in url and url:
        assert "data_dir" in config_error({"data_dir": url})


def test_good_urls_and_data_dir_urls_are_kept():
    cfg = make_eval_config({"dataset_url": "https://example.org/wds_{name}/resolve/main", "data_dir": "http://127.0.0.1:8/x",
                            "models": [{"model_name": "vlm", "api_base": "http://localhost:8008/v1"}]})
    assert cfg.dataset_url.endswith("{name}/resolve/main") and cfg.models[0]["api_base"] == "http://localhost:8008/v1"


def test_every_problem_of_a_config_is_listed_once():
    text = config_error({"batch_size": "²", "verbose": "perhaps", "split": ["a"], "recal_k": [1],
                         "models": [{"model_name": "m", "prompt": ["x"]}, 5]})
    assert text.startswith("6 problems in eval_config.eval:")
    for needle in ("eval_config.eval.batch_size", "eval_config.eval.verbose", "eval_config.eval.split",
                   "unknown key 'recal_k' in eval_config.eval", "eval_config.eval.models[0].prompt",
                   "eval_config.eval.models[1] must be a mapping"):
        assert needle in text, (needle, text)


def test_command_line_problems_name_the_flag():
    text = config_error({"dataset_url": "ftp://x", "models": [{"model_name": "m"}]}, "the command line")
    assert text.startswith("--dataset-url ")


def test_file_problems_name_the_file_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("eval_backend: RAGEval\neval_config:\n  tool: clip_benchmark\n  eval:\n    models: [demo]\n"
                   "    batch_size: \"²\"\n    split: no\n")
    with pytest.raises(ConfigError) as info:
        parse_task_cfg(cfg)
    text = str(info.value)
    assert f"{cfg}:6: eval_config.eval.batch_size must be an integer, got '²'" in text, text
    assert f"{cfg}:7: eval_config.eval.split must be a string, got the boolean false" in text, text
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps({"eval_backend": "RAGEval",
                                   "eval_config": {"tool": "clip_benchmark", "eval": {"limit": 1.5}}}, indent=1))
    with pytest.raises(ConfigError, match=r"c\.json:6: eval_config\.eval\.limit must be an integer"):
        parse_task_cfg(as_json)


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"- a\n- b\n", b"[[[[[[[[[[", b"eval: {a: 1", b"\x00\x01"])
def test_unreadable_config_files_are_config_errors(tmp_path, content):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        parse_task_cfg(path)


@pytest.mark.parametrize("task_cfg, needle", [
    ({"eval_backend": "RAGEval", "eval_config": []}, "eval_config is missing or not a mapping"),
    ({"eval_backend": "RAGEval", "eval_config": {"tool": ["clip_benchmark"], "eval": {}}}, "eval_config.tool"),
    ({"eval_backend": 5, "eval_config": {}}, "eval_backend must be a string"),
    ({"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": [1]}}, "eval_config.eval must be a mapping"),
    ({"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark"}, "work_dir": 3}, "work_dir must be a path"),
    ({"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark"}, "no_timestamp": "sometimes"},
     "no_timestamp must be true or false"),
    ({1: 2, "eval_backend": "RAGEval", "eval_config": {}}, "unknown key 1"),
])
def test_the_task_config_around_the_eval_block(task_cfg, needle):
    with pytest.raises(ConfigError) as info:
        parse_task_cfg(task_cfg)
    assert needle in str(info.value), str(info.value)


def test_another_tool_plugs_in_through_the_tools_table(monkeypatch):
    from clipeval.engine import config

    seen = {}

    def parse_other(eval_config, task_cfg, problems):
        seen["eval_config"] = eval_config
        return "parsed"

    monkeypatch.setitem(config.TOOLS, "other_tool", parse_other)
    assert parse_task_cfg({"eval_backend": "RAGEval", "eval_config": {"tool": "Other_Tool", "x": 1}}) == "parsed"
    assert seen["eval_config"] == {"tool": "Other_Tool", "x": 1}


def test_one_models_entry_is_parsed_by_one_function():
    from clipeval.engine.config import model_entries

    assert model_entries("path/b") == [{"model_name": "path/b"}]
    assert model_entries({"model_name": "m", "precision": "int8"}) == [{"model_name": "m", "precision": "int8"}]


# --- property: any value of any key is either accepted with its declared type or a ConfigError
# naming that key (never another exception) ----------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ODD_STRINGS = st.sampled_from(["²", "١٢", "½", "", " ", "\0", "nan", "inf", "-1", "1e3", "0x10", "true", "no", "on",
                               "\ud800", "a" * 300, "../../etc", "http://", "https://h/x", "auto", "fp16", "en", "zh",
                               "cn", "skip", "custom", "12", "1.5"])
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8) | ODD_STRINGS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from([k for k in ("models",) + tuple(INT_KEYS) + tuple(FLOAT_KEYS) + BOOL_KEYS + STR_KEYS
                            + PATH_KEYS + tuple(CHOICE_KEYS) + URL_KEYS + ("recall_k", "dataset_name", "language")]),
       value=ANY_VALUE)
def test_any_value_is_accepted_with_its_type_or_an_error_naming_the_key(key, value):
    try:
        cfg = make_eval_config({key: value}, "eval_config.eval")
    except ConfigError as exc:
        assert f"eval_config.eval.{key}" in str(exc), str(exc)
        return
    got = getattr(cfg, key)
    if value is None:
        return
    if key in INT_KEYS:
        lo, hi = INT_KEYS[key]
        assert type(got) is int and lo <= got <= hi
    elif key in FLOAT_KEYS:
        lo, hi = FLOAT_KEYS[key]
        assert type(got) is float and lo <= got <= hi
    elif key in BOOL_KEYS:
        assert type(got) is bool
    elif key in CHOICE_KEYS:
        assert got in CHOICE_KEYS[key]
    elif key in STR_KEYS + PATH_KEYS + URL_KEYS:
        assert type(got) is str and got.strip() and "\0" not in got
    elif key == "recall_k":
        assert got == sorted(set(got)) and all(type(k) is int and k >= 1 for k in got)
    elif key == "dataset_name":
        assert got and all(type(n) is str and n.strip() for n in got)
    elif key == "models":
        assert all(type(m["model_name"]) is str for m in got)


def test_an_empty_config_path_is_named_empty_and_a_tilde_path_is_the_home_folder(tmp_path, monkeypatch):
    """K13: run_task("") / `clipeval run ""` said "config file . is a folder"; `~/c.yaml` was not the
    home folder (every other path option expands `~`)."""
    with pytest.raises(ConfigError) as err:
        parse_task_cfg("")
    assert "empty" in str(err.value) and " . " not in str(err.value)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yaml").write_text("data_dir: somewhere\n")
    assert parse_task_cfg("~/c.yaml").data_dir == "somewhere"
