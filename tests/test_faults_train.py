"""Training faults end, and say why: data with no usable sample, signals, a dead torchrun launcher, two runs
into one out_dir, a pickle planted in a DeepSpeed checkpoint, DeepSpeed's start on CPU. Real tiny runs on
CPU (AN4 clips from ../shared/data when present, else tones); subprocess timeouts only detect hangs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from osum.cli import main

from test_train import TORCHRUN, eight_clips, logged, orphans, write_config

HANG = 240  # seconds: a run past this is hung (the tiny runs here take 5-30 s)
LONG = 100_000  # steps: a run that is still going when the test stops it


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Output goes to a file (a pipe nobody reads would block a long run, or its orphaned ranks)."""
    log = cwd / f"output_{time.monotonic_ns()}.txt"
    process = subprocess.Popen(args, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    process.log = log
    return process


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        process.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"hung: still running after {HANG} s: {process.log.read_text()[-3000:]}")
    return process.returncode, process.log.read_text()


def osum_train(config: Path, *overrides: str, procs: int = 1, **env: str) -> tuple[int, str]:
    launcher = [*TORCHRUN, "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    return finish(start([*launcher, "-m", "osum.cli", "train", str(config), *overrides], config.parent, **env))


def wait_for_steps(out: Path, process: subprocess.Popen, steps: int) -> None:
    deadline = time.time() + HANG
    log = out / "train.log.jsonl"
    while not log.exists() or len(log.read_text().splitlines()) < steps:
        assert process.poll() is None, process.log.read_text()[-3000:]
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)


def break_audio(manifest: Path, rows_to_break: range) -> None:
    """Half the broken clips point at files that do not exist, half at files that are not audio."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for n, i in enumerate(rows_to_break):
        path = manifest.parent / f"broken{i}.wav"
        if n % 2:
            path.write_bytes(b"RIFF\x00\x00 not a wave file" * 10)
        rows[i] = {**rows[i], "audio": str(path)}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------------------------ no usable data

@pytest.mark.parametrize("limit, procs", [(["train.max_steps=24"], 1), (["train.max_steps=0", "train.max_epochs=2"], 1),
                                          (["train.max_steps=24"], 2)], ids=["max_steps", "max_epochs", "two_ranks"])
def test_data_with_no_usable_sample_stops_with_the_skipped_counts(tmp_path, limit, procs):
    # Before: max_steps looped over empty epochs forever (SIGTERM ignored); max_epochs wrote an untrained model.
    break_audio(eight_clips(tmp_path), range(8))
    config = write_config(tmp_path)
    started = time.time()
    status, output = osum_train(config, *limit, procs=procs)
    print(f"stopped after {time.time() - started:.1f} s with exit status {status}")
    assert status != 0
    assert "epoch 0 gave no usable batch" in output
    # Counted over every rank: each of the 8 clips once.
    assert "skipped samples: {'missing_audio': 4, 'unreadable_audio': 4}" in output
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "checkpoints").exists()
    if procs == 1:
        assert status == 2  # osum's error exit (torchrun reports a failed worker as 1)


def test_the_end_of_run_summary_gives_the_data_account(tmp_path, capsys):
    break_audio(eight_clips(tmp_path), range(2))  # 6 usable clips, 2 skipped
    # One epoch of 2 steps, logged every 10 steps: the samples of unlogged steps count too.
    config = write_config(tmp_path, train__max_steps=0, train__max_epochs=1, log__every_steps=10)
    assert main(["train", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "data: 6 samples used" in printed and "2 skipped; missing_audio 1; unreadable_audio 1" in printed
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples"] == 6 and summary["skipped_samples"] == {"missing_audio": 1, "unreadable_audio": 1}


# ------------------------------------------------------------------------------------------------ out_dir lock

def test_a_second_run_into_the_same_out_dir_is_refused_until_the_first_dies(tmp_path):
    config = write_config(tmp_path, train__max_steps=LONG, checkpoint__every_steps=0)
    out = tmp_path / "run"
    first = start([sys.executable, "-m", "osum.cli", "train", str(config), f"out_dir={out}"], tmp_path)
    try:
        wait_for_steps(out, first, 2)
        # Refused on every rank of a torchrun job, which then ends (no rank left waiting at a barrier).
        status, output = osum_train(config, "train.max_steps=2", procs=2)
        assert status != 0
        assert f"{out} is in use by another run (pid {first.pid} holds {out / '.lock'})" in output
        assert first.poll() is None, "the first run must not be disturbed"
    finally:
        first.kill()
    first.wait()
    assert not (out / "model").exists()
    # kill -9 leaves no stale lock: the next run takes it.
    status, output = osum_train(config, "train.max_steps=2")
    assert status == 0, output[-3000:]
    assert (out / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ launcher death

def test_ranks_checkpoint_and_exit_when_the_torchrun_launcher_is_killed(tmp_path):
    config = write_config(tmp_path, train__max_steps=LONG, checkpoint__every_steps=0,
                          data__loader__batch_size=2)
    out = tmp_path / "run"
    launcher = start([*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "osum.cli", "train", str(config),
                      f"out_dir={out}"], tmp_path)
    wait_for_steps(out, launcher, 3)
    ranks = [pid for pid in orphans(str(out)) if pid != launcher.pid]
    assert len(ranks) == 2, ranks
    launcher.kill()  # SIGKILL to torchrun alone: its workers run in sessions of their own
    launcher.wait()
    killed = time.time()
    while any(pid in orphans(str(out)) for pid in ranks) and time.time() - killed < HANG:
        time.sleep(0.05)
    print(f"ranks gone {time.time() - killed:.2f} s after the launcher was killed")
    assert not orphans(str(out)), "ranks outlived their launcher"
    # They stopped as on SIGTERM: one checkpoint at the step they reached, no final model.
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) == 1 and 3 <= int(saved[0].name.split("_")[1]) < LONG, saved
    assert not (out / "model").exists()
    stopped_at = int(saved[0].name.split("_")[1])
    status, output = osum_train(config, f"train.max_steps={stopped_at + 2}", procs=2)
    assert status == 0, output[-3000:]
    assert max(logged(out)) == stopped_at + 2


# ------------------------------------------------------------------------------------------------ DeepSpeed

class Payload:
    """Unpickling this opens (creates) `marker`: what a planted checkpoint file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_deepspeed_resume_refuses_a_planted_pickle(tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra osum[deepspeed]")
    from osum.train.engines import check_deepspeed_files

    config = write_config(tmp_path, train__max_steps=2, checkpoint__every_steps=2, train__engine="deepspeed",
                          data__loader__batch_size=2)
    status, output = osum_train(config, procs=2)
    assert status == 0, output[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    check_deepspeed_files(checkpoint / "deepspeed")  # DeepSpeed's own files pass
    planted = checkpoint / "deepspeed" / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert planted.is_file()
    marker = tmp_path / "pwned"
    torch.save({"optimizer_state_dict": Payload(marker)}, planted)
    probe = tmp_path / "probe.pt"
    torch.save(Payload(tmp_path / "probe_ran"), probe)
    torch.load(probe, weights_only=False)  # the payload is real: loaded as DeepSpeed loads, it runs
    assert (tmp_path / "probe_ran").exists()

    shutil.rmtree(tmp_path / "run" / "model")  # resume: go on to step 3 from the planted checkpoint
    status, output = osum_train(config, "train.max_steps=3", procs=2)
    assert status != 0
    assert f"{planted}: refused, not handed to DeepSpeed" in output
    assert "Unsupported global: GLOBAL io.open. Resume from" in output
    assert not marker.exists()
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU start of DeepSpeed")
def test_deepspeed_starts_on_cpu_without_building_ops_even_after_a_killed_build(tmp_path):
    # A build killed mid-way leaves torch's lock file; DeepSpeed used to wait on it forever, silently.
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra osum[deepspeed]")
    extensions = tmp_path / "torch_extensions"
    (extensions / "deepspeed_shm_comm").mkdir(parents=True)
    (extensions / "deepspeed_shm_comm" / "lock").touch()
    config = write_config(tmp_path, train__max_steps=2, checkpoint__every_steps=0, train__engine="deepspeed")
    status, output = osum_train(config, TORCH_EXTENSIONS_DIR=str(extensions))  # one process, no torchrun
    assert status == 0, output[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (extensions / "deepspeed_shm_comm").iterdir()) == ["lock"]  # nothing built


def test_a_full_disk_at_a_checkpoint_names_the_file_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    """The second checkpoint's optimizer file meets ENOSPC: the run stops with an error naming the file, the
    half-written checkpoint is gone, the first one is intact, and a rerun (disk freed) resumes from it."""
    import errno

    import osum.train.state as state
    from osum.config import load_config
    from osum.models.weights import WeightWriteError
    from osum.train.config import TrainConfig
    from osum.train.trainer import train

    config = write_config(tmp_path, train__max_steps=4)
    real = state.save_safetensors
    calls = []

    def full_disk(tensors, file, metadata=None):
        calls.append(Path(file).name)
        if Path(file).name == state.OPTIMIZER_FILE and calls.count(state.OPTIMIZER_FILE) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(tensors, file, metadata)

    monkeypatch.setattr(state, "save_safetensors", full_disk)
    with pytest.raises(WeightWriteError) as caught:
        train(load_config(TrainConfig, config, []))
    message = str(caught.value)
    assert "the disk is full" in message and state.OPTIMIZER_FILE in message and "step_00000004" in message
    run = tmp_path / "run"
    assert [p.name for p in state.list_checkpoints(run)] == ["step_00000002"]
    assert not list((run / "checkpoints").glob(".*tmp*"))
    monkeypatch.setattr(state, "save_safetensors", real)
    train(load_config(TrainConfig, config, []))
    assert [p.name for p in state.list_checkpoints(run)][-1] == "step_00000004" and (run / "model").is_dir()
