"""Text normalization before scoring: the same rules for references and hypotheses.

`basic` (the default) folds width and case, drops task tags (`<female>`, `<0.12,0.45>`) and punctuation, and
collapses spaces; apostrophes inside words stay ("don't"). `whisper` applies Whisper's English normalizer
(spelling, numbers, contractions; the `whisper-normalizer` package) after the basic rules, so English WER can
be compared with published Whisper figures. `none` only collapses spaces.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Callable

from ..text import to_half_width

NORMALIZERS = ("basic", "whisper", "none")

_TAG = re.compile(r"<[^<>]*>")
_SPACES = re.compile(r"\s+")


def _strip_punctuation(text: str) -> str:
    out = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch)[0] in "PS":
            inner_apostrophe = (ch in "'\u2019" and 0 < i < len(text) - 1
                                and text[i - 1].isalnum() and text[i + 1].isalnum())
            out.append("'" if inner_apostrophe else " ")
        else:
            out.append(ch)
    return "".join(out)


def basic_normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", to_half_width(text))
    text = _TAG.sub(" ", text).lower()
    return _SPACES.sub(" ", _strip_punctuation(text)).strip()


@lru_cache(maxsize=1)
def _whisper_english() -> Callable[[str], str]:
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as err:  # pragma: no cover - it is a dependency; a broken install says so
        raise RuntimeError("the whisper normalizer needs the package whisper-normalizer: "
                           "pip install whisper-normalizer") from err
    return EnglishTextNormalizer()


def get_normalizer(name: str) -> Callable[[str], str]:
    """The normalizer called `name` (one of NORMALIZERS)."""
    if name == "basic":
        return basic_normalize
    if name == "whisper":
        english = _whisper_english()
        return lambda text: _SPACES.sub(" ", english(_TAG.sub(" ", text))).strip()
    if name == "none":
        return lambda text: _SPACES.sub(" ", text).strip()
    raise ValueError(f"unknown normalizer {name!r}; choose one of {', '.join(NORMALIZERS)}")
