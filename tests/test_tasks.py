import random

import pytest

from osum.data.sample import Sample, Word
from osum.tasks import (
    LABELS,
    UnknownTaskError,
    format_target,
    load_prompts,
    normalize_label,
    parse_output,
)

OSUM_TWELVE = [
    "<TRANSCRIBE>", "<TRANSCRIBE> <ALIGN>", "<TRANSCRIBE> <S2TCHAT>", "<TRANSCRIBE> <EMOTION>", "<TRANSCRIBE> <STYLE>",
    "<TRANSCRIBE> <CAPTION>", "<TRANSCRIBE> <GENDER>", "<TRANSCRIBE> <AGE>", "<TRANSCRIBE> <AGE> <GENDER>",
    "<AGE> <GENDER>", "<TRANSCRIBE> <STYLE> <AGE> <GENDER>", "<STYLE> <AGE> <GENDER>",
]


def full_sample():
    return Sample(key="k1", audio="a.wav", text="你好 world", gender="F", age="7", emotion="angry", style="fairy tale",
                  event="coughing", words=[Word("你好", 0.12, 0.451), Word("world", 0.5, 0.88)],
                  extra={"reply": "I am fine.", "translation": "hello world"})


def test_targets_for_the_twelve_tasks():
    s = full_sample()
    expected = {
        "<TRANSCRIBE>": "你好 world",
        "<TRANSCRIBE> <ALIGN>": "你好<0.12,0.45> world<0.50,0.88>",
        "<TRANSCRIBE> <S2TCHAT>": "你好 world<ANSWER>I am fine.",
        "<TRANSCRIBE> <EMOTION>": "你好 world<anger>",
        "<TRANSCRIBE> <STYLE>": "你好 world<童话故事>",
        "<TRANSCRIBE> <CAPTION>": "你好 world<cough>",
        "<TRANSCRIBE> <GENDER>": "你好 world<female>",
        "<TRANSCRIBE> <AGE>": "你好 world<child>",
        "<TRANSCRIBE> <AGE> <GENDER>": "你好 world<child><female>",
        "<AGE> <GENDER>": "<child><female>",
        "<TRANSCRIBE> <STYLE> <AGE> <GENDER>": "你好 world<童话故事><child><female>",
        "<STYLE> <AGE> <GENDER>": "<童话故事><child><female>",
    }
    assert {t: format_target(s, t) for t in OSUM_TWELVE} == expected
    assert format_target(s, "<TRANSCRIBE><AGE><GENDER>") == expected["<TRANSCRIBE> <AGE> <GENDER>"]
    assert format_target(s, "<TRANSLATE>") == "hello world"


@pytest.mark.parametrize("task", OSUM_TWELVE)
def test_round_trip(task):
    s = full_sample()
    parsed = parse_output(format_target(s, task), task)
    assert not parsed["unparsed"], parsed
    if "<TRANSCRIBE>" in task:
        assert parsed["text"] == "你好 world"
    if "<GENDER>" in task:
        assert parsed["gender"] == "female"
    if "<AGE>" in task:
        assert parsed["age"] == "child"
    if "<ALIGN>" in task:
        assert parsed["words"] == [{"word": "你好", "start": 0.12, "end": 0.45}, {"word": "world", "start": 0.5, "end": 0.88}]
    if "<S2TCHAT>" in task:
        assert parsed["reply"] == "I am fine."


@pytest.mark.parametrize("text,task", [
    ("hello<adlt><female>", "<TRANSCRIBE> <AGE> <GENDER>"),
    ("hello<adult", "<TRANSCRIBE> <AGE>"),
    ("hello", "<TRANSCRIBE> <GENDER>"),
    ("no answer here", "<TRANSCRIBE> <S2TCHAT>"),
    ("hello<x,y> world", "<TRANSCRIBE> <ALIGN>"),
    ("anything", "<DANCE>"),
])
def test_malformed_output_is_reported_never_raised(text, task):
    parsed = parse_output(text, task)
    assert parsed["unparsed"] is True and parsed["raw"] == text


def test_invalid_label_is_none_but_valid_ones_are_kept():
    parsed = parse_output("hello<adlt><female>", "<TRANSCRIBE> <AGE> <GENDER>")
    assert parsed["age"] is None and parsed["gender"] == "female" and parsed["text"] == "hello"


def test_label_normalization_and_missing_fields():
    assert normalize_label("age", 12) == "child" and normalize_label("age", "35") == "adult"
    assert normalize_label("age", 71) == "old" and normalize_label("event", "throat_clearing") == "throat clearing"
    assert normalize_label("emotion", "Happiness") == "happy"
    assert normalize_label("style", "朗读") == "新闻科普" and normalize_label("age", "MIDDLE_AGE") == "adult"
    with pytest.raises(ValueError, match="emotion label 'bored' is not one of sad, anger"):
        normalize_label("emotion", "bored")
    with pytest.raises(ValueError, match="k2: task <TRANSCRIBE> <GENDER> needs the gender label"):
        format_target(Sample(key="k2", audio="a", text="hi"), "<TRANSCRIBE> <GENDER>")
    with pytest.raises(ValueError, match="k3: task <TRANSCRIBE> <ALIGN> needs word timestamps"):
        format_target(Sample(key="k3", audio="a", text="hi"), "<TRANSCRIBE> <ALIGN>")


def test_packaged_and_custom_prompt_files(tmp_path):
    prompts = load_prompts()
    for task in OSUM_TWELVE + ["<TRANSLATE>"]:
        assert prompts.pick(task)
    assert prompts.pick("<TRANSCRIBE><GENDER>") == prompts.pick("asr+gender")
    assert "French" in prompts.pick("<TRANSLATE>", language="French")
    rng = random.Random(0)
    assert {prompts.pick("<TRANSCRIBE>", rng) for _ in range(30)} == set(prompts.prompts["<TRANSCRIBE>"])
    custom = tmp_path / "p.yaml"
    custom.write_text('prompts:\n  "<EMOTION>": ["How does the speaker feel?"]\nlabels:\n  emotion: [bored]\n')
    mine = load_prompts(custom)
    assert mine.pick("<EMOTION>") == "How does the speaker feel?" and "bored" in mine.labels["emotion"]
    assert "bored" not in LABELS["emotion"]
    with pytest.raises(UnknownTaskError, match="no prompt for task <GENDER>"):
        mine.pick("<GENDER>")
    bad = tmp_path / "bad.yaml"
    bad.write_text('prompts:\n  "<DANCE>": ["x"]\n')
    with pytest.raises(ValueError, match="bad.yaml.*unknown task tag '<DANCE>'"):
        load_prompts(bad)
