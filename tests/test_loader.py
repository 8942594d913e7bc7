import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from osum.audio import load_audio, log_mel_spectrogram
from osum.config import ConfigError, load_config
from osum.data.loader import DataSource, LoaderConfig, SpeechLoader, read_data_config
from osum.data.manifest import read_manifest
from osum.data.shards import pack_shards


@pytest.fixture
def shards(tmp_path, tone_manifest):
    pack_shards(list(read_manifest(tone_manifest)), tmp_path / "shards", per_shard=4)
    return tmp_path / "shards" / "shards.list"


def keys_of(loader):
    return [b.keys for b in loader]


def config(**kw):
    base = dict(num_workers=0, shuffle_buffer=8, max_frames_in_batch=800, seed=1)
    base.update(kw)
    return LoaderConfig(**base)


def test_every_sample_once_within_the_frame_budget(shards):
    loader = SpeechLoader([shards], config())
    batches = list(loader)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == [f"utt{i:03d}" for i in range(24)]
    for b in batches:
        assert b.padded_frames <= 800 or b.size == 1
        assert b.features.shape == (b.size, int(b.lengths.max()), 80)
        assert torch.equal(b.mask, torch.arange(b.features.shape[1])[None] < b.lengths[:, None])
    assert loader.stats.samples == 24 and loader.stats.padding_fraction < 0.2


def test_features_equal_decoding_each_file_alone(shards, tone_manifest):
    paths = {s.key: s.audio for s in read_manifest(tone_manifest)}
    batch = next(iter(SpeechLoader([shards], config())))
    for i, key in enumerate(batch.keys):
        # The packed audio is the original resampled to 16 kHz and stored as 16-bit FLAC.
        alone, length = log_mel_spectrogram([load_audio(paths[key])])
        n = int(batch.lengths[i])
        assert abs(n - int(length[0])) <= 1
        m = min(n, int(length[0])) - 2
        assert (batch.features[i, :m] - alone[0, :m]).abs().mean() < 2e-3


def test_deterministic_per_seed_and_epoch(shards):
    a, b = SpeechLoader([shards], config()), SpeechLoader([shards], config())
    assert keys_of(a) == keys_of(b)
    b.set_epoch(1)
    assert keys_of(b) != keys_of(a)
    c = SpeechLoader([shards], config(seed=2))
    assert keys_of(c) != keys_of(a)


def test_workers_give_the_same_batches(shards):
    inline = list(SpeechLoader([shards], config()))
    pooled_loader = SpeechLoader([shards], config(num_workers=2, prefetch=3))
    pooled = list(pooled_loader)
    pooled_loader.close()
    assert [b.keys for b in inline] == [b.keys for b in pooled]
    for x, y in zip(inline, pooled):
        assert torch.equal(x.features, y.features)


def test_resume_mid_epoch_gives_the_same_remaining_batches(shards):
    full = list(SpeechLoader([shards], config()))
    first = SpeechLoader([shards], config())
    first.set_epoch(0)
    iterator = iter(first)
    for _ in range(3):
        next(iterator)
    state = first.state_dict()
    assert state["batches"] == 3
    resumed = SpeechLoader([shards], config())
    resumed.load_state_dict(json.loads(json.dumps(state)))  # survives a checkpoint round trip
    rest = list(resumed)
    assert [b.keys for b in rest] == [b.keys for b in full[3:]]
    assert all(torch.equal(x.features, y.features) for x, y in zip(rest, full[3:]))
    with pytest.raises(ValueError, match="same number of processes"):
        SpeechLoader([shards], config(), rank=0, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("per_shard", [4, 100])  # 6 shards (split by shard) or 1 shard (split by sample)
def test_ranks_get_disjoint_shares_of_everything(tmp_path, tone_manifest, per_shard):
    pack_shards(list(read_manifest(tone_manifest)), tmp_path / "s", per_shard=per_shard)
    shares = []
    for rank in range(2):
        loader = SpeechLoader([tmp_path / "s"], config(), rank=rank, world_size=2)
        shares.append({k for b in loader for k in b.keys})
    assert not shares[0] & shares[1]
    assert len(shares[0] | shares[1]) == 24
    assert abs(len(shares[0]) - len(shares[1])) <= 4


def test_weighted_mixing_of_lists(tmp_path, tone_manifest, shards):
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"tones_shards:\n  path: {shards}\n  weight: 2\nraw_manifest:\n  path: {tone_manifest}\n  weight: 0.5\n")
    sources = read_data_config(cfg)
    assert [(s.name, s.weight) for s in sources] == [("tones_shards", 2.0), ("raw_manifest", 0.5)]
    loader = SpeechLoader(sources, config(manifest_chunk=4))
    keys = [k for b in loader for k in b.keys]
    assert len(keys) == 24 * 2 + 12  # two passes over the shards, half of the manifest's chunks
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"x:\n  path: {shards}\n  wieght: 2\n")
    with pytest.raises(ValueError, match="unknown keys.*wieght"):
        read_data_config(bad)


def test_static_batches_and_filters_are_counted(tone_manifest, tmp_path):
    lines = tone_manifest.read_text().splitlines()
    lines.append(json.dumps({"key": "gone", "wav": str(tmp_path / "nothing.wav"), "txt": "X"}))
    lines.append(json.dumps({"key": "wordy", "wav": json.loads(lines[0])["wav"], "txt": "A " * 500}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    loader = SpeechLoader([tmp_path / "m.jsonl"], config(batching="static", batch_size=5, shuffle=False, max_duration=3.0))
    batches = list(loader)
    too_long = sum(1 for i in range(24) if 0.5 + (i * 0.37) % 2.9 > 3.0)
    kept = 24 - too_long
    assert [b.size for b in batches] == [5] * (kept // 5) + ([kept % 5] if kept % 5 else [])
    assert loader.problems.summary() == {"too_long": too_long, "missing_audio": 1, "text_too_long": 1}


def test_real_clips_stream_from_shards(tmp_path, ci_small):
    pack_shards(list(read_manifest(ci_small)), tmp_path / "s", per_shard=30)
    loader = SpeechLoader([tmp_path / "s"], config(max_frames_in_batch=3000, num_workers=2))
    batches = list(loader)
    loader.close()
    assert sum(b.size for b in batches) == 113 and loader.problems.total == 0
    assert loader.stats.padding_fraction < 0.15


def test_loader_config_typos_are_errors_with_suggestions(tmp_path):
    path = tmp_path / "loader.yaml"
    path.write_text("max_frame_in_batch: 100\n")
    with pytest.raises(ConfigError, match="unknown config key 'max_frame_in_batch'; did you mean max_frames_in_batch"):
        load_config(LoaderConfig, path)
    with pytest.raises(ConfigError, match="batching: 'dyn' is not one of"):
        load_config(LoaderConfig, None, ["batching=dyn"])
    assert load_config(LoaderConfig, None, ["++num_workers=3", "shuffle=false"]).num_workers == 3


def test_batches_cli(shards):
    out = subprocess.run(
        [sys.executable, "-m", "osum.cli", "data", "batches", str(shards), "max_frames_in_batch=600", "num_workers=0"],
        capture_output=True, text=True, check=True,
    )
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    summary = lines[-1]
    assert summary["summary"] and summary["samples"] == 24 and summary["batches"] == len(lines) - 1
    assert all(l["padded_frames"] <= 600 or l["size"] == 1 for l in lines[:-1])
    assert sum(l["real_frames"] for l in lines[:-1]) == summary["real_frames"]
    bad = subprocess.run([sys.executable, "-m", "osum.cli", "data", "batches", str(shards), "max_frams=1"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean max_frames_in_batch" in bad.stderr


DIST_SCRIPT = r"""
import json, sys, torch.distributed as dist
from osum.data.loader import LoaderConfig, SpeechLoader, stop_together
rank, world, port, src, out = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
loader = SpeechLoader([src], LoaderConfig(num_workers=0, max_frames_in_batch=500, seed=4), rank=rank, world_size=world)
alone = sum(1 for _ in SpeechLoader([src], LoaderConfig(num_workers=0, max_frames_in_batch=500, seed=4), rank=rank, world_size=world))
steps = 0
for batch in stop_together(loader, loader):
    dist.barrier()  # a collective per step, as training does: a rank that stopped early would hang here
    steps += 1
json.dump({"steps": steps, "alone": alone, "dropped": loader.stats.dropped_for_rank_balance}, open(out, "w"))
dist.destroy_process_group()
"""


def test_ranks_stop_together_without_hanging(tmp_path, tone_manifest):
    # Uneven shards: rank 0 gets more audio than rank 1.
    pack_shards(list(read_manifest(tone_manifest)), tmp_path / "s", per_shard=7)
    script = tmp_path / "dist.py"
    script.write_text(DIST_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), str(port), str(tmp_path / "s"), str(tmp_path / f"r{r}.json")])
        for r in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert results[0]["alone"] != results[1]["alone"]  # the shares really are uneven
    assert results[0]["steps"] == results[1]["steps"] == min(r["alone"] for r in results)
    assert sum(r["dropped"] for r in results) == abs(results[0]["alone"] - results[1]["alone"])


def test_bad_samples_inside_shards_are_skipped_and_counted(tmp_path):
    import io
    import tarfile

    import soundfile as sf

    from conftest import tone

    def encoded(wave, fmt):
        buf = io.BytesIO()
        sf.write(buf, wave, 16000, format=fmt)
        return buf.getvalue()

    full_flac = encoded(tone(3.0), "FLAC")
    members = [
        ("good1.txt", b"ONE"), ("good1.wav", encoded(tone(1.0), "WAV")),
        ("garbage.txt", b"X"), ("garbage.wav", b"RIFF....WAVEnot really audio"),
        ("cut.txt", b"X"), ("cut.flac", full_flac[: len(full_flac) // 3]),  # header says 3 s, data ends early
        ("empty.txt", b"X"), ("empty.wav", b""),
        ("tiny.txt", b"X"), ("tiny.wav", encoded(tone(0.05), "WAV")),
        ("good2.txt", b"TWO"), ("good2.wav", encoded(tone(1.5), "WAV")),
    ]
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loader = SpeechLoader([str(tmp_path / "bad.tar")], config())
    keys = sorted(k for b in loader for k in b.keys)
    assert keys == ["good1", "good2"]
    assert loader.problems.counts == {"unreadable_audio": 2, "empty_audio": 1, "too_short": 1}
    details = {r["where"]: r["detail"] for r in loader.problems.records}
    assert set(details) == {"garbage", "cut", "empty", "tiny"}
