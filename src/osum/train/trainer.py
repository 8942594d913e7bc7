"""The training loop, in one function you can read top to bottom: `train(config)`.

One optimizer step = `optim.accum_steps` loader batches on every rank. The loss of each micro-batch is its
summed token loss divided by the target tokens of the whole step on all ranks, so the update is the same
however the step is split (1 process or many, with or without accumulation). Gradients are all-reduced
once per step (no_sync / FSDP2's gradient-sync switch on the other micro-batches).

Faults: a micro-batch whose forward raises is replaced by a zero-weight forward on a dummy input (keeping
every rank's collectives in step) and counted; a step with non-finite loss or gradients on any rank is
skipped on all of them and counted; `train.max_bad_steps` consecutive bad steps stop the run with an
error; so does an epoch that gives no usable batch at all (every sample skipped), naming the reasons.
SIGTERM / SIGINT finish the current step (or epoch, when it yields no batch), write a checkpoint and return.
Under torchrun each rank gets SIGTERM when the launcher dies. Rank 0 holds OUT/.lock for the whole run, so a
second run into the same out_dir is refused instead of writing beside the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from ..config import to_dict
from ..data.loader import SpeechLoader, stop_together
from ..data.problems import REASONS, Problems
from ..models.checkpoint import load_weights, save_model
from ..models.speech_llm import SpeechLLM, SpeechLLMConfig
from ..models.whisper_asr import WhisperASR
from ..prompt_set import load_prompts
from ..tasks import LABEL_TAGS, parse_output, task_parts
from . import distributed
from .config import TrainConfig, check_paths
from .examples import Examples, make_examples
from .logs import TrainLog, peak_memory_mb
from .schedule import lr_factor
from .state import (
    list_checkpoints,
    load_optimizer_file,
    load_rank_state,
    prune_checkpoints,
    read_state,
    save_checkpoint,
)

log = logging.getLogger("osum.train")
MODEL_DIR = "model"
LOCK_FILE = ".lock"


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss keeps diverging); the message says why and what to try."""


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the end of the step and returns."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def out_dir_lock(out: Path, env: distributed.Env) -> Iterator[None]:
    """Rank 0 holds an exclusive flock on OUT/.lock (its pid written inside) for the run; a second run into the
    same out_dir is refused on every rank. The kernel drops the lock when its holder dies, even by kill -9."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    handle, refusal = None, ""
    if env.main and fcntl is not None:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")  # append: never truncate the holder's pid before holding the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            handle = None
            refusal = (f"{out} is in use by another run (pid {holder} holds {out / LOCK_FILE}): wait for it to "
                       "end or stop it, or set another out_dir")
        else:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
    if env.all_reduce([float(bool(refusal))], op="max")[0]:
        raise TrainingError(refusal or f"{out} is in use by another run (rank 0's error names it)")
    try:
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)  # for forked data workers too, which share the open file
            handle.close()


def build_model(config: TrainConfig) -> SpeechLLM | WhisperASR:
    """The model the config describes (a speech LLM, or Whisper itself), with its prompts, and the weights of
    model.init_from."""
    section = config.model
    if section.type == "whisper":
        model = WhisperASR.build(section.whisper, section.generation)
    else:
        speech = SpeechLLMConfig(**{f.name: getattr(section, f.name) for f in dataclasses.fields(SpeechLLMConfig)})
        model = SpeechLLM.build(speech)
    model.prompts = load_prompts(section.prompts)
    if section.init_from:
        parts = load_weights(model, section.init_from, require_all=False)
        log.info("initialized %s from %s", ", ".join(parts), section.init_from)
    return model


def find_resume(config: TrainConfig) -> Path | None:
    choice = config.checkpoint.resume
    if choice == "none":
        return None
    if choice == "auto":
        found = list_checkpoints(config.out_dir)
        return found[-1] if found else None
    path = Path(choice)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"checkpoint.resume: {path} is not a complete osum checkpoint (no trainer_state.json)")
    return path


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(config: TrainConfig) -> Path:
    """Train as `config` says; returns the final model directory (OUT/model). Resumes when it can."""
    env = distributed.setup(config.train.device)
    try:
        check_paths(config)  # before the out_dir is made and locked
        with out_dir_lock(Path(config.out_dir), env):
            return _train(config, env)
    finally:
        distributed.teardown()


def _train(config: TrainConfig, env: distributed.Env) -> Path:
    c = config
    if c.schedule.kind == "warmup_cosine" and c.train.max_steps <= 0:
        raise ValueError("schedule.kind=warmup_cosine needs train.max_steps (the step where the cosine ends)")
    out = Path(c.out_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(c), sort_keys=False, allow_unicode=True))
    env.barrier()

    # ---- model, optimizer, data -------------------------------------------------------------------------
    torch.manual_seed(c.train.seed)  # the same initial weights on every rank (FSDP2 does not broadcast)
    model = build_model(c)
    resume = find_resume(c)
    state: dict[str, Any] = read_state(resume) if resume else {}
    if resume:
        load_weights(model, resume, require_all=True)
    model.to(env.device).train()
    deepspeed = c.train.engine == "deepspeed"
    module = model if deepspeed else distributed.wrap(model, c.train.engine, env, c.train.find_unused_parameters)
    names = {p: n for n, p in distributed.unwrap(module).named_parameters()}
    params = [p for p in module.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)  # before DeepSpeed ZeRO-3 partitions them away
    if not params:
        raise ValueError("nothing to train: every part is frozen (see model.trainable and model.lora)")
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": c.optim.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],  # no decay on biases and norms
        lr=c.optim.lr, betas=tuple(c.optim.betas), eps=c.optim.eps,
    )
    if deepspeed:  # DeepSpeed owns mixed precision, clipping and the partitioned optimizer
        module = distributed.deepspeed_initialize(model, optimizer, c.train.deepspeed_stage, c.train.precision,
                                                  c.optim.clip_grad_norm)
        optimizer = module.optimizer
    scaler = torch.amp.GradScaler(env.device.type) if c.train.precision == "fp16" and not deepspeed else None
    problems = Problems()
    loader = SpeechLoader(c.data.train, c.data.loader, env.rank, env.world_size, problems)
    dev_loader = None
    if c.data.dev:
        dev_config = dataclasses.replace(c.data.loader, shuffle=False)
        dev_loader = SpeechLoader(c.data.dev, dev_config, env.rank, env.world_size, Problems())

    step, epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
    counters = {"skipped_steps": 0, "failed_batches": 0, "consecutive_bad": 0, "samples": 0, "audio_seconds": 0.0}
    counters.update(state.get("counters", {}))
    if resume:
        if deepspeed:
            distributed.load_deepspeed_state(module, resume)
        else:
            distributed.load_optimizer(module, optimizer, load_optimizer_file(resume, state["optimizer"]),
                                       c.train.engine, env, names)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(load_rank_state(resume, env.rank)["loader"])
    else:
        torch.manual_seed(c.train.seed * 1000 + env.rank)  # dropout differs across ranks

    total = c.train.max_steps
    logs = TrainLog(out, env.main, total, c.log.tensorboard, c.log.progress, step)
    if logs.note:
        logs.print(logs.note)
    logs.print(f"osum train: {env.world_size} process(es) on {env.device.type}, engine {c.train.engine}, "
               f"{trainable / 1e6:.2f}M trainable parameters"
               + (f", resumed from {resume} (step {step}, epoch {epoch})" if resume else ""))
    dummy = _dummy_examples(model, c.data.loader.n_mels)
    validation: dict[str, Any] | None = None
    last_saved = step if resume else -1

    def save() -> None:
        nonlocal last_saved
        interval.count(env, counters)
        model_state, optimizer_state = distributed.full_states(module, optimizer, c.train.engine, env, names)
        trainer_state = {
            "step": step, "epoch": loader.epoch, "counters": counters, "world_size": env.world_size,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "validation": validation if validation and validation["step"] == step else None,
        }
        more = (lambda directory: distributed.save_deepspeed_state(module, directory)) if deepspeed else None
        path = save_checkpoint(out, step, env.rank, env.barrier, model, model_state, optimizer_state,
                               trainer_state, {"loader": loader.state_dict()}, more)
        if env.main:
            prune_checkpoints(out, c.checkpoint.keep_last, c.checkpoint.keep_best, c.checkpoint.metric)
            logs.print(f"checkpoint {path}")
        env.barrier()
        last_saved = step

    def validate() -> None:
        nonlocal validation
        if dev_loader is None:
            return
        validation = {"kind": "dev", "step": step, "epoch": epoch,
                      **_validate(module, model, dev_loader, c, env)}
        logs.write(validation)

    # ---- the loop ------------------------------------------------------------------------------------------
    interval = _Interval()
    finished = False
    empty_steps = 0
    with StopRequest() as stop:
        while not finished:
            if c.train.max_steps > 0 and step >= c.train.max_steps:
                break  # resumed from the last step's checkpoint: only the final model is left to write
            if c.train.max_steps <= 0 and epoch >= c.train.max_epochs:
                break
            loader.set_epoch(epoch)
            fresh = loader.consumed == 0  # resumed at an epoch's very end, the rest of it is rightly empty
            epoch_batches, epoch_tokens = 0, 0.0
            batches = iter(stop_together(iter(loader), loader))
            exhausted = False
            while not exhausted:
                # Gather the step's micro-batches (every rank gets the same count: stop_together).
                micro: list[Examples | None] = []
                t0 = time.perf_counter()
                for _ in range(c.optim.accum_steps):
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    micro.append(make_examples(batch, model.prompts, c.train.seed, epoch,
                                               c.data.prompt_choice == "random", problems, model.train_task))
                if not micro:
                    break
                interval.data_s += time.perf_counter() - t0
                epoch_batches += len(micro)  # the same on every rank (stop_together)
                step_tokens = sum(len(model.target_ids(t)) for ex in micro if ex is not None for t in ex.targets)
                global_tokens = env.all_reduce([step_tokens])[0]
                epoch_tokens += global_tokens
                # A step with nothing to learn on any rank: a run where that goes on trains nothing at all
                # (e.g. a task with no prompt in the prompt file skips every sample), so it stops and says why.
                empty_steps = empty_steps + 1 if global_tokens == 0 else 0
                if empty_steps >= c.train.max_bad_steps:
                    raise TrainingError(
                        f"the last {empty_steps} steps had no usable sample on any rank (skipped so far: "
                        f"{problems.summary()}); check that every task has a prompt in the prompt file and that "
                        f"the samples carry the labels their tasks need (osum data check)")

                bad_local = False
                for i, ex in enumerate(micro):
                    t1 = time.perf_counter()
                    with distributed.gradient_sync(module, c.train.engine, i == len(micro) - 1):
                        with autocast(c.train.precision, env.device):
                            try:
                                if ex is None:
                                    raise _NoExamples()
                                result = module(ex.features.to(env.device), ex.lengths.to(env.device),
                                                ex.prompts, ex.targets, ex.tasks)
                                loss = result["loss_sum"] * env.world_size / max(global_tokens, 1.0)
                                if not torch.isfinite(result["loss_sum"].detach()):
                                    bad_local = True
                                interval.add(result, ex)
                            except _NoExamples:
                                loss = _zero_loss(module, dummy, env.device)
                            except Exception as err:  # one bad batch must not end the run
                                counters["failed_batches"] += 1
                                logs.print(f"warning: step {step}: batch {ex.keys[:3]}... failed and was skipped: "
                                           f"{type(err).__name__}: {err}")
                                loss = _zero_loss(module, dummy, env.device)
                        t2 = time.perf_counter()
                        if deepspeed:
                            module.backward(loss)
                        else:
                            (scaler.scale(loss) if scaler is not None else loss).backward()
                    _sync(env.device)
                    interval.forward_s += t2 - t1
                    interval.backward_s += time.perf_counter() - t2

                t3 = time.perf_counter()
                flags = env.all_reduce([float(bad_local), float(stop.requested)], op="max")
                lr = c.optim.lr * lr_factor(step, c.schedule.kind, c.schedule.warmup_steps, c.train.max_steps,
                                            c.schedule.min_lr_ratio)
                if deepspeed:
                    # DeepSpeed clips, and skips a step whose gradients are not finite, by itself.
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    module.step()
                    grad_norm = module.get_global_grad_norm()
                    grad_norm = float("nan") if grad_norm is None else float(grad_norm)
                    applied = not getattr(optimizer, "overflow", False) and math.isfinite(grad_norm)
                else:
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    max_norm = c.optim.clip_grad_norm if c.optim.clip_grad_norm > 0 else float("inf")
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                    applied = flags[0] == 0 and math.isfinite(grad_norm)
                    if applied:
                        for group in optimizer.param_groups:
                            group["lr"] = lr
                        if scaler is not None:
                            scaler.step(optimizer)
                        else:
                            optimizer.step()
                    if scaler is not None:
                        scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                if applied:
                    step += 1
                    counters["consecutive_bad"] = 0
                    interval.grad_norm = grad_norm
                    logs.advance()
                else:
                    counters["skipped_steps"] += 1
                    counters["consecutive_bad"] += 1
                    logs.print(f"warning: step {step}: non-finite loss or gradients (grad norm {grad_norm}); "
                               f"step skipped ({counters['skipped_steps']} so far)")
                    if counters["consecutive_bad"] >= c.train.max_bad_steps:
                        raise TrainingError(
                            f"{counters['consecutive_bad']} consecutive steps had non-finite loss or gradients: "
                            "the run diverged; lower optim.lr, raise schedule.warmup_steps, or use bf16 over fp16"
                        )
                _sync(env.device)
                interval.optimizer_s += time.perf_counter() - t3
                interval.steps += 1

                if step % c.log.every_steps == 0 and interval.steps:
                    interval.count(env, counters)
                    record = interval.record(env, step, epoch, optimizer.param_groups[0]["lr"], counters)
                    record["peak_memory_mb"] = peak_memory_mb(env.device)
                    logs.write(record)
                    interval = _Interval()
                if c.train.val_every and step % c.train.val_every == 0 and step != last_saved:
                    validate()
                if flags[1] > 0:
                    logs.print("stop requested (signal): writing a checkpoint; rerun the same command to resume")
                    save()
                    logs.close()
                    return out
                if c.checkpoint.every_steps and step % c.checkpoint.every_steps == 0 and step != last_saved:
                    save()
                if c.train.max_steps and step >= c.train.max_steps:
                    finished = True
                    break
            if not finished:
                # Checked here too: an epoch that yields no batch never reaches the end of a step. An epoch of
                # batches with nothing to learn is left to the empty-steps check above (it counts across
                # epochs), unless the run would end on it.
                stopping, resumed = env.all_reduce([float(stop.requested), float(not fresh)], op="max")
                ends_run = c.train.max_steps <= 0 and epoch + 1 >= c.train.max_epochs
                if epoch_tokens == 0 and not resumed and (epoch_batches == 0 or ends_run):
                    raise TrainingError(
                        f"epoch {epoch} gave no usable batch (ranks end an epoch together, so one rank without "
                        f"data ends it for all); skipped samples: {_skipped_samples(problems, env) or 'none'}. "
                        "Check the data lists (osum data check): no model was written")
                epoch += 1
                loader.set_epoch(epoch)
                if not c.train.val_every and not stopping:
                    validate()
                if (c.checkpoint.at_epoch_end or stopping) and step != last_saved:
                    save()
                if stopping:
                    logs.print("stop requested (signal): checkpoint written; rerun the same command to resume")
                    logs.close()
                    return out
    # ---- the end ---------------------------------------------------------------------------------------------
    if step != last_saved:
        if dev_loader is not None and (validation is None or validation["step"] != step):
            validate()
        save()
    model_state, _ = distributed.full_states(module, optimizer, c.train.engine, env, names)
    interval.count(env, counters)
    skipped = _skipped_samples(problems, env)
    final = out / MODEL_DIR
    if env.main:
        save_model(model, final, state=model_state)
        summary = {"steps": step, "epochs_completed": epoch, **counters, "skipped_samples": skipped,
                   "gradient_bucket_all_reduces": distributed.SYNCS.calls}
        summary["dropped_for_rank_balance"] = loader.stats.dropped_for_rank_balance
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        logs.print(f"done: {step} steps; final model in {final}; skipped steps {counters['skipped_steps']}, "
                   f"failed batches {counters['failed_batches']}")
        logs.print(f"data: {int(counters['samples'])} samples used ({counters['audio_seconds'] / 3600:.2f} h of "
                   f"audio), {sum(skipped.values())} skipped"
                   + "".join(f"; {reason} {n}" for reason, n in skipped.items()))
    env.barrier()
    logs.close()
    loader.close()
    if dev_loader is not None:
        dev_loader.close()
    return final


def _skipped_samples(problems: Problems, env: distributed.Env) -> dict[str, int]:
    """Samples skipped on all ranks, by reason, most first (every rank calls it: it all-reduces)."""
    counts = env.all_reduce([float(problems.counts[reason]) for reason in REASONS])
    return {reason: int(n) for n, reason in sorted(zip(counts, REASONS), key=lambda nr: -nr[0]) if n}


class _NoExamples(Exception):
    """A batch none of whose samples can be trained on (counted by make_examples)."""


def _dummy_examples(model: SpeechLLM, n_mels: int) -> Examples:
    """A one-second silent input with an empty target: what a rank runs when its batch fails."""
    return Examples(torch.zeros(1, 100, n_mels), torch.tensor([100]), [""], [""], ["<TRANSCRIBE>"], ["<dummy>"])


def _zero_loss(module, dummy: Examples, device: torch.device) -> torch.Tensor:
    """A loss of zero that still runs the forward (FSDP2 gathers) and reaches every trainable weight (DDP)."""
    result = module(dummy.features.to(device), dummy.lengths.to(device), dummy.prompts, dummy.targets)
    return result["loss_sum"] * 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # honest per-phase timings


@dataclasses.dataclass
class _Interval:
    """Sums over the optimizer steps since the last log line (this rank's share)."""

    loss_sum: float = 0.0
    tokens: float = 0.0
    correct: float = 0.0
    samples: float = 0.0
    audio_seconds: float = 0.0
    steps: int = 0
    grad_norm: float = 0.0
    data_s: float = 0.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)
    counted: tuple[float, float] = (0.0, 0.0)  # samples and audio seconds already added to the run's counters

    def add(self, result: dict[str, torch.Tensor], ex: Examples) -> None:
        self.loss_sum += float(result["loss_sum"].detach())
        self.tokens += float(result["tokens"])
        self.correct += float(result["correct"])
        self.samples += ex.size
        self.audio_seconds += float(ex.lengths.sum()) / 100  # 10 ms feature frames

    def count(self, env, counters: dict) -> None:
        """Add this interval's samples and audio not yet in `counters` (every rank calls it: it all-reduces)."""
        samples, audio = env.all_reduce([self.samples - self.counted[0], self.audio_seconds - self.counted[1]])
        counters["samples"] += int(samples)
        counters["audio_seconds"] += audio
        self.counted = (self.samples, self.audio_seconds)

    def record(self, env, step: int, epoch: int, lr: float, counters: dict) -> dict[str, Any]:
        loss_sum, tokens, correct, samples, audio = env.all_reduce(
            [self.loss_sum, self.tokens, self.correct, self.samples, self.audio_seconds])
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        loss = loss_sum / max(tokens, 1)
        return {
            "kind": "train", "epoch": epoch, "step": step, "loss": loss, "accuracy": correct / max(tokens, 1),
            "perplexity": math.exp(min(loss, 50.0)), "lr": lr, "grad_norm": self.grad_norm,
            "samples": int(samples), "audio_seconds": audio, "tokens": int(tokens),
            "samples_per_s": samples / elapsed, "audio_s_per_s": audio / elapsed, "tokens_per_s": tokens / elapsed,
            "data_s": self.data_s, "forward_s": self.forward_s, "backward_s": self.backward_s,
            "optimizer_s": self.optimizer_s, "skipped_steps": counters["skipped_steps"],
            "failed_batches": counters["failed_batches"],
        }


def _validate(module, model: SpeechLLM, loader: SpeechLoader, c: TrainConfig, env) -> dict[str, Any]:
    """Dev loss and token accuracy over the dev lists; with data.dev_decode, WER and label accuracy too."""
    module.eval()
    loader.load_state_dict({"epoch": 0, "batches": 0, "world_size": env.world_size})
    problems = Problems(warn=False)
    sums = [0.0, 0.0, 0.0]  # loss_sum, tokens, correct
    decode = [0.0, 0.0, 0.0, 0.0, 0.0]  # word errors, reference words, labels right, labels, utterances
    quota = math.ceil(c.data.dev_decode / env.world_size)
    batches = stop_together(iter(loader), loader) if c.train.engine == "fsdp2" else iter(loader)
    with torch.no_grad(), autocast(c.train.precision, env.device):
        for batch in batches:
            ex = make_examples(batch, model.prompts, c.train.seed, 0, False, problems, model.train_task)
            if ex is None:
                continue
            features, lengths = ex.features.to(env.device), ex.lengths.to(env.device)
            result = module(features, lengths, ex.prompts, ex.targets)
            sums[0] += float(result["loss_sum"])
            sums[1] += float(result["tokens"])
            sums[2] += float(result["correct"])
            if decode[4] < quota:
                take = int(min(ex.size, quota - decode[4]))
                hyps = model.generate(features[:take], lengths[:take], ex.prompts[:take])
                for hyp, ref, task in zip(hyps, ex.targets[:take], ex.tasks[:take]):
                    _score_one(hyp, ref, task, decode)
    loss_sum, tokens, correct = env.all_reduce(sums)
    errors, words, right, labels, utterances = env.all_reduce(decode)
    module.train()
    return {
        "loss": loss_sum / max(tokens, 1), "accuracy": correct / max(tokens, 1), "tokens": int(tokens),
        "wer": errors / words if words else None, "label_accuracy": right / labels if labels else None,
        "decoded": int(utterances),
    }


def _score_one(hyp: str, ref: str, task: str, sums: list[float]) -> None:
    """Add one decoded utterance's word errors and label hits to `sums`."""
    from ..infer.metrics import align

    want, got = parse_output(ref, task), parse_output(hyp, task)
    if want["text"]:
        counts, _ = align(want["text"], got["text"] or "")
        sums[0] += counts.errors
        sums[1] += counts.reference_tokens
    for tag in task_parts(task):
        field = LABEL_TAGS.get(tag)
        if field and want[field] is not None:
            sums[2] += float(got[field] == want[field])
            sums[3] += 1
    sums[4] += 1

