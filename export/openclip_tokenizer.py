"""open_clip's tokenizers -> the bundle's ``tokenizer.json`` plus the manifest's ``clean`` steps.

``SimpleTokenizer`` (CLIP's byte-level BPE, open_clip's default) does, per text:

1. clean (``clean="lower"`` by default): ``ftfy.fix_text``, ``html.unescape`` twice, ``strip``,
   whitespace runs collapsed (``" ".join(text.split())``), ``lower``; ``"whitespace"`` skips the
   lowercase; ``"canonicalize"`` also turns ``_`` into spaces and drops ASCII punctuation;
2. split with ``<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``
   (case-insensitive);
3. each piece as UTF-8 bytes mapped to GPT-2's byte alphabet, then BPE with ``</w>`` on the last
   symbol of the piece, merges applied by rank;
4. ``<start_of_text>`` + ids + ``<end_of_text>``, cut to the context length with the last id set to
   ``<end_of_text>``, padded with 0.

Step 1 runs in the engine, in Python, exactly as open_clip runs it (the manifest's
``tokenizer.clean``; ftfy and ``html.unescape`` have no `tokenizers` counterpart, and Python's
``str.lower`` / ``str.split`` are the reference for the rest). ``tokenizer.json`` does steps 2-4:
``Split`` with the same pattern (kept matches) and ``ByteLevel`` without its own regex, a ``BPE``
model with the same vocabulary, merges and ``end_of_word_suffix``, and a template adding the two
special tokens; truncation keeps the end token. The one difference left is the Unicode version of
``\\p{L}`` / ``\\p{N}`` (Python's ``regex`` against Oniguruma's) for letters added in recent Unicode
versions.

``HFTokenizer`` (models whose text config names ``hf_tokenizer_name``): its Hugging Face fast
tokenizer's ``tokenizer.json`` as it is, its ``clean`` steps (default ``"whitespace"``), padding to
the context length with its pad token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipeval.engine.errors import ExportError

from .tokenizer_export import TokenizerInfo

# open_clip.tokenizer.get_clean_fn's modes as the engine's clean steps (engine/textprep.py)
BASIC_CLEAN = ["ftfy_fix_text", "html_unescape", "html_unescape", "strip"]
CLEAN_MODES = {
    "lower": BASIC_CLEAN + ["collapse_whitespace", "strip", "lower"],
    "whitespace": BASIC_CLEAN + ["collapse_whitespace", "strip"],
    "canonicalize": BASIC_CLEAN + ["underscore_to_space", "remove_ascii_punctuation", "lower",
                                   "collapse_whitespace", "strip"],
}
WORD_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _clean_mode(tokenizer: Any) -> str:
    """The clean mode of an open_clip tokenizer, read back from its clean function."""
    from open_clip import tokenizer as oc_tok

    fn = getattr(tokenizer, "clean_fn", None)
    for mode in CLEAN_MODES:
        if fn is oc_tok.get_clean_fn(mode):
            return mode
    raise ExportError(f"open_clip tokenizer {type(tokenizer).__name__} cleans texts with {fn!r}, "
                      "which clipeval does not know",
                      f"supported clean modes: {', '.join(CLEAN_MODES)}")


def convert_simple_tokenizer(tokenizer: Any):
    """``(tokenizers.Tokenizer, TokenizerInfo)`` for an ``open_clip.tokenizer.SimpleTokenizer``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise ExportError("the open_clip tokenizer drops tokens at random to fit the context (reduction_mask)",
                          "export a model whose tokenizer truncates (the default)")
    encoder: dict[str, int] = dict(tokenizer.encoder)
    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids]
    sot, eot = tokenizer.decoder[tokenizer.sot_token_id], tokenizer.decoder[tokenizer.eot_token_id]
    bpe_vocab = {token: i for token, i in encoder.items() if token not in specials}
    tok = Tokenizer(models.BPE(vocab=bpe_vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", pair=f"{sot} $A {eot} $B {eot}",
        special_tokens=[(sot, tokenizer.sot_token_id), (eot, tokenizer.eot_token_id)],
    )
    missing = [t for t in specials if tok.token_to_id(t) != encoder[t]]
    if missing:
        raise ExportError(f"special tokens {missing} did not keep their ids", "report the model and versions")
    tok.no_padding()
    tok.no_truncation()
    info = TokenizerInfo(pad_id=0, eos_id=int(tokenizer.eot_token_id), bos_id=int(tokenizer.sot_token_id),
                         extra={"clean": list(CLEAN_MODES[_clean_mode(tokenizer)])})
    return tok, info


def convert_hf_tokenizer(tokenizer: Any):
    """``(tokenizers.Tokenizer, TokenizerInfo)`` for an ``open_clip.tokenizer.HFTokenizer``."""
    from tokenizers import Tokenizer

    if getattr(tokenizer, "tokenizer_mode", "") or getattr(tokenizer, "strip_sep_token", False):
        raise ExportError(
            "the open_clip tokenizer post-processes ids (tokenizer_mode "
            f"{getattr(tokenizer, 'tokenizer_mode', '')!r}, strip_sep_token "
            f"{getattr(tokenizer, 'strip_sep_token', False)}), which a bundle cannot express",
            "export a model whose Hugging Face tokenizer is used as it is",
        )
    hf = tokenizer.tokenizer
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"the model's Hugging Face tokenizer ({type(hf).__name__}) has no fast backend",
                          "use a model whose tokenizer has a tokenizer.json")
    tok = Tokenizer.from_str(backend.to_str())
    tok.no_padding()
    tok.no_truncation()
    eos = hf.eos_token_id if hf.eos_token_id is not None else getattr(hf, "sep_token_id", None)
    pad = hf.pad_token_id if hf.pad_token_id is not None else eos
    if pad is None or eos is None:
        raise ExportError("the model's Hugging Face tokenizer has no pad or end token", "report the model")
    bos = hf.bos_token_id if hf.bos_token_id is not None else getattr(hf, "cls_token_id", None)
    info = TokenizerInfo(pad_id=int(pad), eos_id=int(eos), bos_id=None if bos is None else int(bos),
                         extra={"clean": list(CLEAN_MODES[_clean_mode(tokenizer)])})
    return tok, info


def export_open_clip_tokenizer(tokenizer: Any, out_path: str | Path) -> tuple[TokenizerInfo, str]:
    """Write ``tokenizer.json`` for an open_clip tokenizer; return its info and the tokenizer kind
    (``"SimpleTokenizer"`` or ``"HFTokenizer"``)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer):
        tok, info = convert_simple_tokenizer(tokenizer)
    elif isinstance(tokenizer, HFTokenizer):
        tok, info = convert_hf_tokenizer(tokenizer)
    else:
        raise ExportError(f"open_clip tokenizer {type(tokenizer).__name__} is not supported",
                          "supported: SimpleTokenizer (CLIP BPE) and HFTokenizer")
    tok.save(str(out_path))
    return info, type(tokenizer).__name__
