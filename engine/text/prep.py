"""Text steps a bundle's ``tokenizer.json`` cannot express exactly, named in its manifest.

Two kinds, both optional keys of the manifest's ``tokenizer`` block:

``"clean": [step, ...]`` (open_clip bundles)
    Python string operations applied to every text, in order, before ``tokenizer.json``.
    open_clip's tokenizers clean texts with ``ftfy.fix_text`` and ``html.unescape``, which no
    `tokenizers` normaliser can reproduce, and with Python's own ``str.lower`` / ``str.split``,
    whose Unicode tables differ from the Rust ones in corner cases; so these run here, as
    open_clip runs them, and ``tokenizer.json`` holds no normaliser. The steps
    (:data:`CLEAN_STEPS`), each exactly the Python expression shown:

    ================================  =================================================
    ``ftfy_fix_text``                 ``ftfy.fix_text(text)`` (ftfy's default settings)
    ``html_unescape``                 ``html.unescape(text)``
    ``strip``                         ``text.strip()``
    ``collapse_whitespace``           ``" ".join(text.split())``
    ``lower``                         ``text.lower()``
    ``underscore_to_space``           ``text.replace("_", " ")``
    ``remove_ascii_punctuation``      ``text.translate(str.maketrans("", "", string.punctuation))``
    ================================  =================================================

``"sentencepiece": {...}`` (SigLIP bundles)
    The bundle also holds the checkpoint's SentencePiece model (``spiece.model``), and texts are
    tokenised the way transformers' ``SiglipTokenizer`` (the SentencePiece one) does, by the
    SentencePiece library itself, with :class:`SiglipSentencePiece`. ``tokenizer.json``'s
    ``Precompiled`` normaliser works per grapheme cluster where SentencePiece matches the longest
    prefix, so it cannot give SentencePiece's ids for every text; ``tokenizer.json`` stays in the
    bundle for callers that only have `tokenizers`. docs/export.md lists the steps for C/C++.
"""

from __future__ import annotations

import html
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError

SPIECE_UNDERLINE = "\u2581"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _ftfy_fix_text(text: str) -> str:
    import ftfy

    return ftfy.fix_text(text)


CLEAN_STEPS: dict[str, Callable[[str], str]] = {
    "ftfy_fix_text": _ftfy_fix_text,
    "html_unescape": html.unescape,
    "strip": str.strip,
    "collapse_whitespace": lambda text: " ".join(text.split()),
    "lower": str.lower,
    "underscore_to_space": lambda text: text.replace("_", " "),
    "remove_ascii_punctuation": lambda text: text.translate(_PUNCTUATION),
}


def make_cleaner(steps: Any) -> Callable[[str], str] | None:
    """One function applying ``steps`` (names of :data:`CLEAN_STEPS`) in order; ``None`` for none.

    Raises :class:`BundleError` for a list that is malformed or names an unknown step."""
    if steps is None:
        return None
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise BundleError(f"the manifest's tokenizer.clean must be a list of step names, got {steps!r}",
                          "re-export the bundle with this version of clipeval")
    unknown = [s for s in steps if s not in CLEAN_STEPS]
    if unknown:
        raise BundleError(f"the manifest's tokenizer.clean names unknown steps: {', '.join(unknown)}",
                          f"known steps: {', '.join(CLEAN_STEPS)}; re-export the bundle with this clipeval")
    if "ftfy_fix_text" in steps:
        try:
            import ftfy  # noqa: F401
        except ImportError:
            raise BundleError("this bundle's texts are cleaned with ftfy, which is not installed",
                              "pip install ftfy") from None
    functions = [CLEAN_STEPS[s] for s in steps]

    def clean(text: str) -> str:
        for f in functions:
            text = f(text)
        return text

    return clean


class SiglipSentencePiece:
    """``SiglipTokenizer`` (transformers, SentencePiece backend) over a bundle's SentencePiece model.

    For each text, as transformers does it:

    1. ``"▁" + text`` with every ``"▁"`` in the text made a space;
    2. split around the added tokens (``added_tokens``: content, lstrip, rstrip, single_word), longest
       first, stripping whitespace beside them as their flags say;
    3. every other piece: lowercase (``do_lower_case``), drop ASCII punctuation, every run of
       whitespace (``\\s+``) made one space, strip; then SentencePiece-encode ``unk_token + piece``
       and drop as many leading pieces as ``unk_token`` alone encodes to;
    4. a leading lone ``"▁"`` before a special token is dropped; ids are the added tokens' ids or
       SentencePiece's; cut to ``context_length - 1``; ``eos`` appended unless the last id is it.
    """

    def __init__(self, model_file: str | Path, spec: dict[str, Any], context_length: int):
        try:
            import sentencepiece as spm
        except ImportError:
            raise BundleError("this bundle tokenises with SentencePiece, which is not installed",
                              "pip install sentencepiece") from None
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as exc:  # sentencepiece raises OSError / RuntimeError for bad files
            raise BundleError(f"cannot read the SentencePiece model {model_file}: {exc}", "re-export the bundle") from None
        try:
            self.unk_token = str(spec["unk_token"])
            self.eos_id = int(spec["eos_id"])
            self.do_lower_case = bool(spec.get("do_lower_case", True))
            self.added = {str(t["content"]): (int(t["id"]), bool(t.get("lstrip")), bool(t.get("rstrip")),
                                               bool(t.get("single_word"))) for t in spec["added_tokens"]}
            self.specials = set(spec.get("special_tokens", [])) | set(self.added)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the manifest's tokenizer.sentencepiece block is malformed ({exc!r})",
                              "re-export the bundle with this version of clipeval") from None
        self.context_length = int(context_length)
        self._unk_length = len(self._sp.encode(self.unk_token, out_type=str))
        names = sorted(self.added, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    def _canonicalize(self, text: str) -> str:
        if self.do_lower_case:
            text = text.lower()
        text = text.translate(_PUNCTUATION)
        text = re.sub(r"\s+", " ", text)
        return text.strip()

    def _pieces(self, text: str) -> list[str]:
        text = self._canonicalize(text)
        tokens = self._sp.encode(self.unk_token + text, out_type=str)
        return tokens[self._unk_length:] if len(tokens) >= self._unk_length else tokens

    def tokenize(self, text: str) -> list[str]:
        """The token strings of ``text`` (steps 1-3 and the first part of 4)."""
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        # the pieces between and including the added tokens, none empty (transformers' Trie.split)
        parts = [p for p in self._split.split(text) if p] if self._split else [text]
        for i, part in enumerate(parts):
            if part not in self.added:
                continue
            _, lstrip, rstrip, single_word = self.added[part]
            left = parts[i - 1] if i > 0 else None
            right = parts[i + 1] if i < len(parts) - 1 else None
            if rstrip and right:
                parts[i + 1] = right.lstrip()
            if lstrip and left:
                parts[i - 1] = left.rstrip()
            if single_word:
                if left and left[-1] != " ":
                    parts[i - 1] += part
                    parts[i] = ""
                elif right and right[0] != " ":
                    parts[i + 1] = part + parts[i + 1]
                    parts[i] = ""
        tokens: list[str] = []
        for part in parts:
            if not part:
                continue
            if part in self.added or part in self.specials:
                tokens.append(part)
            else:
                tokens.extend(self._pieces(part))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.specials:
            tokens = tokens[1:]
        return tokens

    def ids(self, text: str) -> tuple[list[int], bool]:
        """``(ids, truncated)`` of one text, end token included."""
        ids = [self.added[t][0] if t in self.added else self._sp.piece_to_id(t) for t in self.tokenize(text)]
        truncated = len(ids) + 1 > self.context_length
        if truncated:
            ids = ids[: self.context_length - 1]
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids, truncated

    def encode(self, texts: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
        out = [self.ids(t) for t in texts]
        return ([np.asarray(ids, dtype=np.int64) for ids, _ in out],
                np.fromiter((t for _, t in out), dtype=bool, count=len(out)))


def text_preparation(bundle_dir: str | Path, rule: dict[str, Any], context_length: int):
    """``(cleaner, sentencepiece)`` for a manifest ``tokenizer`` block: the clean function (or
    ``None``) and a :class:`SiglipSentencePiece` (or ``None``) when the bundle tokenises with it."""
    cleaner = make_cleaner(rule.get("clean"))
    spec = rule.get("sentencepiece")
    if spec is None:
        return cleaner, None
    if not isinstance(spec, dict) or spec.get("procedure") != "siglip" or not isinstance(spec.get("model"), str):
        raise BundleError(f"the manifest's tokenizer.sentencepiece block is not understood: {spec!r}",
                          "re-export the bundle with this version of clipeval")
    model = Path(bundle_dir) / spec["model"]
    if not model.is_file():
        raise BundleError(f"the bundle's SentencePiece model {model} is missing", "re-export or copy the bundle again")
    return cleaner, SiglipSentencePiece(model, spec, context_length)
