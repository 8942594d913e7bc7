"""osum convert osum-ckpt: a state dict with exactly the names of OSUM's released checkpoint, at tiny sizes,
becomes an osum model directory that computes what the same weights wired into the model by hand compute;
an extra key, a missing key or a wrong shape is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model_parts import tiny_llm_dir
from osum.convert.osum_ckpt import convert_osum_checkpoint
from osum.models.adapter import AdapterConfig
from osum.models.checkpoint import load_model
from osum.models.llm import LLMConfig, LoraConfig, load_tokenizer
from osum.models.speech_llm import EncoderConfig, SpeechLLM, SpeechLLMConfig
from osum.models.weights import WeightError
from osum.models.whisper import WhisperEncoderConfig

D, HEADS, LAYERS, FFN, MELS, FRAMES = 32, 2, 2, 64, 80, 50  # the tiny "Whisper-medium"
A_LAYERS, A_FFN, A_POS = 2, 48, 100  # the tiny adapter transformer
LLM_HIDDEN = 64


def whisper_config_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "whisper", "num_mel_bins": MELS, "d_model": D, "encoder_attention_heads": HEADS,
        "encoder_layers": LAYERS, "encoder_ffn_dim": FFN, "max_source_positions": FRAMES}))
    return path


def wenet_block(prefix: str, dim: int, ffn: int, k_bias: bool) -> dict[str, torch.Tensor]:
    t = {}
    for name in ("q", "k", "v", "out"):
        t[f"{prefix}self_attn.linear_{name}.weight"] = torch.randn(dim, dim) * 0.2
        if name != "k" or k_bias:
            t[f"{prefix}self_attn.linear_{name}.bias"] = torch.randn(dim) * 0.1
    for norm in ("norm1", "norm2"):
        t[f"{prefix}{norm}.weight"] = 1 + torch.randn(dim) * 0.1
        t[f"{prefix}{norm}.bias"] = torch.randn(dim) * 0.1
    t[f"{prefix}feed_forward.w_1.weight"] = torch.randn(ffn, dim) * 0.2
    t[f"{prefix}feed_forward.w_1.bias"] = torch.randn(ffn) * 0.1
    t[f"{prefix}feed_forward.w_2.weight"] = torch.randn(dim, ffn) * 0.2
    t[f"{prefix}feed_forward.w_2.bias"] = torch.randn(dim) * 0.1
    return t


def osum_release_state(llm_dir) -> dict[str, torch.Tensor]:
    """OSUM's key names (see osum.convert.osum_ckpt), random values at tiny sizes."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    s = {"encoder.embed.conv.0.weight": torch.randn(D, MELS, 3) * 0.1, "encoder.embed.conv.0.bias": torch.randn(D) * 0.1,
         "encoder.embed.conv.2.weight": torch.randn(D, D, 3) * 0.1, "encoder.embed.conv.2.bias": torch.randn(D) * 0.1,
         "encoder.embed.pos_enc.pe": torch.randn(1, FRAMES, D) * 0.1,
         "encoder.after_norm.weight": 1 + torch.randn(D) * 0.1, "encoder.after_norm.bias": torch.randn(D) * 0.1}
    for n in range(LAYERS):
        s.update(wenet_block(f"encoder.encoders.{n}.", D, FFN, k_bias=False))
    for index in (1, 4, 7):
        s[f"down_sample_2.conv.{index}.weight"] = torch.randn(D, D, 3) * 0.1
        s[f"down_sample_2.conv.{index}.bias"] = torch.randn(D) * 0.1
    s.update({"speech_transformer.embed.out.0.weight": torch.randn(D, D) * 0.2,
              "speech_transformer.embed.out.0.bias": torch.randn(D) * 0.1,
              "speech_transformer.embed.out.1.weight": 1 + torch.randn(D) * 0.1,
              "speech_transformer.embed.out.1.bias": torch.randn(D) * 0.1,
              "speech_transformer.embed.pos_enc.pe": torch.randn(1, A_POS, D) * 0.1,
              "speech_transformer.after_norm.weight": 1 + torch.randn(D) * 0.1,
              "speech_transformer.after_norm.bias": torch.randn(D) * 0.1,
              "speech_llama_proj.weight": torch.randn(LLM_HIDDEN, D) * 0.2, "speech_llama_proj.bias": torch.randn(LLM_HIDDEN) * 0.1,
              "speech_token_emded.weight": torch.randn(4099, LLM_HIDDEN) * 0.1,
              "ln_speech.weight": torch.ones(D), "ln_speech.bias": torch.zeros(D),
              "speaker_head.weight": torch.randn(3, D)})
    for n in range(A_LAYERS):
        s.update(wenet_block(f"speech_transformer.encoders.{n}.", D, A_FFN, k_bias=True))
    # The LLM as peft names it inside OSUM (LoRA r 8 on q/k/v/o/gate/down, up_proj not wrapped).
    llm = AutoModelForCausalLM.from_pretrained(llm_dir)
    llm = get_peft_model(llm, PeftLoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                                 "gate_proj", "down_proj"]))
    for name, tensor in llm.state_dict().items():
        s[f"llama_model.{name}"] = torch.randn_like(tensor) * 0.1 if "lora_" in name else tensor.clone()
    s["embed_tokens.weight"] = s["llama_model.base_model.model.model.embed_tokens.weight"].clone()
    return s


def wired_by_hand(s: dict[str, torch.Tensor], llm_dir, llm_dtype: str = "float32") -> SpeechLLM:
    """The same weights put into the modules attribute by attribute (no name mapping involved); the LLM built in
    `llm_dtype` as OSUM builds it (peft keeps the LoRA matrices in float32)."""
    tokenizer = load_tokenizer(llm_dir)
    config = SpeechLLMConfig(
        encoder=EncoderConfig(config=WhisperEncoderConfig(n_mels=MELS, d_model=D, n_heads=HEADS, n_layers=LAYERS,
                                                          ffn_dim=FFN, max_positions=FRAMES)),
        adapter=AdapterConfig(type="osum", model_dim=D, n_layers=A_LAYERS, n_heads=4, ffn_dim=A_FFN, max_positions=A_POS),
        llm=LLMConfig(path=str(llm_dir), dtype=llm_dtype), lora=LoraConfig(enabled=True, r=8, alpha=32, dropout=0.0),
        prompt_layout="plain")
    model = SpeechLLM.build(config, tokenizer=tokenizer).eval()
    e, a = model.encoder, model.adapter

    def put(module, name, tensor):
        getattr(module, name).data.copy_(tensor)

    with torch.no_grad():
        put(e.conv1, "weight", s["encoder.embed.conv.0.weight"]), put(e.conv1, "bias", s["encoder.embed.conv.0.bias"])
        put(e.conv2, "weight", s["encoder.embed.conv.2.weight"]), put(e.conv2, "bias", s["encoder.embed.conv.2.bias"])
        e.positions.copy_(s["encoder.embed.pos_enc.pe"][0])
        put(e.final_norm, "weight", s["encoder.after_norm.weight"]), put(e.final_norm, "bias", s["encoder.after_norm.bias"])
        for n, block in enumerate(e.blocks):
            p = f"encoder.encoders.{n}."
            for ours, theirs in ((block.attn.query, "q"), (block.attn.key, "k"), (block.attn.value, "v"), (block.attn.out, "out")):
                put(ours, "weight", s[f"{p}self_attn.linear_{theirs}.weight"])
                if ours.bias is not None:
                    put(ours, "bias", s[f"{p}self_attn.linear_{theirs}.bias"])
            for ours, theirs in ((block.attn_norm, "norm1"), (block.mlp_norm, "norm2")):
                put(ours, "weight", s[f"{p}{theirs}.weight"]), put(ours, "bias", s[f"{p}{theirs}.bias"])
            for ours, theirs in ((block.fc1, "w_1"), (block.fc2, "w_2")):
                put(ours, "weight", s[f"{p}feed_forward.{theirs}.weight"]), put(ours, "bias", s[f"{p}feed_forward.{theirs}.bias"])
        for conv, index in zip(a.convs, (1, 4, 7)):
            put(conv.conv, "weight", s[f"down_sample_2.conv.{index}.weight"]), put(conv.conv, "bias", s[f"down_sample_2.conv.{index}.bias"])
        for ours, theirs in ((a.input_linear, "speech_transformer.embed.out.0"), (a.input_norm, "speech_transformer.embed.out.1"),
                             (a.final_norm, "speech_transformer.after_norm"), (a.project, "speech_llama_proj")):
            put(ours, "weight", s[f"{theirs}.weight"]), put(ours, "bias", s[f"{theirs}.bias"])
        a.positions.copy_(s["speech_transformer.embed.pos_enc.pe"][0])
        for n, block in enumerate(a.blocks):
            p = f"speech_transformer.encoders.{n}."
            for ours, theirs in ((block.query, "q"), (block.key, "k"), (block.value, "v"), (block.out, "out")):
                put(ours, "weight", s[f"{p}self_attn.linear_{theirs}.weight"]), put(ours, "bias", s[f"{p}self_attn.linear_{theirs}.bias"])
            for ours, theirs in ((block.norm1, "norm1"), (block.norm2, "norm2")):
                put(ours, "weight", s[f"{p}{theirs}.weight"]), put(ours, "bias", s[f"{p}{theirs}.bias"])
            for ours, theirs in ((block.w1, "w_1"), (block.w2, "w_2")):
                put(ours, "weight", s[f"{p}feed_forward.{theirs}.weight"]), put(ours, "bias", s[f"{p}feed_forward.{theirs}.bias"])
        model.audio_markers.copy_(s["speech_token_emded.weight"][[4097, 4098]])
        for name, param in model.llm.named_parameters():  # the LLM's names are peft's in both
            param.copy_(s[f"llama_model.{name}"])
    return model


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("osum_release")
    llm_dir = tiny_llm_dir(tmp / "qwen")
    state = osum_release_state(llm_dir)
    torch.save(state, tmp / "infer.pt")
    return tmp, llm_dir, state


@pytest.mark.parametrize("merge", [False, True])
def test_converted_release_computes_what_the_hand_wired_model_computes(release, merge, tmp_path):
    tmp, llm_dir, state = release
    cmd = [sys.executable, "-m", "osum.cli", "convert", "osum-ckpt", str(tmp / "infer.pt"), "--whisper-config",
           str(whisper_config_dir(tmp / "whisper")), "--llm", str(llm_dir), "--out", str(tmp_path / "model")]
    done = subprocess.run(cmd + ["--dtype", "float32"] + (["--merge"] if merge else []), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    converted = load_model(tmp_path / "model")
    reference = wired_by_hand(state, llm_dir)
    assert converted.layout == "plain" and converted.eos_id == load_tokenizer(llm_dir).convert_tokens_to_ids("<|endoftext|>")
    assert converted.config.generation.do_sample is False
    torch.manual_seed(3)
    features, lengths = torch.randn(2, 60, MELS), torch.tensor([60, 44])
    prompts, targets = ["Transcribe the speech."] * 2, ["HELLO WORLD", "YES NO"]
    with torch.no_grad():
        got = converted(features, lengths, prompts, targets)["loss_sum"]
        want = reference(features, lengths, prompts, targets)["loss_sum"]
        plain_lm = wired_by_hand(state, llm_dir)
        plain_lm.llm.disable_adapter_layers()  # LoRA off: the loss must differ, or the test proves nothing
        without_lora = plain_lm(features, lengths, prompts, targets)["loss_sum"]
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(without_lora) - float(want)) > 1e-3
    assert converted.generate(features, lengths, prompts, max_new_tokens=5) == reference.generate(features, lengths, prompts, max_new_tokens=5)


def test_extra_missing_and_misshaped_keys_are_errors(release, tmp_path):
    tmp, llm_dir, state = release
    whisper = whisper_config_dir(tmp / "whisper")

    def convert(s):
        torch.save(s, tmp_path / "bad.pt")
        return convert_osum_checkpoint(tmp_path / "bad.pt", whisper, llm_dir, tmp_path / "out")

    with pytest.raises(WeightError, match="does not know: .*mystery.weight"):
        convert({**state, "mystery.weight": torch.zeros(1)})
    with pytest.raises(WeightError, match="encoder.encoders.1.norm2.bias"):
        convert({k: v for k, v in state.items() if k != "encoder.encoders.1.norm2.bias"})
    wrong = dict(state)
    wrong["speech_llama_proj.weight"] = torch.zeros(LLM_HIDDEN, D + 1)
    with pytest.raises(WeightError, match="adapter.project.weight"):
        convert(wrong)
    alias = dict(state)
    alias["embed_tokens.weight"] = alias["embed_tokens.weight"] + 1
    with pytest.raises(WeightError, match="not a copy"):
        convert(alias)
    with pytest.raises(WeightError, match="config.json"):
        convert_osum_checkpoint(tmp / "infer.pt", tmp_path / "nowhere", llm_dir, tmp_path / "out")


def test_the_default_is_bfloat16_as_osum_runs_it_with_its_prompts_and_length_budget(release, tmp_path):
    """OSUM builds its LLM in bfloat16 and casts the speech to it: the converted model, by default, is the same
    numbers (the hand-wired model with its LLM in bfloat16), stored in bfloat16 (half the bytes of float32)."""
    from safetensors import safe_open

    from osum.convert.osum_ckpt import conversion_notes
    from osum.prompt_set import DEFAULT_PROMPTS

    tmp, llm_dir, state = release
    prompts = tmp_path / "prompt_config.yaml"  # OSUM's layout: tags at the top level
    prompts.write_text('"<TRANSCRIBE>":\n  - "执行语音识别任务，将音频转换为文字。"\n"<GENDER>":\n  - "请判断说话人的性别。"\n')
    out = convert_osum_checkpoint(tmp / "infer.pt", whisper_config_dir(tmp / "whisper"), llm_dir,
                                  tmp_path / "model", prompts=prompts)
    converted = load_model(out)
    assert converted.config.llm.dtype == "bfloat16" and converted.llm_dtype == torch.bfloat16
    assert converted.encoder.conv1.weight.dtype == torch.float32  # only the LLM, as OSUM
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys() if k.startswith("llm.")}
    # the LLM's own weights in bfloat16; peft keeps LoRA's small matrices in float32 (as it does in OSUM's run)
    assert {d for k, d in dtypes.items() if ".lora_" not in k} == {"BF16"}
    assert {d for k, d in dtypes.items() if ".lora_" in k} == {"F32"}
    assert converted.config.generation.max_new_tokens == 400 and converted.config.generation.num_beams == 1
    assert converted.prompts.pick("<TRANSCRIBE>") == "执行语音识别任务，将音频转换为文字。"
    assert "prompts.yaml" in conversion_notes(prompts)[0] and str(DEFAULT_PROMPTS) in conversion_notes(None)[0]

    reference = wired_by_hand(state, llm_dir, "bfloat16")  # OSUM: the LLM in bfloat16, the inputs cast to it
    torch.manual_seed(3)
    features, lengths = torch.randn(2, 60, MELS), torch.tensor([60, 44])
    prompts_text = ["Transcribe the speech."] * 2
    with torch.no_grad():
        ours = converted.logits(converted.build_inputs(*converted.encode(features, lengths), prompts_text)).float()
        theirs = reference.logits(reference.build_inputs(*reference.encode(features, lengths), prompts_text)).float()
    assert torch.equal(ours, theirs)  # the same bfloat16 computation, bit for bit
    assert converted.generate(features, lengths, prompts_text, max_new_tokens=8) == \
        reference.generate(features, lengths, prompts_text, max_new_tokens=8)


def test_without_prompts_the_cli_says_which_prompts_the_model_uses(release, tmp_path):
    tmp, llm_dir, _ = release
    cmd = [sys.executable, "-m", "osum.cli", "convert", "osum-ckpt", str(tmp / "infer.pt"), "--whisper-config",
           str(whisper_config_dir(tmp / "whisper")), "--llm", str(llm_dir), "--out", str(tmp_path / "model")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no --prompts given: the model uses osum's packaged prompts" in done.stderr
    printed = json.loads(done.stdout)
    assert printed["llm_dtype"] == "bfloat16" and "prompt_config.yaml" in printed["notes"][0]
    bad = tmp_path / "bad.yaml"
    bad.write_text('"<NOT_A_TASK>": ["x"]\n')
    done = subprocess.run(cmd[:-1] + [str(tmp_path / "model2"), "--prompts", str(bad)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "bad.yaml" in done.stderr and not (tmp_path / "model2").exists()
