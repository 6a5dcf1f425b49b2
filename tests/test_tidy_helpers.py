"""The one helper of each kind: the HTTP retry policy (downloads and captioning), the directory
swap, the safe file name and the versions a result records."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.engine.fsutil import publish_dir, remove_stale_stages, staging_dir
from clipeval.engine.http_retry import DOWNLOAD_POLICY, RetryPolicy, retryable_status
from clipeval.engine.paths import safe_name
from clipeval.engine.versions import versions


# --- retry policy ------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(0, 40), base=st.floats(0.001, 5.0), cap=st.floats(0.001, 60.0),
       retry_after=st.none() | st.floats(0.0, 1000.0), seed=st.integers(0, 2**32 - 1))
def test_every_wait_is_in_the_upper_half_of_the_span_or_honours_retry_after(attempt, base, cap, retry_after, seed):
    policy = RetryPolicy(attempts=3, backoff_base=base, backoff_max=cap, retry_after_max=120.0, seed=seed)
    wait = policy.delay(attempt, retry_after)
    span = min(cap, base * 2 ** attempt)
    if retry_after is None:
        assert span / 2 <= wait <= span
    else:
        floor = min(120.0, retry_after)
        assert wait >= floor and wait >= span / 2
        assert wait <= max(span, floor + 0.1 * floor + 0.05)


def test_retryable_statuses_are_the_ones_a_later_attempt_can_change():
    table = {200: None, 400: False, 401: False, 403: False, 404: False, 408: True, 409: True, 410: False,
             413: False, 422: False, 429: True, 500: True, 502: True, 503: True, 504: True, 599: True}
    for status, expected in table.items():
        if expected is not None:
            assert retryable_status(status) is expected, status


def test_attempts_count_the_first_one_and_a_seed_repeats_the_waits():
    policy = RetryPolicy(attempts=3)
    assert [policy.more(a) for a in range(3)] == [True, True, False]
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    a, b = RetryPolicy(seed=7), RetryPolicy(seed=7)
    assert [a.delay(n) for n in range(6)] == [b.delay(n) for n in range(6)]


def test_downloads_and_captions_share_the_policy():
    from clipeval.engine.caption.client import CaptionClient, ClientSettings
    from clipeval.engine.datasets.sources import Fetcher

    fetcher = Fetcher("http://127.0.0.1:9/x", Path("/nonexistent/cache"), progress=False)
    assert isinstance(fetcher.retry, RetryPolicy) and fetcher.retry.attempts == DOWNLOAD_POLICY["attempts"]
    client = CaptionClient(ClientSettings(api_base="http://127.0.0.1:9/v1", model_name="m", max_attempts=4,
                                          backoff_base=0.25, backoff_max=1.0, seed=3))
    assert isinstance(client.retry, RetryPolicy)
    assert (client.retry.attempts, client.retry.backoff_base, client.retry.backoff_max) == (4, 0.25, 1.0)


# --- directory swap ----------------------------------------------------------------------------

def _folder(path: Path, content: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "f.txt").write_text(content)
    return path


@pytest.mark.parametrize("existing", [False, True])
def test_publish_dir_puts_the_new_folder_in_place(tmp_path, existing):
    target = tmp_path / "out" / "bundle"
    if existing:
        _folder(target, "old")
    stage = staging_dir(target)
    assert stage.parent == target.parent and stage.name.startswith(".bundle.partial-")
    (stage / "f.txt").write_text("new")
    publish_dir(stage, target)
    assert (target / "f.txt").read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["bundle"]  # nothing left beside it


def test_publish_dir_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    target = _folder(tmp_path / "bundle", "old")
    stage = staging_dir(target)
    (stage / "f.txt").write_text("new")
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(src) == stage:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        publish_dir(stage, target)
    monkeypatch.setattr(os, "replace", real)
    assert (target / "f.txt").read_text() == "old"  # rolled back
    assert len(calls) == 3  # aside, (failed) in, back


def test_stale_stages_of_a_killed_run_are_removed(tmp_path):
    target = tmp_path / "retrieval_data"
    _folder(target, "kept")
    _folder(tmp_path / ".retrieval_data.partial-abc", "x")
    _folder(tmp_path / ".retrieval_data.old-1234", "y")
    _folder(tmp_path / ".other.partial-abc", "z")
    remove_stale_stages(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-abc", "retrieval_data"]


# --- safe names --------------------------------------------------------------------------------

@given(st.text(max_size=40))
def test_a_safe_name_is_one_path_component_of_allowed_characters(name):
    safe = safe_name(name)
    assert safe not in ("", ".", "..") and "/" not in safe
    assert len(safe) == max(1, len(name))
    assert all(c.isalnum() or c in "-_." for c in safe)
    assert all(s == c for s, c in zip(safe, name) if c.isalnum() or c in "-_") or set(name) <= {"."}


def test_safe_name_examples():
    assert safe_name("ViT-B-32_laion2b") == "ViT-B-32_laion2b"
    assert safe_name("org/model name") == "org_model_name"
    assert safe_name("") == "_"
    assert safe_name("vtab/cifar10") == "vtab_cifar10"
    assert (safe_name("."), safe_name(".."), safe_name("...x")) == ("_", "__", "...x")  # never a relative step


def test_every_name_clipeval_makes_goes_through_safe_name(tmp_path):
    from clipeval.engine.datasets.sources import cache_folder
    from clipeval.engine.results.layout import result_path
    from clipeval.export.resolve import cached_bundle_dir

    odd = "a b/c:d"
    assert result_path(tmp_path, odd, odd, "zeroshot_retrieval").parent.name == safe_name(odd)
    assert cache_folder(odd, "http://x", tmp_path).name.startswith(safe_name(odd) + "-")
    assert cached_bundle_dir("org/a b:c", None, "fp32", tmp_path).name.startswith(safe_name("a b:c") + "-")


# --- versions ----------------------------------------------------------------------------------

def test_versions_name_what_is_installed_without_importing_it():
    import sys

    got = versions("numpy", "onnxruntime", "no-such-package-here")
    assert got["numpy"] == metadata.version("numpy") and got["python"] == platform.python_version()
    assert "no-such-package-here" not in got and list(got)[0] == "clipeval"
    import onnxruntime

    assert got["onnxruntime"] == onnxruntime.__version__.split("+")[0]
    code = "import sys; from clipeval.engine.versions import versions; v = versions('numba'); " \
           "print(v['numba'], 'numba' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [metadata.version("numba"), "False"]
