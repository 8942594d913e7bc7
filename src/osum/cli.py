"""The `osum` command: argument parsing and wiring only; the work lives in the modules it calls.

Each `cmd_*` imports its module when it runs, so `osum --help` and the data commands never import torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__
from .errors import OsumError
from .infer.presets import PRESETS


def _print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _account_exit(problems, args: argparse.Namespace) -> int:
    """Write the problems report when asked; under --strict any skipped sample fails the command."""
    if getattr(args, "report", None):
        problems.write_report(args.report)
    if getattr(args, "strict", False) and (problems.total or problems.notes):
        print(f"osum: error: --strict: {problems.total} samples skipped {problems.summary()}"
              + (f", other problems {dict(problems.notes)}" if problems.notes else ""), file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------- data


def cmd_data_convert(args: argparse.Namespace) -> int:
    from .data.commands import convert

    summary, problems = convert(args.src, args.dst, args.src_format, args.dst_format, args.workers,
                                allow_pipes=not args.no_pipes, durations=not args.no_durations)
    _print_json(summary)
    return _account_exit(problems, args)


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check_manifest

    result = check_manifest(args.src, args.src_format, args.max_duration, args.workers, not args.no_pipes,
                            decode=not args.headers_only)
    _print_json(result.summary())
    return _account_exit(result.problems, args)


def cmd_data_pack(args: argparse.Namespace) -> int:
    from .data.commands import pack
    from .data.shards import PackOptions

    options = PackOptions(audio_format=args.audio_format, sample_rate=args.resample or None,
                          text_norm=args.text_norm, allow_pipes=not args.no_pipes, verify=not args.headers_only)
    summary, problems = pack(args.src, args.out, args.src_format, options, args.per_shard, args.workers,
                             args.shuffle, args.seed)
    _print_json(summary)
    return _account_exit(problems, args)


def cmd_data_batches(args: argparse.Namespace) -> int:
    from .data.commands import batches

    problems = batches(args.src, args.config, _print_json, epoch=args.epoch, max_batches=args.max_batches)
    return _account_exit(problems, args)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.commands import synth

    _print_json(synth(args.out, args.count, args.seed, mandarin=args.mandarin, held_out=args.held_out,
                      workers=args.workers))
    return 0


# ------------------------------------------------------------------------------------------------ model


def cmd_model_init(args: argparse.Namespace) -> int:
    from .models.commands import init_model

    _print_json(init_model(args.out, encoder=args.encoder, encoder_config=args.encoder_config,
                           pad_to_30s=args.pad_to_30s, llm=args.llm, llm_config=args.llm_config,
                           tokenizer=args.tokenizer, adapter=args.adapter, lora=args.lora, dtype=args.dtype,
                           prompt_layout=args.prompt_layout, prompts=args.prompts))
    return 0


def cmd_model_tokenizer(args: argparse.Namespace) -> int:
    from .models.commands import train_tokenizer

    _print_json(train_tokenizer(args.manifests, args.out, args.vocab_size, prompts=args.prompts, chat=args.chat))
    return 0


def cmd_convert_ct2(args: argparse.Namespace) -> int:
    from .convert.ct2_whisper import convert_ct2_whisper

    out = convert_ct2_whisper(args.src, args.out)
    _print_json({"whisper_dir": str(out)})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .models.export import export_model

    _print_json({"out": args.out, **export_model(args.model, args.out, merge_lora=args.merge_lora)})
    return 0


def cmd_convert_osum(args: argparse.Namespace) -> int:
    from .convert.osum_ckpt import conversion_notes, convert_osum_checkpoint

    out = convert_osum_checkpoint(args.checkpoint, args.whisper_config, args.llm, args.out, merge=args.merge,
                                  lora_alpha=args.lora_alpha, dtype=args.dtype, prompts=args.prompts)
    notes = conversion_notes(args.prompts)
    for note in notes:
        print(f"osum: {note}", file=sys.stderr)
    _print_json({"model_dir": str(out), "merged": args.merge, "llm_dtype": args.dtype, "notes": notes})
    return 0


def cmd_convert_whisper_names(args: argparse.Namespace) -> int:
    from .convert.whisper_names import convert_whisper_names

    _print_json({"out": args.out, "to": args.to, **convert_whisper_names(args.src, args.out, args.to)})
    return 0


def cmd_convert_whisper_lm(args: argparse.Namespace) -> int:
    from .convert.ct2_whisper import bundled_whisper_tiny_en
    from .convert.whisper_lm import convert_whisper_decoder

    whisper = args.whisper or bundled_whisper_tiny_en()
    tags = []
    if args.label_tokens:
        from .prompt_set import load_prompts
        from .tasks import label_tag

        tags = [label_tag(label) for labels in load_prompts(args.label_tokens).labels.values() for label in labels]
    out = convert_whisper_decoder(whisper, args.out, cross_attention=args.cross_attention, whole_tokens=tags)
    _print_json({"llm_dir": str(out), "whisper": str(whisper), "cross_attention": args.cross_attention})
    return 0


# ------------------------------------------------------------------------------------------------ train


def cmd_train(args: argparse.Namespace) -> int:
    from .train import commands

    if args.print_config:
        print(commands.default_config_yaml())
        return 0
    config = commands.load_train_config(args.config, args.overrides)
    if args.dry_run:
        print(json.dumps(commands.dry_run_report(config, args.world_size), indent=2, ensure_ascii=False))
        return 0
    from .train.trainer import train

    train(config)
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from .train.commands import average

    _print_json(average(args.run, best=args.best, last=args.last, metric=args.metric, out=args.out))
    return 0


# --------------------------------------------------------------------------------------------- evaluate


def _decoding_options(args: argparse.Namespace) -> dict:
    options = {}
    for name in ("max_new_tokens", "num_beams", "temperature", "top_k", "top_p"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "sample", False):
        options["do_sample"] = True
    if getattr(args, "preset", None):
        options["preset"] = args.preset
    return options


# The vLLM engine's options and the flags that set them (osum.infer.vllm_engine.VllmOptions).
VLLM_FLAGS = ("tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization", "max_model_len",
              "max_num_seqs", "enforce_eager", "llm_dir", "concurrency")


def _engine(args: argparse.Namespace) -> dict:
    """`engine` and `engine_options` for SpeechModel.load from the engine flags; a vLLM flag without
    --engine vllm is an error (it would do nothing)."""
    import yaml

    options = {name: getattr(args, name) for name in VLLM_FLAGS if getattr(args, name) not in (None, False)}
    engine_args = {}
    for item in args.vllm_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--vllm-arg {item!r}: write KEY=VALUE (a vLLM engine argument, e.g. "
                             "max_num_batched_tokens=4096)")
        engine_args[key.strip().replace("-", "_")] = yaml.safe_load(value)
    if engine_args:
        options["engine_args"] = engine_args
    if args.engine != "vllm" and options:
        flags = ", ".join("--vllm-arg" if name == "engine_args" else "--" + name.replace("_", "-") for name in options)
        raise ValueError(f"{flags}: vLLM engine options; add --engine vllm (or leave them out)")
    return {"engine": args.engine, "engine_options": options}


def cmd_infer(args: argparse.Namespace) -> int:
    from .infer.api import SpeechModel
    from .infer.formats import render

    with SpeechModel.load(args.model, args.device, **_engine(args)) as model:
        results = model.generate(args.files, task=args.task, prompt=args.prompt, language=args.language,
                                 label_scoring=not args.no_label_scoring, **_decoding_options(args))
    sys.stdout.write(render(results, args.format))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .infer.commands import decode_status
    from .infer.decode import decode

    summaries = decode(args.model, args.data, args.out, task=args.task, device=args.device,
                       normalizer=args.normalizer, plots=not args.no_plots,
                       max_frames_in_batch=args.max_frames_in_batch, **_engine(args), **_decoding_options(args))
    status, message = decode_status(summaries, strict=args.strict)
    if message:
        print(f"osum: error: {message}", file=sys.stderr)
    return status


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"this command needs the Python package {module}: pip install 'osum[{extra}]'")


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    _require("fastapi", "serve")
    _require("uvicorn", "serve")
    from .serve.server import ServeSettings, serve

    settings = ServeSettings(api_key=args.api_key or os.environ.get("OSUM_API_KEY") or None,
                             max_upload_mb=args.max_upload_mb, max_audio_seconds=args.max_audio_seconds,
                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                             max_prompt_chars=args.max_prompt_chars, max_new_tokens=args.max_new_tokens,
                             body_timeout_seconds=args.body_timeout_seconds, preset=args.preset)
    if args.model_name:
        settings.model_name = args.model_name
    serve(args.model, args.host, args.port, args.device, settings, **_engine(args))
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    _require("gradio", "web")
    from .serve.web import launch

    launch(args.model, args.host, args.port, args.device, **_engine(args))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .infer.commands import score_files
    from .infer.score import markdown

    summary, bad_labels = score_files(args.ref, args.hyp, args.task, args.normalizer, args.out,
                                      plots=not args.no_plots)
    print(markdown(summary))
    if bad_labels:
        print(f"osum: {sum(bad_labels.values())} reference labels are not in osum's label sets and were left out: "
              f"{bad_labels}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------ parser


def _add_account_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any sample is skipped")
    p.add_argument("--report", help="write one JSON line per problem (reason, where, detail) to this file")


def _add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, npu, ...")
    p.add_argument("--max-new-tokens", type=int, help="longest output in tokens (default: the model's)")
    p.add_argument("--num-beams", type=int, help="beam search width (default: the model's, greedy)")
    p.add_argument("--sample", action="store_true", help="sample instead of deterministic decoding")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of decoding options (osum: 4 beams with sampling, "
                   "top-k 5, top-p 0.9, repetition penalty 1.05, 400 new tokens, as OSUM decodes); flags given win")


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="torch", choices=["torch", "vllm"],
                   help="what decodes: torch (this process, default) or vllm (the LLM on vLLM's engine: continuous "
                        "batching, tensor parallel; pip install 'osum[vllm]')")
    g = p.add_argument_group("vLLM engine (with --engine vllm)")
    g.add_argument("--tensor-parallel-size", type=int, help="GPUs the LLM is split across (default 1)")
    g.add_argument("--pipeline-parallel-size", type=int, help="pipeline stages, e.g. one per node (default 1)")
    g.add_argument("--gpu-memory-utilization", type=float,
                   help="share of GPU memory vLLM may take (on CPU: of host memory for the KV cache; default 0.1 there)")
    g.add_argument("--max-model-len", type=int, help="longest prompt + output in tokens (default: the LLM's)")
    g.add_argument("--max-num-seqs", type=int, help="sequences decoded at once (default: vLLM's)")
    g.add_argument("--enforce-eager", action="store_true", help="no graph capture / compilation: faster start")
    g.add_argument("--llm-dir", help="the merged LLM `osum export --merge-lora OUT` wrote (OUT/llm); "
                                     "default: written to a temporary directory at start")
    g.add_argument("--concurrency", type=int, help="(serve) batches in flight at once (default 8)")
    g.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other vLLM engine argument, e.g. distributed_executor_backend=ray (repeatable)")


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="prepare, check, pack and dry-run data").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    formats_in = ["osum", "kaldi", "funasr", "commonvoice", "shards"]

    p = data.add_parser("convert", help="convert between OSUM/WeNet jsonl, Kaldi dirs, FunASR jsonl, Common Voice")
    p.add_argument(
        "--from", dest="src_format", choices=formats_in[:-1], help="input format (default: detected)"
    )
    p.add_argument("--to", dest="dst_format", choices=["osum", "kaldi", "funasr"], required=True)
    p.add_argument("src", help="input: a jsonl file, a Kaldi data dir, a Common Voice .tsv")
    p.add_argument("dst", help="output: a jsonl file, or a directory for kaldi")
    p.add_argument("--workers", type=int, default=0, help="processes reading audio headers (default: cores)")
    p.add_argument("--no-durations", action="store_true", help="do not read durations (not for --to funasr)")
    p.add_argument("--no-pipes", action="store_true", help="refuse `command |` entries in wav.scp")
    _add_account_arguments(p)
    p.set_defaults(func=cmd_data_convert)

    p = data.add_parser("check", help="find missing or broken audio, bad durations, duplicates, empty text")
    p.add_argument("src")
    p.add_argument("--from", dest="src_format", choices=formats_in, help="input format (default: detected)")
    _add_account_arguments(p)
    p.add_argument("--max-duration", type=float, default=1800.0, help="longer audio is reported (seconds)")
    p.add_argument("--workers", type=int, default=0, help="processes reading audio (default: cores)")
    p.add_argument("--no-pipes", action="store_true", help="refuse `command |` entries in wav.scp")
    p.add_argument("--headers-only", action="store_true",
                   help="read audio headers only (fast; NaN samples and damage inside a file go unnoticed)")
    p.set_defaults(func=cmd_data_check)

    p = data.add_parser("pack", help="pack a manifest into tar shards (OSUM/WeNet layout)")
    p.add_argument("src")
    p.add_argument("--out", required=True, help="output directory for shard_*.tar and shards.list")
    p.add_argument("--from", dest="src_format", choices=formats_in, help="input format (default: detected)")
    p.add_argument("--per-shard", type=int, default=1000, help="utterances per shard")
    p.add_argument("--workers", type=int, default=1, help="shards written in parallel")
    p.add_argument("--resample", type=int, default=16000, help="sample rate of the packed audio; 0 keeps each file's")
    p.add_argument(
        "--format",
        dest="audio_format",
        choices=["flac", "wav", "keep"],
        default="flac",
        help="audio in the shards: flac (FLAC input at the target rate is stored as is), wav, or keep the original bytes",
    )
    p.add_argument("--text-norm", action="store_true", help="MooER-style text normalization of transcripts")
    p.add_argument("--shuffle", action="store_true", help="shuffle utterances across shards")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pipes", action="store_true", help="refuse `command |` entries in wav.scp")
    p.add_argument("--headers-only", action="store_true",
                   help="store FLAC (or --format keep) input unchecked, from its header (several times faster; "
                        "damage inside a file is counted only when training reads it)")
    _add_account_arguments(p)
    p.set_defaults(func=cmd_data_pack)

    p = data.add_parser("batches", help="dry-run the loader: one JSON line per batch, then a summary")
    p.add_argument(
        "src",
        nargs="+",
        help="shard lists, manifests, or an OSUM data config (.yaml with weights); "
        "key=value items override loader settings, e.g. max_frames_in_batch=6000",
    )
    p.add_argument("--config", help="YAML with loader settings (see osum.data.loader.LoaderConfig)")
    p.add_argument("--max-batches", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    _add_account_arguments(p)
    p.set_defaults(func=cmd_data_batches)

    p = data.add_parser("synth", help="synthesize labelled clips with espeak-ng (demo data; labels are proxies)")
    p.add_argument("--out", required=True, help="output directory (wav/ and manifest.jsonl)")
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mandarin", type=float, default=0.0, help="fraction of clips in Mandarin (cmn voice)")
    p.add_argument("--held-out", type=float, default=0.0,
                   help="fraction held out for testing (new sentences; held-out voices); writes per-split manifests")
    p.add_argument("--workers", type=int, default=2, help="espeak-ng processes at once")
    p.set_defaults(func=cmd_data_synth)


def _add_model_commands(commands: argparse._SubParsersAction) -> None:
    model = commands.add_parser("model", help="build and inspect model directories").add_subparsers(
        dest="model_command", required=True, metavar="ACTION"
    )
    p = model.add_parser("init", help="build an untrained model directory from an encoder and an LLM")
    p.add_argument("--encoder", help="Hugging Face Whisper directory (see `osum convert ct2-whisper`)")
    p.add_argument("--encoder-config", help="JSON with WhisperEncoderConfig fields, for a fresh encoder")
    p.add_argument("--pad-to-30s", action="store_true", help="run the encoder on Whisper's 30 s window")
    p.add_argument("--llm", help="Hugging Face causal LM directory (Qwen2, Llama, ...)")
    p.add_argument("--llm-config", help="JSON HF config (with model_type) for a fresh LLM; needs --tokenizer")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the --llm directory)")
    p.add_argument("--adapter", choices=["osum", "linear"], default="osum")
    p.add_argument("--lora", action="store_true", help="add LoRA (r 8, alpha 32) to the LLM")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--prompt-layout", choices=["auto", "chat", "plain"], default="auto")
    p.add_argument("--prompts", help="prompt YAML to ship with the model (default: osum's)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_model_init)

    p = model.add_parser("tokenizer", help="train a byte-level BPE tokenizer on transcripts (for a fresh LLM); "
                         "label tags become whole tokens")
    p.add_argument("manifests", nargs="+", help="manifests whose transcripts it learns from")
    p.add_argument("--out", required=True, help="output tokenizer directory (Hugging Face format)")
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--prompts", help="prompt YAML whose prompts and label tags it should also learn")
    p.add_argument("--chat", action="store_true", help="add a ChatML chat template")
    p.set_defaults(func=cmd_model_tokenizer)


def _add_convert_commands(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser("convert", help="import foreign checkpoints").add_subparsers(
        dest="convert_command", required=True, metavar="FORMAT"
    )
    p = convert.add_parser("ct2-whisper", help="CTranslate2 (faster-whisper) Whisper -> Hugging Face Whisper dir")
    p.add_argument("src", help="directory with model.bin, config.json, tokenizer.json")
    p.add_argument("out", help="output Hugging Face Whisper directory")
    p.set_defaults(func=cmd_convert_ct2)
    p = convert.add_parser("osum-ckpt", help="OSUM's released checkpoint (infer.pt) -> an osum model directory")
    p.add_argument("checkpoint", help="OSUM's infer.pt (read with weights_only: no code runs)")
    p.add_argument("--whisper-config", required=True, help="a directory with Whisper-medium's config.json")
    p.add_argument("--llm", required=True, help="the Qwen2 directory OSUM used: its config and tokenizer")
    p.add_argument("--out", required=True, help="the osum model directory to write")
    p.add_argument("--merge", action="store_true", help="merge LoRA into the LLM (a standalone llm/ inside)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (OSUM: 32; not stored in the checkpoint)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"],
                   help="the LLM's number format (default bfloat16, as OSUM runs it; float32 doubles the memory)")
    p.add_argument("--prompts", help="OSUM's prompt_config.yaml: installed as the model's prompts (default: osum's)")
    p.set_defaults(func=cmd_convert_osum)
    p = convert.add_parser("whisper-names", help="Whisper weight names: Hugging Face <-> MindSpeed-MM "
                           "(q_proj <-> proj_q, ...), for .safetensors, .bin and .pt files")
    p.add_argument("--to", required=True, choices=["mindspeed", "hf"], help="the naming to write")
    p.add_argument("src", help="a weight file (.safetensors, .bin, .pt)")
    p.add_argument("out", help="the file to write; its extension picks the format")
    p.set_defaults(func=cmd_convert_whisper_names)
    p = convert.add_parser("whisper-lm", help="a Whisper decoder -> a Hugging Face GPT-2 causal LM dir (a real "
                           "pretrained LLM with no download: the bundled tiny.en by default)")
    p.add_argument("--whisper", help="a Hugging Face Whisper directory (default: the bundled Whisper tiny.en)")
    p.add_argument("--cross-attention", default="zero-encoder", choices=["zero-encoder", "drop"],
                   help="what replaces the cross-attention to the audio: its output for an all-zero encoder output "
                        "(default; a usable LM) or nothing (exactly the decoder without it; no usable LM)")
    p.add_argument("--label-tokens", metavar="PROMPTS", help="a prompt YAML whose label tags (<male>, <child>, ...) "
                   "become one token each, in Whisper's unused embedding rows (model.utterance_labels needs that)")
    p.add_argument("out", help="the LLM directory to write (must not exist or be empty)")
    p.set_defaults(func=cmd_convert_whisper_lm)

    p = commands.add_parser("export", help="a model's parts as Hugging Face directories (LLM, Whisper encoder) "
                            "and plain adapter weights, for tools without osum")
    p.add_argument("model", help="an osum model directory")
    p.add_argument("out", help="a new directory for llm/, encoder/, adapter/ and export.json")
    p.add_argument("--merge-lora", action="store_true", help="merge LoRA into the LLM (else llm/ + lora/)")
    p.set_defaults(func=cmd_export)


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a speech LLM (one process, or under torchrun on many GPUs/nodes)")
    p.add_argument("config", nargs="?", help="training config YAML (see --print-config)")
    p.add_argument("overrides", nargs="*", help="section.key=value (or ++section.key=value) overrides")
    p.add_argument("--print-config", action="store_true", help="print every key with its default and meaning")
    p.add_argument("--dry-run", action="store_true",
                   help="check config and data lists, print parameter counts and memory per GPU; load no weights")
    p.add_argument("--world-size", type=int, help="GPUs in all, for --dry-run's memory estimate (default $WORLD_SIZE or 1)")
    p.set_defaults(func=cmd_train)


def _add_evaluate_commands(commands: argparse._SubParsersAction) -> None:
    """infer, decode, serve, web and score."""
    p = commands.add_parser("infer", help="decode audio files with a model: transcript and labels")
    p.add_argument("--model", required=True, help="an osum model directory")
    p.add_argument("files", nargs="+", help="audio files (WAV, FLAC, OGG, MP3, ...); long files are split")
    p.add_argument("--task", default="<TRANSCRIBE>", help="task tag, e.g. '<TRANSCRIBE> <GENDER>' or asr+gender")
    p.add_argument("--prompt", help="your own prompt instead of the task's")
    p.add_argument("--language", help="target language for <TRANSLATE>")
    p.add_argument("--format", default="text", choices=["text", "json", "srt", "vtt", "tsv"])
    p.add_argument("--no-label-scoring", action="store_true", help="generate labels freely instead of scoring them")
    _add_decoding_arguments(p)
    _add_engine_arguments(p)
    p.set_defaults(func=cmd_infer)

    p = commands.add_parser("decode", help="decode data sets in batches and score them")
    p.add_argument("--model", required=True, help="an osum model directory")
    p.add_argument("--data", required=True, nargs="+", help="manifests, Kaldi dirs, shards lists, ...")
    p.add_argument("--task", help="decode every utterance for this task (default: each utterance's own tasks)")
    p.add_argument("--out", required=True, help="output directory (one subdirectory per data source)")
    p.add_argument("--normalizer", default="basic", choices=["basic", "whisper", "none"])
    p.add_argument("--no-plots", action="store_true", help="confusion matrices as text only (no PNG)")
    p.add_argument("--max-frames-in-batch", type=int, default=8000,
                   help="padded feature frames per batch (100 per second); raise it on a GPU")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when any utterance is skipped (each set's problems.json says why)")
    _add_decoding_arguments(p)
    _add_engine_arguments(p)
    p.set_defaults(func=cmd_decode)

    p = commands.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible transcriptions + understand)")
    p.add_argument("--model", required=True, help="an osum model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or set OSUM_API_KEY)")
    p.add_argument("--model-name", help="the model id clients see (default: the directory's name)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger uploads get 413")
    p.add_argument("--max-audio-seconds", type=float, default=1800.0, help="longer audio gets 413")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (1 = no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a request waits for company")
    p.add_argument("--max-prompt-chars", type=int, default=4000,
                   help="longer text fields (prompt, task, language) get 413")
    p.add_argument("--max-new-tokens", type=int, default=1024,
                   help="the most output tokens a request may ask for (more gets 400)")
    p.add_argument("--body-timeout-seconds", type=float, default=30.0,
                   help="a client that sends no part of its upload for this long gets 408 (0 = wait forever)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="decoding preset for requests that name none (osum: as OSUM "
                   "decodes: 4 beams with sampling, top-k 5, top-p 0.9, repetition penalty 1.05, 400 new tokens)")
    _add_engine_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("web", help="a web page to try a model (Gradio): upload or record, pick a task")
    p.add_argument("--model", required=True, help="an osum model directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cpu")
    _add_engine_arguments(p)
    p.set_defaults(func=cmd_web)

    p = commands.add_parser("score", help="score outputs against references: WER/CER, label accuracy/F1, "
                            "timestamp error, BLEU")
    p.add_argument("--ref", required=True, help="references: any manifest osum reads, or a `key text` file")
    p.add_argument("--hyp", required=True, help="outputs: a decode's result.jsonl, or a `key<TAB>text` file")
    p.add_argument("--task", help="score only this task's outputs (and read a text file as this task)")
    p.add_argument("--normalizer", default="basic", choices=["basic", "whisper", "none"],
                   help="text normalization before WER (whisper = Whisper's English normalizer)")
    p.add_argument("--out", help="write summary.json, summary.md, alignments.txt and confusion matrices here")
    p.add_argument("--no-plots", action="store_true", help="confusion matrices as text only (no PNG)")
    p.set_defaults(func=cmd_score)


def _add_average_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("average", help="average checkpoints of a run into a model directory")
    p.add_argument("run", help="the run's output directory (holding checkpoints/)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--best", type=int, help="the N best by --metric (validated checkpoints)")
    group.add_argument("--last", type=int, help="the N newest")
    p.add_argument("--metric", default="loss", choices=["loss", "accuracy", "wer"])
    p.add_argument("--out", help="output model directory (default RUN/model_avgN)")
    p.set_defaults(func=cmd_average)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osum", description="Train, evaluate and serve speech-understanding LLMs.")
    parser.add_argument("--version", action="version", version=f"osum {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in (_add_data_commands, _add_model_commands, _add_convert_commands, _add_train_command,
                         _add_evaluate_commands, _add_average_command):  # in the order `osum --help` lists them
        add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `osum train CONFIG --dry-run key=value`: overrides after an option land here, not in `overrides`.
        if getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (OsumError, FileNotFoundError, TimeoutError, ValueError) as err:
        print(f"osum: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
