"""Tiny checkpoints for tests: ``save_pretrained`` directories that the exporter reads.

Import as ``from fixtures_ckpt import make_tiny_clip_checkpoint`` (``tests/`` is on sys.path).
torch and transformers are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_WORDS = (
    "a photo of the cat dog car red blue green small big two three on in with next to "
    "playing snow grass sky tree house running sitting"
).split()
IMAGE_SIZE = 32
CONTEXT_LENGTH = 16


def _image_processor(size: int):
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5 without torchvision
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def make_tiny_clip_checkpoint(path, *, vocab_words=None, seed: int = 0, legacy_eos: bool = False) -> Path:
    """Write a tiny random CLIPModel, its word-level tokenizer and image processor into ``path``.

    Hidden 32, 2 layers, 2 heads, 32x32 images in 8x8 patches, projection 16, 16 positions.
    Special tokens: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, and the text config's
    pad/bos/eos ids agree. With ``legacy_eos`` the end token gets the largest id and the text
    config says ``eos_token_id = 2``: transformers' legacy "largest id" pooling, as in the
    OpenAI checkpoints.
    """
    from clipeval.export.tokenizer_export import special_ids, train_wordlevel_tokenizer, wrap_fast_tokenizer
    from clipeval.export.towers import build_clip_config, build_clip_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = list(vocab_words) if vocab_words is not None else DEFAULT_WORDS
    tok = train_wordlevel_tokenizer([" ".join(words)], eos_last=legacy_eos)
    ids = special_ids(tok)
    config = build_clip_config(
        tok.get_vocab_size(),
        pad_id=ids.pad_id,
        bos_id=ids.bos_id,
        eos_id=ids.eos_id,
        config_eos_id=2 if legacy_eos else None,
        image_size=IMAGE_SIZE,
        context_length=CONTEXT_LENGTH,
    )
    build_clip_model(config, seed=seed).save_pretrained(path)
    wrap_fast_tokenizer(tok, CONTEXT_LENGTH).save_pretrained(path)
    _image_processor(IMAGE_SIZE).save_pretrained(path)
    return path


def make_tiny_bert_checkpoint(path) -> Path:
    """A tiny random BertModel checkpoint (a model type the exporter does not support)."""
    from transformers import BertConfig, BertModel

    path = Path(path)
    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    BertModel(config).save_pretrained(path)
    return path
