"""A bundle's manifest is checked field by field, and its files stay inside the bundle."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.engine.sessions.bundle import MANIFEST, load_bundle, manifest_problems, unsafe_file_name, write_manifest
from clipeval.engine.demo import DEMO_MODEL_DIR
from clipeval.engine.errors import BundleError

GOOD = json.loads((DEMO_MODEL_DIR / MANIFEST).read_text())


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def bundle(tmp_path) -> Path:
    return Path(shutil.copytree(DEMO_MODEL_DIR, tmp_path / "bundle"))


def write(root: Path, manifest) -> Path:
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def refused(root: Path, *needles) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    text = str(info.value)
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def test_the_demo_bundle_is_good(bundle):
    assert manifest_problems(GOOD) == []
    assert load_bundle(bundle).identity == sha256(bundle / MANIFEST)


# Spellings of a file that is not inside the bundle, each listed with the real sha256 of its target.
ESCAPES = [
    "../outside.bin", "../../outside.bin", "sub/../../outside.bin", "./../outside.bin", "..", ".", "",
    "a//b", "/etc/hostname", "//etc/hostname", "C:/outside.bin", "c:outside.bin", "\\etc\\hostname",
    "..\\outside.bin", "sub\\..\\..\\outside.bin", "x\0y", "vision.onnx/", "/", "..." + "/" + "..", "n" * 256,
]


@pytest.mark.parametrize("name", ESCAPES)
def test_file_names_that_can_leave_the_bundle_are_refused(bundle, name):
    outside = bundle.parent / "outside.bin"
    outside.write_bytes(b"secret")
    manifest = copy.deepcopy(GOOD)
    manifest["files"][name] = sha256(outside)
    assert unsafe_file_name(name) is not None, name
    refused(write(bundle, manifest), repr(name)[1:-1][:40])


def test_the_issue_example_etc_hostname_with_its_real_sha256(bundle):
    target = Path("/etc/hostname")
    if not target.is_file():
        target = bundle.parent / "hostname"
        target.write_text("box\n")
    manifest = copy.deepcopy(GOOD)
    rel = "../../../../" + str(target).lstrip("/")
    manifest["files"][rel] = sha256(target)
    refused(write(bundle, manifest), f"files[{rel!r}]", "not a plain relative path inside the bundle")


def test_a_symbolic_link_out_of_the_bundle_is_refused(bundle):
    outside = bundle.parent / "outside.onnx"
    shutil.copy(bundle / "vision.onnx", outside)
    (bundle / "vision.onnx").unlink()
    (bundle / "vision.onnx").symlink_to(outside)  # same content, same sha256: only containment can tell
    refused(bundle, "vision.onnx: resolves to", "outside the bundle")
    (bundle / "sub").mkdir()
    (bundle / "sub" / "link").symlink_to("../../outside.onnx")
    manifest = copy.deepcopy(GOOD)
    manifest["files"]["sub/link"] = sha256(outside)
    refused(write(bundle, manifest), "sub/link: resolves to")


def test_a_symbolic_link_inside_the_bundle_is_fine(bundle):
    (bundle / "weights").mkdir()
    shutil.move(bundle / "vision.onnx", bundle / "weights" / "vision.onnx")
    (bundle / "vision.onnx").symlink_to("weights/vision.onnx")
    assert load_bundle(bundle).tower_path("vision").is_file()


@pytest.mark.parametrize("kind, needle", [("missing", "tokenizer.json: missing"),
                                           ("folder", "tokenizer.json: is a folder"),
                                           ("fifo", "tokenizer.json: is a FIFO"),
                                           ("device", "resolves to /dev/zero, outside the bundle"),
                                           ("broken link", "tokenizer.json: is a broken symbolic link")])
def test_a_listed_file_that_is_no_regular_file_is_named_for_what_it_is(bundle, kind, needle):
    """K10: a listed name holding a folder or a FIFO was reported as `missing` (never read: no hang)."""
    import os

    path = bundle / "tokenizer.json"
    path.unlink()
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "broken link":
        path.symlink_to(bundle / "nowhere")
    refused(bundle, needle)


def test_a_variant_naming_a_file_missing_from_files_is_refused(bundle):
    manifest = copy.deepcopy(GOOD)
    manifest["variants"]["int8"] = {"vision": "vision.int8.onnx", "text": "text.onnx"}
    shutil.copy(bundle / "vision.onnx", bundle / "vision.int8.onnx")  # present, but never verified
    refused(write(bundle, manifest), "variants.int8.vision names 'vision.int8.onnx', which files does not list")
    manifest["variants"]["int8"]["vision"] = "../vision.onnx"
    refused(write(bundle, manifest), "variants.int8.vision names '../vision.onnx'")


@pytest.mark.parametrize("file", ["tokenizer.json", "preprocess.json"])
@pytest.mark.parametrize("content", [b"[]", b'"text"', b"3", b"null", b"{not json", b"\xff\xfe"])
def test_tokenizer_and_preprocess_files_must_hold_json_objects(bundle, file, content):
    (bundle / file).write_bytes(content)
    manifest = {k: v for k, v in GOOD.items() if k != "files"}
    write_manifest(bundle, manifest)  # the sha256 match: only the content is wrong
    refused(bundle, file)


MUTATIONS = [
    ("files", ["vision.onnx", "text.onnx"], "files must be an object"),
    ("files", "vision.onnx", "files must be an object"),
    ("files", None, "files must be an object"),
    ("format", "1", "has format '1'"),
    ("format", True, "has format True"),
    ("format", 2, "has format 2"),
    ("family", 3, "family must be a name"),
    ("family", "", "family must be a name"),
    ("embed_dim", "64", "embed_dim must be an integer"),
    ("embed_dim", 64.0, "embed_dim must be an integer"),
    ("embed_dim", -1, "embed_dim must be an integer"),
    ("embed_dim", 10**30, "embed_dim must be an integer"),
    ("context_length", 0, "context_length must be an integer"),
    ("context_length", [16], "context_length must be an integer"),
    ("precision", "fp64", "precision must be one of fp32, fp16, int8"),
    ("precision", "fp16", "precision fp16 has no entry in variants"),
    ("variants", [], "variants must be an object"),
    ("variants", {}, "variants must be an object"),
    ("variants", {"fp32": ["vision.onnx"]}, "variants.fp32 must map vision and/or text"),
    ("variants", {"fp32": {"vision": "vision.onnx", "audio": "text.onnx"}}, "variants.fp32 must map"),
    ("variants", {"fp32": {"vision": 5, "text": "text.onnx"}}, "variants.fp32.vision names 5"),
    ("variants", {"bf16": {"vision": "vision.onnx"}, "fp32": GOOD["variants"]["fp32"]}, "unknown precision 'bf16'"),
    ("tokenizer", [], "tokenizer must be an object"),
    ("tokenizer", {**GOOD["tokenizer"], "pad_id": "0"}, "tokenizer.pad_id must be a token id"),
    ("tokenizer", {**GOOD["tokenizer"], "pad_id": None}, "tokenizer.pad_id must be a token id"),
    ("tokenizer", {**GOOD["tokenizer"], "eos_id": -3}, "tokenizer.eos_id must be a token id"),
    ("tokenizer", {**GOOD["tokenizer"], "padding": "left"}, "tokenizer.padding must be one of longest, max_length"),
    ("tokenizer", {**GOOD["tokenizer"], "text_inputs": []}, "tokenizer.text_inputs must be a list"),
    ("tokenizer", {**GOOD["tokenizer"], "text_inputs": "input_ids"}, "tokenizer.text_inputs must be a list"),
    # F34: the family and the tokenizer block's keys and values
    ("family", "x", "family must be one of clip, chinese_clip, siglip, open_clip, text, reranker, got 'x'"),
    ("family", "../x", "family must be one of"),
    ("family", "CLIP", "family must be one of"),
    ("tokenizer", {"a": 1}, "tokenizer has unknown keys 'a'"),
    ("tokenizer", {**GOOD["tokenizer"], "eos": 3}, "tokenizer has unknown keys 'eos'"),
    ("tokenizer", {**GOOD["tokenizer"], "pooling": "x"}, "tokenizer.pooling must be one of"),
    ("tokenizer", {**GOOD["tokenizer"], "pooling": 3}, "tokenizer.pooling must be one of"),
    ("tokenizer", {**GOOD["tokenizer"], "pooling": "mean+x"}, "tokenizer.pooling must be one of"),
    ("tokenizer", {**GOOD["tokenizer"], "eos_id": None}, "tokenizer.eos_id must be a token id (an integer >= 0), got None"),
    ("tokenizer", {**GOOD["tokenizer"], "truncation": "x"}, "tokenizer.truncation must be one of"),
    ("source", ["x"], "source must be a string or null"),
    ("revision", 5, "revision must be a string or null"),
]


@pytest.mark.parametrize("key, value, needle", MUTATIONS)
def test_every_manifest_field_is_checked_and_named(bundle, key, value, needle):
    manifest = copy.deepcopy(GOOD)
    manifest[key] = value
    refused(write(bundle, manifest), needle, "re-export")


@pytest.mark.parametrize("key", ["format", "family", "embed_dim", "context_length", "precision", "variants",
                                 "tokenizer", "files"])
def test_missing_required_keys_are_named(bundle, key):
    manifest = {k: v for k, v in GOOD.items() if k != key}
    refused(write(bundle, manifest), f"lacks keys: {key}")


@pytest.mark.parametrize("content", [b"[]", b'"x"', b"{", b"\xff", b"[" * 100_000, b"null"])
def test_manifests_that_are_not_json_objects(bundle, content):
    (bundle / MANIFEST).write_bytes(content)
    refused(bundle, str(bundle / MANIFEST))


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
    | st.sampled_from(["../x", "/etc/hostname", "vision.onnx", "text.onnx", "fp16", "longest", "a" * 300]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.sampled_from(
        ["vision", "text", "fp32", "pad_id", "vision.onnx", "../../x"]), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(sorted(GOOD) + ["extra"]), VALUES, min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(sorted(GOOD)), max_size=2))
def test_any_manifest_loads_or_is_one_bundle_error(tmp_path, changes, drop):
    root = tmp_path / "b"
    if not root.exists():
        shutil.copytree(DEMO_MODEL_DIR, root)
    manifest = {k: v for k, v in copy.deepcopy(GOOD).items() if k not in drop}
    manifest.update(changes)
    try:
        (root / MANIFEST).write_text(json.dumps(manifest))
    except ValueError:  # not representable as JSON: nothing to test
        return
    try:
        bundle = load_bundle(root)
    except BundleError:
        return
    # Accepted: every tower path it can hand out is a verified file inside the bundle.
    for precision, towers in bundle.manifest["variants"].items():
        for tower in towers:
            path = bundle.tower_path(tower, precision).resolve()
            assert path.is_file() and root.resolve() in path.parents


def test_the_checked_vocabularies_cover_what_the_exporters_write():
    """F34: the families and pooling rules a manifest may hold are those clipeval's exporters write."""
    pytest.importorskip("torch")
    from clipeval.engine.sessions.bundle import FAMILIES, POOLING_RULES
    from clipeval.export.families import FAMILIES as EXPORT_FAMILIES
    from clipeval.export.openclip_towers import POOLING
    from clipeval.export.reranker import RERANKER_FAMILY
    from clipeval.export.text_model import POOLING_MODES, TEXT_FAMILY

    assert set(EXPORT_FAMILIES) | {"open_clip", TEXT_FAMILY, RERANKER_FAMILY} == set(FAMILIES)
    assert set(POOLING.values()) | set(POOLING_MODES) | {"cls"} <= set(POOLING_RULES)
    for good in ("mean", "cls+mean", "first_eos", "max_id"):
        manifest = copy.deepcopy(GOOD)
        manifest["tokenizer"]["pooling"] = good
        assert manifest_problems(manifest) == []
