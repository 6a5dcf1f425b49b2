"""Texts that are not Unicode text: a lone UTF-16 surrogate (U+D800..U+DFFF), what a JSON
``"\\ud83d"`` escape decodes to when its writer cut an emoji in two. No UTF-8 encodes it and no
reference tokenizer takes it (``tokenizers`` raises a TypeError, SentencePiece a RuntimeError);
clipeval refuses it with one error naming each such text, wherever the text came from (every
caption, query, document, class name and template reaches the tokenizer). Every other text,
supplementary characters included, is tokenized."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clipeval.cli.main import cli
from clipeval.engine.demo import DEMO_MODEL_DIR
from clipeval.engine.errors import DatasetError
from clipeval.engine.sessions.bundle import load_bundle
from clipeval.engine.text.tokenizer import TextTokenizer, check_unicode
from textgen import text_strategy

SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)


@pytest.fixture(scope="module")
def tokenizer():
    bundle = load_bundle(str(DEMO_MODEL_DIR))
    return TextTokenizer(bundle.path / "tokenizer.json", bundle.tokenizer_rule, bundle.context_length)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(text_strategy(), min_size=1, max_size=6), data=st.data())
def test_a_lone_surrogate_anywhere_in_any_text_is_one_error_naming_it(tokenizer, texts, data):
    which = data.draw(st.integers(0, len(texts) - 1))
    at = data.draw(st.integers(0, len(texts[which])))
    bad = texts[which][:at] + data.draw(SURROGATES) + texts[which][at:]
    texts = [*texts[:which], bad, *texts[which + 1:]]
    with pytest.raises(DatasetError, match="lone UTF-16 surrogate") as err:
        tokenizer.encode(texts)
    assert repr(bad[:60]) in err.value.message and f"(character {at + 1})" in err.value.message
    with pytest.raises(DatasetError):
        check_unicode([("a query", bad)], "query-document pair")


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(text_strategy(), max_size=6))
def test_texts_without_lone_surrogates_are_tokenized(tokenizer, texts):
    texts = [*texts, "\U0001F600 an emoji", "\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16")]
    check_unicode(texts)
    assert len(tokenizer.encode(texts).ids) == len(texts)


@pytest.mark.parametrize("where", ["query", "image_path"])
def test_eval_on_a_caption_file_with_half_an_emoji_exits_2_naming_the_text(tmp_path, where):
    data = tmp_path / "set"
    (data / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 40, 200)).save(data / "images" / f"{i}.png")
    rows = [{"image_path": f"images/{i}.png", "query": [f"picture number {i}"]} for i in range(3)]
    lines = [json.dumps(r) for r in rows]
    if where == "query":  # a JSON writer that cut "\ud83d\ude00" after its first half
        lines[1] = '{"image_path": "images/1.png", "query": ["a smiling face \\ud83d"]}'
    (data / "image_queries.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["eval", "--model", "demo", "--data-dir", str(data), "--quiet",
                                 "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    if where == "image_path":  # the control: the same file without the escape runs
        assert r.exit_code == 0, (r.output, r.exception)
        return
    assert r.exit_code == 2, (r.output, r.exception)  # the reader refuses the row, naming its line
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "image_queries.jsonl" in errors[0] and "Traceback" not in r.stderr
    assert "image_queries.jsonl:2:" in r.stderr and "surrogate" in r.stderr and "->" in r.stderr
    assert not list((tmp_path / "out").rglob("*.json"))


def test_texts_given_through_the_library_reach_the_same_error(tmp_path):
    """Texts that no file reader checked (the Python API) meet the tokenizer's check."""
    from clipeval.engine.embedding.local import LocalExecutor
    from clipeval.engine.embedding.stage import EmbeddingStage

    bundle = load_bundle(str(DEMO_MODEL_DIR))
    stage = EmbeddingStage(LocalExecutor(provider="cpu", threads=1, num_workers=0), None, progress=False)
    with pytest.raises(DatasetError, match="lone UTF-16 surrogate"):
        stage.texts(bundle, bundle.manifest["precision"], ["fine", "half \udc00 of it"], batch_size=2)
