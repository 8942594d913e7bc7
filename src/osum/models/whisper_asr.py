"""Whisper itself (encoder + decoder) as an osum model type: `model.type: whisper`.

It wraps transformers' WhisperForConditionalGeneration and speaks the same interface as SpeechLLM, so the
same data layer, trainer (DDP, resume, checkpoints, averaging) and decoder (`osum decode`, the API, the
server) train and score it. Targets use Whisper's own prompt tokens:

    decoder input   <|startoftranscript|> [<|lang|> <|transcribe|>] <|notimestamps|>  text tokens
    labels                                                           text tokens      <|endoftext|>

(language and task tokens only for multilingual models; English-only ones such as tiny.en were trained
without them). The text starts with a space, as Whisper's own outputs do. The encoder always sees
Whisper's 30 s window (transformers' encoder checks it), so a model keeps the behaviour it was trained for.
Only <TRANSCRIBE> is supported: Whisper has no label outputs. What the code around a model needs from its type
(config checks, model directory, export, dry-run size) is in whisper_type.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..audio import FRAMES_PER_SECOND
from .speech_llm import IGNORE, GenerationConfig, decoding_settings, pad_features_to_window
from .weights import WeightError

TRANSCRIBE = "<TRANSCRIBE>"
# OpenAI's rule: multilingual vocabularies have at least 51865 tokens (English-only ones 51864).
MULTILINGUAL_VOCAB = 51865


@dataclass
class WhisperModelConfig:
    path: str | None = None  # a Hugging Face Whisper directory (`osum convert ct2-whisper` makes one)
    config: dict | None = None  # or a Hugging Face WhisperConfig dict: a fresh model (pre-training); needs tokenizer
    tokenizer: str | None = None  # a Whisper tokenizer directory (default: path)
    language: str | None = None  # multilingual models: the language token of the targets (en, zh, ...)
    train_encoder: bool = False  # fine-tune the encoder too (about 3x the cost of a step: it runs on 30 s)
    train_decoder: bool = True  # fine-tune the decoder (and its tied output embedding)

    def __post_init__(self) -> None:
        if self.config is not None:
            from .llm import check_hf_config

            check_hf_config(self.config, "config", model_type="whisper")


class WhisperASR(nn.Module):
    """features [B, T, n_mels] -> Whisper's transcripts, or the loss against target transcripts."""

    model_type = "whisper"
    supported_tasks = (TRANSCRIBE,)
    train_task = TRANSCRIBE  # every training sample is a transcription, whatever tasks its manifest lists
    uses_prompt_text = False  # the prompt is the prefix tokens; task prompts are not read

    def __init__(self, config: WhisperModelConfig, generation: GenerationConfig, whisper: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.generation = generation
        self.whisper = whisper
        self.tokenizer = tokenizer
        hf = whisper.config
        self.window = hf.max_source_positions * 2  # feature frames the encoder takes (30 s)
        self.multilingual = hf.vocab_size >= MULTILINGUAL_VOCAB
        self.eos_id = self._token_id("<|endoftext|>")
        self.prefix = self._prefix_ids()
        source = getattr(whisper, "generation_config", None)
        self.suppress_tokens = getattr(source, "suppress_tokens", None) or getattr(hf, "suppress_tokens", None)
        self.begin_suppress_tokens = (getattr(source, "begin_suppress_tokens", None)
                                      or getattr(hf, "begin_suppress_tokens", None))

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, config: WhisperModelConfig, generation: GenerationConfig | None = None,
              tokenizer=None) -> "WhisperASR":
        from .llm import load_tokenizer

        whisper = build_network(config)
        if tokenizer is None:
            source = config.tokenizer or config.path
            if not source:
                raise ValueError("model.whisper.tokenizer (a Whisper tokenizer directory) is needed for a Whisper "
                                 "built from a config")
            tokenizer = load_tokenizer(source)
        if len(tokenizer) > whisper.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the Whisper's vocabulary only "
                             f"{whisper.config.vocab_size}: they do not belong together")
        model = cls(config, generation or GenerationConfig(), whisper, tokenizer)
        model.set_trainable()
        return model

    def set_trainable(self) -> None:
        mark_trainable(self.whisper, self.config)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.get_vocab().get(token)
        if token_id is None:
            raise ValueError(f"the tokenizer has no {token} token: is it a Whisper tokenizer?")
        return int(token_id)

    def _prefix_ids(self) -> list[int]:
        ids = [self._token_id("<|startoftranscript|>")]
        if self.multilingual:
            if not self.config.language:
                raise ValueError("a multilingual Whisper needs the language of its targets: set "
                                 "model.whisper.language (en, zh, de, ...)")
            ids += [self._token_id(f"<|{self.config.language}|>"), self._token_id("<|transcribe|>")]
        return ids + [self._token_id("<|notimestamps|>")]

    # ------------------------------------------------------------------------------------------ shared
    @property
    def n_mels(self) -> int:
        return self.whisper.config.num_mel_bins

    @property
    def max_input_seconds(self) -> float:
        return self.window / FRAMES_PER_SECOND

    def target_ids(self, target: str, eos: bool = True) -> list[int]:
        text = " " + " ".join(target.split()) if target.strip() else ""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        return ids + ([self.eos_id] if eos else [])

    def _check_tasks(self, tasks: list[str] | None) -> None:
        for task in tasks or ():
            # Tags arrive canonical (the config and osum.infer canonicalize them), so no parsing is needed here.
            if "".join(task.split()) != TRANSCRIBE:
                raise ValueError(f"a Whisper model only transcribes; task {task} needs a speech LLM "
                                 "(model.type: speech_llm)")

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Features [B, T, n_mels] -> encoder states over Whisper's 30 s window [B, 1500, d_model]."""
        if features.shape[-1] != self.n_mels:
            raise ValueError(f"the features have {features.shape[-1]} mel bins but this Whisper takes {self.n_mels}: "
                             f"set data.loader.n_mels={self.n_mels}")
        longest = int(lengths.max())
        if longest > self.window:
            raise ValueError(f"{longest / FRAMES_PER_SECOND:.1f} s of audio exceed Whisper's "
                             f"{self.max_input_seconds:.0f} s window: filter long clips (data.loader.max_duration)")
        padded, _, _ = pad_features_to_window(features, lengths, self.window)
        dtype = self.whisper.model.encoder.conv1.weight.dtype
        return self.whisper.model.encoder(padded.transpose(1, 2).to(dtype)).last_hidden_state

    # ------------------------------------------------------------------------------------------ training
    def forward(self, features: torch.Tensor, lengths: torch.Tensor, prompts: list[str], targets: list[str],
                tasks: list[str] | None = None, aux=None) -> dict[str, torch.Tensor]:
        """Loss sum, token count and token accuracy of a batch, as SpeechLLM.forward (prompts are not used:
        Whisper's prompt is its prefix tokens; Whisper has no auxiliary heads, so `aux` is not used either)."""
        from transformers.modeling_outputs import BaseModelOutput

        self._check_tasks(tasks)
        hidden = self.encode(features, lengths)
        rows = [self.prefix + self.target_ids(t) for t in targets]
        width = max(len(r) for r in rows) - 1  # decoder positions: the row without its last token
        limit = self.whisper.config.max_target_positions
        if width > limit:
            raise ValueError(f"a target of {width + 1 - len(self.prefix)} tokens exceeds Whisper's "
                             f"{limit} decoder positions")
        device = features.device
        inputs = torch.full((len(rows), width), self.eos_id, dtype=torch.long, device=device)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        start = len(self.prefix) - 1  # the position whose next token is the first text token
        for i, row in enumerate(rows):
            inputs[i, : len(row) - 1] = torch.tensor(row[:-1], device=device)
            labels[i, start : len(row) - 1] = torch.tensor(row[len(self.prefix):], device=device)
            mask[i, : len(row) - 1] = 1
        out = self.whisper(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), decoder_input_ids=inputs,
                           decoder_attention_mask=mask, use_cache=False)
        logits = out.logits.float()
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                                   reduction="sum")
        scored = labels != IGNORE
        tokens = scored.sum()
        correct = ((logits.argmax(-1) == labels) & scored).sum()
        return {"loss": loss_sum / tokens.clamp(min=1), "loss_sum": loss_sum, "tokens": tokens, "correct": correct,
                "accuracy": correct.float() / tokens.clamp(min=1)}

    # ------------------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, features: torch.Tensor, lengths: torch.Tensor, prompts: list[str] | None = None,
                 **overrides: Any) -> list[str]:
        """Transcribe a batch: greedy (or beam search) unless sampling is asked for."""
        from transformers import GenerationConfig as HFGenerationConfig
        from transformers.generation.utils import GenerationMixin
        from transformers.modeling_outputs import BaseModelOutput

        settings = decoding_settings(self.generation, overrides)
        hidden = self.encode(features, lengths)
        options: dict[str, Any] = dict(
            # max_length counts the prefix and may not pass the decoder's positions (448)
            max_length=min(len(self.prefix) + settings["max_new_tokens"], self.whisper.config.max_target_positions),
            num_beams=settings["num_beams"],
            do_sample=settings["do_sample"], repetition_penalty=settings["repetition_penalty"],
            eos_token_id=self.eos_id, pad_token_id=self.eos_id, decoder_start_token_id=self.prefix[0],
            suppress_tokens=self.suppress_tokens, begin_suppress_tokens=self.begin_suppress_tokens,
        )
        if settings["do_sample"]:
            options.update(top_k=settings["top_k"], top_p=settings["top_p"], temperature=settings["temperature"])
        prefix = torch.tensor([self.prefix] * hidden.shape[0], device=hidden.device)
        # GenerationMixin's own generate, not WhisperForConditionalGeneration's: that one rebuilds the prefix from
        # its generation config (language detection, forced ids, long-form windows); here the prefix is ours.
        ids = GenerationMixin.generate(self.whisper, encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                       decoder_input_ids=prefix, decoder_attention_mask=torch.ones_like(prefix),
                                       attention_mask=torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device),
                                       generation_config=HFGenerationConfig(**options))
        texts = []
        for row in ids[:, len(self.prefix):].tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts


def build_network(config: WhisperModelConfig):
    """The transformers WhisperForConditionalGeneration a config names: from its directory (weights included),
    or fresh from its config dict."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from .llm import check_hf_config

    if config.path:
        return load_hf_whisper(config.path)
    if config.config:
        check_hf_config(config.config, "whisper.config", model_type="whisper")
        return WhisperForConditionalGeneration(WhisperConfig(**config.config))
    raise ValueError("model.whisper needs a path (a Hugging Face Whisper directory) or a config")


def mark_trainable(whisper, config: WhisperModelConfig) -> None:
    """requires_grad per part, as train_encoder and train_decoder say (the output layer goes with the decoder)."""
    whisper.requires_grad_(False)
    whisper.model.encoder.requires_grad_(config.train_encoder)
    whisper.model.decoder.requires_grad_(config.train_decoder)
    whisper.proj_out.requires_grad_(config.train_decoder)


def load_hf_whisper(path: str | Path):
    """A Hugging Face WhisperForConditionalGeneration directory, strictly: a missing, unexpected or misshaped
    weight is an error naming it (transformers alone would warn and initialize it at random)."""
    from transformers import WhisperForConditionalGeneration

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        hint = (" (a CTranslate2 model: convert it with `osum convert ct2-whisper`)"
                if (path / "model.bin").is_file() else "")
        raise WeightError(f"{path}: no config.json; expected a Hugging Face Whisper directory{hint}")
    hf_type = json.loads(config_file.read_text()).get("model_type")
    if hf_type != "whisper":
        raise WeightError(f"{config_file}: model_type is {hf_type!r}, not 'whisper'")
    from safetensors import SafetensorError

    try:
        whisper, info = WhisperForConditionalGeneration.from_pretrained(str(path), local_files_only=True,
                                                                        output_loading_info=True)
    except SafetensorError as err:
        raise WeightError(f"{path}: a weight file cannot be read ({err}); it is probably incomplete (an interrupted "
                          "copy or save): copy the directory again") from err
    except OSError as err:
        raise WeightError(f"{path}: {err}") from err
    problems = {name: sorted(info.get(name) or ()) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {name: keys for name, keys in problems.items() if keys}
    if problems:
        raise WeightError(f"{path}: weights do not match the config: "
                          + "; ".join(f"{name} {[str(k) for k in keys[:5]]}" for name, keys in problems.items()))
    return whisper.eval()

