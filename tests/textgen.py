"""Texts for differential tokenizer tests: a seeded generator and a hypothesis strategy.

Both draw from the same pools: whitespace of every kind Python or Unicode knows (and the
look-alikes that are not whitespace: zero-width space, BOM, ``▁``), control characters, runs of
ASCII and Unicode punctuation, words in many scripts, case-folding traps (``İ``, ``ß``, final
sigma, title-case digraphs, ligatures, full-width letters), combining marks, emoji sequences,
HTML entities and mojibake, then whole texts that are empty, whitespace only, or longer than any
context.
"""

from __future__ import annotations

import random

WHITESPACE = [c for c in map(chr, range(0x3001)) if c.isspace()] + ["\u200b", "\ufeff", "\u2581", "\u180e"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x1b", "\x7f", "\x80", "\x9f", "\u200c", "\u200d", "\u200e", "\u200f",
           "\u202a", "\u202e", "\u2060", "\u2066", "\ue000", "\uf8ff", "\ufffd", "\U000e0001"]
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["…", "—", "–", "«", "»", "¿", "¡", "、", "。", "，", "・",
                                                            "‘", "’", "“", "”", "§", "¶", "•", "†", "‰", "€", "£"]
WORDS = [
    "a", "photo", "of", "the", "cat", "Dog", "SNOW", "Red", "car", "playing", "it's", "dog's", "we'll", "I'M",
    "café", "naïve", "résumé", "façade", "Straße", "über", "ÅNGSTRÖM", "élan",
    "ΟΔΟΣ", "Σίσυφος", "ὈΔΥΣΣΕΎΣ", "Русский", "ТЕКСТ", "日本語", "テキスト", "ｶﾀｶﾅ", "两只猫", "雪里玩", "한국어",
    "עברית", "العربية", "हिन्दी", "ไทย", "ქართული",
    "İstanbul", "ǅemal", "ﬁne", "ﬂow", "ＡＢＣ", "ｆｕｌｌ", "ẞ", "ŉ", "Ωmega", "K", "Å",
    "e\u0301", "a\u0308\u0304", "n\u0303o", "\u0301alone",
    "😀", "🐱🐶", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "1️⃣",
    "&amp;", "&lt;b&gt;", "&#39;", "&eacute;", "&nbsp;", "&#x1F600;", "&bogus;",
    "cafÃ©", "â€œquotedâ€\x9d", "Ã¼ber", "ãƒ†ã‚¹ãƒˆ",
    "123", "4.56", "½", "①", "²", "Ⅻ", "٣",
    "snake_case", "CamelCase", "x" * 30, "https://example.com/a?b=c",
    "<start_of_text>", "<end_of_text>", "</s>", "<unk>", "<pad>",
]


def _piece(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return rng.choice(WORDS)
    if r < 0.70:
        return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 4)))
    if r < 0.88:
        return "".join(rng.choice(PUNCTUATION) for _ in range(rng.randint(1, 5)))
    return rng.choice(CONTROL)


def varied_texts(n: int = 600, seed: int = 0, specials: bool = True) -> list[str]:
    """``n`` texts (seeded): a fixed head of whole-text cases, then random mixes of the pools.
    ``specials=False`` leaves out literal special-token strings (``</s>``, ``<unk>`` ...)."""
    rng = random.Random(seed)
    head = ["", " ", "\t\n", " a dog in the snow", "- a dog in the snow", "a dog in the snow ", "A Dog!",
            "  the   cat  ", "\u2581 a \u2581b", "ΟΔΟΣ ΟΔΟΣ.", " ".join(["a long caption that keeps going"] * 20),
            "word " * 200, "".join(rng.choice(WORDS) for _ in range(80))]
    out = list(head)
    while len(out) < n:
        out.append("".join(_piece(rng) for _ in range(rng.randint(1, 10))))
    if not specials:
        for token in ("<start_of_text>", "<end_of_text>", "</s>", "<unk>", "<pad>"):
            out = [t.replace(token, "") for t in out]
    return out


def text_strategy(assigned_only: bool = False):
    """A hypothesis strategy of texts built from the same pools, plus arbitrary code points (never
    a lone surrogate).

    ``assigned_only`` draws those only from characters assigned in this Python's Unicode tables
    (no unassigned or surrogate code points): where a reference splits words with Unicode
    properties of a newer Unicode version than the bundle's tokenizer library knows, characters
    assigned in between are a known, documented difference (docs/export.md)."""
    from hypothesis import strategies as st

    # never lone surrogates (Cs): they are not Unicode text, no reference tokenizer takes them, and
    # clipeval refuses them (tests/test_text_unicode.py)
    chars = st.characters(exclude_categories=("Cn", "Cs") if assigned_only else ("Cs",))
    piece = st.one_of(
        st.sampled_from(WORDS),
        st.lists(st.sampled_from(WHITESPACE), min_size=1, max_size=4).map("".join),
        st.lists(st.sampled_from(PUNCTUATION), min_size=1, max_size=5).map("".join),
        st.sampled_from(CONTROL),
        st.text(alphabet=chars, min_size=1, max_size=6),
    )
    return st.lists(piece, max_size=12).map("".join)
