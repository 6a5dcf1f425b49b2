"""Tiny sentence-transformers checkpoints (bi-encoders and cross-encoders), written by
sentence-transformers' own ``save`` from a tiny random BERT, for the text-retrieval tests.

Import as ``from fixtures_text import ...`` (``tests/`` is on sys.path); torch, transformers and
sentence-transformers are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

MAX_POSITIONS = 64
# Texts of several lengths, scripts and casings; the last is longer than any context used here.
TEXTS = [
    "a",
    "a red car",
    "Two DOGS playing in the snow, next to a big blue house!",
    "两只猫在雪里玩",
    "  the   cat  ",
    "",
    " ".join(["a small green tree on the grass"] * 12),
]


def _hf_bert(path: Path, seed: int, num_labels: int | None = None, positions: int = MAX_POSITIONS) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    from fixtures_ckpt import write_wordpiece_vocab

    path.mkdir(parents=True, exist_ok=True)
    vocab = write_wordpiece_vocab(path / "vocab.txt")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=positions)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=positions, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=num_labels or 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (BertForSequenceClassification(config) if num_labels else BertModel(config)).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_sentence_transformer(path, *, pooling="mean", normalize=True, max_seq_length=48, prompts=None,
                              seed: int = 0) -> Path:
    """A SentenceTransformer (Transformer -> Pooling(pooling) [-> Normalize]) saved with
    ``SentenceTransformer.save``; ``pooling`` is a mode name or a tuple of them."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    path = Path(path)
    hf = _hf_bert(path.parent / f"{path.name}-hf", seed)
    word = Transformer(str(hf), max_seq_length=max_seq_length)
    modules = [word, Pooling(word.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, prompts=prompts or {}, device="cpu").save(str(path))
    return path


def make_cross_encoder(path, *, seed: int = 0, max_length: int | None = None, positions: int = MAX_POSITIONS) -> Path:
    """A CrossEncoder (BERT sequence classification, one label, sigmoid, ``positions`` token
    positions) saved with ``CrossEncoder.save_pretrained``."""
    from sentence_transformers import CrossEncoder

    path = Path(path)
    hf = _hf_bert(path.parent / f"{path.name}-hf", seed, num_labels=1, positions=positions)
    CrossEncoder(str(hf), device="cpu", max_length=max_length).save_pretrained(str(path))
    return path


def make_sequence_classifier(path, *, seed: int = 0) -> Path:
    """A plain Hugging Face ``BertForSequenceClassification`` checkpoint (one label), no
    sentence-transformers files."""
    return _hf_bert(Path(path), seed, num_labels=1)
