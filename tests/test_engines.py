"""The engine interface the training loop calls (one process, CPU), and the dev decoding counts."""

from __future__ import annotations

import math

import pytest
import torch

from osum.train.config import OptimConfig, TrainSection
from osum.train.distributed import Env
from osum.train.engines import ENGINES, DDPEngine, DeepSpeedEngine, FSDP2Engine, make_engine
from osum.train.trainer import _decode_counts

ONE_PROCESS = Env(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def linear_engine(engine: str = "ddp", clip: float = 0.0, precision: str = "fp32"):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    chosen = make_engine(TrainSection(engine=engine, precision=precision), OptimConfig(clip_grad_norm=clip),
                         ONE_PROCESS)
    module = chosen.wrap(model, lambda params: torch.optim.SGD(params, lr=1.0))
    return chosen, module, model


def test_the_engine_table_names_every_configurable_engine():
    assert ENGINES == {"ddp": DDPEngine, "fsdp2": FSDP2Engine, "deepspeed": DeepSpeedEngine}
    engine, module, model = linear_engine("fsdp2")
    assert module is model and isinstance(engine, FSDP2Engine)  # one process runs the plain model
    assert engine.trainable == 3


def test_step_clips_applies_at_the_given_lr_and_reports_the_norm_before_clipping():
    engine, module, model = linear_engine(clip=1.0)
    before = model.weight.detach().clone()
    with engine.gradient_sync(True):
        engine.backward(module(torch.tensor([[3.0, 0.0, 4.0]])).sum())  # gradient (3, 0, 4): norm 5
    applied, grad_norm = engine.step(lr=0.5, skip=False)
    assert applied and grad_norm == pytest.approx(5.0)
    assert torch.allclose(model.weight, before - 0.5 * torch.tensor([[0.6, 0.0, 0.8]]))  # clipped to norm 1
    assert engine.lr == 0.5 and model.weight.grad is None


@pytest.mark.parametrize("poison", ["skip", "nan"])
def test_a_skipped_or_non_finite_step_leaves_the_weights_and_clears_the_gradients(poison):
    engine, module, model = linear_engine()
    before = model.weight.detach().clone()
    scale = float("nan") if poison == "nan" else 1.0
    engine.backward(module(torch.tensor([[1.0, 2.0, 3.0]])).sum() * scale)
    applied, grad_norm = engine.step(lr=0.5, skip=poison == "skip")
    assert not applied and math.isfinite(grad_norm) == (poison == "skip")
    assert torch.equal(model.weight, before) and model.weight.grad is None


def test_full_states_and_load_round_trip_the_optimizer_by_parameter_name(tmp_path):
    from osum.train.state import flatten_optimizer_state, save_safetensors, OPTIMIZER_FILE

    engine, module, model = linear_engine()
    engine.optimizer = torch.optim.Adam(engine.params, lr=0.1)  # a state with tensors to keep
    engine.backward(module(torch.ones(1, 3)).sum())
    engine.step(lr=0.1, skip=False)
    model_state, optimizer_state = engine.full_states()
    assert set(model_state) == {"weight"} and set(optimizer_state["state"]) == {"weight"}
    tensors, meta = flatten_optimizer_state(optimizer_state)
    save_safetensors(tensors, tmp_path / OPTIMIZER_FILE)
    other, _, _ = linear_engine()
    other.optimizer = torch.optim.Adam(other.params, lr=0.1)
    other.load(tmp_path, {"optimizer": meta, **other.trainer_state()})
    loaded = other.optimizer.state_dict()["state"][0]
    assert torch.equal(loaded["exp_avg"], engine.optimizer.state_dict()["state"][0]["exp_avg"])


def test_nothing_trainable_is_an_error_that_says_where_to_look():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="model.trainable and model.lora"):
        make_engine(TrainSection(), OptimConfig(), ONE_PROCESS).wrap(model, torch.optim.SGD)


def test_dev_decode_counts_word_errors_and_labels_as_osum_score_does():
    decoded = [  # (reference, output, task)
        ("HELLO WORLD <MALE>", "HELLO WORD <MALE>", "<TRANSCRIBE> <GENDER>"),  # 1 of 2 words wrong, label right
        ("YES <FEMALE>", "YES NO <MALE>", "<TRANSCRIBE> <GENDER>"),  # 1 insertion, label wrong
        ("<ADULT> <MALE>", "<OLD> <MALE>", "<AGE> <GENDER>"),  # no transcript; 1 of 2 labels right
    ]
    assert _decode_counts(decoded) == [2.0, 3.0, 2.0, 4.0, 3.0]  # errors, words, labels right, labels, utterances
    assert _decode_counts([]) == [0.0] * 5
