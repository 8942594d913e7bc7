"""Whisper itself (whisper_asr.py, `model.type: whisper`) as an osum model type (model_type.py).

Its model directory (checkpoint.py) has a speech LLM's files; config.json says "type": "whisper" and which of its
parts model.safetensors holds (encoder, decoder), the rest coming from its base directory. A plain Hugging Face
Whisper directory opens as such a model too, to decode with it as it is. Its export is one Hugging Face Whisper
directory, OUT/whisper.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import from_dict, to_dict
from .checkpoint import CONFIG_FILE, PROMPTS_FILE, TOKENIZER_DIR, WEIGHTS_FILE
from .llm import load_tokenizer
from .model_type import DirectoryContents, MemoryEstimate, ModelSize, read_config_json, shape_config
from .speech_llm import GenerationConfig, SpeechLLMConfig
from .weights import WeightError, check_shapes, copy_stored_into, stored_shapes
from .whisper_asr import TRANSCRIBE, WhisperASR, WhisperModelConfig, build_network, mark_trainable

if TYPE_CHECKING:
    from ..data.loader import DataSource
    from ..train.config import ModelSection, TrainConfig

# The SpeechLLM keys of a model section that mean nothing for a Whisper (setting one there is a mistake worth naming).
SPEECH_LLM_ONLY = ("encoder", "adapter", "llm", "lora", "trainable", "prompt_layout", "ctc_weight",
                   "label_loss_weight", "utterance_labels", "utterance_loss_weight")


class WhisperType:
    name = "whisper"
    engines = ("torch",)  # an encoder-decoder: osum's vLLM route serves decoder-only LLMs

    # ------------------------------------------------------------------------------------------ config
    def check_section(self, section: ModelSection) -> None:
        if not (section.whisper.path or section.whisper.config):
            raise ValueError("model.type is whisper: set model.whisper.path (a Hugging Face Whisper directory) "
                             "or model.whisper.config")
        defaults = SpeechLLMConfig()
        stray = [f"model.{name}" for name in SPEECH_LLM_ONLY
                 if to_dict(getattr(section, name)) != to_dict(getattr(defaults, name))]
        if stray:
            raise ValueError(f"model.type is whisper, so {', '.join(stray)} {'does' if len(stray) == 1 else 'do'} "
                             "not apply; a Whisper is set in "
                             "model.whisper (path, config, tokenizer, language, train_encoder, train_decoder)")

    def check_tasks(self, where: str, source: DataSource) -> None:
        other = [t for t in source.tasks if t != TRANSCRIBE]
        if other:
            raise ValueError(f"{where}: {source.path} lists task {other[0]}, but a Whisper model "
                             "(model.type=whisper) only transcribes: drop its tasks or list <TRANSCRIBE>")

    # ------------------------------------------------------------------------------------------ building
    def build(self, section: ModelSection) -> WhisperASR:
        return WhisperASR.build(section.whisper, section.generation)

    def size(self, section: ModelSection) -> ModelSize:
        """WhisperASR holds no parameter besides its transformers network: the network, built as `build` does
        (from config.json alone), its trainable parts set as WhisperASR sets them."""
        w = section.whisper
        values = read_config_json(Path(w.path) / "config.json", "Whisper") if w.path else w.config
        shapes = WhisperModelConfig(config=shape_config(values, "model.whisper.config", "whisper"),
                                    train_encoder=w.train_encoder, train_decoder=w.train_decoder)
        with torch.device("meta"):
            network = build_network(shapes)
        mark_trainable(network, shapes)
        encoder = sum(p.numel() for p in network.model.encoder.parameters())
        total = sum(p.numel() for p in network.parameters())
        hf = network.config
        dims = {"width": hf.d_model, "encoder_layers": hf.encoder_layers, "decoder_layers": hf.decoder_layers,
                "encoder_positions": hf.max_source_positions, "vocab": hf.vocab_size}
        return ModelSize({"encoder": encoder, "decoder": total - encoder},
                         sum(p.numel() for p in network.parameters() if p.requires_grad), dims)

    def memory(self, config: TrainConfig, size: ModelSize) -> MemoryEstimate:
        """fp32 weights (autocast for bf16/fp16); activations of the trained parts (the encoder always runs on 1500
        positions per clip, the decoder on about 64 tokens)."""
        w, d = config.model.whisper, size.dims
        loader = config.data.loader
        rows = min(loader.max_batch_size, max(1, loader.max_frames_in_batch // 300))  # ~3 s clips
        act_bytes = 2 if config.train.precision in ("bf16", "fp16") else 4
        activations = 0.0
        if w.train_encoder:
            activations += 17 * act_bytes * rows * d["encoder_positions"] * d["width"] * d["encoder_layers"]
        if w.train_encoder or w.train_decoder:
            activations += 17 * act_bytes * rows * 64 * d["width"] * d["decoder_layers"]
            activations += act_bytes * rows * 64 * d["vocab"] * 2  # the logits and their gradient
        return MemoryEstimate(sum(size.parameters.values()) * 4, size.trainable * 4, size.trainable * 8,
                              activations, {"weights_dtype": "float32"})

    # ------------------------------------------------------------------------------------------ model directory
    def save(self, model: WhisperASR, standalone: bool, state: dict[str, torch.Tensor] | None) -> DirectoryContents:
        """The parts that trained (all of them when standalone); the rest by its base path."""
        plan = whisper_plan(model, standalone)
        config = copy.deepcopy(model.config)
        config.config = model.whisper.config.to_dict()  # the architecture always travels with the weights
        config.path = None if all(plan.values()) else str(Path(config.path).resolve())
        config.tokenizer = None
        document = {"type": self.name, "weights": plan,
                    "model": {"whisper": to_dict(config), "generation": to_dict(model.generation)}}
        return DirectoryContents(whisper_state_parts(model, plan, state), document)

    def stored_state(self, model: WhisperASR) -> dict[str, torch.Tensor]:
        return whisper_state_parts(model, whisper_plan(model, standalone=False))

    def load(self, root: Path, document: dict, device: str | torch.device) -> WhisperASR:
        """An osum Whisper directory, or a Hugging Face one (its config.json is a transformers config)."""
        if "model_type" in document:
            return open_hf_whisper(root, device)
        return load_whisper_dir(root, document, device)

    # ------------------------------------------------------------------------------------------ export
    def export(self, model: WhisperASR, model_dir: Path, out: Path, merge_lora: bool) -> dict:
        """One Hugging Face Whisper directory, OUT/whisper, with its tokenizer and (from the base directory) the
        feature extractor's settings; `merge_lora` does not apply (no LoRA)."""
        whisper_dir = out / "whisper"
        model.whisper.save_pretrained(str(whisper_dir), safe_serialization=True)
        model.tokenizer.save_pretrained(str(whisper_dir))
        if model.config.path and (Path(model.config.path) / "preprocessor_config.json").is_file():
            shutil.copyfile(Path(model.config.path) / "preprocessor_config.json",
                            whisper_dir / "preprocessor_config.json")
        description = {"type": self.name, "decoder_prefix": model.tokenizer.convert_ids_to_tokens(model.prefix),
                       "eos_token_id": model.eos_id, "parts": {"whisper": "whisper/"}}
        (out / "export.json").write_text(json.dumps(description, indent=2))
        return description


def whisper_plan(model: WhisperASR, standalone: bool) -> dict[str, bool]:
    """Which parts a model directory stores: what trained, and everything without a base directory."""
    c = model.config
    return {"encoder": bool(standalone or c.train_encoder or not c.path),
            "decoder": bool(standalone or c.train_decoder or not c.path)}


def whisper_state_parts(model: WhisperASR, plan: dict[str, bool],
                        full_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The part of the state dict a model directory holds: encoder and/or decoder (the tied output layer is the
    decoder's token embedding, so it is never stored twice)."""
    tied = model.whisper.config.tie_word_embeddings
    state = {}
    for key, value in (model.state_dict() if full_state is None else full_state).items():
        if key.startswith("whisper.model.encoder."):
            if plan["encoder"]:
                state[key] = value
        elif plan["decoder"] and not (tied and key == "whisper.proj_out.weight"):
            state[key] = value
    return state


def load_whisper_dir(root: Path, document: dict, device: str | torch.device) -> WhisperASR:
    """An osum Whisper model directory: the stored parts over the base directory (or a config) for the rest.
    Whisper reads no task prompts (its prompt is its prefix tokens), so a missing prompts.yaml is no error here."""
    from ..prompt_set import load_prompts

    config_file = root / CONFIG_FILE
    plan = document.get("weights") or {}
    if set(plan) != {"encoder", "decoder"}:
        raise WeightError(f"{config_file}: 'weights' must say which Whisper parts are stored (encoder, decoder)")
    model_doc = document.get("model") or {}
    config = from_dict(WhisperModelConfig, model_doc.get("whisper") or {}, "model.whisper")
    generation = from_dict(GenerationConfig, model_doc.get("generation") or {}, "model.generation")
    if all(plan.values()):
        config.path = None  # every weight is here: build from the stored architecture
    elif not config.path or not Path(config.path).exists():
        raise WeightError(f"{root}: the base Whisper it was trained on is not at {config.path}; copy it there, or "
                          "where it is, export a standalone copy with `osum export DIR OUT` (OUT/whisper opens as it is)")
    if not (root / WEIGHTS_FILE).is_file() or not (root / TOKENIZER_DIR).is_dir():
        raise WeightError(f"{root}: {WEIGHTS_FILE} or {TOKENIZER_DIR}/ is missing, so the model directory is incomplete")
    model = WhisperASR.build(config, generation, tokenizer=load_tokenizer(root / TOKENIZER_DIR))
    stored = stored_shapes(root / WEIGHTS_FILE)
    check_shapes(whisper_state_parts(model, plan), stored, str(root / WEIGHTS_FILE))
    copy_stored_into(root / WEIGHTS_FILE, model.state_dict())  # coverage was checked above, key by key
    model.prompts = load_prompts(root / PROMPTS_FILE) if (root / PROMPTS_FILE).is_file() else load_prompts()
    return model.to(device).eval()


def open_hf_whisper(root: Path, device: str | torch.device) -> WhisperASR:
    """A Hugging Face Whisper directory used directly (decode, serve): its language from generation_config.json."""
    from ..prompt_set import load_prompts

    generation_file = root / "generation_config.json"
    language = json.loads(generation_file.read_text()).get("language") if generation_file.is_file() else None
    if isinstance(language, str):
        language = language.strip("<|>")
    model = WhisperASR.build(WhisperModelConfig(path=str(root), language=language))
    model.prompts = load_prompts()
    return model.to(device).eval()
