"""The training step under autocast, as on a GPU with ``optim.mixed_precision`` auto (bf16 on compute
capability >= 8, fp16 on 7.x). There is no GPU here, so the step runs under CPU bf16 autocast, which keeps
the same low-precision logits (CPU autocast is stricter: it does not run log_softmax in fp32)."""
from __future__ import annotations

import math

import pytest
import torch

import autodistill.trainer as trainer_module
from autodistill.config import parse_config
from autodistill.distill import run_distillation
from tests.test_kd_space_e2e import tiny_config, tiny_data  # noqa: F401 - fixture

KD_CASES = {
    "kl_cached_logits": {},
    "mse_online_mi_alpha": {"loss": {"prediction": {"type": "mse"},
                                     "intermediate": {"objective": "mi_alpha", "alpha": 0.5, "mapping": "skip"}},
                            "optim": {"teacher_outputs": "online"}},
    "mixup_hidden_mse": {"mixup": {"enabled": True}, "loss": {"intermediate": {"objective": "mse", "mapping": "last"}}},
    "dynamic_selection_adaptation": {"dynamic": {"selection": "entropy", "selection_ratio": 0.5,
                                                 "objective_adaptation": True}},
    "rw_kd": {"weighting": {"strategy": "rw_kd"}},
    "annealing": {"loss": {"prediction": {"type": "annealing"}}},
    "infonce_transformer_critic_emd": {"loss": {"intermediate": {"objective": "infonce", "critic": "transformer",
                                                                 "mapping": "emd"}}},
    "rail_l_random": {"loss": {"intermediate": {"objective": "rail_l", "mapping": "random"}}},
}


@pytest.mark.parametrize("case", sorted(KD_CASES))
def test_a_kd_step_runs_under_autocast(case, tiny_backbone, tiny_data, monkeypatch):  # noqa: F811
    entered = []

    def cpu_bf16(setting, device):
        def autocast():
            entered.append(True)
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return autocast, torch.amp.GradScaler("cpu", enabled=False)

    monkeypatch.setattr(trainer_module, "mixed_precision", cpu_bf16)
    result = run_distillation(parse_config(tiny_config(tiny_backbone, tiny_data, KD_CASES[case])))
    assert entered and math.isfinite(result.metrics["student_score"])


def _one_step(grad_value: float) -> tuple[bool, int, torch.Tensor]:
    """One float16-style step (an enabled scaler) of a one-weight model whose gradient is ``grad_value``:
    (stepped, the schedule's step count, the weight)."""
    from autodistill.trainer import build_optimizer, optimizer_step

    model = torch.nn.Linear(1, 1, bias=False)
    optimizer, scheduler = build_optimizer([model], 0.1, 0.0, 0.0, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    before = model.weight.detach().clone()
    loss = model(torch.ones(1, 1)).sum() * grad_value
    scaler.scale(loss).backward()
    stepped = optimizer_step(optimizer, scheduler, scaler, list(model.parameters()), max_grad_norm=1.0)
    return stepped, scheduler.last_epoch, model.weight.detach() - before


def test_the_schedule_does_not_advance_on_a_step_the_scaler_skipped():
    stepped, schedule_steps, moved = _one_step(float("inf"))
    assert not stepped and schedule_steps == 0 and torch.all(moved == 0)
    stepped, schedule_steps, moved = _one_step(1.0)
    assert stepped and schedule_steps == 1 and torch.all(moved != 0)


def test_a_run_records_the_steps_its_loss_scaler_skipped(tiny_backbone, tiny_data, monkeypatch):  # noqa: F811
    """Under float16 the scaler skips a step whose gradients overflowed: the run says how many of its steps
    were skipped (they count towards its steps and caps, as in HF's Trainer). Every third step's gradients
    are made infinite here, and a real (CPU) scaler skips them."""
    import contextlib
    real_step, calls = trainer_module.optimizer_step, []

    def overflow_every_third(optimizer, scheduler, scaler, params, max_grad_norm):
        calls.append(1)
        if len(calls) % 3 == 0:
            params[0].grad.fill_(float("inf"))
        return real_step(optimizer, scheduler, scaler, params, max_grad_norm)

    monkeypatch.setattr(trainer_module, "mixed_precision",
                        lambda setting, device: (contextlib.nullcontext, torch.amp.GradScaler("cpu")))
    monkeypatch.setattr(trainer_module, "optimizer_step", overflow_every_third)
    result = run_distillation(parse_config(tiny_config(tiny_backbone, tiny_data, {})))
    steps = result.metrics["steps"]   # the student's steps are the last calls (a teacher may have trained first)
    poisoned = sum(call % 3 == 0 for call in range(len(calls) - steps + 1, len(calls) + 1))
    assert steps >= 3 and result.metrics["skipped_steps"] == poisoned >= 1
    assert math.isfinite(result.metrics["student_score"])
