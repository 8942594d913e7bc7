"""Task tags: the names osum knows, OSUM's spellings, and friendly aliases.

A sample's task is one tag or an ASR+X tag made of several, written as OSUM does ("<TRANSCRIBE> <GENDER>";
matched with or without the spaces); the model answers with the transcript followed by the labels.
Friendly lower-case names ("asr", "gender", "asr+gender") are accepted everywhere and mean the same tags.
"""

from __future__ import annotations

import re
from pathlib import Path

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


# ------------------------------------------------------------------------------------ labels and targets

# Label tag -> the Sample field that holds it.
LABEL_TAGS = {"<GENDER>": "gender", "<AGE>": "age", "<EMOTION>": "emotion", "<STYLE>": "style", "<CAPTION>": "event"}

# OSUM's label sets (from its prompt_config.yaml; the eight styles are its Chinese classes: popular science
# news, horror story, fairy tale, customer service, poetry and prose, audiobook, daily conversation, other).
# Every set is extendable from a prompt file's `labels:` section.
LABELS: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male"),
    "age": ("child", "adult", "old"),
    "emotion": ("sad", "anger", "neutral", "happy", "surprise", "fear", "disgust", "other"),
    "event": ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other"),
    "style": ("新闻科普", "恐怖故事", "童话故事", "客服", "诗歌散文", "有声书", "日常口语", "其他"),
}

# Common data-set spellings -> osum's labels.
LABEL_SYNONYMS: dict[str, dict[str, str]] = {
    "emotion": {"angry": "anger", "happiness": "happy", "joy": "happy", "sadness": "sad", "surprised": "surprise",
                "fearful": "fear", "disgusted": "disgust", "calm": "neutral", "ps": "surprise"},
    "event": {"laughter": "laugh", "laughing": "laugh", "coughing": "cough", "crying": "cry", "sighing": "sigh",
              "sneezing": "sneeze", "throat_clearing": "throat clearing", "scream": "screaming"},
    "gender": {"m": "male", "f": "female"},
    "age": {"elderly": "old", "senior": "old", "kid": "child", "youth": "adult", "middle age": "adult", "middle": "adult"},
    "style": {"朗读": "新闻科普", "news": "新闻科普", "horror story": "恐怖故事", "fairy tale": "童话故事",
              "customer service": "客服", "poetry": "诗歌散文", "audiobook": "有声书", "conversation": "日常口语",
              "other": "其他"},
}

ANSWER_SEPARATOR = "<ANSWER>"  # between the transcript and the chat reply
_WORD_TIME = re.compile(r"(\S+?)<(\d+\.\d\d),(\d+\.\d\d)>")
_TRAILING_LABELS = re.compile(r"((?:<[^<>]*>)+)\s*$")


def normalize_label(kind: str, value: object, labels: dict[str, tuple[str, ...]] = LABELS) -> str:
    """A data set's label -> osum's label of that kind; numeric ages become child (<=12) / adult / old (>=60)."""
    text = str(value).strip().lower().replace("_", " ") if value is not None else ""
    if kind == "age" and text.replace(".", "", 1).isdigit():
        years = float(text)
        return "child" if years <= 12 else "old" if years >= 60 else "adult"
    text = LABEL_SYNONYMS.get(kind, {}).get(text, LABEL_SYNONYMS.get(kind, {}).get(text.replace(" ", "_"), text))
    if text not in labels[kind]:
        raise ValueError(f"{kind} label {value!r} is not one of {', '.join(labels[kind])}")
    return text


def task_parts(task: str) -> list[str]:
    """'<TRANSCRIBE> <AGE> <GENDER>' -> ['<TRANSCRIBE>', '<AGE>', '<GENDER>']."""
    return _TAG.findall(canonical_task(task))


def format_target(sample, task: str, labels: dict[str, tuple[str, ...]] = LABELS) -> str:
    """The text the model learns for `sample` under `task`: transcript, then labels in tag order.

    `hello<adult><female>`, `你好<anger>`; word timestamps (<ALIGN>) as `word<start,end>` in seconds with
    0.01 s resolution (`hello<0.12,0.45> world<0.50,0.88>`); a chat reply follows `<ANSWER>`; a translation
    is the translated text alone.
    """
    parts = task_parts(task)
    out = ""
    if "<TRANSLATE>" in parts:
        translation = sample.extra.get("translation")
        if not translation:
            raise ValueError(f"{sample.key}: task {task} needs extra.translation")
        return str(translation)
    if "<TRANSCRIBE>" in parts:
        if "<ALIGN>" in parts:
            if not sample.words:
                raise ValueError(f"{sample.key}: task {task} needs word timestamps (words)")
            out = " ".join(f"{w.word}<{w.start:.2f},{w.end:.2f}>" for w in sample.words)
        else:
            if not (sample.text or "").strip():
                raise ValueError(f"{sample.key}: task {task} needs a transcript (text)")
            out = sample.text.strip()
    for tag in parts:
        if tag in LABEL_TAGS:
            field = LABEL_TAGS[tag]
            value = getattr(sample, field)
            if value is None:
                raise ValueError(f"{sample.key}: task {task} needs the {field} label")
            try:
                out += f"<{normalize_label(field, value, labels)}>"
            except ValueError as err:
                raise ValueError(f"{sample.key}: {err}") from None
    if "<S2TCHAT>" in parts:
        reply = sample.extra.get("reply")
        if not reply:
            raise ValueError(f"{sample.key}: task {task} needs extra.reply")
        out += f"{ANSWER_SEPARATOR}{reply}"
    return out


def parse_output(text: str, task: str, labels: dict[str, tuple[str, ...]] = LABELS) -> dict:
    """A model's output -> {text, gender, age, emotion, style, event, words, reply, translation, unparsed, raw}.

    Never raises: what cannot be read is left None and `unparsed` is set.
    """
    result: dict = {"text": None, "words": None, "reply": None, "translation": None, "unparsed": False, "raw": text}
    result.update({field: None for field in LABEL_TAGS.values()})
    try:
        parts = task_parts(task)
    except UnknownTaskError:
        result["unparsed"] = True
        return result
    body = text.strip()
    if "<TRANSLATE>" in parts:
        result["translation"] = body
        return result
    if "<S2TCHAT>" in parts:
        body, found, reply = body.partition(ANSWER_SEPARATOR)
        result["reply"] = reply.strip() if found else None
        result["unparsed"] |= not found
    wanted = [LABEL_TAGS[t] for t in parts if t in LABEL_TAGS]
    if wanted:
        match = _TRAILING_LABELS.search(body)
        values = re.findall(r"<([^<>]*)>", match.group(1)) if match else []
        body = body[: match.start()] if match else body
        if len(values) != len(wanted):
            result["unparsed"] = True
        for field, value in zip(wanted, values[-len(wanted):] if len(values) >= len(wanted) else values):
            if value.strip().lower() in labels[field]:
                result[field] = value.strip().lower()
            else:
                result["unparsed"] = True
    if "<ALIGN>" in parts:
        words = [{"word": w, "start": float(a), "end": float(b)} for w, a, b in _WORD_TIME.findall(body)]
        result["words"] = words or None
        result["unparsed"] |= not words
        body = " ".join(w["word"] for w in words) if words else body
    if "<TRANSCRIBE>" in parts:
        result["text"] = body.strip()
    return result


# -------------------------------------------------------------------------------------------------- prompts

DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "default.yaml"


class PromptSet:
    """Task tag -> prompt texts, and the label sets (extended by the prompt file)."""

    def __init__(self, prompts: dict[str, list[str]], labels: dict[str, tuple[str, ...]], source: str = ""):
        self.prompts, self.labels, self.source = prompts, labels, source

    def pick(self, task: str, rng=None, language: str = "English") -> str:
        """A prompt for `task`: the first one, or a random one with `rng` (a random.Random)."""
        tag = canonical_task(task)
        choices = self.prompts.get(tag)
        if not choices:
            raise UnknownTaskError(f"no prompt for task {tag} in {self.source or 'the prompt set'}")
        text = choices[0] if rng is None else rng.choice(choices)
        return text.replace("{language}", language)


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Read a prompt YAML (default: osum's); every tag must be known, every label kind too."""
    import yaml

    path = Path(path) if path else DEFAULT_PROMPTS
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read prompt file {path}: {err}") from err
    prompts: dict[str, list[str]] = {}
    for tag, texts in (data.get("prompts") or {}).items():
        try:
            key = canonical_task(str(tag))
        except UnknownTaskError as err:
            raise ValueError(f"{path}: {err}") from None
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"{path}: task {tag} needs a list of non-empty prompt texts")
        prompts[key] = list(texts)
    labels = dict(LABELS)
    for kind, extra in (data.get("labels") or {}).items():
        if kind not in labels:
            raise ValueError(f"{path}: unknown label kind {kind!r} (known: {', '.join(labels)})")
        labels[kind] = labels[kind] + tuple(str(v).lower() for v in extra if str(v).lower() not in labels[kind])
    return PromptSet(prompts, labels, str(path))
