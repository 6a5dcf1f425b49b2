"""What a document is embedded as (brk2 K4): ``(title + " " + text).strip()``, or ``text.strip()``,
as BEIR's and mteb's models and evalscope's ``encode_corpus`` build it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.engine.datasets.beir import read_beir
from clipeval.engine.demo import model_path
from clipeval.engine.embedding.local import LocalExecutor
from clipeval.engine.embedding.stage import EmbeddingStage
from clipeval.engine.sessions.bundle import load_bundle
from clipeval.engine.tasks.text_retrieval import TextRetrievalParams, doc_text, run_text_retrieval


def reference(doc: dict) -> str:
    """The references' rule, written out: mteb / BEIR (title + sep + text).strip() if a title
    key, else text.strip(); evalscope '{} {}'.format(title or '', text).strip()."""
    return (doc["title"] + " " + doc["text"]).strip() if doc.get("title") else doc["text"].strip()


SPACES = ["", " ", "  ", "\n", "\r\n", "\t", " \n\t ", "\u3000", "\xa0"]
DOCS = [{"text": f"{a}a dog{b}"} for a in SPACES for b in SPACES] + [
    {"title": f"{a}Dogs{b}", "text": f"{c}a dog{d}"} for a, b, c, d in
    [("", "", "", "\n"), (" ", " ", " ", " "), ("\n", "", "", ""), ("", "\t", "\n", "\n"), ("", "", "", "")]] + [
    {"title": "", "text": " x "}, {"title": "T", "text": ""}, {"title": "  ", "text": " y\n"}]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_text_is_the_references_text(doc):
    assert doc_text(doc) == reference(doc)


@settings(max_examples=200, deadline=None)
@given(title=st.one_of(st.none(), st.text(max_size=12)), text=st.text(max_size=20))
def test_doc_text_matches_the_reference_rule_for_any_text(title, text):
    doc = {"text": text} if title is None else {"title": title, "text": text}
    assert doc_text(doc) == reference(doc)


class RecordingStage(EmbeddingStage):
    def __init__(self):
        super().__init__(LocalExecutor(provider="cpu", threads=1, num_workers=0), progress=False)
        self.seen: dict[str, list[str]] = {}

    def texts(self, bundle, precision, texts, *, batch_size, label="texts"):
        self.seen[label] = list(texts)
        return super().texts(bundle, precision, texts, batch_size=batch_size, label=label)


def test_the_corpus_is_embedded_as_the_reference_builds_it(tmp_path):
    """The repro: a document whose text ends in a newline was embedded with it (a token for a
    byte-level BPE tokenizer), while every reference embeds the stripped text."""
    docs = [{"_id": f"d{i}", **d} for i, d in enumerate(DOCS)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "a dog"}\n', encoding="utf-8")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td0\t1\n", encoding="utf-8")
    data = read_beir(tmp_path)
    stage = RecordingStage()
    bundle = load_bundle(model_path("demo"))
    out = run_text_retrieval(stage, bundle, data, TextRetrievalParams(k=[1], progress=False))
    assert stage.seen["corpus"] == [reference(d) for d in DOCS]
    assert out[0].meta["num_corpus"] == len(DOCS)
