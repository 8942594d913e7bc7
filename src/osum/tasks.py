"""Task tags, label sets, and the text the model learns to produce (prompt files: osum.prompt_set).

Tags. A sample's task is one tag or an ASR+X tag made of several, written as OSUM does
("<TRANSCRIBE> <GENDER>"; matched with or without the spaces). Friendly lower-case names ("asr", "gender",
"asr+gender") are accepted everywhere and mean the same tags. `SUPPORTED_TASKS` lists what osum trains:
OSUM's twelve tasks (`OSUM_TASKS`), speech translation `<TRANSLATE>`, and the single-label tasks.

Targets (`format_target`). The transcript comes first, then one `<label>` per label tag, in tag order,
with nothing between them; label-only tasks give the labels alone:

    <TRANSCRIBE>                          你好世界
    <TRANSCRIBE> <ALIGN>                  你好<0.12,0.45> world<0.50,0.88>
    <TRANSCRIBE> <S2TCHAT>                how are you<ANSWER>I am fine, thanks.
    <TRANSCRIBE> <EMOTION>                你好<anger>
    <TRANSCRIBE> <STYLE>                  从前有座山<童话故事>
    <TRANSCRIBE> <CAPTION>                hello<cough>
    <TRANSCRIBE> <GENDER>                 hello<female>
    <TRANSCRIBE> <AGE>                    hello<adult>
    <TRANSCRIBE> <AGE> <GENDER>           hello<adult><female>
    <AGE> <GENDER>                        <adult><female>
    <TRANSCRIBE> <STYLE> <AGE> <GENDER>   hello<客服><adult><female>
    <STYLE> <AGE> <GENDER>                <客服><adult><female>
    <TRANSLATE>                           the translation alone
    <EMOTION> (and the other single tags) <anger>

Word timestamps (<ALIGN>): every word is followed by `<start,end>` in seconds with exactly two decimals
(0.01 s), words separated by one space: `hello<0.12,0.45> world<0.50,0.88>`. Each word stays one piece
with its times right after it, written only with digits, '.', ',' and '<>', which every LLM vocabulary has.
Words may not contain spaces or angle brackets. The parsed transcript is the words joined by spaces.

Chat (<S2TCHAT>): transcript (and labels, if any), then `<ANSWER>`, then the reply; `<S2TCHAT>` alone is
the reply alone. The parser also accepts OSUM's own separator `<开始回答>`.

Labels are normalized to OSUM's sets (`LABELS`) through `LABEL_SYNONYMS` and, for ages, numbers:
child <13 years, adult 13-59, old >=60. Decisions worth knowing: "calm" (RAVDESS) -> neutral, "ps"
(TESS's pleasant surprise) -> surprise, "excited"/"exc" (IEMOCAP) -> happy; Common Voice's age bands
"teens" to "fifties" -> adult, "sixties" and older -> old. A prompt file's `labels:` section extends the sets.

Parsing (`parse_output`) never raises: what cannot be read is left None and `unparsed` is set.

The rest of osum asks this module, never the tags themselves: `has_transcript(task)`, `label_fields(task)`,
`trailing_label_fields(task)` (the labels that end the output: not those of chat or translation), `label_tag`,
and, for training's auxiliary losses, `spoken_transcript` and `label_indices` (read from the sample's fields).
"""

from __future__ import annotations

import re
from typing import Any

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
    "asr": "<TRANSCRIBE>", "transcribe": "<TRANSCRIBE>", "asr_timestamps": "<ALIGN>", "timestamps": "<ALIGN>",
    "align": "<ALIGN>", "gender": "<GENDER>", "age": "<AGE>", "emotion": "<EMOTION>", "ser": "<EMOTION>",
    "style": "<STYLE>", "vocal_event": "<CAPTION>", "event": "<CAPTION>", "caption": "<CAPTION>",
    "translate": "<TRANSLATE>", "ast": "<TRANSLATE>", "chat": "<S2TCHAT>", "s2tchat": "<S2TCHAT>",
}

# OSUM's twelve tasks, in the order of its paper and prompt file.
OSUM_TASKS: tuple[str, ...] = (
    "<TRANSCRIBE>", "<TRANSCRIBE> <ALIGN>", "<TRANSCRIBE> <S2TCHAT>", "<TRANSCRIBE> <EMOTION>",
    "<TRANSCRIBE> <STYLE>", "<TRANSCRIBE> <CAPTION>", "<TRANSCRIBE> <GENDER>", "<TRANSCRIBE> <AGE>",
    "<TRANSCRIBE> <AGE> <GENDER>", "<AGE> <GENDER>", "<TRANSCRIBE> <STYLE> <AGE> <GENDER>",
    "<STYLE> <AGE> <GENDER>",
)
SUPPORTED_TASKS: tuple[str, ...] = OSUM_TASKS + (
    "<TRANSLATE>", "<EMOTION>", "<GENDER>", "<AGE>", "<STYLE>", "<CAPTION>",
)
DEFAULT_TASK = "<TRANSCRIBE>"  # the task of a sample (or an output) that names none

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
    """True when `canonical_task` accepts the tag."""
    try:
        canonical_task(tag)
    except UnknownTaskError:
        return False
    return True


def needs_transcript(tags: tuple[str, ...]) -> bool:
    """True when the sample's targets include a transcript (or no task is named: ASR by default)."""
    if not tags:
        return True
    for tag in tags:  # (no task named: DEFAULT_TASK, a transcription)
        try:
            if has_transcript(tag):
                return True
        except UnknownTaskError:
            continue
    return False


def task_parts(task: str) -> list[str]:
    """'<TRANSCRIBE> <AGE> <GENDER>' -> ['<TRANSCRIBE>', '<AGE>', '<GENDER>']."""
    return _TAG.findall(canonical_task(task))


# The tags whose target holds a transcript: <ALIGN> alone (alias "align") still means one, with word times.
_TRANSCRIPT_TAGS = frozenset({"<TRANSCRIBE>", "<ALIGN>"})
# Tags whose text follows the labels, so that the labels do not end the output.
_TEXT_AFTER_LABELS = frozenset({"<S2TCHAT>", "<TRANSLATE>"})


def has_transcript(task: str) -> bool:
    """True when the task's target holds a transcript (<TRANSCRIBE>, or <ALIGN>: words with their times)."""
    return bool(_TRANSCRIPT_TAGS & set(task_parts(task)))


def label_fields(task: str) -> list[str]:
    """The label fields (Sample fields: gender, age, ...) the task asks for, in its tag order."""
    return _label_fields(task_parts(task))


def trailing_label_fields(task: str) -> list[str]:
    """The label fields whose labels end the task's output, in order; none when text follows them (a chat reply
    after <ANSWER>, a translation), so that they are read from the text rather than filled at the end."""
    parts = task_parts(task)
    return [] if _TEXT_AFTER_LABELS & set(parts) else _label_fields(parts)


def _label_fields(parts: list[str]) -> list[str]:
    return [LABEL_TAGS[t] for t in parts if t in LABEL_TAGS]


def task_file_stem(task: str) -> str:
    """'<TRANSCRIBE> <GENDER>' -> 'transcribe_gender': the task in file names."""
    return "_".join(p.strip("<>").lower() for p in task_parts(task))


# ------------------------------------------------------------------------------------------------ labels

# Label tag -> the Sample field that holds it.
LABEL_TAGS: dict[str, str] = {
    "<GENDER>": "gender", "<AGE>": "age", "<EMOTION>": "emotion", "<STYLE>": "style", "<CAPTION>": "event",
}
# The label fields, in the order results list them.
LABEL_FIELDS: tuple[str, ...] = tuple(LABEL_TAGS.values())

# OSUM's label sets (its conf/prompt_config.yaml). The eight styles are OSUM's Chinese classes, kept in
# Chinese because that is what OSUM's models emit: news & popular science, horror story, fairy tale,
# customer service, poetry & prose, audiobook, everyday speech, other.
LABELS: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male"),
    "age": ("child", "adult", "old"),
    "emotion": ("sad", "anger", "neutral", "happy", "surprise", "fear", "disgust", "other"),
    "event": ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other"),
    "style": ("新闻科普", "恐怖故事", "童话故事", "客服", "诗歌散文", "有声书", "日常口语", "其他"),
}

# Common data-set spellings (after lower-casing, '_'/'-' -> ' ', '<>' / '<||>' stripped) -> osum's labels.
LABEL_SYNONYMS: dict[str, dict[str, str]] = {
    "emotion": {
        "angry": "anger", "ang": "anger", "happiness": "happy", "hap": "happy", "joy": "happy",
        "excited": "happy", "exc": "happy", "sadness": "sad", "surprised": "surprise", "sur": "surprise",
        "ps": "surprise", "fearful": "fear", "fea": "fear", "disgusted": "disgust", "dis": "disgust",
        "calm": "neutral", "neu": "neutral",
    },
    "event": {
        "laughter": "laugh", "laughing": "laugh", "coughing": "cough", "crying": "cry", "sighing": "sigh",
        "sneezing": "sneeze", "throatclearing": "throat clearing", "scream": "screaming",
    },
    "gender": {"m": "male", "man": "male", "f": "female", "woman": "female"},
    "age": {
        "elderly": "old", "senior": "old", "kid": "child", "children": "child", "youth": "adult",
        "middle age": "adult", "teens": "adult", "twenties": "adult", "thirties": "adult",
        "fourties": "adult", "forties": "adult", "fifties": "adult", "sixties": "old", "seventies": "old",
        "eighties": "old", "nineties": "old",
    },
    "style": {
        "news": "新闻科普", "popular science": "新闻科普", "news and science": "新闻科普",
        "horror": "恐怖故事", "horror story": "恐怖故事", "fairy tale": "童话故事", "fairytale": "童话故事",
        "customer service": "客服", "poetry": "诗歌散文", "prose": "诗歌散文", "poetry and prose": "诗歌散文",
        "audiobook": "有声书", "audio book": "有声书", "conversation": "日常口语",
        "daily conversation": "日常口语", "everyday speech": "日常口语", "other": "其他",
    },
}

_AGE_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def clean_label(value: object) -> str:
    """Lower-case, '_'/'-' -> ' ', brackets ('<x>', '<|x|>') stripped, spaces collapsed."""
    text = str(value).strip().lower().strip("<>|").replace("_", " ").replace("-", " ")
    return " ".join(text.split())


def label_tag(value: str) -> str:
    """'female' -> '<female>': how a label is written in targets and outputs."""
    return f"<{value}>"


def label_tags(labels: dict[str, tuple[str, ...]] = LABELS) -> dict[str, tuple[str, ...]]:
    """Per label field, its labels as tags ({'gender': ('<female>', '<male>'), ...}), in the set's order."""
    return {field: tuple(label_tag(value) for value in values) for field, values in labels.items()}


def normalize_label(kind: str, value: object, labels: dict[str, tuple[str, ...]] = LABELS) -> str:
    """A data set's label -> osum's label of that kind; numeric ages become child (<13) / adult / old (>=60)."""
    if kind not in labels:
        raise ValueError(f"unknown label kind {kind!r} (known: {', '.join(labels)})")
    if kind == "age" and _AGE_NUMBER.fullmatch(str(value).strip()):  # before '-' becomes a space
        years = float(str(value))
        return "child" if years < 13 else "old" if years >= 60 else "adult"
    text = clean_label(value) if value is not None else ""
    text = LABEL_SYNONYMS.get(kind, {}).get(text, text)
    if text not in labels[kind]:
        raise ValueError(f"{kind} label {value!r} is not one of {', '.join(labels[kind])}")
    return text


# ----------------------------------------------------------------------------------------------- targets

ANSWER_SEPARATOR = "<ANSWER>"  # between the transcript and the chat reply
_ANSWER_SEPARATORS = (ANSWER_SEPARATOR, "<开始回答>")  # OSUM's own separator is read too
_WORD_TIME = re.compile(r"(\S+?)<(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)>")
# A run of trailing `<label>` groups; `<1.20,1.50>` timestamps are not labels.
_TRAILING_GROUP = re.compile(r"\s*<(?!\s*[\d.]+\s*,\s*[\d.]+\s*>)([^<>]*)>$")


def format_words(words) -> str:
    """[Word('hello', 0.12, 0.45), ...] -> 'hello<0.12,0.45> ...'."""
    return " ".join(f"{w.word}<{w.start:.2f},{w.end:.2f}>" for w in words)


def _transcript(sample, task: str, parts: list[str]) -> str:
    """The transcript part of a target: plain text, or words with timestamps for <ALIGN>."""
    if "<ALIGN>" in parts:
        if not sample.words:
            raise ValueError(f"{sample.key}: task {task} needs word timestamps (the words field)")
        for w in sample.words:
            if not w.word or re.search(r"[\s<>]", w.word):
                raise ValueError(f"{sample.key}: word {w.word!r} cannot be aligned: words may not hold spaces or <>")
            if not 0 <= w.start <= w.end:
                raise ValueError(f"{sample.key}: word {w.word!r} has times {w.start}..{w.end}; need 0 <= start <= end")
        return format_words(sample.words)
    if not (sample.text or "").strip():
        raise ValueError(f"{sample.key}: task {task} needs a transcript (the text field)")
    return sample.text.strip()


def _label(sample, task: str, field: str, labels: dict[str, tuple[str, ...]]) -> str:
    """One `<label>` of a target, normalized; a missing or unknown label raises naming the sample."""
    value = getattr(sample, field)
    if value is None or str(value).strip() == "":
        raise ValueError(f"{sample.key}: task {task} needs the {field} label (the {field} field is empty)")
    try:
        return label_tag(normalize_label(field, value, labels))
    except ValueError as err:
        raise ValueError(f"{sample.key}: {err}") from None


def _extra(sample, task: str, name: str) -> str:
    """A required text from sample.extra (the chat reply, the translation)."""
    value = sample.extra.get(name)
    if value is None or not str(value).strip():
        raise ValueError(f"{sample.key}: task {task} needs extra[{name!r}]")
    return str(value).strip()


def format_target(sample, task: str, labels: dict[str, tuple[str, ...]] = LABELS) -> str:
    """The text the model learns for `sample` (an osum Sample) under `task`; see the module docstring."""
    parts = task_parts(task)
    if "<TRANSLATE>" in parts:
        if len(parts) > 1:
            raise ValueError(f"{sample.key}: task {task}: <TRANSLATE> cannot be combined with other tags")
        return _extra(sample, task, "translation")
    out = _transcript(sample, task, parts) if _TRANSCRIPT_TAGS & set(parts) else ""
    out += "".join(_label(sample, task, field, labels) for field in _label_fields(parts))
    if "<S2TCHAT>" in parts:
        reply = _extra(sample, task, "reply")
        out = f"{out}{ANSWER_SEPARATOR}{reply}" if out else reply
    return out


_MARKUP = re.compile(r"<[^<>]*>")


def spoken_transcript(sample, task: str) -> str | None:
    """The words of the sample's transcript as spoken, for an alignment-free loss (CTC): the words of <ALIGN>
    without their times, else its text; `<...>` tags (markup such as <unk>, never spoken) left out, spaces
    collapsed. None when the task's target has no transcript. Call after `format_target` accepted the sample."""
    parts = task_parts(task)
    if not _TRANSCRIPT_TAGS & set(parts):
        return None
    text = " ".join(w.word for w in sample.words) if "<ALIGN>" in parts else sample.text
    return " ".join(_MARKUP.sub(" ", text).split())


def label_indices(sample, task: str, labels: dict[str, tuple[str, ...]] = LABELS) -> dict[str, int]:
    """Per label field the task asks for, the position of the sample's label in `labels[field]` (the label its
    target ends with). Call after `format_target` accepted the sample."""
    return {field: labels[field].index(normalize_label(field, getattr(sample, field), labels))
            for field in _label_fields(task_parts(task))}


# ------------------------------------------------------------------------------------------------ parser

def parse_words(text: str) -> tuple[list[dict[str, Any]] | None, bool]:
    """'hello<0.12,0.45> world<0.50,0.88>' -> ([{word, start, end}, ...], complete)."""
    words = [{"word": w, "start": float(a), "end": float(b)} for w, a, b in _WORD_TIME.findall(text)]
    leftover = _WORD_TIME.sub("", text).strip()
    ordered = all(w["start"] <= w["end"] for w in words)
    return (words or None), bool(words) and not leftover and ordered


def split_labels(body: str, limit: int) -> tuple[str, list[str], bool]:
    """'hello<adult><female>' -> ('hello', ['adult', 'female'], closed): at most `limit` trailing groups.

    A dangling '<adu' at the end is cut off (closed=False); groups beyond `limit` stay in the transcript,
    which may itself end in brackets ('<unk>').
    """
    dangling = re.search(r"<[^<>]*$", body)
    if dangling:
        body = body[: dangling.start()]
    body = body.rstrip()
    values: list[str] = []
    while len(values) < limit:
        match = _TRAILING_GROUP.search(body)
        if match is None:
            break
        values.insert(0, match.group(1))
        body = body[: match.start()]
    return body, values, dangling is None


def _assign_labels(values: list[str], wanted: list[str], labels: dict[str, tuple[str, ...]]) -> tuple[dict, bool]:
    """Match the label values to the wanted fields; (field -> label or None, all read cleanly)."""
    values = [" ".join(v.lower().split()) for v in values]
    found: dict[str, str | None] = {field: None for field in wanted}
    if len(values) == len(wanted):
        for field, value in zip(wanted, values):
            found[field] = value if value in labels[field] else None
        return found, all(v is not None for v in found.values())
    # Too few labels: keep each one that fits a still-empty field, in order.
    start = 0
    for value in values:
        for i in range(start, len(wanted)):
            if value in labels[wanted[i]]:
                found[wanted[i]], start = value, i + 1
                break
    return found, False


def _empty_result(text: Any) -> dict[str, Any]:
    """Every key parse_output returns, unset."""
    result = {"text": None, "words": None, "reply": None, "translation": None, "unparsed": False, "raw": text}
    result.update({field: None for field in LABEL_FIELDS})
    return result


def parse_output(text: str, task: str, labels: dict[str, tuple[str, ...]] = LABELS) -> dict[str, Any]:
    """A model's output -> {text, gender, age, emotion, style, event, words, reply, translation, unparsed, raw}."""
    result = _empty_result(text)
    try:
        parts = task_parts(task)
    except (UnknownTaskError, AttributeError, TypeError):
        parts = None
    if parts is None or not isinstance(text, str):
        result["unparsed"] = True
        return result
    body = text.strip()
    if "<TRANSLATE>" in parts:
        result["translation"] = body or None
        result["unparsed"] = not body or len(parts) > 1
        return result
    transcribing = bool(_TRANSCRIPT_TAGS & set(parts))
    wanted = _label_fields(parts)
    if "<S2TCHAT>" in parts:
        body, reply = _split_reply(body, needs_separator=transcribing or bool(wanted))
        result["reply"] = reply
        result["unparsed"] |= reply is None
    if wanted:
        body, values, closed = split_labels(body, len(wanted))
        found, clean = _assign_labels(values, wanted, labels)
        result.update(found)
        result["unparsed"] |= not (clean and closed)
    if "<ALIGN>" in parts:
        words, complete = parse_words(body)
        result["words"] = words
        result["unparsed"] |= not complete
        body = " ".join(w["word"] for w in words) if words else body
    if transcribing:
        result["text"] = body.strip()
    elif body.strip():  # a label-only task answered with more than labels
        result["unparsed"] = True
    return result


def _split_reply(body: str, needs_separator: bool) -> tuple[str, str | None]:
    """'question<ANSWER>reply' -> ('question', 'reply'); without a separator the reply is None."""
    for separator in _ANSWER_SEPARATORS:
        head, found, reply = body.partition(separator)
        if found:
            return head.strip(), reply.strip() or None
    if needs_separator:
        return body, None
    return "", body or None  # <S2TCHAT> alone: the whole output is the reply
