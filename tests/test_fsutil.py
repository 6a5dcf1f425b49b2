"""Destinations are checked before any work; what clipeval publishes gets the user's umask."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.engine.errors import ConfigError
from clipeval.engine.fsutil import check_writable_dir, current_umask, make_temp_dir
from clipeval.engine.fsutil import write_atomic

WHAT = "output folder (--output-dir / output_dir)"


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_folder_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "some_file").write_text("x")
    with pytest.raises(ConfigError) as info:
        check_writable_dir(tmp_path / "some_file" / "x", WHAT)
    text = str(info.value)
    assert "some_file, which is a file, not a folder" in text and "--output-dir" in text and "->" in text


@pytest.mark.parametrize("make, reason", [
    (lambda d: d / "file", "is a file"),
    (lambda d: d / "file" / "a" / "b", "which is a file"),
    (lambda d: d / ("n" * 256), "file names are limited to 255"),
    (lambda d: d / "ok" / ("n" * 300) / "x", "file names are limited to 255"),
    (lambda d: str(d / "a\0b"), "NUL"),
    (lambda d: "", "is empty"),
    (lambda d: d / "dangling" / "x", "dangling, which is a broken symbolic link, not a folder"),
    (lambda d: d / "dangling", "it is a broken symbolic link"),
    (lambda d: "/dev/null/results", "/dev/null, which is a character device, not a folder"),
    (lambda d: "/dev/null", "it is a character device"),
    (lambda d: d / "fifo", "it is a FIFO"),
    (lambda d: d / "fifo" / "x", "fifo, which is a FIFO (named pipe), not a folder"),
])
def test_unusable_destinations_are_one_config_error(tmp_path, make, reason):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as info:
        check_writable_dir(make(tmp_path), WHAT)
    assert reason in str(info.value), str(info.value)
    assert tree(tmp_path) == before


def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes through mode bits: only the not-raising part can be checked
            check_writable_dir(ro / "out", WHAT)
        else:
            with pytest.raises(ConfigError, match="permission denied"):
                check_writable_dir(ro / "out", WHAT)
    finally:
        ro.chmod(0o755)


def test_a_good_destination_is_returned_and_nothing_is_left_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_writable_dir("~/out/deep", WHAT) == tmp_path / "out" / "deep"
    assert tree(tmp_path) == []  # checked through a probe in the nearest existing folder, then removed
    (tmp_path / "out").mkdir()
    assert check_writable_dir(tmp_path / "out", WHAT) == tmp_path / "out"
    assert tree(tmp_path) == ["out"]


NAMES = st.sampled_from(["a", "b", "file", "n" * 255, "n" * 256, "ü" * 128, ".", "..", "", "x\0y", "dangling"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(NAMES, min_size=1, max_size=4))
def test_any_destination_is_usable_or_one_config_error(tmp_path, parts):
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    if not (root / "file").exists():
        (root / "file").write_text("x")
        (root / "dangling").symlink_to(root / "nowhere")
    before = tree(root)
    path = os.path.join(str(root), *parts)
    try:
        folder = check_writable_dir(path, WHAT)
    except ConfigError:
        pass
    else:
        folder.mkdir(parents=True, exist_ok=True)  # what the run does next must work
        (folder / "result.json").write_text("{}")
        (folder / "result.json").unlink()
    after = set(tree(root))
    assert set(before) <= after
    assert not any(".clipeval-write-test-" in p for p in after)


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_result_files_and_published_folders_get_the_users_umask(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask
        write_atomic(tmp_path / "r.json", b"{}")
        folder = make_temp_dir(prefix=".stage-", dir=tmp_path)
        (tmp_path / "plain").mkdir()
        plain_dir = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
        (tmp_path / "plain.txt").write_text("x")
        plain_file = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o666 & ~mask == plain_file
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask == plain_dir


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_eval_results_and_caption_folders_get_the_users_umask(tmp_path, mask, monkeypatch):
    from clipeval.engine.tasks.image_caption import publish_beir
    from clipeval.cli.main import cli
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    with umask(mask):
        r = CliRunner().invoke(cli, ["eval", "-q", "--limit", "4", "--output-dir", "out"])
        publish_beir(tmp_path / "beir" / "retrieval_data", [{"_id": "d0", "text": "a"}], [{"_id": "q0", "text": "b"}],
                     [("q0", "d0", 1)])
    assert r.exit_code == 0, r.output
    for path in (tmp_path / "out").rglob("*"):
        expected = 0o777 & ~mask if path.is_dir() else 0o666 & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    assert stat.S_IMODE((tmp_path / "beir" / "retrieval_data").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "beir" / "retrieval_data" / "corpus.jsonl").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_exported_bundles_get_the_users_umask(tmp_path_factory, mask):
    from fixtures_ckpt import make_tiny_clip_checkpoint

    from clipeval.export import export_checkpoint

    root = tmp_path_factory.mktemp("umask")
    ckpt = make_tiny_clip_checkpoint(root / "ckpt", seed=1)
    with umask(mask):
        out = export_checkpoint(ckpt, root / "bundle", validate=False)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.iterdir()]}
    assert modes.pop("bundle") == 0o777 & ~mask
    assert modes and set(modes.values()) == {0o666 & ~mask}, modes


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "link to a folder"])
def test_write_atomic_never_replaces_what_is_not_a_regular_file(tmp_path, kind):
    """K5: the rename of write_atomic would put a regular file in place of a FIFO or a device node
    (/dev/null, when run as root); every caller gets a ConfigError instead, the thing left as it was."""
    target = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target.symlink_to("/dev/null")  # never /dev/null itself: a regression would replace only the link
    elif kind == "folder":
        target.mkdir()
    else:
        (tmp_path / "d").mkdir()
        target.symlink_to(tmp_path / "d")
    before = os.stat(target).st_mode
    with pytest.raises(ConfigError) as err:
        write_atomic(target, b"data")
    assert "not a regular file" in str(err.value)
    assert os.stat(target).st_mode == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("kind", ["missing", "file", "link to a file", "broken link"])
def test_write_atomic_writes_files_and_replaces_links(tmp_path, kind):
    target = tmp_path / "x"
    if kind == "file":
        target.write_bytes(b"old")
    elif kind == "link to a file":
        (tmp_path / "f").write_bytes(b"old")
        target.symlink_to(tmp_path / "f")
    elif kind == "broken link":
        target.symlink_to(tmp_path / "nowhere")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and not target.is_symlink()


@pytest.mark.parametrize("kind", ["nothing", "folder", "file", "link"])
def test_publish_dir_replaces_what_is_there_and_leaves_nothing_behind(tmp_path, kind):
    from clipeval.engine.fsutil import publish_dir, staging_dir

    target = tmp_path / "data"
    if kind == "folder":
        target.mkdir()
        (target / "old").write_text("old")
    elif kind == "file":
        target.write_text("old")
    elif kind == "link":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    stage = staging_dir(target)
    (stage / "new").write_text("new")
    publish_dir(stage, target)
    assert target.is_dir() and not target.is_symlink() and sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", *(["elsewhere"] if kind == "link" else [])])
