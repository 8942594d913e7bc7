"""Choosing a decoding engine, and the vllm engine's options, checked without starting vLLM (its decoding is
tested against the torch engine in test_vllm_engine.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from osum.infer.engines import ENGINES, TorchEngine, make_engine
from osum.infer.vllm_engine import VllmOptions, cpu_thread_binding, engine_arguments, sampling_settings
from osum.models.speech_llm import GenerationConfig


def test_an_engine_is_chosen_by_name_and_the_model_type_says_which_it_runs_on(tmp_path):
    from model_parts import tiny_speech_llm
    from osum.convert.ct2_whisper import bundled_whisper_tiny_en
    from osum.infer.api import SpeechModel

    model = tiny_speech_llm(tmp_path, lora=False)
    assert sorted(ENGINES) == ["torch", "vllm"]
    assert isinstance(make_engine("torch", model), TorchEngine)
    with pytest.raises(ValueError, match=r"unknown engine 'tensorrt'; choose from \['torch', 'vllm'\]"):
        make_engine("tensorrt", model)
    with pytest.raises(ValueError, match="the torch engine takes no engine options.*--engine vllm"):
        make_engine("torch", model, tensor_parallel_size=2)
    # the bundled Whisper tiny.en opens as a Whisper model: an encoder-decoder, torch only
    with pytest.raises(ValueError, match="a whisper model decodes on the torch engine only, not vllm"):
        SpeechModel.load(bundled_whisper_tiny_en(), engine="vllm")


def test_vllm_options_are_checked_before_anything_starts(tmp_path):
    for bad, message in (({"tensor_parallel_size": 0}, "tensor_parallel_size must be >= 1"),
                         ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be in \(0, 1\]"),
                         ({"engine_args": {"model": "x", "dtype": "half"}}, r"\['dtype', 'model'\] are set by osum"),
                         ({"llm_dir": str(tmp_path)}, "has no config.json.*osum export --merge-lora")):
        with pytest.raises(ValueError, match=message):
            VllmOptions(**bad)
    import torch

    options = VllmOptions(max_model_len=2048, engine_args={"max_num_batched_tokens": 4096})
    on_cpu = engine_arguments(options, "/llm", torch.bfloat16, on_cpu=True)
    assert on_cpu["gpu_memory_utilization"] == 0.1 and on_cpu["dtype"] == "bfloat16"
    assert on_cpu["enable_prompt_embeds"] and on_cpu["skip_tokenizer_init"] and on_cpu["generation_config"] == "vllm"
    assert on_cpu["max_model_len"] == 2048 and on_cpu["max_num_batched_tokens"] == 4096
    assert "gpu_memory_utilization" not in engine_arguments(options, "/llm", torch.float32, on_cpu=False)


def test_decoding_options_map_to_vllm_sampling():
    defaults = GenerationConfig()
    greedy = sampling_settings(defaults, {"max_new_tokens": 7}, eos_id=5)
    assert greedy == {"max_tokens": 7, "stop_token_ids": [5], "detokenize": False, "repetition_penalty": 1.0,
                      "temperature": 0.0}
    sampled = sampling_settings(defaults, {"do_sample": True, "temperature": 0.7}, eos_id=5)
    assert (sampled["temperature"], sampled["top_k"], sampled["top_p"]) == (0.7, 5, 0.9)
    with pytest.raises(ValueError, match="num_beams > 1 .* torch engine only"):
        sampling_settings(defaults, {"num_beams": 4}, eos_id=5)
    with pytest.raises(ValueError, match="unknown decoding option"):
        sampling_settings(defaults, {"beams": 4}, eos_id=5)


def test_cpu_workers_get_equal_runs_of_this_process_cores():
    import os

    cores = sorted(os.sched_getaffinity(0))
    assert cpu_thread_binding(1) == ",".join(map(str, cores))
    binding = cpu_thread_binding(len(cores))
    assert binding.split("|") == [str(c) for c in cores]
    assert cpu_thread_binding(len(cores) + 1) is None


def test_vllm_flags_without_the_vllm_engine_are_refused(tmp_path):
    run = subprocess.run([sys.executable, "-m", "osum.cli", "infer", "--model", str(tmp_path), "a.wav",
                          "--max-model-len", "512", "--vllm-arg", "max_num_seqs=4"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "--max-model-len, --vllm-arg: vLLM engine options; add --engine vllm" in run.stderr
    run = subprocess.run([sys.executable, "-m", "osum.cli", "infer", "--model", str(tmp_path), "a.wav",
                          "--engine", "vllm", "--vllm-arg", "max_num_seqs"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--vllm-arg 'max_num_seqs': write KEY=VALUE" in run.stderr
