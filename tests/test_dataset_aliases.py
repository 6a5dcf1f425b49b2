"""CLIP_benchmark's dataset names (engine/datasets/aliases.py): every name it accepts for a set
clipeval has is that set; one it accepts for a set clipeval cannot serve is an error naming the
nearest set and why; unknown names still list the known ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.cli.main import cli
from clipeval.engine.config import make_eval_config, parse_task_cfg
from clipeval.engine.datasets import DATASETS, default_task, read_classification_dataset
from clipeval.engine.datasets.aliases import ALIASES, NOT_SERVED, DatasetNameError, resolve_name
from clipeval.engine.datasets.named import CLASSIFICATION, RETRIEVAL
from clipeval.engine.errors import ConfigError
from rangeserver import RangeServer
from wdsgen import write_classification_set

ROOT = Path(__file__).resolve().parent.parent

# Every name CLIP_benchmark's build_dataset accepts for a set clipeval has (its plain names built
# from torchvision and others, its vtab/ names), with the set it is; the wds/ form of each too.
CLIP_BENCHMARK_NAMES = {
    **{n: n for n in ("imagenet1k", "imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "imagenet-o",
                      "objectnet", "fer2013", "voc2007", "voc2007_multilabel", "sun397", "cars", "fgvc_aircraft",
                      "mnist", "stl10", "gtsrb", "country211", "renderedsst2", "flickr8k", "flickr30k",
                      "mscoco_captions")},
    **{n: n for n in CLASSIFICATION if n.startswith("vtab/")},
    "cifar10": "vtab/cifar10", "cifar100": "vtab/cifar100", "dtd": "vtab/dtd", "pcam": "vtab/pcam",
    "imagenet1k-unverified": "imagenet1k",
}
# The same sets' splits: an alias holds for these splits only (None: all of them).
ALIAS_SPLITS = {"cifar10": ("test",), "cifar100": ("test",)}
SPLITS = ("test", "train", "val", "trainval", "valid")


@pytest.mark.parametrize("name, expected", sorted(CLIP_BENCHMARK_NAMES.items()))
@pytest.mark.parametrize("prefix", ["", "wds/"])
def test_every_clip_benchmark_name_of_a_set_clipeval_has_is_that_set(name, expected, prefix):
    given_name = prefix + name
    assert expected in DATASETS
    assert resolve_name(given_name, "test") == expected
    assert make_eval_config({"dataset_name": [given_name]}).dataset_name == [expected]
    assert default_task(given_name) == DATASETS[expected][0]
    for split in SPLITS:
        if split in ALIAS_SPLITS.get(name, SPLITS):
            assert make_eval_config({"dataset_name": given_name, "split": split}).dataset_name == [expected]
        else:
            with pytest.raises(ConfigError) as err:
                make_eval_config({"dataset_name": given_name, "split": split})
            assert f"{given_name!r} with split {split!r}" in err.value.message and expected in err.value.remedy


def test_the_alias_table_is_the_one_tested():
    assert {a: alias.target for a, alias in ALIASES.items()} == {
        n: t for n, t in CLIP_BENCHMARK_NAMES.items() if n != t}
    assert {a: alias.splits for a, alias in ALIASES.items() if alias.splits} == ALIAS_SPLITS


def test_an_alias_and_its_set_in_one_run_are_evaluated_once(caplog):
    cfg = make_eval_config({"dataset_name": ["cifar10", "vtab/cifar10", "wds/cifar10", "mnist", "wds/mnist"]})
    assert cfg.dataset_name == ["vtab/cifar10", "mnist"]
    assert "more than once" in caplog.text


REFUSED = sorted(NOT_SERVED) + ["tfds/cifar10", "tfds/mnist", "tfds/svhn_cropped", "wds/caltech101",
                                "wds/sugar_crepe/swap_obj"]


@pytest.mark.parametrize("name", REFUSED)
def test_a_set_clipeval_cannot_serve_is_one_error_naming_the_nearest_and_why(name):
    with pytest.raises(DatasetNameError) as err:
        resolve_name(name, "test")
    refused = NOT_SERVED.get(name.removeprefix("wds/"))
    assert f"{name!r} is a set CLIP_benchmark builds that clipeval cannot serve: " in err.value.message
    if refused is not None:
        assert refused.why in err.value.message
        for nearest in refused.nearest:
            assert nearest in DATASETS and nearest in err.value.remedy
        assert err.value.remedy  # a nearest set, or what to do instead
    # the config names the key (and the flag on the command line); never a traceback
    with pytest.raises(ConfigError) as err:
        make_eval_config({"dataset_name": ["mnist", name]})
    assert err.value.message.startswith(f"eval.dataset_name[1] {name!r} is a set")
    r = CliRunner().invoke(cli, ["eval", "--dataset", name, "--model", "demo"])
    assert r.exit_code == 2 and r.stdout == "", r.output
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: --dataset {name!r} is a set CLIP_benchmark builds"), r.stderr
    assert "Traceback" not in r.output


def test_tfds_names_point_at_the_set_of_the_same_name():
    for name, nearest in (("tfds/cifar10", "vtab/cifar10"), ("tfds/mnist", "mnist"), ("tfds/dtd", "vtab/dtd")):
        with pytest.raises(DatasetNameError) as err:
            resolve_name(name)
        assert f"nearest clipeval set: {nearest} " in err.value.remedy


def test_a_config_file_error_names_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset_name:\n  - mnist\n  - caltech101\nsplit: test\n")
    with pytest.raises(ConfigError) as err:
        parse_task_cfg(path)
    assert err.value.message.startswith(f"{path}:3: dataset_name[1] 'caltech101' is a set")


@pytest.mark.parametrize("name, nearest", [("svhn", "vtab/svhn"), ("resisc45", "vtab/resisc45"),
                                           ("kitti_closest_vehicle_distance", "vtab/kitti_closest_vehicle_distance"),
                                           ("vtab-cifar10", "vtab/cifar10"), ("flicker30k", "flickr30k"),
                                           ("wds/svhn", "vtab/svhn"), ("mscoco", "mscoco_captions"),
                                           ("MSCOCO", "mscoco_captions"), ("voc", "voc2007"),
                                           ("imagenet_sk", "imagenet_sketch"), ("vtab/kitti", "vtab/kitti_")])
def test_an_unknown_name_lists_the_known_ones_the_nearest_first(name, nearest):
    with pytest.raises(ConfigError) as err:
        default_task(name)
    assert err.value.message.startswith(f"unknown dataset {name!r} (did you mean {nearest}")
    assert_lists_every_set(err.value.remedy)


def assert_lists_every_set(remedy: str):
    assert remedy.startswith("available datasets: custom; retrieval: ")
    listed = set(re.split(r"[;,:]\s*", remedy))
    assert set(DATASETS) <= listed, set(DATASETS) - listed


def test_an_unknown_name_without_a_near_one_lists_them_all():
    with pytest.raises(ConfigError) as err:
        default_task("zzz")
    assert err.value.message == "unknown dataset 'zzz'"
    assert_lists_every_set(err.value.remedy)
    r = CliRunner().invoke(cli, ["eval", "--dataset", "svhn", "--model", "demo", "--output-dir", "out"])
    assert r.exit_code == 2 and "error: unknown dataset 'svhn' (did you mean vtab/svhn?)" in r.stderr, r.output


KNOWN = sorted(set(DATASETS) | set(ALIASES) | set(NOT_SERVED))
NAMES = st.one_of(st.sampled_from(KNOWN), st.text(alphabet="abcdefgiklmnoprstuvwxyz0123456789_-/", min_size=1,
                                                  max_size=20))


@settings(max_examples=300, deadline=None)
@given(name=NAMES, prefix=st.sampled_from(["", "wds/"]), split=st.sampled_from(SPLITS))
def test_any_name_is_a_known_set_or_an_error_that_says_why(name, prefix, split):
    """Every name ends as a registered set (the same for NAME and wds/NAME, and resolving again
    changes nothing), or as a ConfigError: a refusal naming the nearest sets, an alias on a
    split it does not hold for, or an unknown name listing every known one."""
    try:
        resolved = resolve_name(prefix + name, split)
    except DatasetNameError as exc:
        assert "clipeval cannot serve" in exc.message or "with split" in exc.message
        return
    assert resolved == resolve_name(name, split) and resolve_name(resolved, split) == resolved
    if resolved in DATASETS:
        assert default_task(prefix + name) == DATASETS[resolved][0]
        assert name.removeprefix("wds/") in ALIASES or resolved == name.removeprefix("wds/")
    else:
        with pytest.raises(ConfigError) as err:
            default_task(prefix + name)
        assert_lists_every_set(err.value.remedy)


# --- the documentation lists the same names -------------------------------------------------------

def _section_rows(heading: str, after: str | None = None) -> list[list[str]]:
    text = (ROOT / "docs" / "datasets.md").read_text(encoding="utf-8")
    text = text[text.index(heading):]
    if after is not None:
        text = text[text.index(after):]
    rows = []
    for line in text.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows and not line.startswith("|"):
            break
    return rows


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_every_alias_the_docs_list_resolves_as_they_say():
    rows = _section_rows("### CLIP_benchmark's names")
    documented = {}
    for name_cell, target_cell, splits, _why in rows:
        (name,), (target,) = _names(name_cell), _names(target_cell)
        documented[name] = target
        held = SPLITS if splits == "all" else tuple(s.strip() for s in splits.split(","))
        for split in SPLITS:
            if split in held:
                assert make_eval_config({"dataset_name": name, "split": split}).dataset_name == [target]
                assert make_eval_config({"dataset_name": f"wds/{name}", "split": split}).dataset_name == [target]
            else:
                with pytest.raises(DatasetNameError):
                    resolve_name(name, split)
    assert documented == {a: alias.target for a, alias in ALIASES.items()}


def test_every_refused_name_the_docs_list_is_refused_with_the_nearest_they_name():
    rows = _section_rows("### CLIP_benchmark's names", "Names CLIP_benchmark accepts that clipeval cannot serve")
    documented = set()
    for name_cell, nearest_cell, _why in rows:
        nearest = [n for n in _names(nearest_cell) if n not in ("custom", "NAME")]
        for name in _names(name_cell):
            if name == "tfds/NAME":
                name = "tfds/mnist"
            documented.add(name)
            with pytest.raises(DatasetNameError) as err:
                resolve_name(name)
            if name in NOT_SERVED:
                assert list(NOT_SERVED[name].nearest) == nearest
    assert set(NOT_SERVED) <= documented


# --- end to end: the alias evaluates the set's data, under the set's name ------------------------

def _run(*args):
    r = CliRunner().invoke(cli, ["eval", "--model", "demo", "--no-cache", "--quiet", *map(str, args)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_cifar10_evaluates_the_vtab_cifar10_folder_and_writes_its_result(tmp_path):
    data = tmp_path / "wds"
    write_classification_set(data, n=10, n_classes=4)
    by_set = _run("--dataset", "vtab/cifar10", "--data-dir", data, "--output-dir", tmp_path / "a")
    for given_name in ("cifar10", "wds/cifar10", "wds/vtab/cifar10"):
        out = tmp_path / given_name.replace("/", "_")
        got = _run("--dataset", given_name, "--data-dir", data, "--output-dir", out)
        assert got["dataset"] == "vtab/cifar10" and got["metrics"] == by_set["metrics"]
        assert got["meta"]["num_images"] == by_set["meta"]["num_images"] == 10
        assert [p.name for p in (out / "demo").glob("*.json")] == [
            p.name for p in (tmp_path / "a" / "demo").glob("*.json")]
    # one result per set: a run by the alias finds the set's result (--skip-existing)
    again = CliRunner().invoke(cli, ["eval", "--model", "demo", "--no-cache", "--dataset", "cifar10", "--data-dir",
                                     str(data), "--output-dir", str(tmp_path / "a"), "--skip-existing"])
    assert again.exit_code == 0 and "skip" in again.stderr.lower(), again.output


def test_cifar10_downloads_the_vtab_cifar10_repository(tmp_path):
    remote = tmp_path / "remote"
    write_classification_set(remote / "wds_vtab-cifar10", n=8, n_classes=4, per_shard=4)
    with RangeServer(remote) as server:
        ds = read_classification_dataset("cifar10", None, "test", "fail", dataset_url=f"{server.url}/wds_{{name}}",
                                         cache_dir=tmp_path / "cache", progress=False)
        fetched = {path.split("/")[0] for path, _ in server.requests}
    assert fetched == {"wds_vtab-cifar10"} and len(ds.labels) == 8 and ds.classnames == [f"class{c}" for c in range(4)]
    with pytest.raises(DatasetNameError):
        read_classification_dataset("cifar10", None, "train", "fail", dataset_url=f"{server.url}/wds_{{name}}",
                                    cache_dir=tmp_path / "cache", progress=False)


def test_retrieval_names_of_both_tools_are_the_registered_ones():
    assert {n for n, t in CLIP_BENCHMARK_NAMES.items() if t in RETRIEVAL} == {"flickr8k", "flickr30k",
                                                                               "mscoco_captions"}


# --- the wds/ prefix is dropped once, as CLIP_benchmark drops it --------------------------------

@pytest.mark.parametrize("name", ["wds/wds/cifar10", "wds/wds/vtab/cifar10", "wds/wds/flickr30k", "wds/wds/wds/mnist",
                                  "wds/", "wds/ ", "wds/wds/"])
def test_a_wds_prefix_twice_or_alone_is_one_error(name):
    """CLIP_benchmark reads ``wds/wds/NAME`` as the hub repository ``wds_wds-NAME`` (none exists);
    clipeval used to drop the prefix once in the config and again in the registry."""
    with pytest.raises(DatasetNameError) as err:
        resolve_name(name, "test")
    assert repr(name) in err.value.message and "wds/NAME" in err.value.remedy
    result = CliRunner().invoke(cli, ["eval", "--dataset", name, "--dataset-url", "http://127.0.0.1:9/{name}"])
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    assert "Traceback" not in result.stderr and "could not download" not in result.stderr


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(KNOWN), prefixes=st.integers(0, 3), split=st.sampled_from(SPLITS))
def test_resolving_is_idempotent_and_takes_one_wds_prefix(name, prefixes, split):
    """A known name with ``wds/`` zero or one times resolves as the name itself, and resolving the
    result again changes nothing; with the prefix twice or more it is an error."""
    given_name = "wds/" * prefixes + name
    try:
        plain = resolve_name(name, split)
    except DatasetNameError:
        plain = None
    if prefixes >= 2:
        with pytest.raises(DatasetNameError, match="more than once"):
            resolve_name(given_name, split)
        return
    if plain is None:
        with pytest.raises(DatasetNameError):
            resolve_name(given_name, split)
        return
    resolved = resolve_name(given_name, split)
    assert resolved == plain and resolve_name(resolved, split) == resolved


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_set_name_cut_short_suggests_a_set_it_begins(data):
    """Any known set's name (after ``/``) cut to 3 or more characters, in any case: the
    suggestions hold a set whose name begins with it."""
    from clipeval.engine.datasets.aliases import suggest

    full = data.draw(st.sampled_from(sorted(DATASETS)))
    tail = full.rsplit("/", 1)[-1]
    if len(tail) < 3:
        return
    cut = tail[:data.draw(st.integers(3, len(tail)))]
    cut = cut.upper() if data.draw(st.booleans()) else cut
    assert any(s.rsplit("/", 1)[-1].lower().startswith(cut.lower()) for s in suggest(cut)), (cut, suggest(cut))
