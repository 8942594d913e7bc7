import functools
import hashlib
import http.server
import io
import json
import tarfile
import threading

import numpy as np
import pytest
import soundfile as sf

from osum.data.manifest import read_manifest
from osum.data.problems import Problems
from osum.data.shards import PackOptions, iter_tar_samples, pack_shards, read_shards

from conftest import tone


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pack_layout_determinism_and_rerun(tmp_path, tone_manifest):
    samples = list(read_manifest(tone_manifest))
    first = pack_shards(samples, tmp_path / "a", per_shard=10)
    again = pack_shards(list(read_manifest(tone_manifest)), tmp_path / "b", per_shard=10, workers=2)
    assert len(first.shards) == 3 and first.written == 24
    for x, y in zip(sorted((tmp_path / "a").glob("*.tar")), sorted((tmp_path / "b").glob("*.tar"))):
        assert digest(x) == digest(y)  # same input -> same bytes, whatever the worker count
    with tarfile.open(tmp_path / "a" / "shard_000000.tar") as tar:
        names = tar.getnames()
    assert names[:8] == [
        "utt000.txt", "utt000.task", "utt000.lang", "utt000.speaker", "utt000.gender", "utt000.age",
        "utt000.emotion", "utt000.duration",
    ]
    assert "utt000.flac" in names and not any(n.endswith(".tmp") for n in names)
    # A rerun keeps finished shards and rewrites a missing one.
    (tmp_path / "a" / "shard_000001.tar").unlink()
    rerun = pack_shards(samples, tmp_path / "a", per_shard=10)
    assert rerun.reused == 2 and rerun.written == 10
    assert digest(tmp_path / "a" / "shard_000001.tar") == digest(tmp_path / "b" / "shard_000001.tar")
    listed = (tmp_path / "a" / "shards.list").read_text().split()
    assert [p.split("/")[-1] for p in listed] == ["shard_000000.tar", "shard_000001.tar", "shard_000002.tar"]


def test_read_back_resampled_with_all_fields(tmp_path, tone_manifest):
    originals = {s.key: s for s in read_manifest(tone_manifest)}
    pack_shards(list(originals.values()), tmp_path / "s", per_shard=7)
    back = list(read_shards(tmp_path / "s" / "shards.list", Problems()))
    assert [s.key for s in back] == sorted(originals)
    for s in back:
        o = originals[s.key]
        assert (s.text, s.tasks, s.lang, s.speaker, s.gender, s.age, s.emotion) == (
            o.text, o.tasks, o.lang, o.speaker, o.gender, o.age, o.emotion)
        info = sf.info(io.BytesIO(s.audio))
        assert info.samplerate == 16000 and s.audio_format == "flac"
        assert s.duration == pytest.approx(info.frames / 16000, abs=1e-4)


def test_keep_format_text_norm_and_shuffle(tmp_path, tone_manifest):
    samples = list(read_manifest(tone_manifest))
    samples[0].text = "ｈｅｌｌｏ  World 你 好 ok"
    opts = PackOptions(audio_format="keep", sample_rate=None, text_norm=True)
    pack_shards(samples, tmp_path / "k", per_shard=100, options=opts, shuffle=True, seed=3)
    back = {s.key: s for s in read_shards(tmp_path / "k", Problems())}
    assert back["utt000"].text == "HELLO WORLD你好OK"
    for s in samples:  # original bytes, untouched
        assert back[s.key].audio == open(s.audio, "rb").read()
    order = [s.key for s in read_shards(tmp_path / "k", Problems())]
    assert order != sorted(order) and sorted(order) == sorted(s.key for s in samples)


def test_segments_are_cut_when_packing(tmp_path):
    rate = 16000
    path = tmp_path / "long.wav"
    sf.write(path, tone(5.0, rate), rate)
    from osum.data.sample import Sample

    seg = [Sample(key="a", audio=str(path), start=1.0, end=2.5, text="X"), Sample(key="b", audio=str(path), start=3.0, text="Y")]
    pack_shards(seg, tmp_path / "s", options=PackOptions(audio_format="wav"))
    back = {s.key: s for s in read_shards(tmp_path / "s", Problems())}
    assert back["a"].duration == pytest.approx(1.5) and back["b"].duration == pytest.approx(2.0)
    assert back["a"].audio_format == "wav"


def write_wenet_tar(path, entries):
    """A tar as WeNet/OSUM tools write it: key.txt then key.wav, keys may contain dots."""
    with tarfile.open(path, "w") as tar:
        for key, text, wave in entries:
            buf = io.BytesIO()
            sf.write(buf, wave, 16000, format="WAV")
            for name, data in ((f"{key}.txt", text.encode()), (f"{key}.wav", buf.getvalue())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_keys_with_dots_group_by_the_last_dot(tmp_path):
    path = tmp_path / "wenet.tar"
    write_wenet_tar(path, [("spk1.utt.001", "ONE", tone(0.5)), ("spk1.utt.002", "TWO", tone(0.6)), ("plain", "THREE", tone(0.7))])
    samples = list(iter_tar_samples(str(path), Problems()))
    assert [(s.key, s.text, s.audio_format) for s in samples] == [
        ("spk1.utt.001", "ONE", "wav"), ("spk1.utt.002", "TWO", "wav"), ("plain", "THREE", "wav")]


def test_truncated_and_broken_tars_keep_what_came_before(tmp_path):
    path = tmp_path / "full.tar"
    write_wenet_tar(path, [(f"k{i}", f"T{i}", tone(1.0, seed=i)) for i in range(5)])
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    problems = Problems()
    samples = list(iter_tar_samples(str(cut), problems))
    assert [s.key for s in samples] == ["k0", "k1", "k2"]
    assert problems.counts == {"truncated_tar": 1} and "k3" in problems.records[0]["where"]
    # A member without audio and a missing shard are counted too; the rest still arrives.
    with tarfile.open(tmp_path / "noaudio.tar", "w") as tar:
        info = tarfile.TarInfo("lonely.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"HI"))
    (tmp_path / "list").write_text(f"{tmp_path / 'noaudio.tar'}\n{tmp_path / 'gone.tar'}\n{path}\n")
    problems = Problems()
    keys = [s.key for s in read_shards(tmp_path / "list", problems)]
    assert keys == [f"k{i}" for i in range(5)]
    # A missing shard skips no sample one can count: a note; the member without audio is a skipped sample.
    assert problems.counts == {"missing_audio": 1} and problems.notes == {"unreadable_shard": 1}
    assert problems.account(len(keys))["samples_in"] == len(keys) + 1


def test_http_and_pipe_sources(tmp_path):
    path = tmp_path / "s.tar"
    write_wenet_tar(path, [("a", "A", tone(0.5)), ("b", "B", tone(0.5))])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/s.tar"
        assert [s.key for s in iter_tar_samples(url, Problems())] == ["a", "b"]
    finally:
        server.shutdown()
    assert [s.key for s in iter_tar_samples(f"pipe:cat {path}", Problems())] == ["a", "b"]
    gz = tmp_path / "s.tar.gz"
    with tarfile.open(gz, "w:gz") as out, tarfile.open(path) as src:
        for m in src:
            out.addfile(m, src.extractfile(m))
    assert [s.key for s in iter_tar_samples(str(gz), Problems())] == ["a", "b"]


def test_pack_counts_bad_audio_and_duplicates(tmp_path, tone_manifest):
    lines = tone_manifest.read_text().splitlines()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    lines.append(json.dumps({"key": "bad", "wav": str(broken), "txt": "X"}))
    lines.append(json.dumps({"key": "gone", "wav": str(tmp_path / "none.wav"), "txt": "X"}))
    lines.append(lines[0])
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    result = pack_shards(list(read_manifest(tmp_path / "m.jsonl")), tmp_path / "s", per_shard=10)
    assert result.written == 24
    assert result.problems.summary() == {"duplicate_key": 1, "unreadable_audio": 1, "missing_audio": 1}


def test_pack_real_clips(tmp_path, ci_small):
    samples = list(read_manifest(ci_small))
    result = pack_shards(samples, tmp_path / "s", per_shard=40, workers=2)
    assert result.written == 113 and result.problems.total == 0
    back = list(read_shards(tmp_path / "s", Problems()))
    truth = {s.key: s for s in samples}
    for s in back:
        assert abs(s.duration - truth[s.key].duration) < 0.02  # the manifest's duration, measured again
        assert sf.info(io.BytesIO(s.audio)).samplerate == 16000
        assert s.words == truth[s.key].words and s.event == truth[s.key].event


def test_hand_written_tar_is_read_by_gnu_tar_and_tarfile(tmp_path):
    import subprocess

    from osum.data.sample import Sample

    wav = tmp_path / "a.wav"
    sf.write(wav, tone(0.5), 16000)
    long_key = "speaker.with.dots/" + "x" * 150 + ".utt"
    samples = [Sample(key=long_key, audio=str(wav), text="LONG"), Sample(key="short", audio=str(wav), text="ÄÖ 你好")]
    pack_shards(samples, tmp_path / "s")
    shard = tmp_path / "s" / "shard_000000.tar"
    listed = subprocess.run(["tar", "tf", str(shard)], capture_output=True, text=True, check=True).stdout.split()
    assert f"{long_key}.txt" in listed and "short.flac" in listed
    with tarfile.open(shard) as tar:
        assert tar.extractfile(f"{long_key}.txt").read() == b"LONG"
        assert tar.extractfile("short.txt").read().decode() == "ÄÖ 你好"
    back = list(iter_tar_samples(str(shard), Problems()))
    assert [s.key for s in back] == [long_key, "short"] and back[0].text == "LONG"


def test_osum_none_labels_and_zero_duration_mean_absent(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(0.5), 16000, format="WAV")
    members = [("u1.txt", b"HI"), ("u1.wav", buf.getvalue()), ("u1.task", b"<TRANSCRIBE> <GENDER>"),
               ("u1.lang", b"en"), ("u1.speaker", b"none"), ("u1.emotion", b"none"), ("u1.gender", b"male"),
               ("u1.duration", b"0"), ("u1.extra", b"{}")]
    with tarfile.open(tmp_path / "osum.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (sample,) = iter_tar_samples(str(tmp_path / "osum.tar"), Problems())
    assert (sample.speaker, sample.emotion, sample.gender, sample.duration) == (None, None, "male", None)
    assert sample.tasks == ("<TRANSCRIBE> <GENDER>",)
