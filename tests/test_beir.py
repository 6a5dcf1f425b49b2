"""BEIR folders: writer -> reader round trip (hypothesis), both qrels forms, and bad input."""

from __future__ import annotations

import csv
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipeval.engine.datasets.beir import BeirData, read_beir, write_beir
from clipeval.engine.errors import DatasetError

# Any text, including newlines, quotes, tabs, U+2028, NUL and the empty string.
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
# Ids a TSV qrels file can carry: no tab/CR/LF, no leading double quote, not empty.
ID_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\t\r\n"), min_size=1,
                  max_size=12).filter(lambda s: not s.startswith('"'))
ID = st.one_of(st.integers(min_value=0, max_value=10**9), ID_TEXT)


def _unique_by_str(ids):
    seen, out = set(), []
    for i in ids:
        if str(i) not in seen:
            seen.add(str(i))
            out.append(i)
    return out


@st.composite
def beir_sets(draw):
    corpus_ids = _unique_by_str(draw(st.lists(ID, min_size=1, max_size=8)))
    query_ids = _unique_by_str(draw(st.lists(ID, min_size=1, max_size=6)))
    corpus = []
    for i in corpus_ids:
        row = {"_id": i, "text": draw(TEXT)}
        if draw(st.booleans()):
            row["title"] = draw(TEXT)
        corpus.append(row)
    queries = [{"_id": i, "text": draw(TEXT)} for i in query_ids]
    pairs = draw(st.lists(st.tuples(st.sampled_from(query_ids), st.sampled_from(corpus_ids)), max_size=12,
                          unique_by=lambda p: (str(p[0]), str(p[1]))))
    qrels = [(q, d, draw(st.integers(min_value=-1, max_value=3))) for q, d in pairs]
    return corpus, queries, qrels


def _expected(corpus, queries, qrels):
    def rows(items):
        out = []
        for r in items:
            row = {"_id": str(r["_id"]), "text": r["text"]}
            if "title" in r:
                row["title"] = r["title"]
            out.append(row)
        return out

    return rows(corpus), rows(queries), [(str(q), str(d), s) for q, d, s in qrels]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=beir_sets(), use_jsonl=st.booleans())
def test_round_trip(tmp_path_factory, data, use_jsonl):
    corpus, queries, qrels = data
    folder = tmp_path_factory.mktemp("beir")
    write_beir(folder, corpus, queries, qrels)
    if use_jsonl:  # the flat form alone must read back the same
        os.remove(folder / "qrels" / "test.tsv")
    back = read_beir(folder)
    want_corpus, want_queries, want_qrels = _expected(corpus, queries, qrels)
    assert back.corpus == want_corpus
    assert back.queries == want_queries
    assert back.qrels == want_qrels
    assert back.qrels_file.name == ("qrels.jsonl" if use_jsonl else "test.tsv")


def test_layout_matches_the_reference(tmp_path):
    write_beir(tmp_path, [{"_id": 0, "text": "a dog"}, {"_id": 1, "text": "a cat"}],
               [{"_id": 0, "text": "dog"}, {"_id": 1, "text": "cat"}], [(0, 0, 1), (1, 1, 1)])
    assert (tmp_path / "qrels" / "test.tsv").read_text() == "query-id\tcorpus-id\tscore\n0\t0\t1\n1\t1\t1\n"
    assert [json.loads(x) for x in (tmp_path / "corpus.jsonl").read_text().splitlines()] == [
        {"_id": 0, "text": "a dog"}, {"_id": 1, "text": "a cat"}]
    assert [json.loads(x) for x in (tmp_path / "qrels.jsonl").read_text().splitlines()] == [
        {"query-id": 0, "corpus-id": 0, "score": 1}, {"query-id": 1, "corpus-id": 1, "score": 1}]
    # Nothing else is left behind (no temporary files).
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "corpus.jsonl", "qrels", "qrels.jsonl", "qrels/test.tsv", "queries.jsonl"]


def test_tsv_reads_like_beirs_csv_reader(tmp_path):
    """BEIR reads the TSV with csv.reader(delimiter='\\t', QUOTE_MINIMAL): ids with quotes inside,
    spaces and non-ASCII must come back the same through that reader."""
    ids = ['a"b', "x y", "東京", " lead"]
    write_beir(tmp_path, [{"_id": i, "text": i} for i in ids], [{"_id": "q", "text": "q"}],
               [("q", i, 1) for i in ids])
    with open(tmp_path / "qrels" / "test.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL))[1:]
    assert [r[1] for r in rows] == ids
    assert [d for _, d, _ in read_beir(tmp_path).qrels] == ids


def test_split_and_qrels_form_choice(tmp_path):
    write_beir(tmp_path, [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "t"}], [("q", "d", 2)], split="dev")
    data = read_beir(tmp_path, split="dev")
    assert data.qrels_file == tmp_path / "qrels" / "dev.tsv"
    # No qrels/test.tsv: the flat qrels.jsonl is used.
    assert read_beir(tmp_path, split="test").qrels_file == tmp_path / "qrels.jsonl"
    assert isinstance(data, BeirData) and data.qrels_dict() == {"q": {"d": 2}}


def test_qrels_jsonl_alternative_keys(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": 7, "text": "y"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "qrels.jsonl").write_text('{"qid": "q1", "pid": "d1", "score": 1}\n'
                                          '{"query-id": "q1", "corpus-id": 7, "label": 2.0}\n')
    assert read_beir(tmp_path).qrels == [("q1", "d1", 1), ("q1", "7", 2)]


def test_every_bad_line_is_listed_once(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\nnot json\n{"_id": "d1", "text": "y"}\n'
                                           '{"text": "no id"}\n{"_id": "d2", "text": 5}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\nq1\td1\tx\n"
                                                 "q1\td9\t1\n")
    with pytest.raises(DatasetError) as err:
        read_beir(tmp_path)
    text = str(err.value)
    for needle in ("corpus.jsonl:2: not valid JSON", "corpus.jsonl:3: id 'd1' again, with other content than on line 1",
                   "corpus.jsonl:4: no usable", "corpus.jsonl:5: \"text\" must be a string, got int",
                   "test.tsv:4: score 'x' is not an integer"):
        assert needle in text, (needle, text)
    assert "d9" not in text  # a qrel naming a document outside the corpus is a warning, not an error
    assert "q2" not in text  # a qrel naming an unknown query is left out and counted, not an error


def test_missing_files_say_what_is_there(tmp_path):
    (tmp_path / "corpus.jsonl").write_text("")
    with pytest.raises(DatasetError, match=r"missing queries\.jsonl, qrels/test\.tsv \(or qrels\.jsonl\)"):
        read_beir(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_beir(tmp_path / "nope")


def test_writer_refuses_bad_input_before_writing(tmp_path):
    with pytest.raises(DatasetError) as err:
        write_beir(tmp_path, [{"_id": "a\tb", "text": "x"}, {"_id": 1, "text": "y"}, {"_id": "1", "text": "z"}],
                   [{"_id": True, "text": "q"}, {"_id": "q", "text": None}],
                   [("q", "zz", 1), ("q", 1, 1.5)])
    text = str(err.value)
    for needle in ("corpus[0]: id 'a\\tb' cannot be stored", "corpus[2]: duplicate id '1'",
                   "queries[0]: id must be a string or an integer, got bool", "queries[1]: text must be a string",
                   "qrels[1]: score must be an integer"):
        assert needle in text, (needle, text)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- damaged folders (issue 11 item 1)

DAMAGE = ("dup_doc", "dup_query", "dup_qrel", "unknown_query_qrel", "query_without_qrels", "empty_query",
          "blank_line")


@st.composite
def damaged_folders(draw):
    """A clean BEIR set plus a random list of damages of the kinds the reader leaves out (each
    with the reason it must be counted under)."""
    n_docs, n_queries = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    corpus = [{"_id": f"d{i}", "text": f"document {i}"} for i in range(n_docs)]
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(n_queries)]
    qrels = [(f"q{i}", f"d{draw(st.integers(0, n_docs - 1))}", 1) for i in range(n_queries)]
    damages = draw(st.lists(st.sampled_from(DAMAGE), max_size=8))
    return corpus, queries, qrels, damages, draw(st.booleans()), draw(st.booleans())


def _apply(corpus, queries, qrels, damages):
    """Damaged file rows and the left-out counts the reader must report."""
    corpus, queries, qrels = [dict(r) for r in corpus], [dict(r) for r in queries], list(qrels)
    want = {}

    def count(reason, n=1):
        want[reason] = want.get(reason, 0) + n

    extra = 0
    emptied = set()
    for kind in damages:
        if kind == "dup_doc":
            corpus.append(dict(corpus[0]))
            count("duplicate_corpus_ids")
        elif kind == "dup_query":
            queries.append(dict(queries[0]))
            count("duplicate_query_ids")
        elif kind == "dup_qrel":
            qrels.append(qrels[-1])
            count("duplicate_qrels")
        elif kind == "unknown_query_qrel":
            qrels.append((f"missing{extra}", corpus[0]["_id"], 1))
            extra += 1
            count("qrels_unknown_query")
        elif kind == "query_without_qrels":
            queries.append({"_id": f"lonely{extra}", "text": "nobody asks"})
            extra += 1
            count("queries_without_qrels")
        elif kind == "empty_query" and queries[0]["_id"] not in emptied:
            emptied.add(queries[0]["_id"])
            for q in queries:
                if q["_id"] == queries[0]["_id"]:
                    q["text"] = " \t "
    for qid in emptied:
        count("empty_queries")
        count("qrels_of_left_out_queries", sum(1 for q, _, _ in dict.fromkeys(qrels) if q == qid))
    return corpus, queries, qrels, want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged_folders())
def test_damaged_folders_every_record_used_or_counted(tmp_path_factory, case):
    corpus, queries, qrels, damages, use_jsonl, bom = case
    corpus, queries, qrels, want = _apply(corpus, queries, qrels, damages)
    folder = tmp_path_factory.mktemp("damaged")
    blank = b"\n" if "blank_line" in damages else b""
    prefix = b"\xef\xbb\xbf" if bom else b""
    (folder / "corpus.jsonl").write_bytes(prefix + b"".join(json.dumps(r).encode() + b"\n" + blank for r in corpus))
    (folder / "queries.jsonl").write_bytes(prefix + b"".join(json.dumps(r).encode() + b"\n" for r in queries))
    if use_jsonl:
        (folder / "qrels.jsonl").write_bytes(prefix + b"".join(
            json.dumps({"query-id": q, "corpus-id": d, "score": s}).encode() + b"\n" for q, d, s in qrels))
    else:
        (folder / "qrels").mkdir()
        (folder / "qrels" / "test.tsv").write_bytes(prefix + "".join(
            ["query-id\tcorpus-id\tscore\n"] + [f"{q}\t{d}\t{s}\n" for q, d, s in qrels]).encode())
    data = read_beir(folder)
    evaluated = data.evaluated_queries()
    used = len(data.corpus) + len(evaluated) + sum(1 for q, _, _ in data.qrels if q in {e["_id"] for e in evaluated})
    records = len(corpus) + len(queries) + len(qrels)
    assert sum(data.records.values()) == records
    assert used + sum(data.left_out.values()) == records
    assert data.left_out == want
    assert all(isinstance(r["text"], str) for r in data.corpus + data.queries)


@pytest.mark.parametrize("corpus_line,needle", [
    ('{"_id": "d1", "text": null}', "corpus.jsonl:2: \"text\" must be a string, got NoneType"),
    ('{"_id": "d1"}', "corpus.jsonl:2: \"text\" must be a string, got missing"),
    ('{"_id": null, "text": "x"}', "corpus.jsonl:2: no usable \"_id\""),
    ('{"_id": "", "text": "x"}', "corpus.jsonl:2: no usable \"_id\""),
    ('{"_id": 1.5, "text": "x"}', "corpus.jsonl:2: no usable \"_id\""),
    ('{"_id": "d1", "text": "x", "title": 3}', "corpus.jsonl:2: \"title\" must be a string"),
    ('{"_id": "d0", "text": "other"}', "corpus.jsonl:2: id 'd0' again, with other content than on line 1"),
    ('["d1", "x"]', "corpus.jsonl:2: expected a JSON object, got list"),
])
def test_bad_corpus_values_are_errors_never_none(tmp_path, corpus_line, needle):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d0", "text": "zero"}\n' + corpus_line + "\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q0", "text": "q"}\n')
    (tmp_path / "qrels.jsonl").write_text('{"query-id": "q0", "corpus-id": "d0", "score": 1}\n')
    with pytest.raises(DatasetError) as err:
        read_beir(tmp_path)
    assert needle in str(err.value)


@pytest.mark.parametrize("qrels_line,outcome", [
    ('{"query-id": "q0", "corpus-id": "d0", "score": null}', "score None is not an integer"),
    ('{"query-id": "q0", "corpus-id": "d0", "score": 1.5}', "score 1.5 is not an integer"),
    ('{"query-id": "q0", "corpus-id": "d0", "score": "high"}', "score 'high' is not an integer"),
    ('{"query-id": null, "corpus-id": "d0"}', "needs \"query-id\" and \"corpus-id\""),
    ('{"query-id": "q0", "corpus-id": "d0"}', [("q0", "d0", 1)]),  # no score: relevant (evalscope's default)
    ('{"query-id": "q0", "corpus-id": "d0", "score": 2.0}', [("q0", "d0", 2)]),
    ('{"qid": "q0", "docid": "d0", "relevance": "0"}', [("q0", "d0", 0)]),
])
def test_qrels_jsonl_values(tmp_path, qrels_line, outcome):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d0", "text": "zero"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q0", "text": "q"}\n')
    (tmp_path / "qrels.jsonl").write_text(qrels_line + "\n")
    if isinstance(outcome, str):
        with pytest.raises(DatasetError) as err:
            read_beir(tmp_path)
        assert "qrels.jsonl:1: " + outcome in str(err.value)
    else:
        assert read_beir(tmp_path).qrels == outcome


def test_repeated_pair_with_another_score_is_an_error(tmp_path):
    write_beir(tmp_path, [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "t"}], [("q", "d", 1)])
    with open(tmp_path / "qrels" / "test.tsv", "a") as f:
        f.write("q\td\t2\n")
    with pytest.raises(DatasetError, match=r"test.tsv:3: pair \('q', 'd'\) again with score 2 \(score 1 at .*test.tsv:2\)"):
        read_beir(tmp_path)


def test_left_out_records_are_logged(tmp_path, caplog):
    write_beir(tmp_path, [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "t"}, {"_id": "x", "text": "t"}],
               [("q", "d", 1)])
    with caplog.at_level("WARNING", logger="clipeval.engine.datasets.beir"):
        data = read_beir(tmp_path)
    assert data.left_out == {"queries_without_qrels": 1}
    assert "left out 1: queries that no qrels row names" in caplog.text
