"""Trainer callbacks (Hugging Face Trainer style): progress, logging, early stopping, reporting.

Every hook receives the :class:`TrainerState` (what happened: steps, scores, the learning curve) and,
as ``control``, the :class:`TrainerControl` (what the loop should do next); a callback changes the
loop only through ``control``, or ends the run by raising an error (:class:`MemoryLimitCallback`)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm


@dataclass
class TrainerState:
    epoch: float = 0.0
    global_step: int = 0
    skipped_steps: int = 0                # of global_step: float16 steps the loss scaler skipped (an overflow)
    total_steps: int = 0
    best_score: float | None = None
    best_step: int | None = None
    seconds: float = 0.0                  # wall time since training began
    history: list[dict[str, Any]] = field(default_factory=list)   # the learning curve: one row per evaluation
    stop_reason: str | None = None        # "plateau", "max_steps" or "max_epochs"


@dataclass
class TrainerControl:
    """Requests from callbacks to the loop."""

    should_training_stop: bool = False
    stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        self.should_training_stop = True
        self.stop_reason = reason


class Callback:
    """Override any hook; all receive the trainer state (and the loop's ``control`` as a keyword)."""

    def on_train_begin(self, state: TrainerState, **kw: Any) -> None: ...
    def on_step_end(self, state: TrainerState, loss: float, **kw: Any) -> None: ...
    def on_evaluate(self, state: TrainerState, metrics: dict[str, float], **kw: Any) -> None: ...
    def on_train_end(self, state: TrainerState, **kw: Any) -> None: ...


def progress_enabled() -> bool:
    import os
    return sys.stderr.isatty() and not os.environ.get("CI")


class ProgressCallback(Callback):
    """A tqdm bar over optimisation steps; silent when not on a TTY or in CI."""

    def __init__(self, desc: str = "train"):
        self.desc = desc
        self.bar: tqdm | None = None

    def on_train_begin(self, state: TrainerState, **kw: Any) -> None:
        self.bar = tqdm(total=state.total_steps, initial=state.global_step, desc=self.desc,
                        disable=not progress_enabled(), leave=False)

    def on_step_end(self, state: TrainerState, loss: float, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_evaluate(self, state: TrainerState, metrics: dict[str, float], **kw: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(metrics, refresh=True)

    def on_train_end(self, state: TrainerState, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class EarlyStoppingCallback(Callback):
    """Stop after ``patience`` evaluations in a row that did not beat the best by more than ``min_delta``,
    counted only once a score has beaten ``start_above`` (when given: the best constant prediction's
    dev score, or chance for a correlation; a model that has not left it is at the start of its curve, not
    on a plateau)."""

    def __init__(self, patience: int, min_delta: float = 0.0, start_above: float | None = None):
        self.patience = patience
        self.min_delta = min_delta
        self.start_above = start_above
        self.started = start_above is None
        self.best: float | None = None
        self.evals_without_improvement = 0

    def on_evaluate(self, state: TrainerState, metrics: dict[str, float], control: TrainerControl | None = None,
                    **kw: Any) -> None:
        self._observe(state.history[-1]["score"], control)

    def replay(self, history: list[dict[str, Any]], control: TrainerControl) -> None:
        """The clock of a resumed run: as if it had watched the run's curve so far."""
        for row in history:
            self._observe(row["score"], control)

    def _observe(self, score: float, control: TrainerControl | None) -> None:
        self.started = self.started or score > self.start_above
        if self.best is None or score > self.best + self.min_delta:
            self.best, self.evals_without_improvement = score, 0
        elif self.started:
            self.evals_without_improvement += 1
        if self.evals_without_improvement >= self.patience and control is not None:
            control.stop("plateau")


def replay_stop(scores: Sequence[float], patience: int, min_delta: float = 0.0,
                start_above: float | None = None) -> int | None:
    """The index of the evaluation at which :class:`EarlyStoppingCallback` stops a recorded dev curve (None:
    it never does), e.g. to ask what another patience or start would have done with the same run."""
    callback, control = EarlyStoppingCallback(patience, min_delta, start_above), TrainerControl()
    for i, score in enumerate(scores):
        callback._observe(score, control)
        if control.should_training_stop:
            return i
    return None


class EventLogCallback(Callback):
    """One flushed line per evaluation (``[ 0:12] [teacher] epoch 2.00 step 170: dev accuracy 0.8712
    (best 0.8712)``), readable in a pipe or a log file, and a closing line with the budget used and why
    training stopped."""

    def __init__(self, desc: str, metric: str, events=None):
        from .progress import EventLog
        self.desc = desc
        self.metric = metric
        self.events = events or EventLog()

    def on_train_begin(self, state: TrainerState, **kw: Any) -> None:
        if state.global_step:
            self.events.emit(self.desc, f"resumed from its checkpoint at step {state.global_step} "
                                        f"(epoch {state.epoch:.2f})")

    def on_evaluate(self, state: TrainerState, metrics: dict[str, float], **kw: Any) -> None:
        row = state.history[-1]
        self.events.emit(self.desc, f"epoch {row['epoch']:.2f} step {row['step']}: dev {self.metric} "
                                    f"{row['score']:.4f} (best {state.best_score:.4f})")

    def on_train_end(self, state: TrainerState, **kw: Any) -> None:
        best = f"{state.best_score:.4f} at step {state.best_step}" if state.best_score is not None else "-"
        self.events.emit(self.desc, f"done: {state.global_step} steps ({state.epoch:.2f} epochs) in "
                                    f"{state.seconds:.0f} s, stopped by {state.stop_reason}; best dev "
                                    f"{self.metric} {best} restored")


class JsonlLoggerCallback(Callback):
    """Appends one JSON line per evaluation to a file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_evaluate(self, state: TrainerState, metrics: dict[str, float], **kw: Any) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **metrics}) + "\n")


class MetricsReporterCallback(Callback):
    """Calls ``report(metrics_dict)`` after each evaluation (the search reports to Ray Tune through it)."""

    def __init__(self, report):
        self.report = report

    def on_evaluate(self, state: TrainerState, metrics: dict[str, float], **kw: Any) -> None:
        self.report({**metrics, "epoch": state.epoch, "step": state.global_step})


class MemoryLimitCallback(Callback):
    """Fails the run once this process has held more than ``limit_gb`` of resident memory: checked against
    the kernel's high-water mark (so a peak inside a step counts) after every step, evaluation and at the
    end, which the caller starts from the run's beginning (:func:`autodistill.resources.reset_peak_rss`).
    A search trial stays within the memory its search was given instead of taking the node's."""

    def __init__(self, limit_gb: float, setting: str = "memory_gb_per_trial"):
        self.limit_gb = limit_gb
        self.setting = setting

    def _check(self, state: TrainerState) -> None:
        from .resources import MemoryLimitExceeded, memory_over
        said = memory_over(self.limit_gb, self.setting, "lower optim.batch_size, data.max_length or the student's size")
        if said:
            raise MemoryLimitExceeded(f"at step {state.global_step}, {said}")

    def on_step_end(self, state: TrainerState, **kw: Any) -> None:
        self._check(state)

    def on_evaluate(self, state: TrainerState, **kw: Any) -> None:
        self._check(state)

    def on_train_end(self, state: TrainerState, **kw: Any) -> None:
        self._check(state)
