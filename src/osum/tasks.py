"""Task tags: the names osum knows, OSUM's spellings, and friendly aliases.

A sample's task is one tag or an ASR+X tag made of several, written as OSUM does ("<TRANSCRIBE> <GENDER>";
matched with or without the spaces); the model answers with the transcript followed by the labels.
Friendly lower-case names ("asr", "gender", "asr+gender") are accepted everywhere and mean the same tags.
"""

from __future__ import annotations

import re

# Canonical tag -> what the model produces for it.
TASKS: dict[str, str] = {
    "<TRANSCRIBE>": "transcript",
    "<ALIGN>": "transcript with word timestamps",
    "<GENDER>": "speaker gender",
    "<AGE>": "speaker age group",
    "<EMOTION>": "speech emotion",
    "<STYLE>": "speaking style",
    "<CAPTION>": "vocal event / audio caption",
    "<TRANSLATE>": "speech translation",
    "<S2TCHAT>": "spoken question -> text answer",
}

ALIASES: dict[str, str] = {
    "asr": "<TRANSCRIBE>",
    "transcribe": "<TRANSCRIBE>",
    "asr_timestamps": "<ALIGN>",
    "timestamps": "<ALIGN>",
    "align": "<ALIGN>",
    "gender": "<GENDER>",
    "age": "<AGE>",
    "emotion": "<EMOTION>",
    "ser": "<EMOTION>",
    "style": "<STYLE>",
    "vocal_event": "<CAPTION>",
    "event": "<CAPTION>",
    "caption": "<CAPTION>",
    "translate": "<TRANSLATE>",
    "ast": "<TRANSLATE>",
    "chat": "<S2TCHAT>",
    "s2tchat": "<S2TCHAT>",
}

_TAG = re.compile(r"<[A-Z0-9_]+>")


class UnknownTaskError(ValueError):
    """A task tag osum does not know; the message lists the known ones."""


def canonical_task(tag: str) -> str:
    """'asr+gender', 'asr gender', '<TRANSCRIBE><GENDER>' -> '<TRANSCRIBE> <GENDER>'; unknown parts raise."""
    text = tag.strip()
    if not text:
        raise UnknownTaskError("empty task tag")
    if text.startswith("<"):
        parts = _TAG.findall(text)
        if "".join(parts) != text.replace(" ", ""):
            raise UnknownTaskError(f"malformed task tag {tag!r}: expected tags like <TRANSCRIBE><GENDER>")
    else:
        parts = [ALIASES.get(p.lower(), p) for p in re.split(r"[+\s,]+", text) if p]
    unknown = [p for p in parts if p not in TASKS]
    if unknown:
        known = ", ".join(list(TASKS) + sorted(ALIASES))
        raise UnknownTaskError(f"unknown task tag {unknown[0]!r} in {tag!r}; known: {known}")
    return " ".join(parts)


def is_known_task(tag: str) -> bool:
    try:
        canonical_task(tag)
    except UnknownTaskError:
        return False
    return True


def needs_transcript(tags: tuple[str, ...]) -> bool:
    """True when the sample's targets include a transcript (or no task is named: ASR by default)."""
    if not tags:
        return True
    for tag in tags:
        try:
            parts = _TAG.findall(canonical_task(tag))
        except UnknownTaskError:
            continue
        if "<TRANSCRIBE>" in parts or "<ALIGN>" in parts:
            return True
    return False
