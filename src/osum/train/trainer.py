"""The training loop, in one function you can read top to bottom: `train(config)`.

One optimizer step = `optim.accum_steps` loader batches on every rank. The loss of each micro-batch is its
summed token loss divided by the target tokens of the whole step on all ranks, so the update is the same
however the step is split (1 process or many, with or without accumulation). Gradients are all-reduced
once per step. What differs between DDP, FSDP2 and DeepSpeed (wrapping, gradient sync, backward, the optimizer
step, checkpoint state) is behind `engines.Engine`: the loop never branches on the engine.

Faults: a micro-batch whose forward raises is replaced by a zero-weight forward on a dummy input (keeping
every rank's collectives in step) and counted; a step with non-finite loss or gradients on any rank is
skipped on all of them and counted; `train.max_bad_steps` consecutive bad steps stop the run with an
error; so does an epoch that gives no usable batch at all (every sample skipped), naming the reasons.
SIGTERM / SIGINT finish the current step (or epoch, when it yields no batch), write a checkpoint and return.
Under torchrun each rank gets SIGTERM when the launcher dies. Rank 0 holds OUT/.lock for the whole run, so a
second run into the same out_dir is refused instead of writing beside the first.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from ..config import to_dict
from ..data.loader import Batch, SpeechLoader, stop_together
from ..data.problems import REASONS, Problems
from ..data.spec_augment import SpecAugmentConfig
from ..errors import OsumError
from ..models.checkpoint import load_weights, save_model
from ..models.model_types import build_for_training
from ..models.speech_llm import SpeechLLM
from ..models.whisper_asr import WhisperASR
from ..infer import metrics
from ..tasks import LABELS, label_fields, parse_output
from . import distributed
from .config import TrainConfig, check_paths
from .engines import SYNCS, Engine, make_engine
from .examples import Examples, make_examples
from .logs import TrainLog, peak_memory_mb
from .schedule import lr_factor
from .state import list_checkpoints, load_rank_state, prune_checkpoints, read_state, save_checkpoint

log = logging.getLogger("osum.train")
MODEL_DIR = "model"
LOCK_FILE = ".lock"


class TrainingError(RuntimeError, OsumError):
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
    return build_for_training(config.model)


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


def _dev_loader(c: TrainConfig, env: distributed.Env) -> SpeechLoader | None:
    """The validation set in a fixed order, never augmented (the training loader's other settings)."""
    if not c.data.dev:
        return None
    config = dataclasses.replace(c.data.loader, shuffle=False, spec_augment=SpecAugmentConfig())
    return SpeechLoader(c.data.dev, config, env.rank, env.world_size, Problems())


def _train(config: TrainConfig, env: distributed.Env) -> Path:
    c = config
    if c.schedule.kind == "warmup_cosine" and c.train.max_steps <= 0:
        raise ValueError("schedule.kind=warmup_cosine needs train.max_steps (the step where the cosine ends)")
    out = Path(c.out_dir)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(c), sort_keys=False, allow_unicode=True))
    env.barrier()

    # ---- model, engine, data -----------------------------------------------------------------------------
    torch.manual_seed(c.train.seed)  # the same initial weights on every rank (FSDP2 does not broadcast)
    model = build_model(c)
    resume = find_resume(c)
    state: dict[str, Any] = read_state(resume) if resume else {}
    if resume:
        load_weights(model, resume, require_all=True)
    model.to(env.device).train()
    engine = make_engine(c.train, c.optim, env)
    module = engine.wrap(model, lambda params: make_optimizer(params, c.optim))
    problems = Problems()
    loader = SpeechLoader(c.data.train, c.data.loader, env.rank, env.world_size, problems)
    dev_loader = _dev_loader(c, env)
    step, epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
    if resume:
        engine.load(resume, state)
        loader.load_state_dict(load_rank_state(resume, env.rank)["loader"])
    else:
        torch.manual_seed(c.train.seed * 1000 + env.rank)  # dropout differs across ranks
    logs = _open_log(c, env, engine, step, epoch, resume)
    run = _Run(c, env, out, model, module, engine, loader, dev_loader, problems, logs, step, epoch,
               last_saved=step if resume else -1)
    run.counters.update(state.get("counters", {}))

    # ---- the loop ------------------------------------------------------------------------------------------
    empty_steps = 0
    with StopRequest() as stop:
        while not _run_over(c, run.step, run.epoch):
            loader.set_epoch(run.epoch)
            fresh = loader.consumed == 0  # resumed at an epoch's very end, the rest of it is rightly empty
            epoch_batches, epoch_tokens, finished = 0, 0.0, False
            examples = functools.partial(make_examples, prompts=model.prompts, seed=c.train.seed, epoch=run.epoch,
                                         random_prompt=c.data.prompt_choice == "random", problems=problems,
                                         only_task=model.train_task)
            for micro, data_s in _step_batches(stop_together(iter(loader), loader), c.optim.accum_steps, examples):
                run.interval.data_s += data_s
                epoch_batches += len(micro)  # the same on every rank (stop_together)
                step_tokens = env.all_reduce([_target_tokens(model, micro)])[0]
                epoch_tokens += step_tokens
                empty_steps = _count_empty_step(empty_steps, step_tokens, c.train.max_bad_steps, problems)
                bad = False
                for i, ex in enumerate(micro):
                    bad |= _forward_backward(run, ex, i == len(micro) - 1, step_tokens)
                t0 = time.perf_counter()
                skip, stopping = env.all_reduce([float(bad), float(stop.requested)], op="max")
                lr = c.optim.lr * lr_factor(run.step, c.schedule.kind, c.schedule.warmup_steps, c.train.max_steps,
                                            c.schedule.min_lr_ratio)
                applied, grad_norm = engine.step(lr, skip > 0)
                _count_step(run, applied, grad_norm)
                _sync(env.device)
                run.interval.optimizer_s += time.perf_counter() - t0
                run.interval.steps += 1

                if run.step % c.log.every_steps == 0 and run.interval.steps:
                    _log_interval(run)
                if c.train.val_every and run.step % c.train.val_every == 0 and run.step != run.last_saved:
                    _validate(run)
                if stopping > 0:
                    return _stop(run)
                if c.checkpoint.every_steps and run.step % c.checkpoint.every_steps == 0 and run.step != run.last_saved:
                    _save(run)
                finished = bool(c.train.max_steps) and run.step >= c.train.max_steps
                if finished:
                    break
            if finished:
                break
            # Checked here too: an epoch that yields no batch never reaches the end of a step. An epoch of batches
            # with nothing to learn is left to the empty-steps check above (it counts across epochs), unless the
            # run would end on it.
            stopping, resumed = env.all_reduce([float(stop.requested), float(not fresh)], op="max")
            ends_run = c.train.max_steps <= 0 and run.epoch + 1 >= c.train.max_epochs
            if epoch_tokens == 0 and not resumed and (epoch_batches == 0 or ends_run):
                raise TrainingError(
                    f"epoch {run.epoch} gave no usable batch (ranks end an epoch together, so one rank without "
                    f"data ends it for all); skipped samples: {_skipped_samples(problems, env) or 'none'}. "
                    "Check the data lists (osum data check): no model was written")
            run.epoch += 1
            loader.set_epoch(run.epoch)
            if not c.train.val_every and not stopping:
                _validate(run)
            if (c.checkpoint.at_epoch_end or stopping) and run.step != run.last_saved:
                _save(run)
            if stopping:
                run.logs.print("stop requested (signal): checkpoint written; rerun the same command to resume")
                run.logs.close()
                return out
    return _finish(run)


# ------------------------------------------------------------------------------------------------ the run

@dataclasses.dataclass
class _Run:
    """What the loop's helpers share: the run's parts, where it stands and what it has counted."""

    config: TrainConfig
    env: distributed.Env
    out: Path
    model: SpeechLLM | WhisperASR
    module: torch.nn.Module  # what the loop calls: the model as the engine wraps it
    engine: Engine
    loader: SpeechLoader
    dev_loader: SpeechLoader | None
    problems: Problems
    logs: TrainLog
    step: int
    epoch: int
    last_saved: int  # the step of the last checkpoint written or resumed from (-1: none)
    counters: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        "skipped_steps": 0, "failed_batches": 0, "consecutive_bad": 0, "samples": 0, "audio_seconds": 0.0})
    validation: dict[str, Any] | None = None  # the last dev record
    interval: "_Interval" = dataclasses.field(default_factory=lambda: _Interval())  # since the last train record


def make_optimizer(params: list[torch.nn.Parameter], optim) -> torch.optim.Optimizer:
    """AdamW over `params` (optim: OptimConfig), with no weight decay on biases and norms."""
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
    )


def forward(module: torch.nn.Module, ex: Examples, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's loss sum, target tokens and correct tokens on `ex`: the one place the trainer calls it."""
    return module(ex.features.to(device), ex.lengths.to(device), ex.prompts, ex.targets, ex.tasks, aux=ex.aux)


def _open_log(c: TrainConfig, env: distributed.Env, engine: Engine, step: int, epoch: int,
              resume: Path | None) -> TrainLog:
    logs = TrainLog(Path(c.out_dir), env.main, c.train.max_steps, c.log.tensorboard, c.log.progress, step)
    if logs.note:
        logs.print(logs.note)
    logs.print(f"osum train: {env.world_size} process(es) on {env.device.type}, engine {c.train.engine}, "
               f"{engine.trainable / 1e6:.2f}M trainable parameters"
               + (f", resumed from {resume} (step {step}, epoch {epoch})" if resume else ""))
    return logs


def _run_over(c: TrainConfig, step: int, epoch: int) -> bool:
    """Whether the run has done its steps (or, without max_steps, its epochs) before an epoch starts."""
    if c.train.max_steps > 0:
        return step >= c.train.max_steps  # resumed from the last step's checkpoint: only the final model is left
    return epoch >= c.train.max_epochs


def _step_batches(batches: Iterator[Batch], accum_steps: int, examples: Callable[[Batch], Examples | None],
                  ) -> Iterator[tuple[list[Examples | None], float]]:
    """Each optimizer step's micro-batches (fewer at the epoch's end; the same count on every rank, as
    stop_together ends the epoch together), with the seconds spent reading them. A batch none of whose
    samples can be trained on (counted by make_examples) is None."""
    while True:
        started = time.perf_counter()
        micro = [examples(batch) for batch in itertools.islice(batches, accum_steps)]
        if not micro:
            return
        yield micro, time.perf_counter() - started
        if len(micro) < accum_steps:
            return  # the epoch ended inside this step


def _target_tokens(model: SpeechLLM | WhisperASR, micro: list[Examples | None]) -> int:
    return sum(len(model.target_ids(t)) for ex in micro if ex is not None for t in ex.targets)


def _count_empty_step(empty_steps: int, step_tokens: float, limit: int, problems: Problems) -> int:
    """The count of consecutive steps with nothing to learn on any rank, this one included. A run where that goes
    on trains nothing at all (e.g. a task with no prompt in the prompt file skips every sample): it stops and
    says why."""
    empty_steps = empty_steps + 1 if step_tokens == 0 else 0
    if empty_steps >= limit:
        raise TrainingError(
            f"the last {empty_steps} steps had no usable sample on any rank (skipped so far: "
            f"{problems.summary()}); check that every task has a prompt in the prompt file and that "
            f"the samples carry the labels their tasks need (osum data check)")
    return empty_steps


def _forward_backward(run: _Run, ex: Examples | None, last: bool, step_tokens: float) -> bool:
    """One micro-batch's forward and backward (gradients all-reduce on the step's `last` one); True when its
    loss is not finite."""
    t1 = time.perf_counter()
    with run.engine.gradient_sync(last):
        with autocast(run.config.train.precision, run.env.device):
            loss, bad = _micro_batch_loss(run, ex, step_tokens)
        t2 = time.perf_counter()
        run.engine.backward(loss)
    _sync(run.env.device)
    run.interval.forward_s += t2 - t1
    run.interval.backward_s += time.perf_counter() - t2
    return bad


def _micro_batch_loss(run: _Run, ex: Examples | None, step_tokens: float) -> tuple[torch.Tensor, bool]:
    """The micro-batch's share of the step's loss (its summed token loss over the step's target tokens on all
    ranks), and whether it is not finite. A batch with no usable sample (None), or whose forward raises
    (counted), runs a zero-weight forward on a dummy input instead, keeping every rank's collectives in step."""
    if ex is None:
        return _zero_loss(run), False
    try:
        result = forward(run.module, ex, run.env.device)
        loss = result["loss_sum"] * run.env.world_size / max(step_tokens, 1.0)
        finite = bool(torch.isfinite(result["loss_sum"].detach()))
        run.interval.add(result, ex)
        return loss, not finite
    except Exception as err:  # one bad batch must not end the run
        run.counters["failed_batches"] += 1
        run.logs.print(f"warning: step {run.step}: batch {ex.keys[:3]}... failed and was skipped: "
                       f"{type(err).__name__}: {err}")
        return _zero_loss(run), False


def _zero_loss(run: _Run) -> torch.Tensor:
    """A loss of zero that still runs the forward (FSDP2 gathers) and reaches every trainable weight (DDP), on a
    one-second silent input with an empty target."""
    n_mels = run.config.data.loader.n_mels
    dummy = Examples(torch.zeros(1, 100, n_mels), torch.tensor([100]), [""], [""], ["<TRANSCRIBE>"], ["<dummy>"])
    return forward(run.module, dummy, run.env.device)["loss_sum"] * 0.0


def _count_step(run: _Run, applied: bool, grad_norm: float) -> None:
    """Count an optimizer step applied, or skipped (non-finite loss or gradients): `train.max_bad_steps`
    consecutive skipped steps end the run."""
    counters = run.counters
    if applied:
        run.step += 1
        counters["consecutive_bad"] = 0
        run.interval.grad_norm = grad_norm
        run.logs.advance()
        return
    counters["skipped_steps"] += 1
    counters["consecutive_bad"] += 1
    run.logs.print(f"warning: step {run.step}: non-finite loss or gradients (grad norm {grad_norm}); "
                   f"step skipped ({counters['skipped_steps']} so far)")
    if counters["consecutive_bad"] >= run.config.train.max_bad_steps:
        raise TrainingError(
            f"{counters['consecutive_bad']} consecutive steps had non-finite loss or gradients: "
            "the run diverged; lower optim.lr, raise schedule.warmup_steps, or use bf16 over fp16"
        )


def _log_interval(run: _Run) -> None:
    """One train record over the steps since the last (sums over every rank), then a fresh interval."""
    run.interval.count(run.env, run.counters)
    record = run.interval.record(run.env, run.step, run.epoch, run.engine.lr, run.counters)
    record["peak_memory_mb"] = peak_memory_mb(run.env.device)
    run.logs.write(record)
    run.interval = _Interval()


def _save(run: _Run) -> None:
    """A checkpoint at the run's step (every rank takes part), then the old ones pruned."""
    c, env = run.config, run.env
    run.interval.count(env, run.counters)
    model_state, optimizer_state = run.engine.full_states()
    validation = run.validation if run.validation and run.validation["step"] == run.step else None
    trainer_state = {"step": run.step, "epoch": run.loader.epoch, "counters": run.counters,
                     "world_size": env.world_size, **run.engine.trainer_state(), "validation": validation}
    path = save_checkpoint(run.out, run.step, env.rank, env.barrier, run.model, model_state, optimizer_state,
                           trainer_state, {"loader": run.loader.state_dict()}, run.engine.save_own_files)
    if env.main:
        prune_checkpoints(run.out, c.checkpoint.keep_last, c.checkpoint.keep_best, c.checkpoint.metric)
        run.logs.print(f"checkpoint {path}")
    env.barrier()
    run.last_saved = run.step


def _stop(run: _Run) -> Path:
    """SIGTERM / SIGINT at the end of a step: a checkpoint, and no final model (a rerun resumes)."""
    run.logs.print("stop requested (signal): writing a checkpoint; rerun the same command to resume")
    _save(run)
    run.logs.close()
    return run.out


def _finish(run: _Run) -> Path:
    """The end of the run: a last validation and checkpoint, the final model, the summary and data account."""
    env, counters = run.env, run.counters
    if run.step != run.last_saved:
        if run.dev_loader is not None and (run.validation is None or run.validation["step"] != run.step):
            _validate(run)
        _save(run)
    model_state, _ = run.engine.full_states()
    run.interval.count(env, counters)
    skipped = _skipped_samples(run.problems, env)
    final = run.out / MODEL_DIR
    if env.main:
        save_model(run.model, final, state=model_state)
        summary = {"steps": run.step, "epochs_completed": run.epoch, **counters, "skipped_samples": skipped,
                   "gradient_bucket_all_reduces": SYNCS.calls}
        summary["dropped_for_rank_balance"] = run.loader.stats.dropped_for_rank_balance
        (run.out / "summary.json").write_text(json.dumps(summary, indent=1))
        run.logs.print(f"done: {run.step} steps; final model in {final}; skipped steps {counters['skipped_steps']}, "
                       f"failed batches {counters['failed_batches']}")
        run.logs.print(f"data: {int(counters['samples'])} samples used ({counters['audio_seconds'] / 3600:.2f} h of "
                       f"audio), {sum(skipped.values())} skipped"
                       + "".join(f"; {reason} {n}" for reason, n in skipped.items()))
    env.barrier()
    run.logs.close()
    run.loader.close()
    if run.dev_loader is not None:
        run.dev_loader.close()
    return final


def _validate(run: _Run) -> None:
    """Dev loss and token accuracy over the dev lists; with data.dev_decode, the WER and label accuracy of that
    many decoded utterances. Logged, and kept for the checkpoint of the same step (keep_best reads it)."""
    if run.dev_loader is None:
        return
    c, env, model, loader = run.config, run.env, run.model, run.dev_loader
    run.module.eval()
    loader.load_state_dict({"epoch": 0, "batches": 0, "world_size": env.world_size})
    problems = Problems(warn=False)
    sums = [0.0, 0.0, 0.0]  # loss_sum, tokens, correct
    decoded: list[tuple[str, str, str]] = []  # (reference, output, task)
    quota = math.ceil(c.data.dev_decode / env.world_size)
    batches = stop_together(iter(loader), loader) if run.engine.collective_forward else iter(loader)
    with torch.no_grad(), autocast(c.train.precision, env.device):
        for batch in batches:
            ex = make_examples(batch, model.prompts, c.train.seed, 0, False, problems, model.train_task)
            if ex is None:
                continue
            ex = dataclasses.replace(ex, features=ex.features.to(env.device), lengths=ex.lengths.to(env.device))
            result = forward(run.module, ex, env.device)
            sums = [total + float(result[key]) for total, key in zip(sums, ("loss_sum", "tokens", "correct"))]
            take = min(ex.size, quota - len(decoded))
            if take > 0:
                outputs = model.generate(ex.features[:take], ex.lengths[:take], ex.prompts[:take])
                decoded += zip(ex.targets[:take], outputs, ex.tasks[:take])
    loss_sum, tokens, correct = env.all_reduce(sums)
    errors, words, right, labels, utterances = env.all_reduce(_decode_counts(decoded))
    run.module.train()
    run.validation = {
        "kind": "dev", "step": run.step, "epoch": run.epoch,
        "loss": loss_sum / max(tokens, 1), "accuracy": correct / max(tokens, 1), "tokens": int(tokens),
        "wer": errors / words if words else None, "label_accuracy": right / labels if labels else None,
        "decoded": int(utterances),
    }
    run.logs.write(run.validation)


def _decode_counts(decoded: list[tuple[str, str, str]]) -> list[float]:
    """[word errors, reference words, labels right, labels, utterances] of (reference, output, task) triples:
    each parsed by its task, scored as `osum score` scores (osum.infer.metrics), without a text normalizer."""
    texts, labels = [], collections.defaultdict(list)
    for reference, output, task in decoded:
        want, got = parse_output(reference, task), parse_output(output, task)
        if want["text"]:
            texts.append((want["text"], got["text"] or ""))
        for field in label_fields(task):
            if want[field] is not None:
                labels[field].append((want[field], got[field]))
    words = metrics.error_rates(texts)["wer"]
    scores = [metrics.label_scores(pairs, LABELS[field]) for field, pairs in labels.items()]
    right = sum(round(s.accuracy * s.total) for s in scores)  # accuracy = right / total
    return [float(n) for n in (words["errors"], words["reference_tokens"], right, sum(s.total for s in scores),
                                len(decoded))]


def _skipped_samples(problems: Problems, env: distributed.Env) -> dict[str, int]:
    """Samples skipped on all ranks, by reason, most first (every rank calls it: it all-reduces)."""
    counts = env.all_reduce([float(problems.counts[reason]) for reason in REASONS])
    return {reason: int(n) for n, reason in sorted(zip(counts, REASONS), key=lambda nr: -nr[0]) if n}


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
