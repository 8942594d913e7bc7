"""Labelled speech from espeak-ng, for demos, the tiny recipe and tests on machines with no data and no network.

The labels are synthetic proxies, not real speaker traits: "gender" is the espeak-ng voice variant
(m1..m7 / f1..f5), "style" is the speaking rate (slow / normal / fast; not one of OSUM's style classes, so
the tiny recipe's prompt file adds these three), "age" is the pitch range (adult = low pitch, child = high).

Sentences come from small grammars: English with about 300 words (upper case, like AN4), and Mandarin with
the `cmn` voice. Held-out data for honest evaluation: `split` is "train", "test_sentences" (sentences never
used in training, training voices) or "test_voice" (new sentences in voices never used in training: one
male and one female variant, so gender is tested on both). espeak-ng's
command line gives no word timings, so the clips carry none.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import OsumError

MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
HELD_OUT_VOICES = ("m4", "f3")  # never in training: the test_voice split (one voice of each gender)
RATES = {"slow": 120, "normal": 170, "fast": 240}  # words per minute
PITCHES = {"adult": 35, "child": 80}  # espeak-ng pitch 0-99

_EN = {
    "det": "the a my our your their this that every one".split(),
    "adj": ("red green blue old young small big tall quiet happy busy brave clever gentle heavy light warm cold "
            "bright dark strong tired hungry lazy careful").split(),
    "noun": ("cat dog farmer teacher pilot doctor child student baker driver painter sailor singer writer "
             "king queen horse bird fish rabbit tiger lion monkey bear mouse friend brother sister mother father "
             "neighbor captain soldier farmer nurse cook").split(),
    "verb": ("sees finds paints carries follows opens builds reads likes moves pushes pulls washes cleans "
             "watches catches throws drops holds brings sells buys draws fixes chooses").split(),
    "thing": ("box door apple letter boat stone window chair table book basket bottle flower garden house "
              "car train bridge lamp map coat hat cup plate ball kite drum bell key ring clock river road "
              "ticket picture wheel").split(),
    "place": ("near the bridge|in the garden|at the station|by the river|on the hill|in the kitchen|at school|"
              "in the park|at the market|under the tree|behind the house|on the road").split("|"),
    "time": "today|at night|in the morning|after lunch|very slowly|again|on monday|every day|last week|before dinner".split("|"),
    "number": "two three four five six seven eight nine ten twelve twenty".split(),
}
_ZH = {
    "subject": "我 你 他 她 我们 老师 学生 妈妈 爸爸 朋友 医生 孩子".split(),
    "verb": "喜欢 看见 买了 想要 拿着 找到 画了 送给".split(),
    "object": "苹果 书 小猫 花 电脑 衣服 水果 自行车 蛋糕 茶".split(),
    "time": "今天 明天 昨天 现在 晚上 早上".split(),
}


class SynthError(RuntimeError, OsumError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class Voice:
    variant: str
    rate: str
    pitch: str

    @property
    def gender(self) -> str:
        return "male" if self.variant.startswith("m") else "female"


def english_sentence(rng: random.Random) -> str:
    """A sentence from the English grammar (upper case, like AN4 transcripts)."""
    g = _EN
    subject = [rng.choice(g["det"])] + ([rng.choice(g["adj"])] if rng.random() < 0.5 else []) + [rng.choice(g["noun"])]
    if rng.random() < 0.3:
        obj = [rng.choice(g["number"]), plural(rng.choice(g["thing"]))]
    else:
        obj = [rng.choice(g["det"])] + ([rng.choice(g["adj"])] if rng.random() < 0.4 else []) + [rng.choice(g["thing"])]
    tail = [rng.choice(g["place"])] if rng.random() < 0.5 else []
    tail += [rng.choice(g["time"])] if rng.random() < 0.5 else []
    return " ".join(subject + [rng.choice(g["verb"])] + obj + tail).upper()


def plural(noun: str) -> str:
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def mandarin_sentence(rng: random.Random) -> str:
    """A short Mandarin sentence: time, subject, verb, object."""
    g = _ZH
    return rng.choice(g["time"]) + rng.choice(g["subject"]) + rng.choice(g["verb"]) + rng.choice(g["object"])


def vocabulary() -> list[str]:
    """Every English word the grammar can say (and the plural things)."""
    words = set()
    for key, values in _EN.items():
        for value in values:
            words.update(value.upper().split())
    words.update(plural(t).upper() for t in _EN["thing"])
    return sorted(words)


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise SynthError("espeak-ng is not installed: `apt-get install espeak-ng` (the set-up scripts do it)")
    return path


def speak(text: str, voice: Voice, out: Path, lang: str = "en-us") -> None:
    """Render `text` to a wav file with espeak-ng."""
    cmd = [espeak_binary(), "-v", f"{lang}+{voice.variant}", "-s", str(RATES[voice.rate]),
           "-p", str(PITCHES[voice.pitch]), "-w", str(out), text]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0 or not out.is_file():
        raise SynthError(f"espeak-ng failed for {text!r}: {done.stderr.decode(errors='replace')[-300:]}")


def _plan(count: int, rng: random.Random, mandarin: float, held_out: float) -> list[dict]:
    """What to say, in which voice, for which split. Every held-out sentence is new (never in training);
    test_voice clips use the held-out voices, training clips never do."""
    period = round(1 / held_out) if held_out else 0
    said = {"train": set(), "test": set()}
    plan = []
    for index in range(count):
        lang = "cmn" if rng.random() < mandarin else "en"
        make = mandarin_sentence if lang == "cmn" else english_sentence
        split = "train"
        if period and index % period == 1:
            split = "test_voice"
        elif period and index % period == 2:
            split = "test_sentences"
        avoid = said["test"] if split == "train" else said["train"]
        for _ in range(1000):
            text = make(rng)
            if (lang, text) not in avoid:
                break
        else:  # the grammar is exhausted (tiny Mandarin grammar, many clips): keep it in training
            split = "train"
        said["train" if split == "train" else "test"].add((lang, text))
        male = rng.random() < 0.5
        variants = MALE_VARIANTS if male else FEMALE_VARIANTS
        if period:
            variants = [v for v in variants if (v in HELD_OUT_VOICES) == (split == "test_voice")]
        voice = Voice(rng.choice(variants), rng.choice(list(RATES)), rng.choice(list(PITCHES)))
        plan.append({"index": index, "lang": lang, "text": text, "voice": voice, "split": split})
    return plan


def synthesize(out_dir: str | Path, count: int = 40, seed: int = 0, mandarin: float = 0.0,
               held_out: float = 0.0, workers: int = 2) -> Path:
    """Write `count` clips and `manifest.jsonl` (OSUM jsonl, paths relative to it) into `out_dir`.

    `mandarin`: the fraction of clips in Mandarin. `held_out`: the fraction of clips held out for testing
    (half new sentences, half the held-out voice); 0 = every clip is "train".
    """
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    plan = _plan(count, random.Random(seed), mandarin, held_out)

    def render(p: dict) -> dict:
        voice = p["voice"]
        key = f"synth{p['index']:05d}-{p['lang']}-{voice.variant}-{voice.rate}-{voice.pitch}"
        speak(p["text"].lower() if p["lang"] == "en" else p["text"], voice, out / "wav" / f"{key}.wav",
              "en-us" if p["lang"] == "en" else "cmn")
        return {"key": key, "wav": f"wav/{key}.wav", "txt": p["text"], "task": "<TRANSCRIBE>",
                "lang": "en" if p["lang"] == "en" else "zh", "speaker": voice.variant, "gender": voice.gender,
                "style": voice.rate, "age": voice.pitch, "split": p["split"]}

    with ThreadPoolExecutor(max(1, workers)) as pool:  # each clip is its own espeak-ng process
        records = list(pool.map(render, plan))
    manifest = out / "manifest.jsonl"
    _write(manifest, records)
    if held_out:  # one manifest per split too
        for split in ("train", "test_sentences", "test_voice"):
            _write(out / f"{split}.jsonl", [r for r in records if r["split"] == split])
    return manifest


def _write(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
