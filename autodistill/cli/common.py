"""What the commands share: where commands are added, the default dataset, quiet libraries, exit codes
and the report of a search (``search`` and ``auto``)."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Protocol

from ..data import bundled_dataset_path
from ..search.driver import format_leaderboard
from ..search.verdict import build_verdict, format_verdict

NO_STUDENT_EXIT = 3
INTERRUPTED_EXIT = 130

BUDGET_HELP = ("Budgets: --trials counts students (with `auto`, the recommended pipeline trained first is "
               "one of them); --time-budget is wall-clock seconds for training students (that first one, "
               "then the search); the teacher's fine-tune is not counted: it is timed and shown apart, and "
               "cached for the next run. A budget can end the search early; `auto` always keeps the "
               "recommended pipeline's student.")


class Commands(Protocol):
    """Where commands are added: what ``ArgumentParser.add_subparsers()`` returns (argparse keeps the
    class itself private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def data_or_bundled(data: str | None) -> str:
    """``--data``, else the bundled dataset (said on stderr)."""
    if data:
        return data
    bundled = str(bundled_dataset_path())
    print(f"no --data given: using the bundled dataset {bundled}", file=sys.stderr)
    return bundled


def quiet_libraries(verbose: bool) -> None:
    """Keep transformers' and Ray's own chatter out of the user's output unless --verbose."""
    if verbose:
        return
    import transformers  # torch (~4 s): only for the commands that train, not for --help or the others

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()   # "Writing model shards" bars on every export
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def interrupted_before_a_student(out: Path, command: str) -> int:
    print(f"\ninterrupted before any student completed: nothing to keep yet. Continue with "
          f"`autodistill {command} --resume --out {out}` and the same options (a fine-tuned teacher is "
          "cached and reused).", file=sys.stderr)
    return INTERRUPTED_EXIT


def report_search(result: Any, out: Path, command: str) -> int:
    """Leaderboard and verdict; exit 0 with a student, 130 when interrupted (the best completed
    student kept), 3 when no student exists (the message names the cause and what to change)."""
    print(format_leaderboard(result.trials))
    print(f"\nrecords: {result.records_path}")
    verdict = build_verdict(result)
    (Path(result.out_dir) / "verdict.json").write_text(json.dumps(verdict, indent=2, default=str), encoding="utf-8")
    print(format_verdict(verdict))
    if result.interrupted:
        kept = f"the best completed student is kept in {result.best_dir}. " if result.best_dir else ""
        print(f"\ninterrupted before the budget was spent: {kept}Continue with "
              f"`autodistill {command} --resume --out {out}` and the same options.", file=sys.stderr)
        return INTERRUPTED_EXIT
    if result.best_dir is None:
        print(f"\nerror: {result.failure}", file=sys.stderr)
        return NO_STUDENT_EXIT
    return 0
