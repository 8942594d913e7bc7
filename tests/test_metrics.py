"""Scoring: metric values against hand-computed cases and jiwer, and `osum score` on files."""

from __future__ import annotations

import json

import jiwer
import pytest

from osum.infer import metrics
from osum.infer.normalize import basic_normalize, get_normalizer
from osum.infer.score import ScoreError, read_hypotheses, read_references, score


def test_word_error_rate_by_hand_and_against_jiwer():
    counts, ops = metrics.align("the cat sat", "the bat sat on")
    assert (counts.substitutions, counts.deletions, counts.insertions, counts.reference_tokens) == (1, 0, 1, 3)
    assert counts.rate == pytest.approx(2 / 3) == pytest.approx(jiwer.wer("the cat sat", "the bat sat on"))
    assert ops == [("equal", "the", "the"), ("substitute", "cat", "bat"), ("equal", "sat", "sat"), ("insert", None, "on")]
    pairs = [("a b c d", "a x c"), ("hello world", "hello world"), ("one two three", "one three two four")]
    ours = metrics.error_rates(pairs)
    assert ours["wer"]["rate"] == pytest.approx(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
    assert ours["cer"]["rate"] == pytest.approx(
        jiwer.cer([r.replace(" ", "") for r, _ in pairs], [h.replace(" ", "") for _, h in pairs]))
    assert ours["sentence_error_rate"] == pytest.approx(2 / 3)


def test_mixed_tokens_count_each_cjk_character():
    counts, _ = metrics.align("今天天气 good", "今天天 good day")  # 5 tokens: 今 天 天 气 good
    assert (counts.reference_tokens, counts.errors, counts.rate) == (5, 2, 0.4)
    assert metrics.error_rates([("abc", "abd")])["cer"]["rate"] == pytest.approx(1 / 3)
    empty = metrics.align("", "")[0]
    assert empty.rate == 0.0 and metrics.align("", "extra")[0].rate == 1.0 and metrics.align("a b", "")[0].rate == 1.0
    ref, hyp, ops = metrics.render_alignment(metrics.align("你好 big", "你 big")[1])
    assert ref == "你 好 big" and hyp == "你 ** big"  # a CJK character is two columns wide
    assert ops.rstrip() == "   D"  # under 好, counting display columns


def test_normalizers():
    assert basic_normalize("Hello, World! <female><adult>") == "hello world"
    assert basic_normalize("ＨＥＬＬＯ　ｗｏｒｌｄ。") == "hello world"
    assert basic_normalize("Don't stop—it's 'fine'.") == "don't stop it's fine"
    assert basic_normalize("hello<0.12,0.45> world<0.50,0.88>") == "hello world"
    assert basic_normalize("你好，世界！") == "你好 世界"
    whisper = get_normalizer("whisper")
    assert whisper("Mr. Smith paid twenty-five dollars.") == "mister smith paid $25"
    assert whisper("It's the colour <male>") == "it is the color"
    assert get_normalizer("none")("  A,  b ") == "A, b"
    with pytest.raises(ValueError, match="basic, whisper, none"):
        get_normalizer("fancy")


def test_label_scores_by_hand():
    result = metrics.label_scores([("male", "male"), ("male", "female"), ("female", "female"), ("female", None)],
                                  ["female", "male"])
    assert result.confusion == [[1, 0, 1], [1, 1, 0]]  # rows female, male; columns female, male, (none)
    assert result.accuracy == 0.5
    assert result.per_class["female"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert result.per_class["male"]["precision"] == 1.0 and result.per_class["male"]["f1"] == pytest.approx(2 / 3)
    assert result.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)
    text = result.confusion_text().splitlines()
    assert text[0].split() == ["ref", "\\", "hyp", "female", "male", "(none)"] and text[2].split() == ["male", "1", "1", "0"]
    # Classes absent from the references do not count in macro-F1 (they would score 0 for nothing).
    three = metrics.label_scores([("child", "child"), ("adult", "adult")], ["child", "adult", "old"])
    assert three.macro_f1 == 1.0
    with pytest.raises(ValueError, match="'robot' is not one of"):
        metrics.label_scores([("robot", "male")], ["female", "male"])


def test_timestamp_error_over_matched_words():
    ref = [{"word": "a", "start": 0.0, "end": 0.5}, {"word": "b", "start": 0.5, "end": 1.0},
           {"word": "c", "start": 1.0, "end": 1.5}]
    hyp = [{"word": "A", "start": 0.1, "end": 0.5}, {"word": "x", "start": 0.5, "end": 1.0},
           {"word": "c", "start": 1.0, "end": 1.6}]
    result = metrics.timestamp_error([(ref, hyp)], normalize=basic_normalize)
    assert result["matched_words"] == 2 and result["reference_words"] == 3
    assert result["start_mae_ms"] == pytest.approx(50) and result["end_mae_ms"] == pytest.approx(50)
    assert result["mae_ms"] == pytest.approx(50)
    # An inserted word shifts nothing: alignment, not position, pairs the words.
    shifted = metrics.timestamp_error([(ref, [{"word": "um", "start": 0, "end": 0.1}] + ref)])
    assert shifted["matched_words"] == 3 and shifted["mae_ms"] == 0


def test_bleu_is_sacrebleu():
    import sacrebleu

    pairs = [("the cat is on the mat", "the cat sat on the mat"), ("hello there", "hello there")]
    expected = sacrebleu.corpus_bleu([h for _, h in pairs], [[r for r, _ in pairs]]).score
    assert metrics.bleu(pairs)["bleu"] == pytest.approx(expected)
    chinese = metrics.bleu([("今天天气很好", "今天天气很好"), ("我们走吧", "我们走")])
    assert chinese["tokenize"] == "zh" and chinese["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(["今天天气很好", "我们走"], [["今天天气很好", "我们走吧"]], tokenize="zh").score)


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_osum_score_cli_writes_every_report(tmp_path, capsys):
    from osum.cli import main

    refs = _write(tmp_path / "ref.jsonl", [
        {"key": "u1", "wav": "a.wav", "txt": "Hello world.", "gender": "M", "task": ["asr", "<TRANSCRIBE> <GENDER>"]},
        {"key": "u2", "wav": "b.wav", "txt": "good morning", "gender": "female", "task": ["asr", "<TRANSCRIBE> <GENDER>"]},
        {"key": "u3", "wav": "c.wav", "txt": "see you", "gender": "female", "task": ["asr"]},
        {"key": "u4", "wav": "d.wav", "txt": "bye", "gender": "robot"},
    ])
    hyps = _write(tmp_path / "result.jsonl", [
        {"key": "u1", "task": "<TRANSCRIBE>", "text": "hello world"},
        {"key": "u2", "task": "<TRANSCRIBE>", "text": "good evening"},
        {"key": "u1", "task": "<TRANSCRIBE> <GENDER>", "text": "hello world", "gender": "male"},
        {"key": "u2", "task": "<TRANSCRIBE> <GENDER>", "text": "good morning", "gender": "male"},
        {"key": "zz", "task": "<TRANSCRIBE>", "text": "no reference"},
    ])
    assert main(["score", "--ref", str(refs), "--hyp", str(hyps), "--out", str(tmp_path / "score")]) == 0
    printed = capsys.readouterr().out
    # u3 (asr) and u4 (no task: ASR) have no output: 'see you' and 'bye' score as 3 deletions.
    assert "| `<TRANSCRIBE>` | WER | 57.14% | 7 |" in printed
    summary = json.loads((tmp_path / "score" / "summary.json").read_text())
    asr = summary["tasks"]["<TRANSCRIBE>"]
    assert asr["wer"]["deletions"] == 3 and asr["wer"]["substitutions"] == 1 and asr["missing_outputs"] == 2
    both = summary["tasks"]["<TRANSCRIBE> <GENDER>"]
    assert both["wer"]["rate"] == 0 and both["labels"]["gender"]["accuracy"] == 0.5
    assert both["labels"]["gender"]["confusion"] == [[0, 1, 0], [0, 1, 0]]
    assert summary["outputs_without_reference"] == 1
    png = tmp_path / "score" / "confusion_transcribe_gender_gender.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "good evening" in (tmp_path / "score" / "alignments.txt").read_text()
    # --task picks one task's outputs; a text file of hypotheses works too.
    (tmp_path / "text").write_text("u1\thello word\nu2\tgood morning\n")
    refs_only, _ = read_references(refs)
    summary, _ = score(refs_only, read_hypotheses(tmp_path / "text", None))
    assert summary["tasks"]["<TRANSCRIBE>"]["wer"]["rate"] == pytest.approx(4 / 7)  # 'word', and 3 deletions


def test_score_errors_name_the_file_and_line(tmp_path):
    from osum.cli import main

    bad = tmp_path / "result.jsonl"
    bad.write_text('{"key": "a", "text": "x"}\n{"key": "b", "task": "<DANCE>"}\n')
    with pytest.raises(ScoreError, match=r"result.jsonl:2: unknown task tag '<DANCE>'"):
        read_hypotheses(bad, None)
    assert main(["score", "--ref", str(tmp_path / "missing.jsonl"), "--hyp", str(bad)]) == 2
