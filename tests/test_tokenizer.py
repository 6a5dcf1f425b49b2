import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from clipeval.engine.errors import BundleError
from clipeval.engine.tokenizer import TextTokenizer

WORDS = "a small large red blue triangle square at the top left".split()


@pytest.fixture()
def tok_path(tmp_path):
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for w in WORDS:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tok.enable_padding(pad_id=0, pad_token="<pad>", length=99)  # the engine must override this
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path, vocab


RULE = {"pad_id": 0, "eos_id": 3, "bos_id": 2, "padding": "longest", "text_inputs": ["input_ids", "attention_mask"]}


def test_pads_to_the_longest_text_in_the_batch(tok_path):
    path, vocab = tok_path
    t = TextTokenizer(path, RULE, context_length=8)
    feeds = t(["a red square", "Blue"])
    ids = feeds["input_ids"]
    assert ids.shape == (2, 5) and ids.dtype == np.int64
    assert ids[0].tolist() == [2, vocab["a"], vocab["red"], vocab["square"], 3]
    assert ids[1].tolist() == [2, vocab["blue"], 3, 0, 0]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_max_length_rule_pads_to_the_context_length(tok_path):
    path, _ = tok_path
    t = TextTokenizer(path, {**RULE, "padding": "max_length", "text_inputs": ["input_ids"]}, context_length=8)
    feeds = t(["a red square"])
    assert feeds["input_ids"].shape == (1, 8)
    assert set(feeds) == {"input_ids"}


def test_truncation_keeps_the_end_token_and_is_counted(tok_path):
    path, vocab = tok_path
    t = TextTokenizer(path, RULE, context_length=5)
    enc = t.encode(["a small red triangle at the top left", "a red square"])
    assert enc.truncated.tolist() == [True, False]
    assert enc.ids[0].tolist() == [2, vocab["a"], vocab["small"], vocab["red"], 3]
    assert enc.lengths.tolist() == [5, 5]


def test_unknown_padding_rule_and_bad_file(tok_path, tmp_path):
    path, _ = tok_path
    with pytest.raises(BundleError, match="unknown padding rule"):
        TextTokenizer(path, {**RULE, "padding": "bucket"}, 8)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(BundleError, match="cannot read tokenizer"):
        TextTokenizer(bad, RULE, 8)
