import json

import pytest
import torch

from osum.models.adapter import AdapterConfig, LinearAdapter, OsumAdapter
from osum.models.checkpoint import load_model, save_model
from osum.infer.labels import generate_with_label_scores, score_continuations, utterance_label_probabilities
from osum.models.speech_llm import IGNORE, AuxiliaryTargets
from osum.tasks import LABELS, label_tags
from osum.models.weights import WeightError
from osum.models.whisper import WhisperEncoder, encoder_lengths

from model_parts import tiny_speech_llm

transformers = pytest.importorskip("transformers")


def hf_whisper(tmp_path, kind="model"):
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, vocab_size=100, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1,
    )
    cls = {"model": transformers.WhisperModel, "generation": transformers.WhisperForConditionalGeneration,
           "encoder": transformers.models.whisper.modeling_whisper.WhisperEncoder}[kind]
    model = cls(cfg).eval()
    model.save_pretrained(tmp_path / kind)
    encoder = model if kind == "encoder" else model.get_encoder()
    return encoder, tmp_path / kind


@pytest.mark.parametrize("kind", ["model", "generation", "encoder"])
def test_encoder_matches_transformers_on_30s_input(tmp_path, kind):
    hf, path = hf_whisper(tmp_path, kind)
    ours = WhisperEncoder.from_pretrained(path).eval()
    features = torch.randn(2, 80, 3000)
    with torch.no_grad():
        ref = hf(features).last_hidden_state
        out, lengths = ours(features.transpose(1, 2))
    assert lengths.tolist() == [1500, 1500]
    assert (ref - out).abs().max() < 1e-4


def test_short_and_batched_inputs_match_the_same_math_unpadded(tmp_path):
    hf, path = hf_whisper(tmp_path)
    ours = WhisperEncoder.from_pretrained(path).eval()

    def reference(x):  # HF's modules applied to the real frames only, positions sliced to the length
        h = torch.nn.functional.gelu(hf.conv1(x.T[None]))
        h = torch.nn.functional.gelu(hf.conv2(h)).transpose(1, 2)
        h = h + hf.embed_positions.weight[: h.shape[1]]
        for layer in hf.layers:
            out = layer(h, attention_mask=None)
            h = out[0] if isinstance(out, tuple) else out
        return hf.layer_norm(h)[0]

    lengths = torch.tensor([517, 100, 331])
    batch = torch.zeros(3, 517, 80)
    singles = [torch.randn(int(n), 80) for n in lengths]
    for i, x in enumerate(singles):
        batch[i, : x.shape[0]] = x
    with torch.no_grad():
        out, out_lengths = ours(batch, lengths)
        assert out_lengths.tolist() == encoder_lengths(lengths).tolist() == [259, 50, 166]
        for i, x in enumerate(singles):
            ref = reference(x)
            assert ref.shape[0] == out_lengths[i]
            assert (out[i, : ref.shape[0]] - ref).abs().max() < 1e-4


def test_encoder_loading_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = hf_whisper(tmp_path, "generation")
    state = load_file(path / "model.safetensors")
    removed = dict(state)
    removed.pop("model.encoder.layers.1.fc2.bias")
    save_file(removed, path / "model.safetensors")
    with pytest.raises(WeightError, match="missing: model.encoder.layers.1.fc2.bias"):
        WhisperEncoder.from_pretrained(path)
    extra = dict(state)
    extra["model.encoder.layers.0.self_attn.k_proj.bias"] = torch.zeros(64)
    save_file(extra, path / "model.safetensors")
    with pytest.raises(WeightError, match="unexpected Whisper encoder weights: model.encoder.layers.0.self_attn.k_proj.bias"):
        WhisperEncoder.from_pretrained(path)
    # .bin files load through weights_only unpickling.
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    assert WhisperEncoder.from_pretrained(path).config.n_layers == 2


def test_osum_adapter_is_causal_and_downsamples_4x():
    torch.manual_seed(0)
    adapter = OsumAdapter(AdapterConfig(input_dim=16, output_dim=24, model_dim=16, n_layers=2, n_heads=2, ffn_dim=32, dropout=0.0)).eval()
    x = torch.randn(2, 41, 16)
    lengths = torch.tensor([41, 20])
    y, out_lengths = adapter(x, lengths)
    assert y.shape == (2, 11, 24) and out_lengths.tolist() == [11, 5]
    changed = x.clone()
    changed[1, 20:] = 100.0  # what lies past an utterance's end never changes its outputs
    y2, _ = adapter(changed, lengths)
    assert torch.allclose(y[1, :5], y2[1, :5], atol=1e-5)
    alone, _ = adapter(x[1:, :20], lengths[1:])
    assert torch.allclose(alone[0], y[1, :5], atol=1e-5)


def test_linear_adapter_stacks_frames():
    adapter = LinearAdapter(AdapterConfig(type="linear", input_dim=4, output_dim=6, stack=3, hidden_dim=5))
    y, lengths = adapter(torch.randn(2, 7, 4), torch.tensor([7, 4]))
    assert y.shape == (2, 3, 6) and lengths.tolist() == [3, 2]


def test_inputs_are_left_padded_with_labels_on_the_target_only(tmp_path):
    model = tiny_speech_llm(tmp_path)
    speech = torch.randn(2, 9, 64)
    inputs = model.build_inputs(speech, torch.tensor([9, 4]), ["transcribe", "transcribe"], ["HELLO", "GO"])
    mask, labels = inputs.attention_mask, inputs.labels
    before, after = model.prompt_ids("transcribe")
    n0 = len(before) + 9 + 2 + len(after) + len(model.target_ids("HELLO"))
    n1 = len(before) + 4 + 2 + len(after) + len(model.target_ids("GO"))
    assert mask.sum(1).tolist() == [n0, n1] and mask.shape[1] == max(n0, n1)
    assert mask[1, : n0 - n1].sum() == 0 and mask[1, n0 - n1 :].all()  # padding on the left only
    assert labels[1][labels[1] != IGNORE].tolist() == model.target_ids("GO")
    assert labels[1][-1] == model.eos_id
    assert inputs.position_ids[1, n0 - n1 :].tolist() == list(range(n1))
    assert model.layout == "chat" and "<|im_start|>" in model.tokenizer.decode(before)


def batch_features(seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([int(s * 100) for s in seconds])
    features = torch.zeros(len(seconds), int(lengths.max()), 80)
    for i, n in enumerate(lengths):
        features[i, :n] = torch.randn(int(n), 80, generator=g)
    return features, lengths


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_at_a_time(tmp_path, num_beams):
    # A random model with large weights gives varied, audio-dependent outputs.
    model = tiny_speech_llm(tmp_path, initializer_range=0.5)
    seconds = [1.0, 20.0, 3.5, 11.0, 7.25]
    features, lengths = batch_features(seconds)
    prompts = ["transcribe", "what is said", "transcribe", "what is said", "transcribe"]
    batched = model.generate(features, lengths, prompts, max_new_tokens=10, num_beams=num_beams)
    alone = [model.generate(features[i : i + 1, : lengths[i]], lengths[i : i + 1], [prompts[i]], max_new_tokens=10,
                            num_beams=num_beams)[0] for i in range(len(seconds))]
    assert batched == alone
    assert len(set(batched)) > 1  # the outputs depend on the audio: the check is not vacuous
    assert model.generate(features, lengths, prompts, max_new_tokens=10, num_beams=num_beams) == batched  # deterministic


@pytest.mark.parametrize("merge", [False, True])
def test_save_and_reload_give_identical_outputs(tmp_path, merge):
    model = tiny_speech_llm(tmp_path, initializer_range=0.5)
    features, lengths = batch_features([2.0, 4.0, 1.0], seed=1)
    prompts = ["transcribe"] * 3
    targets = ["HELLO WORLD", "GO", "你好"]
    expected = model.generate(features, lengths, prompts, max_new_tokens=8)
    loss = model(features, lengths, prompts, targets)["loss"]
    out = save_model(model, tmp_path / "m", standalone=merge)
    saved = json.loads((out / "config.json").read_text())
    assert saved["weights"] == ({"encoder": True, "llm": "none"} if merge else {"encoder": True, "llm": "full"})
    reloaded = load_model(out)
    assert (out / "prompts.yaml").is_file() and reloaded.prompts.pick("<TRANSCRIBE> <GENDER>")
    assert reloaded.generate(features, lengths, prompts, max_new_tokens=8) == expected
    assert torch.allclose(reloaded(features, lengths, prompts, targets)["loss"], loss, atol=1e-5)


def test_lora_only_weights_over_a_base_llm_directory(tmp_path):
    from model_parts import tiny_llm_dir

    base_dir = tiny_llm_dir(tmp_path / "base_llm")
    model = tiny_speech_llm(tmp_path, llm_path=str(base_dir))
    with torch.no_grad():  # make LoRA matter
        for name, p in model.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    features, lengths = batch_features([2.0, 3.0], seed=2)
    expected = model.generate(features, lengths, ["transcribe"] * 2, max_new_tokens=8)
    out = save_model(model, tmp_path / "m")
    from safetensors.torch import load_file

    keys = list(load_file(out / "model.safetensors"))
    assert any("lora_A" in k for k in keys) and not any("base_layer" in k for k in keys)
    assert load_model(out).generate(features, lengths, ["transcribe"] * 2, max_new_tokens=8) == expected
    # A wrong shape or a missing key in the weights file is an error that names it.
    from safetensors.torch import save_file

    state = load_file(out / "model.safetensors")
    name = next(k for k in state if "lora_A" in k)
    state[name] = torch.zeros(3, 3)
    save_file(state, out / "model.safetensors")
    with pytest.raises(WeightError, match="wrong shape"):
        load_model(out)
    state.pop(name)
    save_file(state, out / "model.safetensors")
    with pytest.raises(WeightError, match=f"missing {name}"):
        load_model(out)


def test_llm_directory_that_does_not_match_its_config_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from model_parts import tiny_llm_dir

    base_dir = tiny_llm_dir(tmp_path / "llm")
    state = load_file(base_dir / "model.safetensors")
    renamed = {k.replace("layers.1.", "blocks.1."): v for k, v in state.items()}  # names drifted
    save_file(renamed, base_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightError, match="do not match its config.*missing: model.layers.1"):
        tiny_speech_llm(tmp_path, llm_path=str(base_dir))


def test_trainable_parts_follow_the_config(tmp_path):
    model = tiny_speech_llm(tmp_path)
    model.config.trainable.llm = False
    model.set_trainable()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter", "audio_markers", "llm"}
    assert all("lora_" in n for n, p in model.llm.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_the_config_declares_the_heads_and_build_leaves_it_as_given(tmp_path):
    import copy

    from osum.config import ConfigError
    from osum.models.speech_llm import SpeechLLMConfig

    plain = tiny_speech_llm(tmp_path)
    assert plain.ctc_head is None and plain.utterance is None
    model = tiny_speech_llm(tmp_path, ctc_weight=0.5, label_tokens=True, utterance_labels=["gender"])
    assert model.ctc_head is not None and model.utterance is not None
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} >= {"ctc_head", "utterance"}
    config = copy.deepcopy(model.config)
    config.adapter.input_dim = config.adapter.output_dim = 1
    rebuilt = type(model).build(config, tokenizer=model.tokenizer)
    assert (config.adapter.input_dim, config.adapter.output_dim) == (1, 1)  # the caller's config is untouched
    assert (rebuilt.config.adapter.input_dim, rebuilt.config.adapter.output_dim) == (32, 64)
    with pytest.raises(ConfigError, match=r"utterance_labels: \['speaker'\] are not label fields"):
        SpeechLLMConfig(utterance_labels=["speaker"])  # refused when the config is read, before any model


def test_plain_layout_and_linear_adapter_train(tmp_path):
    model = tiny_speech_llm(tmp_path, chat=False, lora=False, adapter="linear").train()
    assert model.layout == "plain" and model.prompt_ids("transcribe")[1] == []
    features, lengths = batch_features([1.5, 2.5, 1.0, 2.0], seed=3)
    prompts, targets = ["transcribe"] * 4, ["HELLO WORLD<male>", "GOOD MORNING<female>", "YES<female>", "NO<male>"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(features, lengths, prompts, targets)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.3 * losses[0]
    assert float(out["accuracy"]) > 0.5
    # Scoring only the valid labels: probabilities over the candidates, the trained label wins.
    model.eval()
    probabilities = score_continuations(
        model, features, lengths, prompts, ["HELLO WORLD", "GOOD MORNING", "YES", "NO"], [["<male>", "<female>"]] * 4
    )
    for p in probabilities:
        assert abs(sum(p) - 1) < 1e-5
    assert [max(range(2), key=p.__getitem__) for p in probabilities] == [0, 1, 1, 0]
    results = generate_with_label_scores(model, features, lengths, prompts, ["<TRANSCRIBE> <GENDER>"] * 4)
    assert [r["gender"] for r in results] == ["male", "female", "female", "male"]
    assert all(r["confidence"]["gender"] > 0.5 for r in results)


def test_model_init_cli_builds_a_loadable_directory(tmp_path, capsys):
    from model_parts import tiny_llm_config, tiny_tokenizer

    import osum
    from osum.cli import main

    _, whisper_dir = hf_whisper(tmp_path, "generation")
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    (tmp_path / "llm.json").write_text(json.dumps(tiny_llm_config(len(tokenizer))))
    code = main(["model", "init", "--encoder", str(whisper_dir), "--llm-config", str(tmp_path / "llm.json"),
                 "--tokenizer", str(tmp_path / "tok"), "--adapter", "linear", "--out", str(tmp_path / "m")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layout"] == "chat" and summary["parameters"]["llm"] > 0
    model = osum.load(str(tmp_path / "m"))
    assert model.config.adapter.type == "linear" and model.config.encoder.path == str(whisper_dir.resolve())
    assert main(["model", "init", "--llm-config", str(tmp_path / "llm.json"), "--out", str(tmp_path / "x")]) == 2


def test_label_scoring_always_gives_valid_labels_with_confidences(tmp_path):
    """Even an untrained model answers every label slot with a valid label, and says how sure it is."""
    model = tiny_speech_llm(tmp_path).eval()
    features, lengths = batch_features([1.0, 2.0, 1.5], seed=5)
    tasks = ["<TRANSCRIBE> <AGE> <GENDER>", "<AGE><GENDER>", "<EMOTION>"]
    results = generate_with_label_scores(model, features, lengths, ["p"] * 3, tasks, max_new_tokens=6)
    assert results[0]["age"] in LABELS["age"] and results[0]["gender"] in LABELS["gender"]
    assert results[1]["age"] in LABELS["age"] and results[1]["gender"] in LABELS["gender"]
    assert results[2]["emotion"] in LABELS["emotion"]
    assert results[1]["raw"] == "" and results[1]["text"] is None  # label-only: nothing generated freely
    for result, fields in zip(results, [("age", "gender"), ("age", "gender"), ("emotion",)]):
        assert set(result["confidence"]) == set(fields)
        assert all(0 < result["confidence"][f] <= 1 for f in fields)
        assert result["confidence"][fields[0]] >= 1 / len(LABELS[fields[0]])  # the most probable was chosen
    # The first slot's confidence is the probability score_continuations gives the chosen label.
    alone = score_continuations(model, features[1:2], lengths[1:2], ["p"], [""], [[f"<{a}>" for a in LABELS["age"]]])
    assert abs(max(alone[0]) - results[1]["confidence"]["age"]) < 1e-5
    # The transcript part is what plain generation gives, batched or not.
    plain = model.generate(features[:1], lengths[:1], ["p"], max_new_tokens=6)
    assert results[0]["raw"] == plain[0]
    with pytest.raises(ValueError, match="unknown decoding option"):
        model.generate(features[:1], lengths[:1], ["p"], max_tokens=6)



def test_labels_with_an_utterance_embedding_multiply_the_llm_and_the_audio_classifier(tmp_path):
    """A field in utterance_labels is chosen by p_LLM(label | text) x p_classifier(label | audio), renormalised:
    a classifier sure of <female> turns an LLM leaning to <male>, and the confidence is the product's."""
    model = tiny_speech_llm(tmp_path, chat=False, lora=False, adapter="linear", label_tokens=True,
                            utterance_labels=["gender"]).eval()
    features, lengths = batch_features([1.0, 1.5], seed=3)
    genders = ["<female>", "<male>"]
    table = model.llm.get_input_embeddings().weight
    female, male = model.tokenizer.convert_tokens_to_ids(genders)
    with torch.no_grad():  # the LLM prefers <male>; the classifier points at <female>, mildly
        table[male] += 0.5 * table[female].norm()
        model.utterance.mlp[-1].weight.zero_()
        model.utterance.mlp[-1].bias.copy_(table[female] - table[male])
    with torch.no_grad():
        audio = utterance_label_probabilities(model, model.encode_parts(features, lengths)[2])["gender"]
    assert audio[0] == genders and float(audio[1][0, 0]) > 0.5
    llm = score_continuations(model, features, lengths, ["p"] * 2, [""] * 2, [genders] * 2)
    results = generate_with_label_scores(model, features, lengths, ["p"] * 2, ["<GENDER>"] * 2)
    for row, result in enumerate(results):
        product = [llm[row][j] * float(audio[1][row, j]) for j in range(2)]
        chosen = max(range(2), key=product.__getitem__)
        assert result["gender"] == genders[chosen].strip("<>")
        assert result["confidence"]["gender"] == pytest.approx(product[chosen] / sum(product), rel=1e-4)
    # Strong enough, the classifier decides against the LLM's own choice.
    with torch.no_grad():
        model.utterance.mlp[-1].bias.mul_(50.0)
    llm_alone = score_continuations(model, features, lengths, ["p"] * 2, [""] * 2, [genders] * 2)
    assert all(p[1] > p[0] for p in llm_alone)  # the LLM alone says male
    assert [r["gender"] for r in generate_with_label_scores(model, features, lengths, ["p"] * 2, ["<GENDER>"] * 2)] \
        == ["female", "female"]

def test_ctc_loss_on_the_adapter_output(tmp_path):
    """ctc_weight adds a CTC loss over the LLM's tokens on the speech embeddings, in training only; the head is
    saved with the model and loaded strictly."""
    model = tiny_speech_llm(tmp_path, ctc_weight=0.5)
    plain = tiny_speech_llm(tmp_path, ctc_weight=0.0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("ctc_head")})
    features, lengths = batch_features([2.0, 1.5, 2.5], seed=3)
    prompts, targets = ["p"] * 3, ["HELLO WORLD<male>", "<adult><female>", "YES NO"]
    tasks = ["<TRANSCRIBE> <GENDER>", "<AGE> <GENDER>", "<TRANSCRIBE>"]
    # What train/examples.py reads from the samples: the label-only task has no transcript.
    aux = AuxiliaryTargets(["HELLO WORLD", None, "YES NO"], [{"gender": 1}, {"age": 1, "gender": 0}, {}],
                           label_tags(LABELS))
    model.train(), plain.train()
    torch.manual_seed(0)
    with_ctc = model(features, lengths, prompts, targets, tasks, aux=aux)
    torch.manual_seed(0)
    without = plain(features, lengths, prompts, targets, tasks, aux=aux)
    assert with_ctc["loss_sum"] > without["loss_sum"] + 1.0 and with_ctc["tokens"] == without["tokens"]
    with_ctc["loss_sum"].backward()
    assert model.ctc_head.blank.grad is not None and model.ctc_head.blank.grad.abs().sum() > 0
    assert model.llm.get_input_embeddings().weight.grad.abs().sum() > 0  # tied: the token embeddings learn too
    # By hand: the same CTC over the two transcripts (the label-only row is left out), weighted by 0.5.
    speech, speech_lengths = model.encode(features, lengths)
    table = torch.cat([model.llm.get_input_embeddings().weight, model.ctc_head.blank[None]])
    log_probs = (speech @ table.T * model.ctc_head.scale).log_softmax(-1)
    ids = [model._tokens("HELLO WORLD"), model._tokens("YES NO")]
    expected = torch.nn.functional.ctc_loss(
        log_probs[[0, 2]].transpose(0, 1), torch.tensor(ids[0] + ids[1]), speech_lengths[[0, 2]],
        torch.tensor([len(ids[0]), len(ids[1])]), blank=log_probs.shape[-1] - 1, reduction="sum")
    assert float(model.ctc_loss_sum(speech, speech_lengths, [ids[0], [], ids[1]])) == pytest.approx(float(expected), rel=1e-5)
    torch.manual_seed(0)
    assert float(model(features, lengths, prompts, targets, tasks, aux=aux)["loss_sum"]) == pytest.approx(
        float(without["loss_sum"] + 0.5 * expected), rel=1e-5)
    model.eval(), plain.eval()
    with torch.no_grad():  # evaluation is the plain loss
        assert float(model(features, lengths, prompts, targets)["loss_sum"]) == pytest.approx(
            float(plain(features, lengths, prompts, targets)["loss_sum"]), rel=1e-5)
    out = save_model(model, tmp_path / "m")
    reloaded = load_model(out)
    assert torch.equal(reloaded.ctc_head.blank, model.ctc_head.blank)
    assert torch.equal(reloaded.ctc_log_probs(speech), model.ctc_log_probs(speech))


def test_label_loss_weight_scales_the_label_tokens_only(tmp_path):
    """label_loss_weight multiplies the loss of single-token label tags (training only); other tokens and the
    token count are unchanged."""
    model = tiny_speech_llm(tmp_path, label_tokens=True)
    features, lengths = batch_features([2.0, 1.5], seed=4)
    prompts, targets = ["p"] * 2, ["HELLO WORLD<male>", "<adult><female>"]
    aux = AuxiliaryTargets(["HELLO WORLD", None], [{"gender": 1}, {"age": 1, "gender": 0}], label_tags(LABELS))
    model.train()
    torch.manual_seed(0)
    plain = model(features, lengths, prompts, targets, aux=aux)
    model.config.label_loss_weight = 5.0
    torch.manual_seed(0)
    weighted = model(features, lengths, prompts, targets, aux=aux)
    ids = model.label_token_ids(aux.label_tags).tolist()
    assert {model.tokenizer.convert_ids_to_tokens(i) for i in ids} >= {"<male>", "<female>", "<adult>"}
    # By hand: the label tokens' own loss, counted 4 more times.
    speech, speech_lengths = model.encode(features, lengths)
    inputs = model.build_inputs(speech, speech_lengths, prompts, targets)
    torch.manual_seed(0)
    logits = model.llm(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                       position_ids=inputs.position_ids).logits[:, :-1].float()
    flat = inputs.labels[:, 1:].reshape(-1)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat, ignore_index=-100,
                                                  reduction="none")
    label_part = per_token[torch.isin(flat, torch.tensor(ids))].sum()
    assert int((flat != -100).sum()) == int(weighted["tokens"]) == int(plain["tokens"])
    assert float(weighted["loss_sum"]) == pytest.approx(float(plain["loss_sum"] + 4 * label_part), rel=1e-5)
    model.eval()
    with torch.no_grad():  # evaluation is the plain loss
        assert float(model(features, lengths, prompts, targets)["loss_sum"]) == pytest.approx(
            float(plain["loss_sum"]), rel=1e-4)


def test_utterance_embedding_follows_the_frames_and_learns_its_labels(tmp_path):
    import torch.nn.functional as F

    model = tiny_speech_llm(tmp_path, chat=False, lora=False, adapter="linear", label_tokens=True,
                            utterance_labels=["gender", "age"])
    torch.manual_seed(0)
    features, lengths = torch.randn(3, 60, 80), torch.tensor([60, 40, 52])
    frames, frame_lengths, utterance = model.encode_parts(features, lengths)
    speech, speech_lengths = model.encode(features, lengths)
    assert torch.equal(speech_lengths, frame_lengths + 1)
    for i in range(3):  # the frames as they were, then the utterance embedding right after them
        n = int(frame_lengths[i])
        assert torch.equal(speech[i, :n], frames[i, :n]) and torch.equal(speech[i, n], utterance[i])
    # The embedding, by hand: each encoder block's mean and std over the real frames, layer-normalised, mixed
    # with softmax weights, through the MLP; the last block's output is also what the adapter reads.
    with torch.no_grad():
        model.utterance.layer_weights.copy_(torch.tensor([2.0, -1.0]))  # the tiny encoder has 2 blocks
        layers, hidden_lengths = model.encoder.forward_layers(features, lengths)
        assert len(layers) == 2 and torch.equal(layers[-1], model.encoder(features, lengths)[0])
        mixed = 0
        for layer, weight in zip(layers, torch.tensor([2.0, -1.0]).softmax(0)):
            stats = torch.stack([torch.cat([x[:n].mean(0), x[:n].std(0, unbiased=False)])
                                 for x, n in zip(layer, hidden_lengths.tolist())])
            mixed = mixed + weight * F.layer_norm(stats, stats.shape[-1:])
        assert torch.allclose(model.encode_parts(features, lengths)[2], model.utterance.mlp(mixed), atol=1e-5)
        assert not torch.allclose(model.encode_parts(features, lengths)[2], utterance, atol=1e-3)  # weights matter
        utterance = model.encode_parts(features, lengths)[2]
    # The auxiliary loss, by hand: a tied classifier over each field's label embeddings, for targets naming one
    # (the label indices are what train/examples.py reads from the samples of these targets).
    targets = ["hello<adult><male>", "hi there", "<child><female>"]
    aux = AuxiliaryTargets(["hello", "hi there", None], [{"age": 1, "gender": 1}, {}, {"age": 0, "gender": 0}],
                           label_tags(LABELS))
    table = model.llm.get_input_embeddings().weight
    genders = model.tokenizer.convert_tokens_to_ids(["<female>", "<male>"])
    assert model.tokenizer.unk_token_id not in genders
    with pytest.raises(ValueError, match="<old>"):  # the tiny tokenizer has no <old> token: named
        model.utterance_loss_sum(utterance, aux)
    model.config.utterance_labels = ["gender"]
    expected = F.cross_entropy(utterance[[0, 2]] @ table[genders].T, torch.tensor([1, 0]), reduction="sum")
    assert float(model.utterance_loss_sum(utterance, aux)) == pytest.approx(float(expected), rel=1e-5)
    model.train()
    with_loss = model(features, lengths, ["Transcribe."] * 3, targets, aux=aux)["loss_sum"]
    model.config.utterance_loss_weight = 0.0
    without = model(features, lengths, ["Transcribe."] * 3, targets, aux=aux)["loss_sum"]
    assert float(with_loss - without) == pytest.approx(float(expected), rel=1e-4)
    model.config.utterance_loss_weight = 1.0
    # It travels with the model directory, and generation reads it.
    model.eval()
    loaded = load_model(save_model(model, tmp_path / "model"))
    assert torch.equal(loaded.encode(features, lengths)[0], model.encode(features, lengths)[0])
    assert loaded.generate(features, lengths, ["Transcribe."] * 3, max_new_tokens=4) == \
        model.generate(features, lengths, ["Transcribe."] * 3, max_new_tokens=4)
    with pytest.raises(ValueError, match="not label fields"):
        tiny_speech_llm(tmp_path, chat=False, lora=False, utterance_labels=["speaker"])
