"""`osum train` end to end on CPU: overfitting real clips, DDP / FSDP2 / two nodes under torchrun (gloo),
accumulation, exact resume after SIGKILL, bad steps, config errors, checkpoint averaging."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from osum.cli import main
from osum.config import to_dict
from osum.train.config import TrainConfig

from conftest import SHARED_DATA, write_tone
from model_parts import tiny_llm_config, tiny_tokenizer

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def eight_clips(tmp: Path) -> Path:
    """8 real AN4 clips (transcript + gender) from ../shared/data/ci_small, or synthetic tones when absent."""
    source = SHARED_DATA / "ci_small" / "manifest.jsonl"
    rows = []
    if source.is_file():
        for line in source.read_text().splitlines():
            row = json.loads(line)
            if row.get("source") == "an4" and row.get("gender"):
                row["audio"] = str(source.parent / row["audio"])
                rows.append(row)
        rows = rows[:8]
    else:
        words = ["YES", "NO", "STOP", "GO", "ONE", "TWO", "HELLO", "WORLD"]
        for i, word in enumerate(words):
            path = write_tone(tmp / "tones" / f"t{i}.wav", 1.0 + 0.2 * i, freq=200 + 90 * i, seed=i)
            rows.append({"id": f"t{i}", "audio": str(path), "text": word, "gender": "male" if i % 2 else "female"})
    manifest = tmp / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def write_config(tmp: Path, **sections) -> Path:
    """A tiny run (fresh 2-layer encoder, adapter and Qwen2) over eight_clips; `sections` override keys."""
    tokenizer_dir = tmp / "tokenizer"
    if not tokenizer_dir.exists():
        tiny_tokenizer(tokenizer_dir, chat=True)
    manifest = tmp / "train.jsonl" if (tmp / "train.jsonl").exists() else eight_clips(tmp)
    vocab = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])
    config = {
        "out_dir": str(tmp / "run"),
        "model": {
            "encoder": {"config": {"d_model": 32, "n_heads": 2, "n_layers": 2, "ffn_dim": 64}},
            "adapter": {"model_dim": 32, "n_layers": 2, "n_heads": 2, "ffn_dim": 64, "dropout": 0.0},
            "llm": {"config": tiny_llm_config(vocab + 8), "tokenizer": str(tokenizer_dir)},
            "trainable": {"llm": True},
        },
        "data": {"train": [{"path": str(manifest), "tasks": ["<TRANSCRIBE> <GENDER>"]}], "prompt_choice": "first",
                 "loader": {"num_workers": 0, "batching": "static", "batch_size": 4, "shuffle": False,
                            "manifest_chunk": 2}},
        "optim": {"lr": 3e-3},
        "schedule": {"kind": "constant", "warmup_steps": 2},
        "train": {"max_steps": 4},
        "checkpoint": {"every_steps": 2, "at_epoch_end": False},
        "log": {"every_steps": 1, "tensorboard": False},
    }
    for dotted, value in sections.items():
        node = config
        keys = dotted.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def osum_train(config: Path, *overrides: str, procs: int = 1, extra: list[str] = ()) -> subprocess.CompletedProcess:
    if procs == 1 and not extra:
        return run([sys.executable, "-m", "osum.cli", "train", str(config), *overrides], config.parent)
    launcher = [*TORCHRUN, f"--nproc_per_node={procs}", *extra] if extra else [
        *TORCHRUN, "--standalone", f"--nproc_per_node={procs}"]
    return run([*launcher, "-m", "osum.cli", "train", str(config), *overrides], config.parent)


def final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "model" / "model.safetensors"))


def logged(out_dir: Path, kind: str = "train") -> dict[int, dict]:
    """The last log record of each step (a resumed run logs the steps after its checkpoint again)."""
    records = [json.loads(line) for line in (out_dir / "train.log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == kind}


def orphans(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ single process

def test_overfits_eight_real_clips_to_their_transcripts_and_labels(tmp_path):
    config = write_config(tmp_path, train__max_steps=160, optim__lr=4e-3, checkpoint__every_steps=0,
                          log__every_steps=20)
    osum_train(config)
    out = tmp_path / "run"
    losses = [r["loss"] for r in logged(out).values()]
    assert losses[-1] < 0.1 * losses[0], losses
    import osum
    from osum.audio import load_audio, log_mel_spectrogram

    model = osum.load(out / "model")
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    features, lengths = log_mel_spectrogram([load_audio(r["audio"]) for r in rows])
    prompt = model.prompts.pick("<TRANSCRIBE> <GENDER>", index=0)
    from osum.infer.labels import generate_with_label_scores

    results = generate_with_label_scores(model.model, features, lengths, [prompt] * len(rows),
                                         ["<TRANSCRIBE> <GENDER>"] * len(rows))
    assert [r["text"] for r in results] == [r["text"] for r in rows]
    assert [r["gender"] for r in results] == [r["gender"] for r in rows]


def test_resume_after_sigkill_gives_the_same_losses_and_weights(tmp_path):
    # Dropout on, a worker process and shuffling: the RNG states and the loader position must all come back.
    sections = dict(train__max_steps=16, checkpoint__every_steps=3, model__adapter__dropout=0.2,
                    data__loader__num_workers=1, data__loader__shuffle=True, data__prompt_choice="random")
    config = write_config(tmp_path, **sections)
    osum_train(config, f"out_dir={tmp_path / 'straight'}")
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "osum.cli", "train", str(config), f"out_dir={killed}"],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step_00000006").exists() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model").exists()
    # Its decoding worker dies with it (no orphan holding memory after kill -9).
    deadline = time.time() + 10
    while orphans(str(killed)) and time.time() < deadline:
        time.sleep(0.2)
    assert not orphans(str(killed)), orphans(str(killed))
    osum_train(config, f"out_dir={killed}")
    straight, resumed = logged(tmp_path / "straight"), logged(killed)
    assert sorted(resumed) == sorted(straight) == list(range(1, 17))
    assert [resumed[s]["loss"] for s in straight] == [straight[s]["loss"] for s in straight]
    a, b = final_weights(tmp_path / "straight"), final_weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_step_is_skipped_and_counted(tmp_path, monkeypatch):
    # NaN audio is refused where audio enters (non_finite_audio, tests/test_faults_data.py); a step can still go
    # non-finite inside the model (an overflow, a learning rate too high): poison one clip's features to get one.
    import osum.data.loader as loader
    from osum.config import load_config
    from osum.train.trainer import train

    manifest = eight_clips(tmp_path)
    poisoned_key = json.loads(manifest.read_text().splitlines()[0])["id"]
    decode_batch = loader.decode_batch

    def poisoned(items, *args):
        kept, features, lengths, errors = decode_batch(items, *args)
        for row, index in enumerate(kept):
            if items[index][0] == poisoned_key:
                features[row] = float("nan")
        return kept, features, lengths, errors

    monkeypatch.setattr(loader, "decode_batch", poisoned)
    config = write_config(tmp_path, train__max_steps=0, train__max_epochs=2)
    train(load_config(TrainConfig, config, []))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 2  # the poisoned clip's batch, once per epoch
    assert summary["steps"] == 2  # the other batch of each epoch trained
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "run").values())


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["train", str(config), "optim.learning_rate=1e-3"]) == 2
    assert "unknown config key 'optim.learning_rate'" in capsys.readouterr().err
    assert main(["train", str(config), "++model.lora.enabeld=true"]) == 2
    assert "did you mean enabled" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_that_can_use_no_sample_stops_and_says_why(tmp_path, capsys):
    # A task whose prompt is missing from the prompt file would skip every sample: never "train" on nothing.
    (tmp_path / "prompts.yaml").write_text('prompts:\n  "<TRANSCRIBE>": [Transcribe.]\n')
    config = write_config(tmp_path, model__prompts=str(tmp_path / "prompts.yaml"), train__max_bad_steps=3,
                          data__train=[{"path": str(tmp_path / "train.jsonl") if (tmp_path / "train.jsonl").exists()
                                        else str(eight_clips(tmp_path)), "tasks": ["<GENDER>"]}])
    assert main(["train", str(config), "train.max_steps=10"]) == 2
    err = capsys.readouterr().err
    assert "the last 3 steps had no usable sample" in err and "no_target" in err and "prompt" in err


def test_overrides_index_lists(tmp_path):
    from osum.config import load_config

    config = load_config(TrainConfig, write_config(tmp_path), ["data.train.0.path=other.jsonl",
                                                               "data.train.0.weight=0.5"])
    assert config.data.train[0].path == "other.jsonl" and config.data.train[0].weight == 0.5
    assert list(config.data.train[0].tasks) == ["<TRANSCRIBE> <GENDER>"]
    from osum.config import ConfigError

    with pytest.raises(ConfigError, match="'3' is not an index of a list of 1"):
        load_config(TrainConfig, write_config(tmp_path), ["data.train.3.path=x"])


def test_print_config_lists_every_key_with_its_default(capsys):
    assert main(["train", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(TrainConfig())


def test_average_of_checkpoints_is_a_loadable_model(tmp_path):
    config = write_config(tmp_path, train__max_steps=6, checkpoint__keep_last=3, checkpoint__every_steps=2)
    osum_train(config)
    out = tmp_path / "run"
    assert main(["average", str(out), "--last", "2", "--out", str(tmp_path / "avg")]) == 0
    weights = [load_file(str(out / "checkpoints" / f"step_{s:08d}" / "model.safetensors")) for s in (4, 6)]
    averaged = load_file(str(tmp_path / "avg" / "model.safetensors"))
    for key in averaged:
        assert torch.allclose(averaged[key], (weights[0][key] + weights[1][key]) / 2, atol=1e-6)
    import osum

    assert osum.load(tmp_path / "avg") is not None


# ------------------------------------------------------------------------------------------------ torchrun, gloo

def test_ddp_two_processes_and_accumulation_give_the_one_process_update(tmp_path):
    """Global step = samples 0-3, then 4-7, however it is split; gradients all-reduce once per step.

    Adam's update barely depends on the gradient's scale, which would hide a wrongly weighted loss: with
    eps=1 the update is about lr * gradient for these small gradients, so the weights show any difference.
    """
    config = write_config(tmp_path, train__max_steps=2, checkpoint__every_steps=0, optim__eps=1.0, optim__lr=0.5)
    osum_train(config, f"out_dir={tmp_path / 'one'}")
    osum_train(config, f"out_dir={tmp_path / 'two'}", "data.loader.batch_size=2", procs=2)
    osum_train(config, f"out_dir={tmp_path / 'two_accum'}", "data.loader.batch_size=1", "optim.accum_steps=2", procs=2)
    one = final_weights(tmp_path / "one")
    for name in ("two", "two_accum"):
        other = final_weights(tmp_path / name)
        worst = max(float((one[k] - other[k]).abs().max()) for k in one)
        assert worst < 1e-6, (name, worst)
        assert logged(tmp_path / name)[2]["loss"] == pytest.approx(logged(tmp_path / "one")[2]["loss"], rel=1e-5)
    syncs = {n: json.loads((tmp_path / n / "summary.json").read_text())["gradient_bucket_all_reduces"]
             for n in ("two", "two_accum")}
    assert syncs["two"] > 0 and syncs["two_accum"] == syncs["two"]  # 2 micro-batches, still one sync per step


def test_resume_after_sigkill_with_two_processes(tmp_path):
    config = write_config(tmp_path, train__max_steps=8, checkpoint__every_steps=2, data__loader__batch_size=2,
                          data__loader__shuffle=True)
    osum_train(config, f"out_dir={tmp_path / 'straight'}", procs=2)
    killed = tmp_path / "killed"
    process = subprocess.Popen([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "osum.cli", "train",
                                str(config), f"out_dir={killed}"], cwd=tmp_path, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (killed / "checkpoints" / "step_00000004").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, at once
    process.wait()
    assert not (killed / "model").exists(), "the run ended before it could be killed"
    osum_train(config, f"out_dir={killed}", procs=2)
    straight, resumed = logged(tmp_path / "straight"), logged(killed)
    assert [resumed[s]["loss"] for s in range(1, 9)] == [straight[s]["loss"] for s in range(1, 9)]
    a, b = final_weights(tmp_path / "straight"), final_weights(killed)
    different = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not different, (different, sorted(p.name for p in (killed / "checkpoints").iterdir()))


def test_fsdp2_and_two_nodes_train(tmp_path):
    config = write_config(tmp_path, train__max_steps=3, checkpoint__every_steps=0, data__loader__batch_size=2)
    osum_train(config, f"out_dir={tmp_path / 'ddp'}", procs=2)
    osum_train(config, f"out_dir={tmp_path / 'fsdp2'}", "train.engine=fsdp2", procs=2)
    ddp, fsdp = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp2")
    assert max(float((ddp[k] - fsdp[k]).abs().max()) for k in ddp) < 1e-5  # sharding does not change the update
    # Two "nodes" on 127.0.0.1, one process each, found through torchrun's c10d rendezvous.
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
              "--rdzv_id=osum-test", "-m", "osum.cli", "train", str(config), f"out_dir={tmp_path / 'nodes'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([*TORCHRUN, *common], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [n.communicate(timeout=240)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), outputs
    two_nodes = final_weights(tmp_path / "nodes")
    assert max(float((ddp[k] - two_nodes[k]).abs().max()) for k in ddp) < 1e-5


def test_readme_training_config_is_valid(tmp_path):
    """The README's example config loads (the guide must stay true)."""
    from osum.config import load_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("### Train", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    path = tmp_path / "train.yaml"
    path.write_text(block)
    config = load_config(TrainConfig, path, ["optim.lr=1e-4", "++train.max_steps=20000"])
    assert config.optim.lr == 1e-4 and config.train.max_steps == 20000
    assert config.data.train[1].tasks == ["<TRANSCRIBE> <GENDER>"] and config.data.train[1].weight == 0.5


def test_deepspeed_zero2_and_zero3_train_and_resume(tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra osum[deepspeed]")
    config = write_config(tmp_path, train__max_steps=3, checkpoint__every_steps=0, data__loader__batch_size=2,
                          optim__eps=1.0, optim__lr=0.5)
    osum_train(config, f"out_dir={tmp_path / 'ddp'}", procs=2)
    osum_train(config, f"out_dir={tmp_path / 'zero2'}", "train.engine=deepspeed", procs=2)
    osum_train(config, f"out_dir={tmp_path / 'zero3'}", "train.engine=deepspeed", "train.deepspeed_stage=3", procs=2)
    ddp = final_weights(tmp_path / "ddp")
    for name in ("zero2", "zero3"):
        other = final_weights(tmp_path / name)
        assert max(float((ddp[k] - other[k]).abs().max()) for k in ddp) < 1e-6, name
    # Resume: stop after step 2 (its checkpoint holds DeepSpeed's optimizer partitions), then go on to 3.
    osum_train(config, f"out_dir={tmp_path / 'split'}", "train.engine=deepspeed", "train.max_steps=2", procs=2)
    osum_train(config, f"out_dir={tmp_path / 'split'}", "train.engine=deepspeed", procs=2)
    split, straight = final_weights(tmp_path / "split"), final_weights(tmp_path / "zero2")
    assert all(torch.equal(split[k], straight[k]) for k in split)


def test_sigterm_writes_a_checkpoint_and_the_rerun_finishes(tmp_path):
    config = write_config(tmp_path, train__max_steps=400, checkpoint__every_steps=0)
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "osum.cli", "train", str(config)], cwd=tmp_path,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "train.log.jsonl").exists() or len((out / "train.log.jsonl").read_text().splitlines()) < 3:
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "stop requested" in output
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) == 1 and 3 <= int(saved[0].name.split("_")[1]) < 400
    stopped_at = int(saved[0].name.split("_")[1])
    osum_train(config, "train.max_steps=" + str(stopped_at + 2))
    assert max(logged(out)) == stopped_at + 2 and (out / "model" / "model.safetensors").is_file()


def test_init_from_another_model_and_bf16(tmp_path):
    """Stage 2 starts from stage 1's adapter (as OSUM's stages do); bf16 autocast trains on CPU too."""
    config = write_config(tmp_path, train__max_steps=3, checkpoint__every_steps=0,
                          model__trainable={"llm": False, "adapter": True})
    osum_train(config, f"out_dir={tmp_path / 'stage1'}")
    stage1 = final_weights(tmp_path / "stage1")
    osum_train(config, f"out_dir={tmp_path / 'stage2'}", f"model.init_from={tmp_path / 'stage1' / 'model'}",
               "train.max_steps=1", "optim.lr=1e-12", "train.precision=bf16", "model.trainable.llm=true")
    stage2 = final_weights(tmp_path / "stage2")
    for key, value in stage1.items():
        assert torch.allclose(stage2[key], value, atol=1e-6), key  # started from stage 1 (lr ~ 0)
    from osum.config import load_config
    from osum.train.trainer import build_model

    torch.manual_seed(0)
    untrained = build_model(load_config(TrainConfig, config)).state_dict()
    assert not torch.equal(untrained["adapter.project.weight"], stage1["adapter.project.weight"])
    assert main(["train", str(config), f"model.init_from={tmp_path / 'nowhere'}"]) == 2


def test_validation_decodes_and_keeps_the_best_by_wer(tmp_path):
    config = write_config(tmp_path, train__max_steps=6, train__val_every=2, checkpoint__every_steps=2,
                          checkpoint__keep_last=1, checkpoint__keep_best=2, checkpoint__metric="wer",
                          data__dev_decode=4,
                          data__dev=[{"path": str(tmp_path / "train.jsonl"), "tasks": ["<TRANSCRIBE> <GENDER>"]}])
    osum_train(config)
    out = tmp_path / "run"
    dev = logged(out, "dev")
    assert sorted(dev) == [2, 4, 6]
    for record in dev.values():
        assert record["decoded"] == 4 and record["wer"] is not None and record["wer"] >= 0
        assert record["label_accuracy"] is not None and 0 <= record["label_accuracy"] <= 1
    kept = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").iterdir())
    best_two = sorted(sorted(dev, key=lambda s: dev[s]["wer"])[:2])
    assert set(kept) == set(best_two) | {6}
