"""A checkpoint's JSON side files that hold the wrong kind of JSON value (a list, null, a string,
a number where an object is meant; a non-integer max_seq_length): one ExportError naming the file,
never an internal error (brk3 K5). Files as sentence-transformers, CrossEncoder and SiglipTokenizer
save them, then damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.engine.errors import ExportError
from clipeval.export.reranker import _activation, _context_length
from clipeval.export.siglip_tokenizer import tokenizer_settings
from clipeval.export.text_model import read_text_spec
from fixtures_ckpt import make_tiny_siglip_checkpoint
from fixtures_text import make_cross_encoder, make_sentence_transformer

NOT_OBJECTS = [[], [1], None, "x", 1, 2.5, True]
NOT_LENGTHS = ["128", 1.5, True, 1, -4, [128], {"n": 1}]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    return {"st": make_sentence_transformer(root / "st"), "ce": make_cross_encoder(root / "ce"),
            "siglip": make_tiny_siglip_checkpoint(root / "siglip")}


def damaged(saved, tmp_path, kind, name, value) -> Path:
    folder = tmp_path / kind
    shutil.copytree(saved[kind], folder)
    (folder / name).write_text(json.dumps(value))
    return folder


def read(kind, folder: Path):
    if kind == "st":
        return read_text_spec(folder)
    if kind == "ce":
        config = json.loads((folder / "config.json").read_text())
        _activation(folder, config)
        return _context_length(folder, SimpleNamespace(max_position_embeddings=64), None, None)
    return tokenizer_settings(folder)


FILES = [("st", "config_sentence_transformers.json"), ("st", "sentence_bert_config.json"),
         ("st", "modules.json"), ("st", "1_Pooling/config.json"),
         ("ce", "config_sentence_transformers.json"), ("ce", "sentence_bert_config.json"),
         ("siglip", "tokenizer_config.json"), ("siglip", "special_tokens_map.json")]


def test_the_saved_checkpoints_read(saved):
    for kind in saved:
        read(kind, saved[kind])


# modules.json is a list: [] is the wrong kind too, an empty one (sentence-transformers refuses it;
# tests/test_modules_json.py tries the lists of modules)
WRONG = [(kind, name, value) for kind, name in FILES for value in NOT_OBJECTS]


@pytest.mark.parametrize("kind,name,value", WRONG, ids=repr)
def test_a_side_file_of_the_wrong_json_kind_is_one_error_naming_it(saved, tmp_path, kind, name, value):
    folder = damaged(saved, tmp_path, kind, name, value)
    with pytest.raises(ExportError) as err:
        read(kind, folder)
    assert name.rsplit("/", 1)[-1] in err.value.message, err.value.message


@pytest.mark.parametrize("kind", ["st", "ce"])
@pytest.mark.parametrize("value", NOT_LENGTHS, ids=repr)
def test_a_max_seq_length_that_is_no_integer_of_at_least_2_is_named(saved, tmp_path, kind, value):
    folder = damaged(saved, tmp_path, kind, "sentence_bert_config.json", {"max_seq_length": value,
                                                                           "do_lower_case": False})
    with pytest.raises(ExportError) as err:
        read(kind, folder)
    assert "sentence_bert_config.json" in err.value.message and "max_seq_length" in err.value.message


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3), max_leaves=5),
       which=st.sampled_from(FILES))
def test_any_non_object_value_is_an_export_error(saved, tmp_path_factory, value, which):
    kind, name = which
    if name == "modules.json" and isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return
    folder = damaged(saved, tmp_path_factory.mktemp("h"), kind, name, value)
    with pytest.raises(ExportError):
        read(kind, folder)


# --- open_clip's preprocess_cfg values (open_clip_config.json) ------------------------------------

from clipeval.export.openclip_export import preprocess_spec  # noqa: E402

GOOD_CFG = {"size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.3], "interpolation": "bicubic",
            "resize_mode": "shortest"}


@pytest.mark.parametrize("key,value", [
    ("mean", "x"), ("mean", "0.5"), ("mean", [1, 2]), ("mean", [True, 1, 1]), ("mean", {}),
    ("std", [0.1, "a", 0.1]), ("std", {"r": 1}), ("size", "32"), ("size", [32, "32"]), ("size", 0), ("size", 2.5),
    ("size", [1, 2, 3]), ("interpolation", ["bicubic"]), ("interpolation", 3), ("resize_mode", {"a": 1}),
])
def test_a_preprocess_cfg_value_of_the_wrong_kind_is_one_error_naming_the_key(key, value):
    with pytest.raises(ExportError) as err:
        preprocess_spec({**GOOD_CFG, key: value})
    assert key in err.value.message


def test_fill_color_of_the_wrong_kind_is_named():
    for fill in ("x", 300, -1, [0, 0, 0], 1.5):
        with pytest.raises(ExportError) as err:
            preprocess_spec({**GOOD_CFG, "resize_mode": "longest", "fill_color": fill})
        assert "fill_color" in err.value.message


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=False, width=32)
                           | st.text(max_size=4), lambda inner: st.lists(inner, max_size=4), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(GOOD_CFG) + ["fill_color"]), value=json_values,
       mode=st.sampled_from(["shortest", "longest", "squash"]))
def test_any_preprocess_cfg_value_gives_a_spec_or_an_export_error(key, value, mode):
    try:
        spec = preprocess_spec({**GOOD_CFG, "resize_mode": mode, key: value})
    except ExportError:
        return
    assert spec["image_mean"] and spec["image_std"]  # a spec the engine reads back
