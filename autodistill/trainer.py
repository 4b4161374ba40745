"""The training loop: one loop for fine-tuning and for every KD pipeline.

What is optimised is a :class:`StepObjective`; progress, logging, early stopping and reporting are
callbacks. The loop evaluates on validation ``evals_per_epoch`` times an epoch and keeps the best
checkpoint.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .callbacks import Callback, EarlyStoppingCallback, ProgressCallback, TrainerState
from .training import (
    EncodedSplit, build_optimizer, collate, evaluate, model_inputs, set_seed, shuffled_batches, to_device,
)


@dataclass
class TrainArgs:
    learning_rate: float
    epochs: float
    batch_size: int
    metric: str
    task_type: str
    eval_batch_size: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    evals_per_epoch: int = 1
    early_stopping_patience: int | None = None


class StepObjective:
    """What the trainer minimises. The default is supervised fine-tuning (CE, or MSE for regression)."""

    def __init__(self, train: EncodedSplit, task_type: str):
        self.train = train
        self.task_type = task_type

    def trainable_modules(self) -> list[nn.Module]:
        """Extra modules trained with the model (critics, projections)."""
        return []

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None: ...

    def train_split(self) -> EncodedSplit:
        return self.train

    def batches(self, batch_size: int, rng: random.Random) -> list[list[int]]:
        return shuffled_batches(len(self.train_split()), batch_size, rng)

    def steps_per_epoch(self, batch_size: int) -> int:
        """How many batches ``batches`` yields per epoch (sizes the schedule)."""
        return math.ceil(len(self.train_split()) / batch_size)

    def before_step(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState) -> None:
        """Hook for look-ahead meta updates (RW-KD) before the model's own step."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState
             ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(**model_inputs(batch)).logits
        return supervised_loss(logits, batch["labels"], self.task_type).mean(), {}

    def stats(self) -> dict[str, Any]:
        return {}


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """Per-sample CE, or squared error for regression."""
    if task_type == "regression":
        return (logits.squeeze(-1) - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


class Trainer:
    def __init__(self, model: nn.Module, objective: StepObjective, validation: EncodedSplit, args: TrainArgs,
                 pad_id: int, device: torch.device, callbacks: Sequence[Callback] = (), desc: str = "train"):
        self.model = model.to(device)
        self.objective = objective
        self.validation = validation
        self.args = args
        self.pad_id = pad_id
        self.device = device
        self.callbacks: list[Callback] = [ProgressCallback(desc), *callbacks]
        if args.early_stopping_patience:
            self.callbacks.append(EarlyStoppingCallback(args.early_stopping_patience))
        self.state = TrainerState()
        self.best_state_dict: dict[str, torch.Tensor] | None = None
        self.eval_seconds = 0.0

    def _emit(self, hook: str, **kw: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self.state, **kw)

    def train(self) -> dict[str, Any]:
        args, state = self.args, self.state
        set_seed(args.seed)
        rng = random.Random(args.seed)
        for module in self.objective.trainable_modules():
            module.to(self.device)
        state.total_steps = max(1, math.ceil(self.objective.steps_per_epoch(args.batch_size) * args.epochs))
        optimizer, scheduler = build_optimizer(
            [self.model, *self.objective.trainable_modules()], args.learning_rate, args.weight_decay,
            args.warmup_ratio, state.total_steps)
        params = [p for m in [self.model, *self.objective.trainable_modules()] for p in m.parameters()]
        self._emit("on_train_begin")
        started = time.perf_counter()
        examples_seen = 0
        epoch = 0
        while state.global_step < state.total_steps and not state.should_stop:
            self.objective.on_epoch_start(epoch, math.ceil(args.epochs))
            split = self.objective.train_split()
            batches = self.objective.batches(args.batch_size, rng)
            eval_points = {round(len(batches) * (k + 1) / args.evals_per_epoch) - 1
                           for k in range(args.evals_per_epoch)}
            for b, indices in enumerate(batches):
                if state.global_step >= state.total_steps or state.should_stop:
                    break
                self.model.train()
                batch = to_device(collate(split, indices, self.pad_id), self.device)
                self.objective.before_step(self.model, batch, state)
                loss, logs = self.objective.loss(self.model, batch, state)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                state.global_step += 1
                examples_seen += len(indices)
                state.epoch = epoch + (b + 1) / len(batches)
                self._emit("on_step_end", loss=float(loss.detach()), logs=logs)
                if b in eval_points or state.global_step >= state.total_steps:
                    self._evaluate()
            epoch += 1
        train_seconds = time.perf_counter() - started
        if self.best_state_dict is not None:
            self.model.load_state_dict(self.best_state_dict)
        self._emit("on_train_end")
        return {
            "best_score": state.best_score, "best_step": state.best_step, "steps": state.global_step,
            "epochs": state.epoch, "train_seconds": train_seconds,
            "eval_seconds": self.eval_seconds,
            "train_examples_per_second": examples_seen / max(train_seconds - self.eval_seconds, 1e-9),
            "history": state.history, **self.objective.stats(),
        }

    def _evaluate(self) -> None:
        state, args = self.state, self.args
        started = time.perf_counter()
        score = evaluate(self.model, self.validation, args.metric, args.task_type, args.eval_batch_size,
                         self.pad_id, self.device)
        improved = state.best_score is None or score > state.best_score
        if improved:
            state.best_score, state.best_step = score, state.global_step
            state.evals_without_improvement = 0
            self.best_state_dict = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            state.evals_without_improvement += 1
        metrics = {args.metric: score, f"best_{args.metric}": state.best_score}
        state.history.append({"step": state.global_step, "epoch": round(state.epoch, 4), **metrics})
        self.eval_seconds += time.perf_counter() - started
        self._emit("on_evaluate", metrics=metrics)
