"""Tiny checkpoints for tests, written the way users write theirs.

Import as ``from fixtures_ckpt import make_tiny_clip_checkpoint`` (``tests/`` is on sys.path).
torch and transformers are imported inside the functions.

Every Hugging Face checkpoint here is ``model.save_pretrained(dir)`` plus
``<Family>Processor(image_processor=..., tokenizer=...).save_pretrained(dir)`` of the installed
transformers, so the folder has whatever layout that version writes (transformers 5:
``processor_config.json`` with the image processor nested under ``"image_processor"``;
transformers 4: ``preprocessor_config.json``). :func:`make_transformers4_clip_checkpoint` adds
the other layout from plain files committed under ``tests/fixtures/transformers4_clip/``, so both
layouts are covered whatever transformers CI resolves; :func:`to_transformers4_layout` rewrites
any folder into the 4.x layout for the other families.

Tokenizers are real ones: CLIP's byte-level BPE (a prefix of the OpenAI merges that open_clip
ships), BERT WordPiece for Chinese-CLIP, and for SigLIP a SentencePiece Unigram model trained here
with the ``nmt_nfkc`` normaliser (as released SigLIP vocabularies are), or an identity-normaliser
model written with the protobuf schema.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DEFAULT_WORDS = (
    "a photo of the cat dog car red blue green small big two three on in with next to "
    "playing snow grass sky tree house running sitting"
).split()
IMAGE_SIZE = 32
CONTEXT_LENGTH = 16
CLIP_MERGES = 2000  # of the 48,894 OpenAI merges: common English words are single tokens
FIXTURES = Path(__file__).parent / "fixtures"
TRANSFORMERS4_CLIP = FIXTURES / "transformers4_clip"


# -- CLIP -------------------------------------------------------------------------------------------

def write_clip_bpe_files(path, n_merges: int = CLIP_MERGES) -> int:
    """``vocab.json`` and ``merges.txt`` of CLIP's byte-level BPE cut to the first ``n_merges``
    merges (the files ``CLIPTokenizer`` reads; the order of the OpenAI vocabulary: 256 byte
    symbols, the same with ``</w>``, one token per merge, ``<|startoftext|>``, ``<|endoftext|>``).
    Returns the vocabulary size."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:1 + n_merges]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                     encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                     encoding="utf-8")
    return len(vocab)


def clip_tokenizer(workdir, *, pad_token: str = "!", n_merges: int = CLIP_MERGES):
    """A ``CLIPTokenizerFast`` over :func:`write_clip_bpe_files` (``pad_token`` ``"!"`` (id 0) as in
    the LAION conversions, or ``"<|endoftext|>"`` as in the OpenAI ones)."""
    from transformers import CLIPTokenizerFast

    write_clip_bpe_files(workdir, n_merges)
    return CLIPTokenizerFast.from_pretrained(str(workdir), model_max_length=CONTEXT_LENGTH, pad_token=pad_token)


def _image_processor(size: int):
    """transformers' CLIPImageProcessor (the class users save) for ``size`` px."""
    return _family_processor("CLIP", size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _family_processor(prefix: str, **kwargs):
    """``<prefix>ImageProcessor(**kwargs)``; its PIL twin where the plain class cannot be built
    (transformers 5 without torchvision)."""
    import transformers

    try:
        return getattr(transformers, f"{prefix}ImageProcessor")(**kwargs)
    except ImportError:
        return getattr(transformers, f"{prefix}ImageProcessorPil")(**kwargs)


def make_tiny_clip_checkpoint(path, *, seed: int = 0, legacy_eos: bool = False) -> Path:
    """Write a tiny random CLIPModel with a CLIPProcessor (byte-level BPE tokenizer + image
    processor) into ``path``, both through ``save_pretrained``.

    Hidden 32, 2 layers, 2 heads, 32x32 images in 8x8 patches, projection 16, 16 positions.
    By default the text config's ``eos_token_id`` is ``<|endoftext|>`` and the pad token is ``!``
    (id 0), as in the LAION conversions ("first_eos" pooling). With ``legacy_eos`` the config
    says ``eos_token_id = 2`` and the pad token is ``<|endoftext|>``, as in the OpenAI checkpoints
    (transformers' legacy "largest id" pooling; the end token has the largest id).
    """
    from transformers import CLIPProcessor

    from clipeval.export.towers import build_clip_config, build_clip_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = clip_tokenizer(path / ".bpe", pad_token="<|endoftext|>" if legacy_eos else "!")
    shutil.rmtree(path / ".bpe")
    config = build_clip_config(
        len(tok),
        pad_id=tok.pad_token_id,
        bos_id=tok.bos_token_id,
        eos_id=tok.eos_token_id,
        config_eos_id=2 if legacy_eos else None,
        image_size=IMAGE_SIZE,
        context_length=CONTEXT_LENGTH,
    )
    build_clip_model(config, seed=seed).save_pretrained(path)
    CLIPProcessor(image_processor=_image_processor(IMAGE_SIZE), tokenizer=tok).save_pretrained(path)
    return path


def make_transformers4_clip_checkpoint(path, *, seed: int = 0) -> Path:
    """The transformers 4.x layout: the committed ``preprocessor_config.json``, ``vocab.json``,
    ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of
    ``tests/fixtures/transformers4_clip`` (an OpenAI-style CLIP: pad = end token, legacy
    ``eos_token_id = 2``), plus random weights of the matching config written here."""
    from clipeval.export.towers import build_clip_config, build_clip_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in TRANSFORMERS4_CLIP.iterdir():
        if f.suffix in (".json", ".txt"):
            shutil.copyfile(f, path / f.name)
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    config = build_clip_config(len(vocab), pad_id=vocab["<|endoftext|>"], bos_id=vocab["<|startoftext|>"],
                               eos_id=vocab["<|endoftext|>"], config_eos_id=2, image_size=IMAGE_SIZE,
                               context_length=CONTEXT_LENGTH)
    build_clip_model(config, seed=seed).save_pretrained(path)
    return path


def to_transformers4_layout(path) -> Path:
    """Rewrite a checkpoint saved by transformers 5 into the 4.x layout in place: the image
    processor nested in ``processor_config.json`` becomes ``preprocessor_config.json``."""
    path = Path(path)
    nested = path / "processor_config.json"
    if nested.is_file():
        processor = json.loads(nested.read_text(encoding="utf-8"))
        image = processor.pop("image_processor")
        image.setdefault("processor_class", processor.get("processor_class"))
        (path / "preprocessor_config.json").write_text(json.dumps(image, indent=2), encoding="utf-8")
        nested.unlink()
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
    """A tiny random ChineseCLIPModel and a ChineseCLIPProcessor (BERT WordPiece ``BertTokenizerFast``
    over a vocab file + image processor), both saved with ``save_pretrained``. BERT text tower:
    hidden 32, 2 layers, 2 heads, 16 positions; ViT: 32x32 images in 8x8 patches; projection 16."""
    import tempfile

    import torch
    from transformers import BertTokenizerFast, ChineseCLIPConfig, ChineseCLIPModel, ChineseCLIPProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_wordpiece_vocab(Path(tmp) / "vocab.txt")
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
    image = _family_processor("ChineseCLIP", size={"shortest_edge": IMAGE_SIZE},
                              crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    ChineseCLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(path)
    return path


# -- SigLIP -----------------------------------------------------------------------------------------

SIGLIP_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in the released checkpoints
# What the nmt_nfkc SentencePiece model is trained on: captions, accents, other scripts, width
# and compatibility forms NFKC folds, so its vocabulary has pieces for all of them.
SPM_CORPUS = [
    "a photo of the cat", "two dogs playing in the snow", "a red car next to a big blue house",
    "the small green tree on the grass", "three cats sitting in the sky", "a dog running with a cat",
    "café naïve résumé façade", "straße über grün", "Ελληνικά κείμενα", "Русский текст",
    "日本語のテキスト", "两只猫在雪里玩", "ﬁne ＦＵＬＬ ｗｉｄｔｈ", "½ ① ㎏ ™",
]


def train_siglip_spm(path, *, normalization: str = "nmt_nfkc", vocab_size: int = 200) -> Path:
    """Train a SentencePiece Unigram model with the given normalisation rule (default ``nmt_nfkc``,
    what released SigLIP vocabularies use) and SigLIP's special ids: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2. One thread, fixed corpus: the same file every time."""
    import io

    import sentencepiece as spm

    corpus = [" ".join(DEFAULT_WORDS)] + SPM_CORPUS * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        normalization_rule_name=normalization, character_coverage=0.9995, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
    )
    Path(path).write_bytes(model.getvalue())
    return Path(path)


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
    """A SentencePiece Unigram ``spiece.model`` written with the protobuf schema: identity
    normaliser, dummy prefix, whitespace escaping (the vocabulary of :func:`siglip_pieces`)."""
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


def make_tiny_siglip_checkpoint(path, *, seed: int = 0, normalizer: str = "nmt_nfkc") -> Path:
    """A tiny random SiglipModel and a SiglipProcessor (``SiglipTokenizer`` over a SentencePiece
    model + image processor: fixed-size resize, no crop), both saved with ``save_pretrained``.

    ``normalizer`` ``"nmt_nfkc"`` trains the SentencePiece model here (:func:`train_siglip_spm`);
    ``"identity"`` writes :func:`write_siglip_spm`. Hidden 32, 2 layers, 2 heads, 16 positions."""
    import tempfile

    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor, SiglipTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_file = Path(tmp) / "spiece.model"
        if normalizer == "identity":
            write_siglip_spm(spm_file)
        else:
            train_siglip_spm(spm_file, normalization=normalizer)
        tok = SiglipTokenizer(str(spm_file), model_max_length=CONTEXT_LENGTH)
        n_vocab = tok.vocab_size
        image = _family_processor("Siglip", size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        SiglipProcessor(image_processor=image, tokenizer=tok).save_pretrained(path)
    text = dict(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=CONTEXT_LENGTH, pad_token_id=1, bos_token_id=1,
                eos_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=8)
    config = SiglipConfig(text_config=text, vision_config=vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config).eval()
    model.save_pretrained(path)
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
