"""modules.json of a sentence-transformers folder (export/text_model.py ``read_modules``), against
sentence-transformers itself: every variant clipeval exports, sentence-transformers loads and
encodes with the same modules (pooling, normalisation); every variant sentence-transformers
refuses, or loads but cannot encode with, clipeval refuses in one error naming the file."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.engine.errors import ExportError
from fixtures_text import TEXTS, make_sentence_transformer

pytest.importorskip("sentence_transformers")

ST6 = {"Transformer": "sentence_transformers.base.modules.transformer.Transformer",
       "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
       "Normalize": "sentence_transformers.base.modules.normalize.Normalize"}
LEGACY = {k: f"sentence_transformers.models.{k}" for k in ST6}  # what sentence-transformers < 6 wrote
SHORT = {"Transformer": "sentence_transformers.base.modules.Transformer",
         "Pooling": "sentence_transformers.sentence_transformer.modules.Pooling",
         "Normalize": "sentence_transformers.base.modules.Normalize"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A SentenceTransformer (Transformer -> Pooling(mean) -> Normalize) saved by sentence-transformers."""
    path = make_sentence_transformer(tmp_path_factory.mktemp("st") / "st", pooling="mean", normalize=True, seed=5)
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"] for m in modules] == list(ST6.values())  # the installed version writes these
    return path


def _typed(types):
    return lambda ms: [dict(m, type=types[k]) for m, k in zip(ms, ST6)]


def _drop(i, key):
    return lambda ms: [{k: v for k, v in m.items() if not (n == i and k == key)} for n, m in enumerate(ms)]


def _set(i, **values):
    return lambda ms: [dict(m, **values) if n == i else m for n, m in enumerate(ms)]


def _pooling_config(config):
    def write(folder):
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return write


def _no_pooling_config(folder):
    (folder / "1_Pooling" / "config.json").unlink()


DENSE = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}

# name -> (modules.json transform, other file change, expected: None = exported, else words of the error)
VARIANTS = {
    "as saved": (None, None, None),
    "types of sentence-transformers < 6": (_typed(LEGACY), None, None),
    "short 6.x types": (_typed(SHORT), None, None),
    "no Normalize": (lambda ms: ms[:2], None, None),
    "Transformer path '.'": (_set(0, path="."), None, None),
    "no idx keys": (lambda ms: [{k: v for k, v in m.items() if k != "idx"} for m in ms], None, None),
    "legacy pooling booleans": (None, _pooling_config({"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                                                       "pooling_mode_max_tokens": True,
                                                       "pooling_mode_mean_tokens": True}), None),
    "legacy pooling booleans all off": (None, _pooling_config({"word_embedding_dimension": 32,
                                                               "pooling_mode_mean_tokens": False}), None),
    "pooling_mode list": (None, _pooling_config({"embedding_dimension": 32, "pooling_mode": ["cls", "max"]}), None),
    # refused: sentence-transformers refuses them, or cannot encode with them, or this exporter
    # does not put the module in the graph
    "empty list": (lambda ms: [], None, ["lists no modules ([])", "empty modules list"]),
    "an object": (lambda ms: {"0": ms[0]}, None, ["not a JSON array"]),
    "a string": (lambda ms: "Transformer", None, ["not a JSON array"]),
    "null": (lambda ms: None, None, ["not a JSON array"]),
    "an entry that is no object": (lambda ms: [ms[0], 5, ms[2]], None, ["module 1 is 5, not a JSON object"]),
    "an entry without type": (_drop(1, "type"), None, ["module 1 has no type string"]),
    "an entry without path": (_drop(1, "path"), None, ["module 1 has no path string"]),
    "an entry without name": (_drop(0, "name"), None, ["module 0 has no name string"]),
    "a type that is no string": (_set(1, type=7), None, ["module 1 has no type string"]),
    "an unknown sentence-transformers module": (lambda ms: ms + [DENSE], None,
                                                ["module 3 ('3_Dense') is sentence_transformers.models.Dense",
                                                 "only sentence-transformers' Transformer, Pooling, Normalize"]),
    "custom code": (_set(1, type="my_package.MyPooling"), None, ["my_package.MyPooling", "trust_remote_code"]),
    "bare class names": (lambda ms: [dict(m, type=k) for m, k in zip(ms, ST6)], None,
                         ["module 0 ('') is Transformer", "trust_remote_code"]),
    "a look-alike class path": (_set(1, type="sentence_transformers.nowhere.Pooling"), None,
                                ["sentence_transformers.nowhere.Pooling"]),
    "no Pooling": (lambda ms: [ms[0], ms[2]], None, ["modules are Transformer, Normalize", "no sentence embedding"]),
    "only a Transformer": (lambda ms: ms[:1], None, ["modules are Transformer", "no sentence embedding"]),
    "Pooling first": (lambda ms: [ms[1], ms[0], ms[2]], None, ["modules are Pooling, Transformer, Normalize"]),
    "Normalize before Pooling": (lambda ms: [ms[0], ms[2], ms[1]], None,
                                 ["modules are Transformer, Normalize, Pooling"]),
    "two Poolings": (lambda ms: [ms[0], ms[1], dict(ms[1], name="9", idx=9), ms[2]], None,
                     ["modules are Transformer, Pooling, Pooling, Normalize"]),
    "a name given twice": (_set(2, name="1"), None, ["module 2 repeats the name '1'"]),
    "an absolute path": (_set(1, path="/etc"), None, ["module 1 has the path '/etc'"]),
    "a path with ..": (_set(1, path="../1_Pooling"), None, ["module 1 has the path '../1_Pooling'"]),
    "Transformer in a subfolder": (_set(0, path="0_Transformer"), None, ["Transformer module is at '0_Transformer'"]),
    "Pooling without its config": (None, _no_pooling_config, ["Pooling module has no config.json"]),
    "Pooling config without a dimension": (None, _pooling_config({"pooling_mode": "cls"}),
                                           ["has no embedding_dimension"]),
    "Pooling config with a key Pooling does not take": (
        None, _pooling_config({"embedding_dimension": 32, "pooling_mode": "mean", "pooling_mode_median": True}),
        ["'pooling_mode_median'", "does not take"]),
}


def write_variant(saved: Path, folder: Path, transform, change) -> Path:
    shutil.copytree(saved, folder)
    modules = json.loads((saved / "modules.json").read_text())
    if transform is not None:
        (folder / "modules.json").write_text(json.dumps(transform(copy.deepcopy(modules))))
    if change is not None:
        change(folder)
    return folder


def theirs(folder: Path):
    """What sentence-transformers makes of the folder: ``(pooling, normalize, include_prompt,
    embeddings)``, or ``None`` when it refuses to load it or cannot encode with it."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling

    try:
        model = SentenceTransformer(str(folder), device="cpu")
        embeddings = model.encode(TEXTS, convert_to_numpy=True)
    except Exception:  # noqa: BLE001 - any refusal of sentence-transformers is what is compared
        return None
    pooling = [m for m in model if isinstance(m, Pooling)]
    mode = pooling[0].pooling_mode if pooling else None
    mode = mode if isinstance(mode, str) or mode is None else "+".join(mode)
    return (mode, any(isinstance(m, Normalize) for m in model),
            pooling[0].include_prompt if pooling else None, embeddings)


def ours(folder: Path):
    from clipeval.export.text_model import read_text_spec

    try:
        spec = read_text_spec(folder)
    except ExportError as exc:
        return exc
    return spec["pooling"], spec["normalize_module"], spec["include_prompt"]


def assert_agrees(folder: Path):
    """clipeval exports only what sentence-transformers loads and encodes with, read the same way;
    whatever sentence-transformers refuses, clipeval refuses in one error naming the file."""
    mine, reference = ours(folder), theirs(folder)
    if not isinstance(mine, ExportError):
        assert reference is not None, f"clipeval reads {mine}, sentence-transformers refuses"
        assert mine == reference[:3]
    else:
        assert "modules.json" in mine.message or "config.json" in mine.message, mine.message
        assert mine.remedy
    if reference is None:
        assert isinstance(mine, ExportError)
    return mine, reference


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_modules_json_variant_is_read_as_sentence_transformers_reads_it_or_refused(saved, tmp_path, name):
    transform, change, expected = VARIANTS[name]
    folder = write_variant(saved, tmp_path / "v", transform, change)
    mine, reference = assert_agrees(folder)
    if expected is None:
        assert not isinstance(mine, ExportError), mine
    else:
        assert isinstance(mine, ExportError), f"{name}: read as {mine}"
        assert all(w in mine.message for w in expected), mine.message
        assert "\n" not in mine.message  # one line, every problem in it


def test_empty_list_is_refused_as_sentence_transformers_does(saved, tmp_path):
    """The issue's example: modules.json holding [] was exported as a plain transformer with mean
    pooling, without a word; sentence-transformers refuses to load it."""
    from clipeval.export.text_model import export_text_model

    folder = write_variant(saved, tmp_path / "v", lambda ms: [], None)
    assert theirs(folder) is None
    with pytest.raises(ExportError) as err:
        export_text_model(folder, tmp_path / "bundle")
    assert "lists no modules ([])" in err.value.message and "delete modules.json" in err.value.remedy
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("name", ["types of sentence-transformers < 6", "no Normalize", "legacy pooling booleans"])
def test_an_accepted_variant_exports_sentence_transformers_embeddings(saved, tmp_path, name):
    from clipeval.engine.embedding.models import load_text_model
    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.export.text_model import export_text_model

    transform, change, _ = VARIANTS[name]
    folder = write_variant(saved, tmp_path / "v", transform, change)
    _mode, normalized, _prompt, reference = theirs(folder)
    bundle = load_bundle(export_text_model(folder, tmp_path / "bundle"))
    got, _ = load_text_model(bundle, provider="cpu").embed(TEXTS, batch_size=3, progress=False)
    if not normalized:  # the bundle normalises a cosine model, sentence-transformers does not without Normalize
        reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.99999 and np.abs(got - reference).max() <= 1e-4


TYPES = [*ST6.values(), *LEGACY.values(), *SHORT.values(), "Transformer", "Pooling",
         "sentence_transformers.models.Dense", "x.Pooling"]
ENTRY = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["0", "1", "2", 3]),
    "path": st.sampled_from(["", ".", "1_Pooling", "2_Normalize", "/abs", "../x", "missing"]),
    "type": st.sampled_from(TYPES),
    "idx": st.integers(0, 3),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(modules=st.one_of(
    st.lists(ENTRY, max_size=4),
    # mostly well-formed: the saved modules with one entry changed, dropped, or repeated
    st.tuples(st.sampled_from(["replace", "drop", "repeat"]), st.integers(0, 2), ENTRY)))
def test_any_modules_json_is_read_as_sentence_transformers_reads_it_or_refused(saved, tmp_path_factory, modules):
    if isinstance(modules, tuple):
        how, i, entry = modules
        base = json.loads((saved / "modules.json").read_text())
        modules = (base[:i] + [dict(base[i], **entry)] + base[i + 1:] if how == "replace" else
                   base[:i] + base[i + 1:] if how == "drop" else base[:i + 1] + base[i:])
    folder = write_variant(saved, tmp_path_factory.mktemp("h") / "v", lambda _: modules, None)
    assert_agrees(folder)
