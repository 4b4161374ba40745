"""Trainer callbacks (Hugging Face Trainer style): progress, logging, early stopping, reporting."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


@dataclass
class TrainerState:
    epoch: float = 0.0
    global_step: int = 0
    total_steps: int = 0
    best_score: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    should_stop: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


class Callback:
    """Override any hook; all receive the trainer state."""

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
        self.bar = tqdm(total=state.total_steps, desc=self.desc, disable=not progress_enabled(), leave=False)

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
    """Stop after ``patience`` evaluations without a better validation score."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, state: TrainerState, metrics: dict[str, float], **kw: Any) -> None:
        if state.evals_without_improvement >= self.patience:
            state.should_stop = True


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
