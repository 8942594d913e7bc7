"""The Python API: `model = osum.load(DIR)`; `model.generate(inputs, task=...)` -> one dict per input.

Everything user-facing (the `infer`/`decode` commands, the web page, the HTTP server) goes through
`SpeechModel.generate`, so they all decode the same way: inputs read and checked (`inputs.py`), long audio
split at pauses (`segment.py`), pieces sorted by length and batched under a frame budget, each batch decoded
by the model's engine (`engines.py`: torch, or vllm) with label slots filled by scoring the valid labels (with
confidences), pieces stitched back per input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..audio import FRAMES_PER_SECOND, SAMPLE_RATE, log_mel_spectrogram
from ..tasks import LABEL_FIELDS, canonical_task
from .engines import make_engine
from .inputs import AudioInput, read_inputs
from .presets import with_preset
from .segment import split_points, stitch, trim_silence

RESULT_FIELDS = ("key", "task", "text", *LABEL_FIELDS, "words", "reply", "translation", "confidence", "raw",
                 "unparsed", "duration", "segments")


class SpeechModel:
    """A loaded osum model with a high-level `generate`. `.model` is the underlying `SpeechLLM`."""

    def __init__(self, model, max_frames_in_batch: int = 8000, max_batch_size: int = 32,
                 max_piece_seconds: float | None = None, engine: str = "torch",
                 engine_options: dict[str, Any] | None = None):
        self.model = model.eval()
        if not hasattr(model, "prompts"):  # a model built in memory rather than loaded: osum's own prompts
            from ..prompt_set import load_prompts

            model.prompts = load_prompts()
        # Padded feature frames per batch (100 per second). 8000 (80 s) measured fastest on 2 CPU cores,
        # where large batches lose to cache misses; raise it on a GPU (osum decode --max-frames-in-batch).
        self.max_frames_in_batch = max_frames_in_batch
        self.max_batch_size = max_batch_size
        # Longer audio is split into pieces of at most this (default: the encoder's window).
        window = model.max_input_seconds
        self.max_piece_seconds = min(max_piece_seconds or window, window)
        # What decodes each batch (engines.py): "torch" (this process) or "vllm" (options: VllmOptions).
        self.engine = make_engine(engine, model, **(engine_options or {}))

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> "SpeechModel":
        from ..models.checkpoint import load_model

        return cls(load_model(model_dir, device), **kwargs)

    def close(self) -> None:
        """Stop the engine's workers (vLLM's processes); the torch engine holds nothing to release."""
        self.engine.close()

    def __enter__(self) -> "SpeechModel":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    # The SpeechLLM's own attributes stay reachable: model.config, model.prompts, model.tokenizer, ...
    def __getattr__(self, name: str) -> Any:
        if name in ("model", "engine"):
            raise AttributeError(name)
        return getattr(self.model, name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        return self.model.prompts.labels

    def check_request(self, task: str, prompt: str | None = None) -> None:
        """A ValueError when this model cannot answer the task (a Whisper only transcribes) or take a prompt text."""
        supported = self.model.supported_tasks
        if supported is not None and task not in supported:
            raise ValueError(f"this {self.model.model_type} model does {', '.join(supported)} only, not {task}")
        if prompt and not self.model.uses_prompt_text:
            raise ValueError(f"a {self.model.model_type} model takes no prompt text: leave the prompt out")

    def prompt_for(self, task: str, language: str | None = None) -> str:
        """The deterministic prompt of a task: the first one in the model's prompt set."""
        return self.model.prompts.pick(task, language=language)

    @torch.no_grad()
    def generate(
        self,
        inputs: Any,
        task: str = "<TRANSCRIBE>",
        prompt: str | None = None,
        language: str | None = None,
        label_scoring: bool = True,
        sample_rate: int | None = None,
        preset: str | None = None,
        **decoding: Any,
    ) -> list[dict[str, Any]]:
        """Decode one input or a list (paths, bytes, numpy arrays, (rate, array) pairs).

        `task`: a task tag ("<TRANSCRIBE> <GENDER>", "asr+gender", ...). `prompt`: your own prompt text
        instead of the task's (the output is still read as `task`). `language`: the target language of
        <TRANSLATE>. `label_scoring`: choose labels by scoring only valid ones (default; gives confidences).
        `decoding`: max_new_tokens, num_beams, do_sample, top_k, top_p, temperature, repetition_penalty;
        `preset`: a named set of them (`presets.PRESETS`: "osum" decodes as OSUM does), the options given win.
        Returns per input {key, task, text, gender, age, emotion, style, event, words, reply, translation,
        confidence, raw, unparsed, duration, segments}.
        """
        audios = read_inputs(inputs, sample_rate)
        return self.generate_audio(audios, task, prompt, language, label_scoring, preset, **decoding)

    @torch.no_grad()
    def generate_audio(
        self,
        audios: list[AudioInput],
        task: str | list[str] = "<TRANSCRIBE>",
        prompt: str | None = None,
        language: str | None = None,
        label_scoring: bool = True,
        preset: str | None = None,
        **decoding: Any,
    ) -> list[dict[str, Any]]:
        """`generate` on inputs already read; `task` may be one tag per input."""
        decoding = with_preset(preset, decoding)
        tasks = [canonical_task(t) for t in ([task] * len(audios) if isinstance(task, str) else task)]
        if len(tasks) != len(audios):
            raise ValueError(f"{len(tasks)} tasks for {len(audios)} inputs")
        for t in dict.fromkeys(tasks):
            self.check_request(t, prompt)
        prompts = [prompt or self.prompt_for(t, language) for t in tasks]
        # Pieces of at most one encoder window, from every input.
        pieces = []  # (input index, start sample, end sample)
        for i, audio in enumerate(audios):
            spans = trim_silence(audio.wave, split_points(audio.wave, self.max_piece_seconds))
            pieces += [(i, a, b) for a, b in spans]
        outputs = self._decode_pieces(audios, pieces, tasks, prompts, label_scoring, decoding)
        results = []
        for i, audio in enumerate(audios):
            mine = [(p, out) for p, out in zip(pieces, outputs) if p[0] == i]
            if not mine:  # long audio that is silent throughout
                results.append({name: None for name in RESULT_FIELDS} | dict(
                    key=audio.key, task=tasks[i], text="", raw="", unparsed=False, segments=[],
                    duration=round(audio.duration, 3)))
                continue
            merged = stitch([out for _, out in mine], [p[1] / SAMPLE_RATE for p, _ in mine],
                            [(p[2] - p[1]) / SAMPLE_RATE for p, _ in mine])
            merged.update(key=audio.key, task=tasks[i], duration=round(audio.duration, 3))
            results.append({name: merged.get(name) for name in RESULT_FIELDS})
        return results

    def _decode_pieces(self, audios, pieces, tasks, prompts, label_scoring, decoding) -> list[dict[str, Any]]:
        frames = [(b - a) // (SAMPLE_RATE // FRAMES_PER_SECOND) for _, a, b in pieces]
        order = sorted(range(len(pieces)), key=frames.__getitem__, reverse=True)
        outputs: list[dict[str, Any] | None] = [None] * len(pieces)
        n_mels = self.model.n_mels
        batch: list[int] = []

        def run(batch: list[int]) -> None:
            waves = [audios[pieces[k][0]].wave[pieces[k][1]:pieces[k][2]] for k in batch]
            features, lengths = log_mel_spectrogram(waves, n_mels, device=self.device)
            idx = [pieces[k][0] for k in batch]
            for k, out in zip(batch, self._decode_batch(features, lengths, [tasks[i] for i in idx],
                                                         [prompts[i] for i in idx], label_scoring, decoding)):
                outputs[k] = out

        for k in order:  # longest first, so a batch's first piece sets its padded length
            if batch and (frames[batch[0]] * (len(batch) + 1) > self.max_frames_in_batch
                          or len(batch) >= self.max_batch_size):
                run(batch)
                batch = []
            batch.append(k)
        if batch:
            run(batch)
        return outputs  # type: ignore[return-value]

    def _decode_batch(self, features, lengths, tasks, prompts, label_scoring, decoding) -> list[dict[str, Any]]:
        return self.engine.decode_batch(features, lengths, prompts, tasks, self.labels, label_scoring, decoding)
