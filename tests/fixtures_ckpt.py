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


# -- Chinese-CLIP ---------------------------------------------------------------------------------

CHINESE_WORDS = ["猫", "狗", "红", "车", "两", "只", "在", "雪", "里", "玩", "一", "张", "照", "片", "的"]


def write_wordpiece_vocab(path, words=DEFAULT_WORDS, chars=CHINESE_WORDS) -> Path:
    """A BERT ``vocab.txt``: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, then the words, the
    CJK characters, ASCII letters and their ``##`` continuations (so any lowercase word splits)."""
    import string

    letters = list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(dict.fromkeys(list(words) + list(chars) + letters + [f"##{c}" for c in string.ascii_lowercase]))
    Path(path).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return Path(path)


def make_tiny_chinese_clip_checkpoint(path, *, seed: int = 0) -> Path:
    """A tiny random ChineseCLIPModel with a BERT WordPiece tokenizer (``BertTokenizerFast`` over a
    vocab file) and a ChineseCLIP image processor. BERT text tower: hidden 32, 2 layers, 2 heads,
    16 positions; ViT: 32x32 images in 8x8 patches; projection 16."""
    import torch
    from transformers import BertTokenizerFast, ChineseCLIPConfig, ChineseCLIPModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = write_wordpiece_vocab(path / "vocab.txt")
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True, model_max_length=CONTEXT_LENGTH)
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=CONTEXT_LENGTH, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=8, projection_dim=16)
    config = ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ChineseCLIPModel(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    _family_processor("ChineseCLIP", size={"shortest_edge": IMAGE_SIZE},
                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


def _family_processor(prefix: str, **kwargs):
    import transformers

    cls = getattr(transformers, f"{prefix}ImageProcessorPil", None) or getattr(transformers, f"{prefix}ImageProcessor")
    return cls(**kwargs)


# -- SigLIP -----------------------------------------------------------------------------------------

SIGLIP_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in the released checkpoints


def siglip_pieces(words=DEFAULT_WORDS) -> list[tuple[str, float, int]]:
    """``(piece, score, type)`` of a small Unigram vocabulary with SigLIP's special ids: whole
    words ``▁word`` (score -len), their halves, every single letter and ``▁`` (score -10), so
    any lowercase text segments and several segmentations compete."""
    import string

    pieces: dict[str, float] = {}
    for w in words:
        pieces.setdefault("\u2581" + w, -float(len(w)))
        if len(w) > 3:
            pieces.setdefault(w[: len(w) // 2], -2.0 - len(w))
            pieces.setdefault(w[len(w) // 2:], -2.0 - len(w))
    for c in "\u2581" + string.ascii_lowercase + string.digits:
        pieces.setdefault(c, -10.0)
    specials = [(p, 0.0, 3) for p in SIGLIP_SPECIALS[:2]] + [(SIGLIP_SPECIALS[2], 0.0, 2)]
    return specials + [(p, s, 1) for p, s in pieces.items()]


def write_siglip_spm(path, words=DEFAULT_WORDS) -> Path:
    """A SentencePiece Unigram ``spiece.model`` written with the protobuf schema (no sentencepiece
    package needed): identity normaliser, dummy prefix, whitespace escaping."""
    from clipeval.export.siglip_tokenizer import _sp_proto

    pb2 = _sp_proto()
    proto = pb2.ModelProto()
    for piece, score, kind in siglip_pieces(words):
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, score, kind
    proto.trainer_spec.model_type = 1  # UNIGRAM
    proto.trainer_spec.unk_id, proto.trainer_spec.pad_id = 2, 0
    proto.trainer_spec.eos_id, proto.trainer_spec.bos_id = 1, -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    proto.normalizer_spec.escape_whitespaces = True
    Path(path).write_bytes(proto.SerializeToString())
    return Path(path)


def make_tiny_siglip_checkpoint(path, *, seed: int = 0) -> Path:
    """A tiny random SiglipModel with a SentencePiece ``spiece.model`` and the tokenizer config a
    released SigLIP checkpoint has (``SiglipTokenizer``, pad = eos = ``</s>``, lowercase), and a
    Siglip image processor (fixed-size resize, no crop). Hidden 32, 2 layers, 2 heads, 16 positions."""
    import json

    import torch
    from transformers import SiglipConfig, SiglipModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_siglip_spm(path / "spiece.model")
    n_vocab = len(siglip_pieces())
    text = dict(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=CONTEXT_LENGTH, pad_token_id=1, bos_token_id=1, eos_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=8)
    config = SiglipConfig(text_config=text, vision_config=vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config).eval()
    model.save_pretrained(path)
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "SiglipTokenizer", "model_max_length": CONTEXT_LENGTH, "do_lower_case": True,
        "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
    }), encoding="utf-8")
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}), encoding="utf-8")
    _family_processor("Siglip", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


# -- helpers shared by the export test files ---------------------------------------------------------

PARITY_TEXTS = [
    "a",
    "A Red car!",
    "two dogs playing in the snow, next to a big blue house",
    "两只猫在雪里玩",
    "  the   cat  ",
    " ".join(["a small green tree on the grass"] * 5),  # longer than the context: truncated
]


def parity_images(seed: int = 0):
    """PIL images of several sizes and modes (portrait, landscape, smaller than the crop, RGBA)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    shapes = [(48, 40, "RGB"), (30, 70, "RGB"), (20, 24, "RGB"), (64, 64, "RGBA")]
    out = []
    for h, w, mode in shapes:
        arr = rng.integers(0, 256, size=(h, w, len(mode)), dtype=np.uint8)
        out.append(Image.fromarray(arr, mode))
    return out


def write_custom_dataset(root, n_images: int = 4, seed: int = 0) -> Path:
    """A ``custom`` dataset folder: PNGs and ``image_queries.jsonl`` with two queries per image."""
    import json

    import numpy as np
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = DEFAULT_WORDS
    rows = []
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        queries = [" ".join(rng.choice(words, size=3 + i % 4)) for _ in range(2)]
        rows.append({"image_path": f"images/{i}.png", "query": queries})
    (root / "image_queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def eval_block(model: str, data_dir, output_dir, **extra) -> dict:
    """The ``eval`` block of a run on a custom dataset folder (small batches, inline decode)."""
    block = {"models": [{"model_name": str(model)}], "dataset_name": ["custom"], "data_dir": str(data_dir),
             "output_dir": str(output_dir), "batch_size": 3, "num_workers": 0, "verbose": False,
             "recall_k": [1, 2]}
    block.update(extra)
    return block
