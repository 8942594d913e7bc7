"""Greedy outputs of the vllm engine against the torch engine, on one model and real clips.

    python scripts/compare_engines.py --model exp/tiny/run/model [--data ../shared/data] [--limit N]
        [--task "<TRANSCRIBE>" --task "<TRANSCRIBE> <GENDER>"] [--enforce-eager] [--vllm-arg KEY=VALUE ...]

Decodes AN4's test split and every ci_small clip with both engines (the same loaded model, the same batches),
then prints per task how many outputs are equal (text and every label field) out of how many, the largest
difference of a label's confidence, and for each difference the first token where the two outputs part, with
both tokens' log-probabilities under the torch model given the text before them (teacher-forced): a near tie
there is a numerical difference, not a different model. Exit 1 when any output differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("text", "gender", "age", "emotion", "style", "event", "words", "reply", "translation")


def clips(data: Path, limit: int | None) -> list[tuple[str, str]]:
    """(key, audio path) of AN4's test split and of ci_small."""
    found = []
    for name, wanted in (("an4", "test"), ("ci_small", None)):
        manifest = data / name / "manifest.jsonl"
        if not manifest.is_file():
            sys.exit(f"{manifest} not found: give --data the folder that holds an4/ and ci_small/")
        for line in manifest.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if wanted is None or row.get("split") == wanted:
                found.append((f"{name}/{row.get('key') or row['id']}", str(manifest.parent / row["audio"])))
    return found[:limit] if limit else found


def first_difference(model, audio, prompt: str, a: str, b: str) -> str:
    """Where two outputs part, token by token, and the torch model's log-probability of each side's token there."""
    import torch

    from osum.audio import log_mel_spectrogram

    ids_a, ids_b = model.model._tokens(a), model.model._tokens(b)
    k = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
    ends = [ids[k] if k < len(ids) else model.model.eos_id for ids in (ids_a, ids_b)]
    features, lengths = log_mel_spectrogram([audio.wave], model.model.n_mels)
    with torch.no_grad():
        speech, speech_lengths = model.model.encode(features, lengths)
        inputs = model.model.build_inputs(speech, speech_lengths, [prompt])
        text = model.model.llm.get_input_embeddings()(torch.tensor([ids_a[:k]], dtype=torch.long))
        embeds = torch.cat([inputs.embeds, text], 1)
        logp = model.model.llm(inputs_embeds=embeds).logits[0, -1].float().log_softmax(-1)
    tok = model.model.tokenizer
    return (f"token {k}: torch {tok.decode([ends[0]])!r} (log-p {float(logp[ends[0]]):.4f}), "
            f"vllm {tok.decode([ends[1]])!r} (log-p {float(logp[ends[1]]):.4f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--task", action="append", dest="tasks")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import yaml

    from osum.infer.api import SpeechModel
    from osum.infer.inputs import AudioInput
    from osum.audio import load_audio

    tasks = args.tasks or ["<TRANSCRIBE>", "<TRANSCRIBE> <GENDER>"]
    audios = [AudioInput(key, load_audio(path)) for key, path in clips(Path(args.data), args.limit)]
    torch_model = SpeechModel.load(args.model)
    options = {"enforce_eager": args.enforce_eager,
               "engine_args": {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.vllm_arg)}}
    started = time.perf_counter()
    with SpeechModel(torch_model.model, engine="vllm", engine_options=options) as vllm_model:
        print(f"vllm engine started in {time.perf_counter() - started:.1f} s", flush=True)
        differing = 0
        for task in tasks:
            results = {}
            for name, model in (("torch", torch_model), ("vllm", vllm_model)):
                started = time.perf_counter()
                results[name] = model.generate_audio(audios, task)
                print(f"{task} {name}: {len(audios)} clips in {time.perf_counter() - started:.1f} s", flush=True)
            equal, worst = 0, 0.0
            for audio, a, b in zip(audios, results["torch"], results["vllm"]):
                same = all(a[f] == b[f] for f in COMPARED)
                equal += same
                for field, p in (a["confidence"] or {}).items():
                    worst = max(worst, abs(p - (b["confidence"] or {}).get(field, 0.0)))
                if not same:
                    prompt = torch_model.prompt_for(task)
                    print(f"  differs {audio.key}: torch {a['raw']!r} {a.get('gender')} | vllm {b['raw']!r} "
                          f"{b.get('gender')}; {first_difference(torch_model, audio, prompt, a['raw'], b['raw'])}")
            differing += len(audios) - equal
            print(f"{task}: equal {equal}/{len(audios)}; largest confidence difference {worst:.2e}", flush=True)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
