"""Prompt files: task tag -> prompt texts (English and Chinese), plus extra label values.

A prompt file is YAML with a `prompts:` section (task tag -> list of texts; tags as in osum.tasks, with or
without spaces) and an optional `labels:` section (label kind -> values added to OSUM's set). OSUM's own
prompt_config.yaml layout, tags at the top level, is read too. <TRANSLATE> prompts hold `{language}`,
filled with the target language at `pick` time. Training picks a prompt at random; inference the first.
A custom file replaces the packaged prompts as a whole (tasks it leaves out have no prompt); its
`labels:` only add to OSUM's sets. The names here are also importable from osum.tasks.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from .tasks import LABELS, UnknownTaskError, clean_label, canonical_task


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and what is wrong."""


# The packaged prompt file; Path(__file__) works for installed and source-tree packages alike.
DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "default.yaml"
LANGUAGE_SLOT = "{language}"  # where a <TRANSLATE> prompt names the target language


class PromptSet:
    """Task tag -> prompt texts, and the label sets (OSUM's, extended by the prompt file)."""

    def __init__(self, prompts: dict[str, list[str]], labels: dict[str, tuple[str, ...]], source: str = ""):
        self.prompts, self.labels, self.source = prompts, labels, source

    @property
    def tasks(self) -> list[str]:
        """The task tags this set has prompts for."""
        return list(self.prompts)

    def pick(self, task: str, rng: random.Random | None = None, index: int | None = None,
             language: str | None = None) -> str:
        """Prompt number `index`, else a random one with `rng`, else the first; `language` fills {language}."""
        tag = canonical_task(task)
        choices = self.prompts.get(tag)
        if not choices:
            raise UnknownTaskError(f"no prompt for task {tag} in {self.source or 'the prompt set'}")
        if index is not None:
            if not -len(choices) <= index < len(choices):
                raise IndexError(f"prompt index {index} out of range: task {tag} has {len(choices)} prompts")
            text = choices[index]
        else:
            text = choices[0] if rng is None else rng.choice(choices)
        if LANGUAGE_SLOT in text:
            if not language:
                raise ValueError(f"the prompt for task {tag} needs a target language (language=...)")
            text = text.replace(LANGUAGE_SLOT, language)
        return text


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Read a prompt YAML (default: osum's packaged one); every tag and label kind must be known."""
    import yaml

    path = Path(path) if path else DEFAULT_PROMPTS
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise PromptFileError(f"cannot read prompt file {path}: {err}") from err
    if not isinstance(data, dict):
        raise PromptFileError(f"{path}: expected a mapping with 'prompts:' (and optionally 'labels:')")
    # OSUM's own prompt_config.yaml puts the tags at the top level; accept that layout too.
    top = [(k, v) for k, v in data.items() if str(k).startswith("<")]
    unknown = [k for k in data if k not in ("prompts", "labels") and not str(k).startswith("<")]
    if unknown:
        raise PromptFileError(f"{path}: unknown top-level key {unknown[0]!r} (expected prompts, labels)")
    listed = data.get("prompts") or {}
    if not isinstance(listed, dict):
        raise PromptFileError(f"{path}: 'prompts' must map task tags to lists of prompt texts")
    prompts = _read_prompts(top + list(listed.items()), path)
    if not prompts:
        raise PromptFileError(f"{path}: no prompts (expected a 'prompts:' section of task tags)")
    return PromptSet(prompts, _read_labels(data.get("labels") or {}, path), str(path))


def _read_prompts(items: list[tuple[Any, Any]], path: Path) -> dict[str, list[str]]:
    """(tag, texts) pairs -> prompts keyed by canonical tag; raises naming the file and the tag."""
    prompts: dict[str, list[str]] = {}
    for tag, texts in items:
        try:
            key = canonical_task(str(tag))
        except UnknownTaskError as err:
            raise PromptFileError(f"{path}: {err}") from None
        if key in prompts:
            raise PromptFileError(f"{path}: task {tag} is listed twice (as {key})")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise PromptFileError(f"{path}: task {tag} needs a list of non-empty prompt texts")
        if "<TRANSLATE>" in key and not all(LANGUAGE_SLOT in t for t in texts):
            raise PromptFileError(f"{path}: every prompt of task {tag} must contain {LANGUAGE_SLOT}")
        prompts[key] = [t.strip() for t in texts]
    return prompts


def _read_labels(section: Any, path: Path) -> dict[str, tuple[str, ...]]:
    """OSUM's label sets plus the values of the `labels:` section."""
    if not isinstance(section, dict):
        raise PromptFileError(f"{path}: 'labels' must map label kinds to lists of values")
    labels = dict(LABELS)
    for kind, values in section.items():
        if kind not in labels:
            raise PromptFileError(f"{path}: unknown label kind {kind!r} (known: {', '.join(labels)})")
        values = [values] if isinstance(values, str) else values or []
        if not isinstance(values, list):
            raise PromptFileError(f"{path}: labels.{kind} must be a list of values")
        for value in values:
            text = clean_label(value) if not re.search(r"[<>|]", str(value)) else ""
            if not text:
                raise PromptFileError(f"{path}: {kind} label {value!r} must be non-empty, without <, > or |")
            if text not in labels[kind]:
                labels[kind] += (text,)
    return labels
