"""What a long job tells its user while it runs: one line per event, also in a pipe or a log file.

Every line carries the time elapsed since the job began (``[ 3:05] [teacher] epoch 2 ...``) and is
flushed at once, so ``auto ... | tee log`` shows progress as it happens. On a terminal a live bar (tqdm)
sits below the lines; event lines are written through tqdm so the two never garble each other.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm


def on_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60:2d}:{seconds % 60:02d}"


class EventLog:
    """Timestamped, flushed event lines on ``stream`` (stderr by default); silent when ``quiet``."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.started = time.perf_counter()
        self.bar: tqdm | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def emit(self, source: str, text: str) -> None:
        if self.quiet:
            return
        tqdm.write(f"[{clock(self.elapsed())}] [{source}] {text}", file=self.stream)
        self.stream.flush()

    def open_bar(self, total: int, desc: str) -> None:
        """A live bar (terminal only) that :meth:`update_bar` moves."""
        self.close_bar()
        if not self.quiet and on_terminal(self.stream):
            self.bar = tqdm(total=total, desc=desc, file=self.stream, leave=False, dynamic_ncols=True)

    def update_bar(self, done: int | None = None, status: str | None = None) -> None:
        if self.bar is None:
            return
        if done is not None:
            self.bar.n = min(done, self.bar.total)
        if status is not None:
            self.bar.set_postfix_str(status, refresh=False)
        self.bar.refresh()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def fmt_score(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"
