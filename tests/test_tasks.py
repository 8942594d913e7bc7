import random
import re

import pytest

from osum.data.sample import Sample, Word
from osum.prompt_set import DEFAULT_PROMPTS, PromptFileError, load_prompts
from osum.tasks import (
    LABEL_FIELDS,
    LABELS,
    OSUM_TASKS,
    SUPPORTED_TASKS,
    UnknownTaskError,
    canonical_task,
    format_target,
    has_transcript,
    is_known_task,
    label_fields,
    label_indices,
    label_tag,
    label_tags,
    normalize_label,
    parse_output,
    spoken_transcript,
    task_file_stem,
    trailing_label_fields,
)

TWELVE = [
    "<TRANSCRIBE>", "<TRANSCRIBE> <ALIGN>", "<TRANSCRIBE> <S2TCHAT>", "<TRANSCRIBE> <EMOTION>", "<TRANSCRIBE> <STYLE>",
    "<TRANSCRIBE> <CAPTION>", "<TRANSCRIBE> <GENDER>", "<TRANSCRIBE> <AGE>", "<TRANSCRIBE> <AGE> <GENDER>",
    "<AGE> <GENDER>", "<TRANSCRIBE> <STYLE> <AGE> <GENDER>", "<STYLE> <AGE> <GENDER>",
]


def full_sample(**changes):
    """A sample with every label, words, a reply and a translation, in data-set spellings."""
    sample = Sample(key="k1", audio="a.wav", text="你好 world", gender="F", age="7", emotion="angry",
                    style="fairy tale", event="coughing", words=[Word("你好", 0.12, 0.451), Word("world", 0.5, 0.88)],
                    extra={"reply": "I am fine.", "translation": "hello world"})
    return sample.replace(**changes)


# ------------------------------------------------------------------------------------------------ tags

def test_the_twelve_osum_tasks_and_the_extra_ones_are_supported():
    assert list(OSUM_TASKS) == TWELVE
    singles = {"<TRANSLATE>", "<EMOTION>", "<GENDER>", "<AGE>", "<STYLE>", "<CAPTION>"}
    assert set(SUPPORTED_TASKS) == set(TWELVE) | singles
    for task in SUPPORTED_TASKS:
        assert canonical_task(task) == task
        assert canonical_task(task.replace(" ", "")) == task  # with or without spaces
        assert is_known_task(task)


def test_aliases_and_spacing():
    assert canonical_task("  <TRANSCRIBE>   <STYLE><AGE> <GENDER> ") == "<TRANSCRIBE> <STYLE> <AGE> <GENDER>"
    assert canonical_task("asr+age+gender") == canonical_task("ASR, age, gender") == "<TRANSCRIBE> <AGE> <GENDER>"
    assert canonical_task("chat") == "<S2TCHAT>" and canonical_task("ast") == "<TRANSLATE>"
    assert not is_known_task("<TRANSCRIBE> <DANCE>") and not is_known_task("")


# --------------------------------------------------------------------------------------------- targets

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
    assert {t: format_target(s, t) for t in TWELVE} == expected
    assert format_target(s, "<TRANSCRIBE><AGE><GENDER>") == expected["<TRANSCRIBE> <AGE> <GENDER>"]
    assert format_target(s, "asr+age+gender") == expected["<TRANSCRIBE> <AGE> <GENDER>"]


def test_targets_for_translation_single_labels_and_other_combinations():
    s = full_sample()
    assert format_target(s, "<TRANSLATE>") == "hello world"
    singles = {"<EMOTION>": "<anger>", "<GENDER>": "<female>", "<AGE>": "<child>", "<STYLE>": "<童话故事>",
               "<CAPTION>": "<cough>"}
    assert {t: format_target(s, t) for t in singles} == singles
    assert format_target(s, "<GENDER> <AGE>") == "<female><child>"  # labels follow the tag order
    assert format_target(s, "align") == "你好<0.12,0.45> world<0.50,0.88>"  # <ALIGN> alone still transcribes
    assert format_target(s, "<S2TCHAT>") == "I am fine."
    assert format_target(s, "<TRANSCRIBE> <ALIGN> <GENDER>") == "你好<0.12,0.45> world<0.50,0.88><female>"


def test_what_a_task_asks_for():
    """The questions the rest of osum asks of a task instead of reading its tags."""
    transcribing = {"<TRANSCRIBE>", "<TRANSCRIBE> <ALIGN>", "align", "<TRANSCRIBE> <S2TCHAT>", "asr+gender",
                    "<TRANSCRIBE> <STYLE> <AGE> <GENDER>"}
    for task in transcribing:
        assert has_transcript(task), task
    for task in ("<AGE> <GENDER>", "<TRANSLATE>", "<S2TCHAT>", "<EMOTION>", "<CAPTION>"):
        assert not has_transcript(task), task
    assert label_fields("<TRANSCRIBE> <STYLE> <AGE> <GENDER>") == ["style", "age", "gender"]
    assert label_fields("caption") == ["event"] and label_fields("<TRANSCRIBE> <ALIGN>") == []
    assert label_fields("<TRANSCRIBE> <GENDER> <S2TCHAT>") == ["gender"]
    # Labels are filled at the end of the output only when no reply or translation follows them.
    assert trailing_label_fields("<GENDER> <AGE>") == ["gender", "age"]
    assert trailing_label_fields("<TRANSCRIBE> <GENDER> <S2TCHAT>") == []
    assert LABEL_FIELDS == ("gender", "age", "emotion", "style", "event")
    assert label_tag("throat clearing") == "<throat clearing>"
    assert label_tags({"gender": ("female", "male")}) == {"gender": ("<female>", "<male>")}
    assert task_file_stem("asr+age+gender") == "transcribe_age_gender"


def test_auxiliary_targets_come_from_the_sample_fields():
    """What the CTC and utterance heads learn is read from the sample, and agrees with the rendered target."""
    s = full_sample(text="  你好 <unk>  world ")
    assert spoken_transcript(s, "<TRANSCRIBE> <GENDER>") == "你好 world"  # markup is not spoken
    assert spoken_transcript(s, "<TRANSCRIBE> <ALIGN>") == "你好 world"  # the aligned words, without times
    assert spoken_transcript(s, "<TRANSCRIBE> <S2TCHAT>") == "你好 world"  # not the reply
    for task in ("<AGE> <GENDER>", "<TRANSLATE>", "<S2TCHAT>", "<EMOTION>"):
        assert spoken_transcript(s, task) is None
    assert label_indices(s, "<TRANSCRIBE> <STYLE> <AGE> <GENDER>") == {
        "style": LABELS["style"].index("童话故事"), "age": 0, "gender": 0}
    assert label_indices(s, "<TRANSCRIBE>") == {}
    target = format_target(s, "<TRANSCRIBE> <AGE> <GENDER>")
    tags = label_tags(LABELS)
    indices = label_indices(s, "<TRANSCRIBE> <AGE> <GENDER>")
    assert target.endswith(tags["age"][indices["age"]] + tags["gender"][indices["gender"]])
    extended = dict(LABELS, style=LABELS["style"] + ("slow",))
    assert label_indices(full_sample(style="slow"), "<STYLE>", extended) == {"style": len(LABELS["style"])}


def test_missing_fields_raise_naming_the_sample_and_the_field():
    bare = Sample(key="k2", audio="a", text="hi")
    cases = {
        "<TRANSCRIBE> <GENDER>": r"k2: task <TRANSCRIBE> <GENDER> needs the gender label",
        "<AGE> <GENDER>": r"k2: task <AGE> <GENDER> needs the age label",
        "<TRANSCRIBE> <CAPTION>": r"k2: .*needs the event label",
        "<TRANSCRIBE> <ALIGN>": r"k2: task <TRANSCRIBE> <ALIGN> needs word timestamps \(the words field\)",
        "<TRANSCRIBE> <S2TCHAT>": r"k2: task <TRANSCRIBE> <S2TCHAT> needs extra\['reply'\]",
        "<TRANSLATE>": r"k2: task <TRANSLATE> needs extra\['translation'\]",
    }
    for task, message in cases.items():
        with pytest.raises(ValueError, match=message):
            format_target(bare, task)
    with pytest.raises(ValueError, match=r"k3: task <TRANSCRIBE> needs a transcript \(the text field\)"):
        format_target(Sample(key="k3", audio="a", text="  "), "<TRANSCRIBE>")
    with pytest.raises(ValueError, match=r"k1: emotion label 'bored' is not one of sad, anger, neutral"):
        format_target(full_sample(emotion="bored"), "<TRANSCRIBE> <EMOTION>")
    with pytest.raises(ValueError, match=r"k1: word 'new york' cannot be aligned"):
        format_target(full_sample(words=[Word("new york", 0.0, 1.0)]), "<TRANSCRIBE> <ALIGN>")
    with pytest.raises(ValueError, match=r"k1: word 'x' has times 2.0..1.0"):
        format_target(full_sample(words=[Word("x", 2.0, 1.0)]), "<TRANSCRIBE> <ALIGN>")
    with pytest.raises(ValueError, match="cannot be combined"):
        format_target(full_sample(), "<TRANSCRIBE> <TRANSLATE>")
    with pytest.raises(UnknownTaskError, match="<DANCE>"):
        format_target(full_sample(), "<DANCE>")


# ---------------------------------------------------------------------------------------------- labels

@pytest.mark.parametrize("kind,value,label", [
    ("emotion", "Happiness", "happy"), ("emotion", "angry", "anger"), ("emotion", "surprised", "surprise"),
    ("emotion", "fearful", "fear"), ("emotion", "disgusted", "disgust"), ("emotion", "calm", "neutral"),
    ("emotion", "<|HAPPY|>", "happy"), ("emotion", "NEU", "neutral"), ("emotion", "other", "other"),
    ("event", "laughter", "laugh"), ("event", "coughing", "cough"), ("event", "Throat-Clearing", "throat clearing"),
    ("event", "throat_clearing", "throat clearing"), ("event", "<Sneeze>", "sneeze"),
    ("gender", "M", "male"), ("gender", "woman", "female"), ("gender", "FEMALE", "female"),
    ("age", 12, "child"), ("age", "12.5", "child"), ("age", 13, "adult"), ("age", "59", "adult"), ("age", 60.0, "old"),
    ("age", "MIDDLE_AGE", "adult"), ("age", "sixties", "old"), ("age", "teens", "adult"), ("age", "Old", "old"),
    ("style", "童话故事", "童话故事"), ("style", "customer_service", "客服"), ("style", "News", "新闻科普"),
    ("style", "audiobook", "有声书"), ("style", "other", "其他"),
])
def test_label_normalization(kind, value, label):
    assert normalize_label(kind, value) == label


def test_label_sets_are_osums():
    assert LABELS["emotion"] == ("sad", "anger", "neutral", "happy", "surprise", "fear", "disgust", "other")
    assert LABELS["event"] == ("laugh", "cough", "cry", "screaming", "sigh", "throat clearing", "sneeze", "other")
    assert LABELS["gender"] == ("female", "male") and LABELS["age"] == ("child", "adult", "old")
    assert LABELS["style"] == ("新闻科普", "恐怖故事", "童话故事", "客服", "诗歌散文", "有声书", "日常口语", "其他")


def test_unknown_labels_raise_naming_kind_value_and_choices():
    with pytest.raises(ValueError, match=r"emotion label 'bored' is not one of sad, anger, .*, other"):
        normalize_label("emotion", "bored")
    with pytest.raises(ValueError, match=r"age label '-3' is not one of child, adult, old"):
        normalize_label("age", "-3")
    with pytest.raises(ValueError, match=r"unknown label kind 'mood'"):
        normalize_label("mood", "happy")


# --------------------------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("task", list(SUPPORTED_TASKS) + ["<TRANSCRIBE> <ALIGN> <GENDER>", "<S2TCHAT>",
                                                           "<TRANSCRIBE> <S2TCHAT> <EMOTION>"])
def test_round_trip(task):
    s = full_sample()
    target = format_target(s, task)
    parsed = parse_output(target, task)
    assert not parsed["unparsed"], parsed
    assert parsed["raw"] == target
    parts = task.split()
    expect = {
        "text": "你好 world" if "<TRANSCRIBE>" in parts else None,
        "gender": "female" if "<GENDER>" in parts else None,
        "age": "child" if "<AGE>" in parts else None,
        "emotion": "anger" if "<EMOTION>" in parts else None,
        "style": "童话故事" if "<STYLE>" in parts else None,
        "event": "cough" if "<CAPTION>" in parts else None,
        "words": [{"word": "你好", "start": 0.12, "end": 0.45}, {"word": "world", "start": 0.5, "end": 0.88}]
        if "<ALIGN>" in parts else None,
        "reply": "I am fine." if "<S2TCHAT>" in parts else None,
        "translation": "hello world" if "<TRANSLATE>" in parts else None,
    }
    assert {k: parsed[k] for k in expect} == expect


@pytest.mark.parametrize("text,task", [
    ("hello<adlt><female>", "<TRANSCRIBE> <AGE> <GENDER>"),   # invalid label
    ("hello<adult", "<TRANSCRIBE> <AGE>"),                    # missing closing bracket
    ("hello<adult><fem", "<TRANSCRIBE> <AGE> <GENDER>"),
    ("hello", "<TRANSCRIBE> <GENDER>"),                       # no label at all
    ("<female>", "<AGE> <GENDER>"),                           # too few labels
    ("I think <adult><male>", "<AGE> <GENDER>"),              # chatter around labels
    ("no answer here", "<TRANSCRIBE> <S2TCHAT>"),             # no separator
    ("question<ANSWER>", "<TRANSCRIBE> <S2TCHAT>"),           # empty reply
    ("hello<x,y> world", "<TRANSCRIBE> <ALIGN>"),             # garbage timestamps
    ("hello<0.12,0.45> world", "<TRANSCRIBE> <ALIGN>"),       # a word without times
    ("hello<0.90,0.45>", "<TRANSCRIBE> <ALIGN>"),             # end before start
    ("hello<0.12,0.4", "<TRANSCRIBE> <ALIGN>"),               # cut off
    ("", "<TRANSCRIBE> <ALIGN>"),
    ("", "<TRANSLATE>"),
    ("<<<>>><", "<STYLE> <AGE> <GENDER>"),
    ("anything", "<DANCE>"),                                  # unknown task
    ("anything", ""),
    (None, "<TRANSCRIBE>"),                                   # not even text
    ("anything", None),
])
def test_malformed_output_is_reported_never_raised(text, task):
    parsed = parse_output(text, task)
    assert parsed["unparsed"] is True and parsed["raw"] == text
    assert set(parsed) == {"text", "gender", "age", "emotion", "style", "event", "words", "reply", "translation",
                           "unparsed", "raw"}


def test_malformed_output_keeps_what_it_could():
    parsed = parse_output("hello<adlt><female>", "<TRANSCRIBE> <AGE> <GENDER>")
    assert parsed["age"] is None and parsed["gender"] == "female" and parsed["text"] == "hello"
    parsed = parse_output("hello<adult", "<TRANSCRIBE> <AGE>")
    assert parsed["text"] == "hello" and parsed["age"] is None
    parsed = parse_output("<female>", "<AGE> <GENDER>")
    assert parsed["gender"] == "female" and parsed["age"] is None
    parsed = parse_output("hello<0.12,0.45> world", "<TRANSCRIBE> <ALIGN>")
    assert parsed["words"] == [{"word": "hello", "start": 0.12, "end": 0.45}]
    parsed = parse_output("no answer here", "<TRANSCRIBE> <S2TCHAT>")
    assert parsed["text"] == "no answer here" and parsed["reply"] is None


def test_parser_tolerates_case_spaces_and_osum_spellings():
    parsed = parse_output("hello <ADULT> <FEMALE>", "<TRANSCRIBE> <AGE> <GENDER>")
    assert (parsed["text"], parsed["age"], parsed["gender"], parsed["unparsed"]) == ("hello", "adult", "female", False)
    parsed = parse_output("你好<开始回答>你好！", "<TRANSCRIBE> <S2TCHAT>")  # OSUM's own separator
    assert (parsed["text"], parsed["reply"], parsed["unparsed"]) == ("你好", "你好！", False)
    parsed = parse_output("the <unk> token<male>", "<TRANSCRIBE> <GENDER>")  # brackets in the transcript stay
    assert (parsed["text"], parsed["gender"], parsed["unparsed"]) == ("the <unk> token", "male", False)
    parsed = parse_output("a<0.1,0.2>b<0.3,0.45>", "<TRANSCRIBE> <ALIGN>")  # any decimals, no spaces
    assert parsed["words"] == [{"word": "a", "start": 0.1, "end": 0.2}, {"word": "b", "start": 0.3, "end": 0.45}]
    assert parsed["text"] == "a b" and not parsed["unparsed"]


def test_parsed_timestamps_have_centisecond_resolution():
    s = full_sample(words=[Word("w", 1.234, 12.3456), Word("v", 100.0, 100.005)])
    target = format_target(s, "<TRANSCRIBE> <ALIGN>")
    assert target == "w<1.23,12.35> v<100.00,100.00>"
    words = parse_output(target, "<TRANSCRIBE> <ALIGN>")["words"]
    assert [(w["start"], w["end"]) for w in words] == [(1.23, 12.35), (100.0, 100.0)]


# --------------------------------------------------------------------------------------------- prompts

def test_packaged_prompts_cover_every_task_in_english_and_chinese():
    prompts = load_prompts()
    assert prompts.source == str(DEFAULT_PROMPTS)
    assert set(prompts.tasks) == set(SUPPORTED_TASKS)
    for task in SUPPORTED_TASKS:
        texts = prompts.prompts[task]
        assert len(texts) >= 4, task
        assert any(t[0].isascii() for t in texts), f"{task}: no English prompt"  # style names stay Chinese
        assert any(re.match(r"[\u4e00-\u9fff]", t) for t in texts), f"{task}: no Chinese prompt"
    assert prompts.labels == LABELS


def test_pick_is_deterministic_by_default_and_random_with_rng():
    prompts = load_prompts()
    first = prompts.prompts["<TRANSCRIBE> <GENDER>"][0]
    assert prompts.pick("<TRANSCRIBE> <GENDER>") == prompts.pick("asr+gender") == first
    assert prompts.pick("<TRANSCRIBE><GENDER>", index=1) == prompts.prompts["<TRANSCRIBE> <GENDER>"][1]
    rng = random.Random(0)
    assert {prompts.pick("<TRANSCRIBE>", rng) for _ in range(60)} == set(prompts.prompts["<TRANSCRIBE>"])
    with pytest.raises(IndexError, match=r"prompt index 99 out of range: task <TRANSCRIBE> has \d+ prompts"):
        prompts.pick("<TRANSCRIBE>", index=99)
    with pytest.raises(UnknownTaskError, match="<DANCE>"):
        prompts.pick("<DANCE>")


def test_translation_prompt_takes_the_target_language():
    prompts = load_prompts()
    assert prompts.pick("<TRANSLATE>", language="French") == "Translate the speech into French."
    assert "德语" in prompts.pick("<TRANSLATE>", index=2, language="德语")
    with pytest.raises(ValueError, match="<TRANSLATE> needs a target language"):
        prompts.pick("<TRANSLATE>")


def test_custom_prompt_file_with_an_extra_label(tmp_path):
    custom = tmp_path / "p.yaml"
    custom.write_text('prompts:\n  "<TRANSCRIBE><EMOTION>": ["Transcribe, then the feeling."]\n'
                      "labels:\n  emotion: [Bored]\n  event: breathing\n", encoding="utf-8")
    mine = load_prompts(custom)
    assert mine.pick("asr+emotion") == "Transcribe, then the feeling." and mine.source == str(custom)
    assert mine.labels["emotion"] == LABELS["emotion"] + ("bored",) and "breathing" in mine.labels["event"]
    assert "bored" not in LABELS["emotion"]  # the built-in sets are untouched
    s = full_sample(emotion="bored")
    target = format_target(s, "<TRANSCRIBE> <EMOTION>", mine.labels)
    assert target == "你好 world<bored>"
    assert parse_output(target, "<TRANSCRIBE> <EMOTION>", mine.labels)["emotion"] == "bored"
    assert parse_output(target, "<TRANSCRIBE> <EMOTION>")["unparsed"]  # not a label without the file
    with pytest.raises(UnknownTaskError, match=rf"no prompt for task <GENDER> in {re.escape(str(custom))}"):
        mine.pick("<GENDER>")


def test_osum_layout_with_tags_at_the_top_level(tmp_path):
    path = tmp_path / "osum.yaml"
    path.write_text('<TRANSCRIBE>:\n  - 转写。\n"<AGE> <GENDER>":\n  - 年龄和性别？\n', encoding="utf-8")
    prompts = load_prompts(path)
    assert prompts.pick("<AGE><GENDER>") == "年龄和性别？" and prompts.tasks == ["<TRANSCRIBE>", "<AGE> <GENDER>"]


@pytest.mark.parametrize("content,message", [
    ('prompts:\n  "<DANCE>": ["x"]\n', r"unknown task tag '<DANCE>'"),
    ('prompts:\n  "<TRANSCRIBE> <DANCE>": ["x"]\n', r"unknown task tag '<DANCE>' in '<TRANSCRIBE> <DANCE>'"),
    ('prompts:\n  "<TRANSCRIBE>": []\n', r"task <TRANSCRIBE> needs a list of non-empty prompt texts"),
    ('prompts:\n  "<TRANSLATE>": ["Translate it."]\n', r"every prompt of task <TRANSLATE> must contain \{language\}"),
    ('prompts:\n  "<AGE><GENDER>": ["a"]\n  "<AGE> <GENDER>": ["b"]\n', r"listed twice"),
    ('prompts:\n  "<AGE>": ["a"]\nlabels:\n  mood: [x]\n', r"unknown label kind 'mood'"),
    ('prompts:\n  "<AGE>": ["a"]\nlabels:\n  age: ["<teen>"]\n', r"age label '<teen>' must be non-empty"),
    ('prompt:\n  "<AGE>": ["a"]\n', r"unknown top-level key 'prompt'"),
    ('labels:\n  age: [teen]\n', r"no prompts"),
    ("- a\n- b\n", r"expected a mapping"),
    ("prompts: [oops\n", r"cannot read prompt file"),
])
def test_bad_prompt_files_raise_naming_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptFileError, match=rf"{re.escape(str(path))}.*{message}|{message}.*{re.escape(str(path))}"):
        load_prompts(path)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(ValueError, match=rf"cannot read prompt file {re.escape(str(tmp_path / 'nope.yaml'))}"):
        load_prompts(tmp_path / "nope.yaml")


def test_the_label_fields_of_the_grammar_are_the_sample_fields():
    # models/ validates utterance_labels against data.sample.CLASS_FIELDS without importing the grammar.
    from osum.data.sample import CLASS_FIELDS
    from osum.tasks import LABEL_FIELDS

    assert set(LABEL_FIELDS) == set(CLASS_FIELDS)
