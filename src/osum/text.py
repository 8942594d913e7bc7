"""Text helpers shared by data preparation and scoring: width folding, mixed CJK/Latin tokens."""

from __future__ import annotations

import re
import unicodedata

# CJK ideographs, kana and Hangul count one token per character; everything else splits on spaces.
_CJK = (
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf"  # CJK Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
)
_CJK_CHAR = re.compile(f"[{_CJK}]")
_MIXED_TOKEN = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def is_cjk(ch: str) -> bool:
    """True for one CJK ideograph, kana or Hangul character (scored one token per character)."""
    return bool(_CJK_CHAR.fullmatch(ch))


def to_half_width(text: str) -> str:
    """Full-width ASCII forms and the ideographic space become their half-width forms."""
    out = []
    for ch in text:
        code = ord(ch)
        if code == 0x3000:
            out.append(" ")
        elif 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        else:
            out.append(ch)
    return "".join(out)


def mixed_tokens(text: str) -> list[str]:
    """Split into scoring tokens: each CJK character alone, other text by whitespace."""
    return _MIXED_TOKEN.findall(text)


def count_tokens(text: str | None) -> int:
    """Number of mixed tokens: the tokenizer-free length used by filters and token budgets."""
    return len(mixed_tokens(text)) if text else 0


def training_text_norm(text: str) -> str:
    """MooER-style training normalization: half width, Latin upper-cased, spaces only between Latin words.

    A space survives only where neither neighbour is a CJK character: "你 好 hello  world" -> "你好HELLO WORLD".
    """
    text = unicodedata.normalize("NFKC", to_half_width(text)).upper()
    pieces = text.split()
    if not pieces:
        return ""
    out = [pieces[0]]
    for piece in pieces[1:]:
        left, right = out[-1][-1], piece[0]
        keep_space = not _CJK_CHAR.match(left) and not _CJK_CHAR.match(right)
        out.append((" " if keep_space else "") + piece)
    return "".join(out)
