"""Labelled speech from espeak-ng, for demos and tests on machines with no data and no network.

The labels are synthetic proxies, not real speaker traits: "gender" is the espeak-ng voice variant
(m1..m7 / f1..f5), "style" is the speaking rate (slow / normal / fast), "age" is the pitch range
(adult = low pitch, child = high pitch).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
RATES = {"slow": 120, "normal": 170, "fast": 240}  # words per minute
PITCHES = {"adult": 35, "child": 80}  # espeak-ng pitch 0-99

_SUBJECTS = "the cat|a small dog|my brother|the old farmer|our teacher|a young pilot|the river|her friend".split("|")
_VERBS = "sees|finds|paints|carries|follows|opens|builds|reads|likes|moves".split("|")
_OBJECTS = "a red box|the green door|seven apples|a long letter|the blue boat|two stones|the kitchen window".split("|")
_ENDINGS = "today|at night|in the morning|near the bridge|after lunch|very slowly|again".split("|")


class SynthError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass
class Voice:
    variant: str
    rate: str
    pitch: str

    @property
    def gender(self) -> str:
        return "male" if self.variant.startswith("m") else "female"


def english_sentence(rng: random.Random) -> str:
    """A short sentence from a tiny grammar (upper case, like AN4 transcripts)."""
    return " ".join([rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_ENDINGS)]).upper()


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


def synthesize(out_dir: str | Path, count: int = 40, seed: int = 0) -> Path:
    """Write `count` clips and `manifest.jsonl` (OSUM jsonl, paths relative to it) into `out_dir`."""
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    manifest = out / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        for index in range(count):
            voice = Voice(
                rng.choice(MALE_VARIANTS if index % 2 == 0 else FEMALE_VARIANTS),
                rng.choice(list(RATES)),
                rng.choice(list(PITCHES)),
            )
            text = english_sentence(rng)
            key = f"synth{index:05d}-{voice.variant}-{voice.rate}-{voice.pitch}"
            speak(text.lower(), voice, out / "wav" / f"{key}.wav")
            record = {
                "key": key,
                "wav": f"wav/{key}.wav",
                "txt": text,
                "task": "<TRANSCRIBE>",
                "lang": "en",
                "speaker": voice.variant,
                "gender": voice.gender,
                "style": voice.rate,
                "age": voice.pitch,
            }
            f.write(json.dumps(record) + "\n")
    return manifest
