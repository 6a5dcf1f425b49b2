"""Answers that hold no caption (empty, whitespace, null, refusals, no choices ...) are failed
attempts, retried within the usual bounds, never captions; multi-part content is joined.
Against the real HTTP server of tests/fake_openai.py."""

from __future__ import annotations

import json
import string
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.engine.datasets.beir import read_beir
from clipeval.engine.caption.client import NoCaption, caption_text
from clipeval.engine.caption.encode import encode_jpeg
from clipeval.engine.caption.journal import JOURNAL_NAME, Journal
from clipeval.engine.config import make_eval_config
from clipeval.engine.tasks.image_caption import run_caption
from datagen import noise_image, write_dataset
from fake_openai import FakeOpenAI, image_id

FAST = {"backoff_base": 0.001, "backoff_max": 0.005, "seed": 0}


def _message(**fields):
    def change(payload):
        payload["choices"][0]["message"].update(fields)
        return payload
    return change


def _finish(reason, **fields):
    def change(payload):
        payload = _message(**fields)(payload)
        payload["choices"][0]["finish_reason"] = reason
        return payload
    return change


def _set(key, value):
    def change(payload):
        if value is _DELETE:
            payload.pop(key)
        else:
            payload[key] = value
        return payload
    return change


_DELETE = object()

# mode -> (how the answer is changed, words the failure reason holds)
NO_CAPTION = {
    "empty content": (_message(content=""), "caption is empty"),
    "whitespace content": (_message(content="  \n\t \u3000"), "only whitespace"),
    "null content": (_message(content=None), "content is null"),
    "no choices": (_set("choices", _DELETE), "no 'choices'"),
    "choices []": (_set("choices", []), "empty list"),
    "choices null": (_set("choices", None), "'choices' is NoneType"),
    "no message": (_set("choices", [{"index": 0, "finish_reason": "stop"}]), "no 'message'"),
    "refusal": (_message(content=None, refusal="I'm sorry, I can't describe this image."), "the model refused"),
    "refusal beside text": (_message(content="", refusal="I can't."), "the model refused"),
    "refusal part": (_message(content=[{"type": "refusal", "refusal": "No."}]), "the model refused"),
    "whitespace parts": (_message(content=[{"type": "text", "text": " "}, {"type": "text", "text": "\n"}]),
                         "only whitespace"),
    "only an image part": (_message(content=[{"type": "image_url", "image_url": {"url": "x"}}]), "caption is empty"),
    "content filter": (_finish("content_filter", content=""), "content_filter"),
    "length, nothing said": (_finish("length", content=None), "'length'"),
    "content a number": (_message(content=42), "not text"),
    "content an object": (_message(content={"text": "a cat"}), "not text"),
}

# mode -> (how the answer is changed, the caption expected from the server's text)
VALID = {
    "text parts": (_message(content=[{"type": "text", "text": "an image"}, {"type": "text", "text": " of it"}]),
                   lambda text: "an image of it"),
    "text and image parts": (_message(content=[{"type": "image_url", "image_url": {"url": "x"}},
                                               {"type": "text", "text": "  a caption "}]), lambda text: "a caption"),
    "output_text part": (_message(content=[{"type": "output_text", "text": "said so"}]), lambda text: "said so"),
    "padded text": (lambda p: _message(content=f"\n  {p['choices'][0]['message']['content']}  \n")(p),
                    lambda text: text),
    "empty refusal field": (_message(refusal=""), lambda text: text),
    "null refusal field": (_message(refusal=None), lambda text: text),
}


def _dataset(root: Path, n: int) -> Path:
    rows = [{"image_path": f"img{i}.png", "query": [f"query of image {i}"]} for i in range(n)]
    return write_dataset(root, rows, {f"img{i}.png": noise_image(i, size=(24, 18)) for i in range(n)})


def _ids(data: Path, n: int) -> list[str]:
    return [image_id(encode_jpeg(data / f"img{i}.png")) for i in range(n)]


def _run(url, data, out, max_attempts=3, **keys):
    block = {"models": [{"model_name": "fake-vlm", "api_base": url}], "task": "image_caption",
             "data_dir": str(data), "output_dir": str(out), "verbose": False, "concurrency": 2, **keys}
    cfg = make_eval_config(block)
    return run_caption(cfg, cfg.models[0], "custom", cfg.data_dir, max_attempts=max_attempts, **FAST)


def _shape(change, targets, bad_attempts):
    """An answer_shape: ``change`` the answers for the images ``targets`` on their first
    ``bad_attempts`` attempts; the other answers stay as the server makes them."""
    def shape(payload, ident, attempt):
        return change(payload) if ident in targets and attempt < bad_attempts else payload
    return shape


@pytest.mark.parametrize("mode", sorted(NO_CAPTION))
def test_caption_text_refuses_answers_without_a_caption(mode):
    change, words = NO_CAPTION[mode]
    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "a caption"},
                            "finish_reason": "stop"}]}
    with pytest.raises((NoCaption, ValueError)) as err:
        caption_text(orjson.dumps(change(payload)))
    assert words in str(err.value)


@pytest.mark.parametrize("mode", sorted(VALID))
def test_caption_text_takes_valid_answers(mode):
    change, expected = VALID[mode]
    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "the text"},
                            "finish_reason": "stop"}]}
    assert caption_text(orjson.dumps(change(payload))) == expected("the text")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(string.printable + "\u3000\u00a0", max_size=6),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["type", "text", "refusal", "content", "message", "choices"]), inner,
                         max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(content=_json, refusal=_json, choices_shape=st.sampled_from(["normal", "raw"]))
def test_caption_text_never_returns_a_blank_caption(content, refusal, choices_shape):
    """Whatever the server puts in the answer: a non-blank caption, or a failed attempt."""
    message = {"role": "assistant", "content": content, "refusal": refusal}
    body = {"choices": [{"message": message}]} if choices_shape == "normal" else {"choices": content}
    try:
        text = caption_text(json.dumps(body).encode())
    except (NoCaption, ValueError):
        return
    assert isinstance(text, str) and text.strip() == text and text


@pytest.mark.parametrize("mode", sorted(NO_CAPTION))
def test_an_answer_without_caption_is_retried_then_listed_as_failed(tmp_path, mode):
    n = 4
    data = _dataset(tmp_path / "ds", n)
    ids = _ids(data, n)
    change, words = NO_CAPTION[mode]
    with FakeOpenAI(captioner="echo") as srv:
        srv.answer_shape = _shape(change, {ids[1]}, bad_attempts=10**6)  # image 1: never a caption
        result = _run(srv.url, data, tmp_path / "out", max_attempts=3, max_failures=1)
        assert srv.requests[ids[1]] == 3  # retried within the usual bound, no more
        assert all(srv.requests[i] == 1 for i in ids if i != ids[1])
    meta = result["meta"]
    assert meta["num_images"] == n - 1 and meta["dropped_queries"] == 1
    (failed,) = meta["failed"]
    assert failed["where"].endswith(":2") and "no caption after 3 attempt(s)" in failed["reason"]
    assert words in failed["reason"]
    corpus = read_beir(result["metrics"]["save_path"]).corpus
    assert len(corpus) == n - 1 and all(d["text"].strip() == d["text"] and d["text"] for d in corpus)
    journal = Journal.open(Path(meta["journal"]), _settings_of(meta))
    try:
        assert len(journal.captions) == n - 1 and all(t.strip() for t in journal.captions.values())
    finally:
        journal.close()


def _settings_of(meta) -> dict:
    return {"model_name": meta["model_name"], "prompt": meta["prompt"], "system_prompt": meta["system_prompt"],
            "max_tokens": meta["max_tokens"], "temperature": meta["temperature"],
            "max_image_side": meta["max_image_side"]}


@pytest.mark.parametrize("mode, outcome", [("empty content", "empty"), ("whitespace content", "empty"),
                                           ("null content", "empty"), ("refusal", "refusal"),
                                           ("choices []", "malformed")])
def test_an_answer_without_caption_once_costs_one_retry(tmp_path, mode, outcome):
    n = 3
    data = _dataset(tmp_path / "ds", n)
    ids = _ids(data, n)
    with FakeOpenAI(captioner="echo") as srv:
        clean = _run(srv.url, data, tmp_path / "clean")
        srv.reset_counts()
        srv.answer_shape = _shape(NO_CAPTION[mode][0], set(ids), bad_attempts=1)
        result = _run(srv.url, data, tmp_path / "out")
        assert {i: srv.requests[i] for i in ids} == {i: 2 for i in ids}
    assert result["meta"]["failed"] == [] and result["meta"]["num_images"] == n
    assert result["meta"]["requests"]["outcomes"] == {"200": n, outcome: n}
    assert read_beir(result["metrics"]["save_path"]).corpus == read_beir(clean["metrics"]["save_path"]).corpus


@pytest.mark.parametrize("mode", sorted(VALID))
def test_valid_answer_shapes_are_captions_at_once(tmp_path, mode):
    n = 3
    data = _dataset(tmp_path / "ds", n)
    ids = _ids(data, n)
    change, expected = VALID[mode]
    with FakeOpenAI(captioner="echo") as srv:
        clean = _run(srv.url, data, tmp_path / "clean")
        srv.answer_shape = _shape(change, set(ids), bad_attempts=10**6)
        srv.reset_counts()
        result = _run(srv.url, data, tmp_path / "out")
        assert sum(srv.requests.values()) == n
    got = [d["text"] for d in read_beir(result["metrics"]["save_path"]).corpus]
    assert got == [expected(d["text"]) for d in read_beir(clean["metrics"]["save_path"]).corpus]


def test_an_empty_caption_in_an_older_journal_is_asked_again(tmp_path):
    n = 3
    data = _dataset(tmp_path / "ds", n)
    with FakeOpenAI(captioner="echo") as srv:
        first = _run(srv.url, data, tmp_path / "out")
        path = Path(first["meta"]["journal"])
        lines = path.read_bytes().split(b"\n")
        record = orjson.loads(lines[1])
        lines[1] = orjson.dumps({"key": record["key"], "text": "  "})  # what an earlier version kept
        path.write_bytes(b"\n".join(lines))
        srv.reset_counts()
        second = _run(srv.url, data, tmp_path / "out")
        assert srv.total_requests == 1
    assert read_beir(second["metrics"]["save_path"]).corpus == read_beir(first["metrics"]["save_path"]).corpus
    assert JOURNAL_NAME == path.name


def test_a_journal_saved_with_a_bom_keeps_its_captions(tmp_path):
    path = tmp_path / JOURNAL_NAME
    settings = {"model_name": "m", "prompt": "p"}
    with Journal.open(path, settings) as j:
        j.add_caption("k0", "a caption")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with Journal.open(path, settings) as j:
        assert j.captions == {"k0": "a caption"}
        j.add_caption("k1", "another")
    with Journal.open(path, settings) as j:
        assert j.captions == {"k0": "a caption", "k1": "another"}
