"""The training loop: one loop for fine-tuning and for every KD pipeline, with its optimiser and seeding.

What is optimised is a :class:`StepObjective`; progress, logging, early stopping and reporting are
callbacks. The loop follows the :class:`~autodistill.config.TrainingRule`: it evaluates on the dev
slice (held out of train, never the scored validation split) every epoch or every
``max_steps_between_evals`` steps, stops on a plateau (``early_stopping_patience``), at ``max_steps`` or
at the ``epochs`` cap, and restores the best checkpoint. The learning curve (dev score, step, wall
time per evaluation) is returned as ``history``.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_linear_schedule_with_warmup

from .callbacks import Callback, EarlyStoppingCallback, ProgressCallback, TrainerControl, TrainerState
from .checkpoints import Checkpoint, Position, load_checkpoint, save_checkpoint
from .config import TrainingRule
from .batching import EncodedSplit, collate, model_inputs, shuffled_batches, to_device
from .evaluation import evaluate, learning_start_score, trivial_score


# what a run records about its training (metrics.json, the run record): budget used and the learning curve
TRAINING_KEYS = ("steps", "epochs", "train_seconds", "stop_reason", "best_step", "best_score", "dev_examples",
                 "history")


@dataclass
class TrainArgs:
    learning_rate: float
    epochs: float                       # a cap; early stopping usually ends training sooner
    batch_size: int
    metric: str
    task_type: str
    eval_batch_size: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    evals_per_epoch: int = 1
    max_steps_between_evals: int | None = None
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    early_stopping_start: str = "above_trivial"     # config.TrainingRule's default
    max_steps: int | None = None
    evaluate_per: str = "epoch"         # optim.evaluate_per: "epoch" or "original_pass"
    mixed_precision: str = "off"        # optim.mixed_precision (resolved per device by resources.amp_dtype)

    @classmethod
    def from_rule(cls, rule: TrainingRule, **kw: Any) -> "TrainArgs":
        """The training rule's fields (patience, step cap, evaluation cadence) plus the rest in ``kw``."""
        return cls(evals_per_epoch=rule.evals_per_epoch, max_steps_between_evals=rule.max_steps_between_evals,
                   early_stopping_patience=rule.early_stopping_patience,
                   early_stopping_min_delta=rule.early_stopping_min_delta,
                   early_stopping_start=rule.early_stopping_start, max_steps=rule.max_steps, **kw)

    def total_steps(self, steps_per_epoch: int) -> int:
        by_epochs = max(1, math.ceil(steps_per_epoch * self.epochs))
        return min(by_epochs, self.max_steps) if self.max_steps else by_epochs

    def evals_in_epoch(self, steps_in_epoch: int, steps_per_original_pass: int | None = None) -> int:
        """Evaluations in an epoch of ``steps_in_epoch`` steps: ``evals_per_epoch`` per epoch, or per pass over
        the original rows (``steps_per_original_pass`` steps) under ``evaluate_per`` "original_pass"; at least
        one every ``max_steps_between_evals`` steps."""
        by_steps = math.ceil(steps_in_epoch / self.max_steps_between_evals) if self.max_steps_between_evals else 1
        per_epoch = self.evals_per_epoch
        if self.evaluate_per == "original_pass" and steps_per_original_pass:
            per_epoch = round(self.evals_per_epoch * steps_in_epoch / steps_per_original_pass)
        return max(1, min(steps_in_epoch, max(per_epoch, by_steps)))


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

    def steps_per_original_pass(self, batch_size: int) -> int:
        """The steps of one pass over the original rows (an epoch, unless the objective adds rows)."""
        return self.steps_per_epoch(batch_size)

    def before_step(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState) -> None:
        """Hook for look-ahead meta updates (RW-KD) before the model's own step."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState
             ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(**model_inputs(batch)).logits
        return supervised_loss(logits, batch["labels"], self.task_type).mean(), {}

    def stats(self) -> dict[str, Any]:
        return {}


def build_optimizer(named_modules: Sequence[nn.Module], learning_rate: float, weight_decay: float, warmup_ratio: float, total_steps: int):
    """AdamW (no decay on biases and LayerNorm) with linear warm-up and decay."""
    decay, no_decay = [], []
    for module in named_modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """Per-sample CE, or squared error for regression."""
    if task_type == "regression":
        return (logits.squeeze(-1) - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


def training_dtype(setting: str, device: torch.device) -> str | None:
    """The autocast dtype ``optim.mixed_precision=setting`` means on ``device`` (None: full precision)."""
    from .resources import amp_dtype
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    # native only: with emulation (the default) a pre-Ampere GPU "supports" bf16 at a fraction of the speed
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return amp_dtype(setting, device.type, capability, bf16)


def mixed_precision(setting: str, device: torch.device):
    """(autocast context factory, gradient scaler) for ``setting`` on ``device``; a disabled pair on CPU
    or with ``off``. float16 needs the scaler (its gradients underflow), bfloat16 does not."""
    import contextlib

    dtype = training_dtype(setting, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    if dtype is None:
        return contextlib.nullcontext, scaler
    return (lambda: torch.autocast(device.type, dtype=getattr(torch, dtype))), scaler


def optimizer_step(optimizer, scheduler, scaler: torch.amp.GradScaler, params, max_grad_norm: float) -> bool:
    """Clip, step and update the loss scale; the learning-rate schedule advances only when the optimizer
    stepped (under float16 the scaler skips a step whose gradients overflowed, and lowers its scale).
    Returns whether it stepped."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    stepped = scale_before is None or scaler.get_scale() >= scale_before
    if stepped:
        scheduler.step()
    return stepped


class Trainer:
    """Trains ``model`` on ``objective``; ``dev`` is what it evaluates on to stop and to pick the best
    checkpoint (the dev slice of train: the caller scores the scored validation split afterwards)."""

    def __init__(self, model: nn.Module, objective: StepObjective, dev: EncodedSplit, args: TrainArgs,
                 pad_id: int, device: torch.device, callbacks: Sequence[Callback] = (), desc: str = "train",
                 checkpoint: str | Path | None = None):
        """``checkpoint``: a file written after every evaluation and resumed from when present
        (:mod:`autodistill.checkpoints`); the caller removes it once the run's result is kept. Plain
        fine-tuning only: a KD objective's own state (augmented pools, meta-learners, selection) is not in it."""
        if checkpoint and type(objective) is not StepObjective:
            raise ValueError(f"a checkpoint resumes plain fine-tuning only, not {type(objective).__name__}")
        self.model = model.to(device)
        self.objective = objective
        self.dev = dev
        self.args = args
        self.pad_id = pad_id
        self.device = device
        self.callbacks: list[Callback] = [ProgressCallback(desc), *callbacks]
        self.trivial_dev_score = trivial_score(dev, args.metric, args.task_type)
        self.start_dev_score = learning_start_score(dev, args.metric, args.task_type)
        if args.early_stopping_patience:
            start_above = self.start_dev_score if args.early_stopping_start == "above_trivial" else None
            self.callbacks.append(EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_min_delta,
                                                        start_above))
        self.state = TrainerState()
        self.control = TrainerControl()
        self.best_state_dict: dict[str, torch.Tensor] | None = None
        self.eval_seconds = 0.0
        self._started = 0.0
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.checkpoint_seconds = 0.0
        self._save_failed = False

    def _emit(self, hook: str, **kw: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self.state, control=self.control, **kw)

    def train(self) -> dict[str, Any]:
        args, state, control = self.args, self.state, self.control
        set_seed(args.seed)
        rng = random.Random(args.seed)
        for module in self.objective.trainable_modules():
            module.to(self.device)
        state.total_steps = args.total_steps(self.objective.steps_per_epoch(args.batch_size))
        optimizer, scheduler = build_optimizer(
            [self.model, *self.objective.trainable_modules()], args.learning_rate, args.weight_decay,
            args.warmup_ratio, state.total_steps)
        params = [p for m in [self.model, *self.objective.trainable_modules()] for p in m.parameters()]
        autocast, scaler = mixed_precision(self.args.mixed_precision, self.device)
        resumed = self._resume(optimizer, scheduler, scaler) if self.checkpoint else None
        self._started = time.perf_counter() - state.seconds
        self._emit("on_train_begin")
        examples_seen = resumed.examples_seen if resumed else 0
        epoch = resumed.epoch if resumed else 0
        while state.global_step < state.total_steps and not control.should_training_stop:
            self.objective.on_epoch_start(epoch, math.ceil(args.epochs))
            split = self.objective.train_split()
            resuming_this_epoch = resumed is not None and resumed.epoch == epoch
            if resuming_this_epoch:
                rng.setstate(resumed.epoch_rng)   # the epoch's batches, drawn again in the same order
            epoch_rng = rng.getstate()
            batches = self.objective.batches(args.batch_size, rng)
            evals = args.evals_in_epoch(len(batches), self.objective.steps_per_original_pass(args.batch_size))
            eval_points = {round(len(batches) * (k + 1) / evals) - 1 for k in range(evals)}
            for b, indices in enumerate(batches):
                if resuming_this_epoch and b < resumed.next_batch:
                    continue
                if state.global_step >= state.total_steps or control.should_training_stop:
                    break
                self.model.train()
                batch = to_device(collate(split, indices, self.pad_id), self.device)
                self.objective.before_step(self.model, batch, state)
                with autocast():
                    loss, logs = self.objective.loss(self.model, batch, state)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if not optimizer_step(optimizer, scheduler, scaler, params, args.max_grad_norm):
                    state.skipped_steps += 1
                state.global_step += 1
                examples_seen += len(indices)
                state.epoch = epoch + (b + 1) / len(batches)
                state.seconds = time.perf_counter() - self._started
                self._emit("on_step_end", loss=float(loss.detach()), logs=logs)
                if b in eval_points or state.global_step >= state.total_steps:
                    self._evaluate()
                    if self.checkpoint:
                        self._save(Position(epoch, b + 1, epoch_rng, examples_seen), optimizer, scheduler, scaler)
            epoch += 1
        train_seconds = time.perf_counter() - self._started
        step_seconds = train_seconds - self.eval_seconds - self.checkpoint_seconds
        state.stop_reason = control.stop_reason or self._cap_reached()
        if self.best_state_dict is not None:
            self.model.load_state_dict(self.best_state_dict)
        self._emit("on_train_end")
        return {
            "best_score": state.best_score, "best_step": state.best_step, "steps": state.global_step,
            "epochs": state.epoch, "skipped_steps": state.skipped_steps, "train_seconds": train_seconds,
            "stop_reason": state.stop_reason,
            "eval_seconds": self.eval_seconds, "dev_examples": len(self.dev),
            "dev_trivial_score": self.trivial_dev_score, "dev_start_score": self.start_dev_score,
            "checkpoint_seconds": self.checkpoint_seconds,
            "train_examples_per_second": examples_seen / max(step_seconds, 1e-9),
            "history": state.history, **self.objective.stats(),
        }

    def _fingerprint(self, scaler: torch.amp.GradScaler) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed: the schedule, the data, the seed, and where and
        in what precision it trained (a loss scaler's state, a device's random state, exist on one only)."""
        return {"total_steps": self.state.total_steps, "train_rows": len(self.objective.train_split()),
                "dev_rows": len(self.dev), "seed": self.args.seed, "device": self.device.type,
                "mixed_precision": self.args.mixed_precision, "loss_scaling": scaler.is_enabled()}

    def _save(self, position: Position, optimizer, scheduler, scaler) -> None:
        """Write the checkpoint; one that cannot be written (a full disk) is said once, and training goes on
        (the previous checkpoint stays valid). Its time is kept apart from the steps' (``checkpoint_seconds``)."""
        started = time.perf_counter()
        state = self.state
        try:
            save_checkpoint(self.checkpoint, Checkpoint(
                position=position, state=dataclasses.asdict(state), eval_seconds=self.eval_seconds,
                checkpoint_seconds=self.checkpoint_seconds,
                model=self.model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(), best=None if state.best_step == state.global_step else self.best_state_dict,
                torch_rng=torch.get_rng_state(),
                cuda_rng=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                fingerprint=self._fingerprint(scaler)))
        except OSError as err:
            if not self._save_failed:
                warnings.warn(f"{self.checkpoint}: cannot write the checkpoint ({err}); training goes on without "
                              "it", stacklevel=2)
            self._save_failed = True
        self.checkpoint_seconds += time.perf_counter() - started

    def _resume(self, optimizer, scheduler, scaler) -> Position | None:
        """Load the checkpoint, if one was written for this run: weights, optimiser, schedule, scaler, state
        (the early-stopping clock replayed from its curve) and random state. Returns where to continue."""
        saved = load_checkpoint(self.checkpoint, self._fingerprint(scaler))
        if saved is None:
            return None
        self.model.load_state_dict(saved.model)
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        scaler.load_state_dict(saved.scaler)
        for name, value in saved.state.items():
            setattr(self.state, name, value)
        self.eval_seconds, self.checkpoint_seconds = saved.eval_seconds, saved.checkpoint_seconds
        self.best_state_dict = saved.best if saved.best is not None else \
            {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        for cb in self.callbacks:
            if isinstance(cb, EarlyStoppingCallback):
                cb.replay(self.state.history, self.control)
        torch.set_rng_state(saved.torch_rng)
        if saved.cuda_rng is not None:
            torch.cuda.set_rng_state(saved.cuda_rng, self.device)
        return saved.position

    def _cap_reached(self) -> str:
        by_epochs = math.ceil(self.objective.steps_per_epoch(self.args.batch_size) * self.args.epochs)
        return "max_steps" if self.args.max_steps and self.args.max_steps < by_epochs else "max_epochs"

    def _evaluate(self) -> None:
        state, args = self.state, self.args
        started = time.perf_counter()
        score = evaluate(self.model, self.dev, args.metric, args.task_type, args.eval_batch_size,
                         self.pad_id, self.device)
        if state.best_score is None or score > state.best_score:
            state.best_score, state.best_step = score, state.global_step
            self.best_state_dict = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.eval_seconds += time.perf_counter() - started
        state.seconds = time.perf_counter() - self._started
        state.history.append({"step": state.global_step, "epoch": round(state.epoch, 4),
                              "seconds": round(state.seconds, 2), "score": score})
        self._emit("on_evaluate", metrics={args.metric: score, f"best_{args.metric}": state.best_score})
