"""The speech LLM (speech_llm.py: Whisper encoder + adapter + causal LM) as an osum model type (model_type.py).

Its model directory (checkpoint.py) holds the weights osum owns (adapter, audio markers, CTC and utterance heads)
and the encoder / LLM / LoRA weights that trained; base weights that did not are referenced by path. Its export
is three Hugging Face-style parts: llm/ (+ lora/), encoder/, adapter/.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import from_dict, to_dict
from .checkpoint import CONFIG_FILE, LLM_DIR, PROMPTS_FILE, TOKENIZER_DIR, WEIGHTS_FILE
from .llm import DTYPES, base_model, load_tokenizer, merged_llm
from .model_type import DirectoryContents, MemoryEstimate, ModelSize, read_config_json, shape_config
from .speech_llm import SpeechLLM, SpeechLLMConfig
from .weights import WeightError, check_shapes, copy_stored_into, stored_shapes
from .whisper import WhisperEncoderConfig
from .whisper_asr import WhisperModelConfig

if TYPE_CHECKING:
    from ..data.loader import DataSource
    from ..train.config import ModelSection, TrainConfig

# The state dict's top-level parts osum owns: always in the weights file.
OWNED_PARTS = ("adapter", "audio_markers", "ctc_head", "utterance")


class SpeechLLMType:
    name = "speech_llm"
    engines = ("torch", "vllm")  # vLLM runs its LLM on prompt embeddings (osum.infer.vllm_engine)

    # ------------------------------------------------------------------------------------------ config
    def check_section(self, section: ModelSection) -> None:
        if to_dict(section.whisper) != to_dict(WhisperModelConfig()):
            raise ValueError("model.whisper is set but model.type is speech_llm: add model.type=whisper to train "
                             "Whisper itself")

    def check_tasks(self, where: str, source: DataSource) -> None:
        return None  # every task

    # ------------------------------------------------------------------------------------------ building
    def build(self, section: ModelSection) -> SpeechLLM:
        return SpeechLLM.build(speech_llm_config(section))

    def size(self, section: ModelSection) -> ModelSize:
        with torch.device("meta"):
            model = SpeechLLM.build(shapes_only(section), tokenizer=ShapesOnlyTokenizer())
        parameters = {"encoder": 0, "adapter": 0}
        parameters.update({part: 0 for part in ("utterance", "ctc_head") if getattr(model, part, None) is not None})
        parameters.update(llm=0, lora=0)
        for name, p in model.named_parameters():
            part = name.split(".", 1)[0]
            if part == "llm":
                part = "lora" if "lora_" in name else "llm"
            elif part == "audio_markers":
                part = "adapter"
            parameters[part] += p.numel()
        llm_config = base_model(model.llm).config
        dims = {"llm_layers": getattr(llm_config, "num_hidden_layers", 0), "llm_hidden": getattr(llm_config, "hidden_size", 0),
                "encoder_layers": model.encoder.config.n_layers, "encoder_width": model.encoder.config.d_model}
        return ModelSize(parameters, sum(p.numel() for p in model.parameters() if p.requires_grad), dims)

    def memory(self, config: TrainConfig, size: ModelSize) -> MemoryEstimate:
        p, d = size.parameters, size.dims
        llm_bytes = DTYPES[config.model.llm.dtype].itemsize
        # Encoder, adapter and heads are kept in fp32 unless the LLM's dtype is given to the whole model by the trainer.
        fp32 = p["encoder"] + p["adapter"] + p.get("utterance", 0) + p.get("ctc_head", 0)
        weights = fp32 * 4 + (p["llm"] + p["lora"]) * llm_bytes
        gradients = size.trainable * (4 if llm_bytes == 4 else llm_bytes)
        optimizer = size.trainable * (8 + (4 if llm_bytes < 4 else 0))
        # Activations of the largest batch: speech tokens (frames / 2 encoder, / 4 adapter) + prompt and target.
        loader = config.data.loader
        frames = loader.max_frames_in_batch
        act_bytes = 2 if config.train.precision in ("bf16", "fp16") else 4
        factor = 2 if config.model.llm.gradient_checkpointing else 34 / 2  # 34 bytes at 2-byte activations
        rows = min(loader.max_batch_size, max(1, frames // 500))  # clips of about 5 s
        llm_tokens = frames / 8 + rows * 64  # + about 64 prompt and target tokens per row
        activations = factor * act_bytes * llm_tokens * d["llm_hidden"] * d["llm_layers"]
        if config.model.trainable.encoder:
            activations += (34 / 2) * act_bytes * (frames / 2) * d["encoder_width"] * d["encoder_layers"]
        return MemoryEstimate(weights, gradients, optimizer, activations, {"llm_dtype": config.model.llm.dtype})

    # ------------------------------------------------------------------------------------------ model directory
    def save(self, model: SpeechLLM, standalone: bool, state: dict[str, torch.Tensor] | None) -> DirectoryContents:
        plan = weights_plan(model, standalone)
        config = copy.deepcopy(model.config)
        config.prompt_layout = model.layout
        if config.encoder.path and not plan["encoder"]:
            config.encoder.path = str(Path(config.encoder.path).resolve())
        else:
            config.encoder.path = None
        if plan["llm"] == "full" or standalone:
            config.llm.config = base_model(model.llm).config.to_dict()
        hf_dirs = {}
        if standalone:
            hf_dirs[LLM_DIR] = merged_llm(model.llm)
            config.llm.path = LLM_DIR
            config.lora = dataclasses.replace(config.lora, enabled=False)
        elif plan["llm"] == "full":
            config.llm.path = None
        elif config.llm.path and config.llm.path != LLM_DIR:
            config.llm.path = str(Path(config.llm.path).resolve())
        config.llm.tokenizer = None
        return DirectoryContents(owned_state(model, plan, state), {"weights": plan, "model": to_dict(config)}, hf_dirs)

    def stored_state(self, model: SpeechLLM) -> dict[str, torch.Tensor]:
        return owned_state(model, weights_plan(model, standalone=False))

    def load(self, root: Path, document: dict, device: str | torch.device) -> SpeechLLM:
        config_file = root / CONFIG_FILE
        if "model" not in document or "weights" not in document:
            raise WeightError(f"{config_file}: not an osum model config (needs 'model' and 'weights')")
        plan = document["weights"]
        config = from_dict(SpeechLLMConfig, document["model"], "model")
        if plan["encoder"]:
            config.encoder.path = None
            if config.encoder.config is None:
                raise WeightError(f"{config_file}: model.encoder.config is needed when the encoder weights are included")
        elif config.encoder.path and not Path(config.encoder.path).is_absolute():
            config.encoder.path = str(root / config.encoder.path)
        if plan["llm"] == "full":
            config.llm.path = None
        elif config.llm.path and not Path(config.llm.path).is_absolute():
            config.llm.path = str(root / config.llm.path)
        for name, path in (("encoder", config.encoder.path), ("LLM", config.llm.path)):
            if path and not Path(path).exists():
                raise WeightError(f"{root}: the base {name} it was trained on is not at {path}; "
                                  "copy it there or save a standalone model with --merge")
        for name in (WEIGHTS_FILE, TOKENIZER_DIR):
            if not (root / name).exists():
                raise WeightError(f"{root}: {name} is missing, so the model directory is incomplete; copy the whole "
                                  "directory again (config.json, model.safetensors, tokenizer/, prompts.yaml)")
        from ..prompt_set import DEFAULT_PROMPTS, load_prompts

        if not (root / PROMPTS_FILE).is_file():
            # Other prompts than those it was trained with change what the model answers: no silent default.
            raise WeightError(f"{root / PROMPTS_FILE} is missing: the task prompts are part of the model. Copy the "
                              f"prompts.yaml of the run that trained it (OUT/model/ or any OUT/checkpoints/step_*/) "
                              f"into {root}, or the prompt file it was trained with (model.prompts; osum's default "
                              f"is {DEFAULT_PROMPTS})")
        prompts = load_prompts(root / PROMPTS_FILE)
        model = SpeechLLM.build(config, tokenizer=load_tokenizer(root / TOKENIZER_DIR))
        stored = stored_shapes(root / WEIGHTS_FILE)
        check_shapes(owned_state(model, plan), stored, str(root / WEIGHTS_FILE))
        copy_stored_into(root / WEIGHTS_FILE, model.state_dict())  # coverage was checked above, key by key
        model.prompts = prompts
        return model.to(device).eval()

    # ------------------------------------------------------------------------------------------ export
    def export(self, model: SpeechLLM, model_dir: Path, out: Path, merge_lora: bool) -> dict:
        """OUT/llm (+ OUT/lora), OUT/encoder, OUT/adapter, OUT/prompts.yaml and OUT/export.json (see export.py)."""
        from safetensors.torch import save_file

        from .export import hf_encoder_state, hf_whisper_config

        has_lora = hasattr(model.llm, "peft_config")
        llm = model.llm
        if has_lora and merge_lora:
            llm = merged_llm(model.llm)
        elif has_lora:
            llm.save_pretrained(str(out / "lora"), safe_serialization=True)  # the peft adapter alone
            llm = copy.deepcopy(model.llm).unload()  # the base LLM without the LoRA layers (not merged)
        llm.save_pretrained(str(out / "llm"), safe_serialization=True)
        model.tokenizer.save_pretrained(str(out / "llm"))

        encoder_dir = out / "encoder"
        encoder_dir.mkdir()
        (encoder_dir / "config.json").write_text(json.dumps(hf_whisper_config(model.encoder, model.config.encoder.path),
                                                            indent=2))
        save_file(hf_encoder_state(model.encoder), str(encoder_dir / "model.safetensors"), metadata={"format": "pt"})
        if model.config.encoder.path:  # the feature extractor's settings, when the encoder came with them
            source = Path(model.config.encoder.path) / "preprocessor_config.json"
            if source.is_file():
                shutil.copyfile(source, encoder_dir / source.name)

        adapter_dir = out / "adapter"
        adapter_dir.mkdir()
        adapter_state = {f"adapter.{k}": v.detach().contiguous().cpu() for k, v in model.adapter.state_dict().items()}
        adapter_state["audio_markers"] = model.audio_markers.detach().contiguous().cpu()
        if model.utterance is not None:  # model.utterance_labels: the utterance embedding's MLP
            adapter_state.update({f"utterance.{k}": v.detach().contiguous().cpu()
                                  for k, v in model.utterance.state_dict().items()})
        save_file(adapter_state, str(adapter_dir / "adapter.safetensors"), metadata={"format": "pt"})
        (adapter_dir / "adapter_config.json").write_text(json.dumps(dataclasses.asdict(model.config.adapter), indent=2))

        prompts = Path(model_dir) / PROMPTS_FILE
        if prompts.is_file():
            shutil.copyfile(prompts, out / PROMPTS_FILE)
        description = {
            "layout": model.layout,
            "sequence": "prompt prefix | audio_markers[0] | adapter(encoder(log-mel))"
                        + (" | utterance(encoder(log-mel))" if model.utterance is not None else "")
                        + " | audio_markers[1] | prompt suffix | target",
            "eos_token_id": model.eos_id,
            "lora": "merged" if has_lora and merge_lora else ("lora/" if has_lora else "none"),
            "parts": {"llm": "llm/", "encoder": "encoder/", "adapter": "adapter/",
                      "prompts": PROMPTS_FILE if prompts.is_file() else None},
        }
        (out / "export.json").write_text(json.dumps(description, indent=2))
        return description


def speech_llm_config(section: ModelSection) -> SpeechLLMConfig:
    """The SpeechLLMConfig inside a training config's model section."""
    return SpeechLLMConfig(**{f.name: getattr(section, f.name) for f in dataclasses.fields(SpeechLLMConfig)})


def weights_plan(model: SpeechLLM, standalone: bool) -> dict[str, Any]:
    """Which parts the weights file holds: encoder (bool) and llm ('none' | 'lora' | 'full')."""
    c = model.config
    encoder = standalone or c.trainable.encoder or not c.encoder.path
    if standalone:
        llm = "none"  # the merged LLM goes to DIR/llm as a Hugging Face directory
    elif c.trainable.llm or not c.llm.path:
        llm = "full"
    elif c.lora.enabled:
        llm = "lora"
    else:
        llm = "none"
    return {"encoder": bool(encoder), "llm": llm}


def owned_state(model: SpeechLLM, plan: dict[str, Any], full_state: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
    """The subset of the model's state dict (or of `full_state`, gathered from shards) the weights file holds."""
    tied = getattr(base_model(model.llm).config, "tie_word_embeddings", False)
    state = {}
    for key, value in (model.state_dict() if full_state is None else full_state).items():
        part = key.split(".", 1)[0]
        if part in OWNED_PARTS:
            state[key] = value
        elif part == "encoder" and plan["encoder"]:
            state[key] = value
        elif part == "llm":
            if plan["llm"] == "full" and not (tied and key.endswith("lm_head.weight")):
                state[key] = value
            elif plan["llm"] == "lora" and "lora_" in key:
                state[key] = value
    return state


class ShapesOnlyTokenizer:
    """What SpeechLLM reads of its tokenizer while it is built, for a build on the meta device that reads no
    tokenizer files: the chat template and the end token choose the prompt layout, no parameter."""

    chat_template = "shapes only"
    eos_token_id = 0

    def __len__(self) -> int:
        return 0  # no rows to check against the LLM's embedding


def shapes_only(section: ModelSection) -> SpeechLLMConfig:
    """A copy of the section's SpeechLLMConfig that builds the same modules from config.json files alone: each
    pretrained part's directory becomes its config."""
    config = copy.deepcopy(speech_llm_config(section))
    e, llm = config.encoder, config.llm
    if e.path:
        e.config = WhisperEncoderConfig.from_hf(read_config_json(Path(e.path) / "config.json", "encoder"))
        e.path = None
    elif e.config is None:
        raise ValueError("model.encoder needs a path (a Hugging Face Whisper directory) or a config")
    values = dict(read_config_json(Path(llm.path) / "config.json", "LLM") if llm.path else (llm.config or {}))
    if "model_type" not in values:
        raise ValueError("the LLM config needs a model_type (qwen2, llama, ...)")
    # eager attention: the attention kernel changes no shape, and flash attention need not be installed to check
    config.llm = dataclasses.replace(llm, path=None, config=shape_config(values, "llm.config"),
                                     attn_implementation="eager")
    return config
