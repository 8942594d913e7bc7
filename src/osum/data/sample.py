"""The one record every reader produces and every writer consumes."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Union

# A path (or a Kaldi `command |`), or the encoded bytes of an audio file (from a shard).
AudioRef = Union[str, bytes]

# The labels a task can ask for (each has a label set in osum.tasks), and with the speaker every label field a
# format may carry, in the order writers emit them.
CLASS_FIELDS = ("gender", "age", "emotion", "style", "event")
LABEL_FIELDS = ("speaker", *CLASS_FIELDS)


@dataclass
class Word:
    """A word with its start and end time in seconds."""

    word: str
    start: float
    end: float


@dataclass
class Sample:
    """One utterance: where its audio is, how long it is, and everything known about it.

    `audio` is a path, a Kaldi pipe command, or encoded bytes; `audio_format` names the encoding of bytes
    (the extension, e.g. "flac"). `start`/`end` cut a segment (seconds) out of a longer recording.
    `tasks` holds task tags (one per training target, e.g. "<TRANSCRIBE>" or "<TRANSCRIBE><GENDER>").
    """

    key: str
    audio: AudioRef
    audio_format: str | None = None
    start: float | None = None
    end: float | None = None
    duration: float | None = None
    text: str | None = None
    tasks: tuple[str, ...] = ()
    lang: str | None = None
    speaker: str | None = None
    gender: str | None = None
    age: str | None = None
    emotion: str | None = None
    style: str | None = None
    event: str | None = None
    words: list[Word] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "Sample":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def labels(self) -> dict[str, str]:
        """The label fields that are set."""
        return {name: getattr(self, name) for name in LABEL_FIELDS if getattr(self, name) is not None}


def tasks_from(value: Any) -> tuple[str, ...]:
    """Task tags from a list, or from a string holding one tag per line or `;`-separated tags.

    A tag may contain spaces (OSUM writes "<TRANSCRIBE> <GENDER>"), so spaces never separate tasks.
    """
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in re.split(r"[;\n]", value) if t.strip())
    return tuple(str(v).strip() for v in value if str(v).strip())


def tasks_to_text(tasks: tuple[str, ...], separator: str = "; ") -> str:
    """The one-line (or one-member) form of several task tags, read back by `tasks_from`."""
    return separator.join(tasks)


def normalize_gender(value: Any) -> str | None:
    """'m', 'M', 'male', 'male_masculine' -> 'male'; likewise female; anything else kept lower-cased."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if not text:
        return None
    if text in {"m", "male", "man", "male_masculine", "<male>"}:
        return "male"
    if text in {"f", "female", "woman", "female_feminine", "<female>"}:
        return "female"
    return text


def label_str(value: Any) -> str | None:
    """Labels are strings inside osum (ages may arrive as numbers); empty means absent."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def words_from_json(value: Any) -> list[Word] | None:
    """Word timestamps from [{word, start, end}, ...] or [[word, start, end], ...]."""
    if not value:
        return None
    words = []
    for item in value:
        if isinstance(item, dict):
            words.append(Word(str(item["word"]), float(item["start"]), float(item["end"])))
        else:
            word, start, end = item
            words.append(Word(str(word), float(start), float(end)))
    return words


def words_to_json(words: list[Word] | None) -> list[dict[str, Any]] | None:
    """The JSON form of word timestamps."""
    if not words:
        return None
    return [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]
