"""Speech LLM: Whisper encoder -> adapter -> embeddings spliced into the prompt of a causal LM.

One sequence per utterance, left-padded in a batch (never padded in the middle):

    [pad ...] prompt prefix | <audio begin> speech frames <audio end> | prompt suffix | target <eos>

With the LLM's chat template, the prefix and suffix are the template's text around the user's turn; without
one (OSUM's plain layout), the prefix is the prompt text and the suffix is empty. Labels are -100 everywhere
but the target and its end-of-sequence token.

Three steps, each a method: `encode` (features -> speech embeddings in the LLM's space), `build_inputs` (the
spliced, left-padded batch), then `forward` (the loss) or `generate_from` (decoding). The auxiliary heads the
config asks for (`ctc_weight`: `CTCHead`; `utterance_labels`: `UtteranceEmbedding`) learn from
`AuxiliaryTargets`, which train/examples.py reads from the samples. The model does not read task tags:
label-scoring decoding is osum.infer.labels, the task grammar osum.tasks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..audio import FRAMES_PER_SECOND
from ..config import ConfigError
from ..data.sample import CLASS_FIELDS
from .adapter import AdapterConfig, UtteranceEmbedding, build_adapter
from .llm import LLMConfig, LoraConfig, apply_lora, base_model, build_llm
from .whisper import WhisperEncoder, WhisperEncoderConfig, encoder_lengths

AUDIO_PLACEHOLDER = "<|osum_audio|>"
IGNORE = -100


@dataclass
class EncoderConfig:
    path: str | None = None  # a Hugging Face Whisper directory (real weights)
    config: WhisperEncoderConfig | None = None  # or dimensions for a fresh encoder
    pad_to_30s: bool = False  # feed Whisper its usual 30 s window (exact behaviour of a frozen encoder)


@dataclass
class TrainableConfig:
    """What trains; OSUM's stages: adapter -> adapter + encoder -> adapter + encoder + LoRA."""

    encoder: bool = False  # the Whisper encoder
    adapter: bool = True  # the adapter between encoder and LLM
    llm: bool = False  # full fine-tuning of the LLM
    lora: bool = True  # the LoRA weights, when LoRA is enabled


@dataclass
class GenerationConfig:
    max_new_tokens: int = 200  # longest output in tokens
    num_beams: int = 1  # 1 = greedy; > 1 = beam search
    do_sample: bool = False  # deterministic unless asked; OSUM's own setting: do_sample, top_k 5, top_p 0.9
    top_k: int = 5  # sampling only
    top_p: float = 0.9  # sampling only
    temperature: float = 1.0  # sampling only
    repetition_penalty: float = 1.0  # > 1 discourages repeated tokens


def decoding_settings(defaults: GenerationConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """A model's decoding defaults with a call's overrides; an unknown option is an error naming it."""
    unknown = set(overrides) - set(defaults.__dict__)
    if unknown:
        raise ValueError(f"unknown decoding option(s) {sorted(unknown)}; known: {sorted(defaults.__dict__)}")
    return {**defaults.__dict__, **overrides}


@dataclass
class SpeechLLMConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    prompt_layout: Literal["auto", "chat", "plain"] = "auto"  # auto: chat when the tokenizer has a template
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # Training only: weight of a CTC loss on the adapter's output over the LLM's tokens (WeNet's hybrid
    # CTC/attention idea), scored against the LLM's own token embeddings (`CTCHead`). It gives the adapter an
    # alignment-free, audio-grounded signal from the first step, which an LLM trained from scratch needs
    # (recipes/tiny, recipes/real_small); 0 = off (OSUM's setting).
    ctc_weight: float = 0.0
    # Training only: weight of the label-tag tokens (<male>, <happy>, ... when each is one token, as with
    # `osum model tokenizer`) in the loss: a label is one token beside a transcript of tens. (On the tiny
    # recipe's data, weight 10 took gender from chance to 60% in 300 steps and slowed ASR down: no cure there.)
    label_loss_weight: float = 1.0
    # Label fields (gender, age, emotion, style, event) that get an utterance embedding (`UtteranceEmbedding`:
    # statistics of every encoder block's states, mixed, through an MLP) placed after the speech frames. In
    # training it is pulled towards the LLM's own embedding of the utterance's label in each field (a tied
    # classifier over the label set, weight utterance_loss_weight), so the label is in one embedding the LLM can
    # copy; in decoding the label is chosen by the LLM's and that classifier's probabilities together
    # (osum.infer.labels). Needs every label tag to be one token (`osum model tokenizer` makes them
    # so). Measured on cached features of the tiny recipe (400 steps, ASR learned alongside): gender 58% -> 97%;
    # the embedding without this loss stayed at 57%.
    utterance_labels: list[str] = field(default_factory=list)
    utterance_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.utterance_labels) - set(CLASS_FIELDS))
        if unknown:
            raise ConfigError(f"utterance_labels: {unknown} are not label fields; choose from {sorted(CLASS_FIELDS)}")


@dataclass
class SpeechInputs:
    """What the LLM receives: left-padded embeddings, mask, positions and (for training) labels."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None


@dataclass
class AuxiliaryTargets:
    """What the auxiliary losses learn from a batch, read from the samples' own fields (train/examples.py)."""

    transcripts: list[str | None]  # per sample: its transcript's spoken words (the CTC head); None: its task has none
    labels: list[dict[str, int]]  # per sample: label field -> index into label_tags[field], for the labels its target names
    label_tags: dict[str, tuple[str, ...]]  # per label field, every label as its tag ('<female>', '<male>')


def append_utterance(frames: torch.Tensor, lengths: torch.Tensor, utterance: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each utterance's embedding right after its last frame (frames are left-aligned): [B, S + 1, hidden]."""
    if utterance is None:
        return frames, lengths
    speech = F.pad(frames, (0, 0, 0, 1))
    speech[torch.arange(frames.shape[0], device=frames.device), lengths] = utterance.to(speech.dtype)
    return speech, lengths + 1


def pad_features_to_window(
    features: torch.Tensor, lengths: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Extend each utterance to Whisper's 30 s window as Whisper's own zero-padded audio would look.

    Zero audio has log-mel at the utterance's floor (its maximum - 8, scaled), which is the smallest value
    among its real frames; only the 2 frames at the speech's end differ from features of padded audio.
    Returns (features [B, window, n_mels], window lengths, the real lengths).
    """
    b, t, m = features.shape
    real = torch.arange(t, device=features.device)[None, :] < lengths[:, None]
    floor = features.masked_fill(~real[..., None], float("inf")).amin(dim=(1, 2))
    padded = floor[:, None, None].expand(b, window, m).clone()
    keep = min(t, window)
    padded[:, :keep] = torch.where(real[:, :keep, None], features[:, :keep], padded[:, :keep])
    return padded, torch.full_like(lengths, window), lengths


class CTCHead(nn.Module):
    """CTC logits of speech embeddings against the LLM's input token embeddings (tied) plus a learned blank.

    Tying makes the loss pull each speech embedding towards the embedding of the token spoken there, which is
    what the LLM reads most easily, and costs only hidden + 2 parameters however large the vocabulary. Measured
    on the tiny recipe's data (400 steps, linear adapter): held-out WER 1.0% tied vs 3.7% with a separate
    Linear(hidden, vocab + 1) head.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.blank = nn.Parameter(torch.zeros(hidden))
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, speech: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, S, hidden] -> log-probabilities [B, S, vocab + 1]; the blank is the last index."""
        table = torch.cat([token_embeddings, self.blank[None].to(token_embeddings.dtype)]).float()
        return (speech.float() @ table.T * self.scale).log_softmax(-1)


class SpeechLLM(nn.Module):
    model_type = "speech_llm"
    supported_tasks: tuple[str, ...] | None = None  # every task
    train_task: str | None = None  # each sample trains on one of its own tasks
    uses_prompt_text = True  # the task prompt (or the caller's own) is spliced into the input

    def __init__(self, config: SpeechLLMConfig, encoder: WhisperEncoder, adapter: nn.Module, llm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.adapter = adapter
        self.llm = llm
        self.tokenizer = tokenizer
        hidden = self.llm.get_input_embeddings().weight.shape[1]
        # Learned begin/end-of-audio embeddings (OSUM's speech_token_emded rows 4097 and 4098).
        self.audio_markers = nn.Parameter(torch.randn(2, hidden) * 0.02)
        self.ctc_head = CTCHead(hidden) if config.ctc_weight > 0 else None
        self.utterance = (UtteranceEmbedding(encoder.config.d_model, hidden, encoder.config.n_layers)
                          if config.utterance_labels else None)
        if config.prompt_layout == "chat" and not tokenizer.chat_template:
            raise ValueError("prompt_layout is 'chat' but the tokenizer has no chat template; use 'plain' or 'auto'")
        self.layout = "chat" if config.prompt_layout == "chat" or (config.prompt_layout == "auto" and tokenizer.chat_template) else "plain"
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        self._prompt_cache: dict[str, tuple[list[int], list[int]]] = {}
        self._tag_id_cache: dict[tuple[str, ...], list[int | None]] = {}

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def build(cls, config: SpeechLLMConfig, tokenizer=None) -> "SpeechLLM":
        """Assemble the parts a config names: encoder, adapter, LLM (+ LoRA), tokenizer. The model keeps a copy of
        the config with what the parts decide filled in (the encoder's dimensions, the adapter's widths)."""
        from .llm import load_tokenizer

        config = copy.deepcopy(config)
        e = config.encoder
        if e.path:
            encoder = WhisperEncoder.from_pretrained(e.path)
            e.config = encoder.config
        elif e.config:
            encoder = WhisperEncoder(e.config)
        else:
            raise ValueError("encoder needs a path (HF Whisper directory) or a config")
        llm = build_llm(config.llm)
        hidden = llm.get_input_embeddings().weight.shape[1]
        config.adapter.input_dim = encoder.config.d_model  # the widths follow the parts; no way to get them wrong
        config.adapter.output_dim = hidden
        adapter = build_adapter(config.adapter)
        if config.lora.enabled:
            llm = apply_lora(llm, config.lora)
        if tokenizer is None:
            source = config.llm.tokenizer or config.llm.path
            if not source:
                raise ValueError("llm.tokenizer (a tokenizer directory) is needed for an LLM built from a config")
            tokenizer = load_tokenizer(source)
        rows = llm.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM's embedding only {rows} rows: "
                             f"raise the LLM config's vocab_size to at least {len(tokenizer)}")
        model = cls(config, encoder, adapter, llm, tokenizer)
        model.set_trainable()
        return model

    def set_trainable(self) -> None:
        """requires_grad per part, as `config.trainable` says."""
        t = self.config.trainable
        self.encoder.requires_grad_(t.encoder)
        self.adapter.requires_grad_(t.adapter)
        self.audio_markers.requires_grad_(t.adapter)
        for head in (self.ctc_head, self.utterance):
            if head is not None:
                head.requires_grad_(t.adapter)
        for name, param in self.llm.named_parameters():
            param.requires_grad_(t.lora if "lora_" in name else t.llm)

    @property
    def n_mels(self) -> int:
        return self.encoder.config.n_mels

    @property
    def max_input_seconds(self) -> float:
        """The longest audio one forward takes: the encoder's window (30 s for Whisper)."""
        return self.encoder.max_frames / FRAMES_PER_SECOND

    @property
    def max_positions(self) -> int | None:
        """The most positions the LLM takes: a learned position table's size (GPT-2's n_positions); None for
        rotary positions (Qwen2, Llama: their max_position_embeddings is a training length, not a wall)."""
        return getattr(base_model(self.llm).config, "n_positions", None)

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    # ------------------------------------------------------------------------------------------ pieces
    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [B, T, n_mels] -> speech embeddings [B, S, hidden] in the LLM's dtype, and their lengths (the
        utterance embedding, when the model has one, follows each utterance's frames)."""
        return append_utterance(*self.encode_parts(features, lengths))

    def encode_parts(self, features: torch.Tensor, lengths: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The adapter's frames [B, S, hidden], their lengths, and the utterance embeddings [B, hidden] (or None)."""
        encoder_dtype = self.encoder.conv1.weight.dtype
        pooled = self.utterance is not None
        # Every block's output only when the utterance embedding pools them (kept otherwise for nothing).
        run = self.encoder.forward_layers if pooled else self.encoder
        if self.config.encoder.pad_to_30s:
            features, lengths, real_lengths = pad_features_to_window(features, lengths, self.encoder.max_frames)
            hidden, _ = run(features.to(encoder_dtype), lengths)
            hidden_lengths = encoder_lengths(real_lengths)  # keep only the frames that carry the speech
        else:
            hidden, hidden_lengths = run(features.to(encoder_dtype), lengths)
        layers = hidden if pooled else [hidden]
        layers = [layer[:, : int(hidden_lengths.max())] for layer in layers]
        adapter_dtype = next(self.adapter.parameters()).dtype
        speech, speech_lengths = self.adapter(layers[-1].to(adapter_dtype), hidden_lengths)
        utterance = self.utterance(layers, hidden_lengths).to(self.llm_dtype) if pooled else None
        return speech.to(self.llm_dtype), speech_lengths, utterance

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio for a prompt text (cached: prompts repeat)."""
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            return cached
        if self.layout == "chat":
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt + AUDIO_PLACEHOLDER}], tokenize=False, add_generation_prompt=True
            )
            before, after = rendered.split(AUDIO_PLACEHOLDER, 1)
        else:
            before, after = prompt, ""
        ids = (self._tokens(before), self._tokens(after))
        self._prompt_cache[prompt] = ids
        return ids

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def target_ids(self, target: str, eos: bool = True) -> list[int]:
        return self._tokens(target) + ([self.eos_id] if eos else [])

    def build_inputs(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        prompts: list[str],
        targets: list[str] | None = None,
        eos: bool = True,
    ) -> SpeechInputs:
        """Splice speech between the prompt's token embeddings; left-pad the batch."""
        embed = self.llm.get_input_embeddings()
        device = speech.device
        markers = self.audio_markers.to(self.llm_dtype)
        rows, label_rows = [], []
        for i, prompt in enumerate(prompts):
            before, after = self.prompt_ids(prompt)
            target = self.target_ids(targets[i], eos) if targets is not None else []
            text_ids = torch.tensor(before + after + target, dtype=torch.long, device=device)
            text = embed(text_ids)
            n_before, n_after = len(before), len(after)
            n_speech = int(speech_lengths[i])
            rows.append(torch.cat([
                text[:n_before], markers[:1], speech[i, :n_speech], markers[1:], text[n_before:],
            ]))
            label_rows.append([IGNORE] * (n_before + n_speech + 2 + n_after) + target)
        longest = max(r.shape[0] for r in rows)
        if self.max_positions is not None and longest > self.max_positions:
            raise ValueError(f"a prompt with its speech and target is {longest} positions; this LLM takes at most "
                             f"{self.max_positions}: decode shorter pieces of audio (max_piece_seconds) or a shorter "
                             "prompt")
        hidden = rows[0].shape[1]
        embeds = torch.zeros(len(rows), longest, hidden, dtype=self.llm_dtype, device=device)
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
        labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            n = row.shape[0]
            embeds[i, longest - n :] = row
            mask[i, longest - n :] = 1
            labels[i, longest - n :] = torch.tensor(label_rows[i], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return SpeechInputs(embeds, mask, positions, labels if targets is not None else None)

    def logits(self, inputs: SpeechInputs, last: int | None = None) -> torch.Tensor:
        """The LLM's logits [B, L, vocab] over spliced inputs; `last`: only those of the last `last` positions."""
        extra = {} if last is None else {"logits_to_keep": last}
        return self.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                        position_ids=inputs.position_ids, use_cache=False, **extra).logits

    # ------------------------------------------------------------------------------------------ training
    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, prompts: list[str], targets: list[str],
        tasks: list[str] | None = None, aux: AuxiliaryTargets | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss (mean over target tokens), its sum, the token count and token accuracy of a batch.

        The trainer uses `loss_sum`: dividing by the target tokens of the whole optimizer step (all
        micro-batches, all ranks) makes the gradient independent of how the step is split. In training, `aux`
        feeds the auxiliary losses and the label-token weight; without it they add nothing (the heads stay in
        the graph, as DDP wants). `tasks` is not read: every task trains the same way here.
        """
        frames, frame_lengths, utterance = self.encode_parts(features, lengths)
        speech, speech_lengths = append_utterance(frames, frame_lengths, utterance)
        inputs = self.build_inputs(speech, speech_lengths, prompts, targets)
        # Targets end every (left-padded) row: only the positions that predict them need the output layer, which
        # over a large vocabulary (Whisper's 51,864, Qwen2's 151,936) costs more than the rest of the LLM.
        last = int((inputs.labels != IGNORE).sum(1).max()) + 1
        logits = self.logits(inputs, last)[:, :-1].float()
        labels = inputs.labels[:, -last:][:, 1:]
        flat = labels.reshape(-1)
        per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=IGNORE, reduction="none")
        if self.training and self.config.label_loss_weight != 1.0 and aux is not None:
            is_label = torch.isin(flat, self.label_token_ids(aux.label_tags).to(flat.device))
            per_token = per_token * torch.where(is_label, self.config.label_loss_weight, 1.0)
        loss_sum = per_token.sum()
        if self.training and self.ctc_head is not None:
            transcripts = aux.transcripts if aux is not None else [None] * len(targets)
            ids = [self._tokens(text) if text else [] for text in transcripts]
            loss_sum = loss_sum + self.config.ctc_weight * self.ctc_loss_sum(frames, frame_lengths, ids)
        if self.training and utterance is not None:
            loss_sum = loss_sum + self.config.utterance_loss_weight * self.utterance_loss_sum(utterance, aux)
        scored = labels != IGNORE
        tokens = scored.sum()
        correct = ((logits.argmax(-1) == labels) & scored).sum()
        return {
            "loss": loss_sum / tokens.clamp(min=1),
            "loss_sum": loss_sum,
            "tokens": tokens,
            "correct": correct,
            "accuracy": correct.float() / tokens.clamp(min=1),
        }

    def tag_ids(self, tags: Sequence[str]) -> list[int | None]:
        """The token id of each tag that is a single token of this tokenizer, else None (cached: tags repeat)."""
        key = tuple(tags)
        cached = self._tag_id_cache.get(key)
        if cached is None:
            vocab = self.tokenizer.get_vocab()
            cached = self._tag_id_cache[key] = [vocab.get(tag) for tag in key]
        return cached

    def label_token_ids(self, label_tags: Mapping[str, Sequence[str]]) -> torch.Tensor:
        """Ids of the label tags (<male>, <happy>, ...) that are single tokens of this tokenizer."""
        tags = sorted({tag for values in label_tags.values() for tag in values})
        return torch.tensor(sorted({i for i in self.tag_ids(tags) if i is not None}), dtype=torch.long)

    def utterance_label_logits(self, utterance: torch.Tensor, label_tags: Mapping[str, Sequence[str]]
                               ) -> dict[str, tuple[list[str], torch.Tensor]]:
        """Per field of `config.utterance_labels`: its label tags and the tied classifier's logits [B, n_tags]
        (each utterance embedding against the LLM's embeddings of the field's label tags, one token each)."""
        table = self.llm.get_input_embeddings().weight
        out = {}
        for name in self.config.utterance_labels:
            tags = list(label_tags[name])
            ids = self.tag_ids(tags)
            missing = [tag for tag, i in zip(tags, ids) if i is None]
            if missing:
                raise ValueError(f"utterance_labels: {', '.join(missing)} not single tokens of the tokenizer; "
                                 "train one with `osum model tokenizer` (label tags become whole tokens)")
            out[name] = (tags, utterance.float() @ table[torch.tensor(ids, device=table.device)].float().T)
        return out

    def utterance_loss_sum(self, utterance: torch.Tensor, aux: AuxiliaryTargets | None) -> torch.Tensor:
        """Cross entropy of each utterance embedding's classifier against the sample's label, per field of
        `config.utterance_labels`, for the samples whose target names a label of that field."""
        total = utterance.sum() * 0.0  # keeps the embedding in the graph when no target has a label (DDP)
        if aux is None:
            return total
        for name, (_, logits) in self.utterance_label_logits(utterance, aux.label_tags).items():
            rows = [i for i, known in enumerate(aux.labels) if name in known]
            if rows:
                index = torch.tensor(rows, device=logits.device)
                answers = torch.tensor([aux.labels[i][name] for i in rows], device=logits.device)
                total = total + F.cross_entropy(logits[index], answers, reduction="sum")
        return total

    def ctc_log_probs(self, speech: torch.Tensor) -> torch.Tensor:
        """[B, S, vocab + 1] CTC log-probabilities of speech embeddings (needs model.ctc_weight > 0)."""
        return self.ctc_head(speech, self.llm.get_input_embeddings().weight)

    def ctc_loss_sum(self, speech: torch.Tensor, speech_lengths: torch.Tensor, transcripts: list[list[int]]
                     ) -> torch.Tensor:
        """CTC of each utterance's transcript token ids on its speech embeddings; empty transcripts (a task without
        one) and transcripts longer than their speech are left out."""
        log_probs = self.ctc_log_probs(speech)
        rows, ids = [], []
        for i, tokens in enumerate(transcripts):
            if tokens and len(tokens) <= int(speech_lengths[i]):
                rows.append(i)
                ids.append(torch.tensor(tokens, dtype=torch.long))
        if not rows:  # label-only batch: keep the head in the graph (DDP wants every weight to get a gradient)
            return log_probs.sum() * 0.0
        index = torch.tensor(rows, device=speech.device)
        return F.ctc_loss(log_probs[index].transpose(0, 1), torch.cat(ids).to(speech.device),
                          speech_lengths[index], torch.tensor([len(t) for t in ids], device=speech.device),
                          blank=log_probs.shape[-1] - 1, reduction="sum", zero_infinity=True)

    # ------------------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(
        self, features: torch.Tensor, lengths: torch.Tensor, prompts: list[str], **overrides: Any
    ) -> list[str]:
        """Decode a batch; greedy (or beam search) unless sampling is asked for. Returns the texts."""
        speech, speech_lengths = self.encode(features, lengths)
        return self.generate_from(self.build_inputs(speech, speech_lengths, prompts), **overrides)

    @torch.no_grad()
    def generate_from(self, inputs: SpeechInputs, **overrides: Any) -> list[str]:
        """Decode spliced inputs (without targets); `overrides`: options of `GenerationConfig`."""
        settings = decoding_settings(self.config.generation, overrides)
        budget = settings["max_new_tokens"]
        if self.max_positions is not None:  # an LLM with a fixed position table (GPT-2: 1024, Whisper's LM: 448)
            budget = max(1, min(budget, self.max_positions - inputs.embeds.shape[1]))
        kwargs: dict[str, Any] = dict(
            inputs_embeds=inputs.embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=budget,
            num_beams=settings["num_beams"],
            do_sample=settings["do_sample"],
            repetition_penalty=settings["repetition_penalty"],
            eos_token_id=self.eos_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if settings["do_sample"]:
            kwargs.update(top_k=settings["top_k"], top_p=settings["top_p"], temperature=settings["temperature"])
        else:
            kwargs.update(top_k=None, top_p=None, temperature=None)
        ids = self.llm.generate(**kwargs)
        return [self.text_of(row) for row in ids.tolist()]

    def text_of(self, ids: Sequence[int]) -> str:
        """The text of generated token ids: up to the end-of-text token, special tokens left out."""
        ids = list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)
