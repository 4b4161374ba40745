"""What the commands share: where commands are added, the default dataset, quiet libraries, exit codes
and the report of a search (``search`` and ``auto``)."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..data import bundled_dataset_path
from ..search.driver import format_leaderboard
from ..search.space import load_space
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


class OutDirError(ValueError):
    """An ``--out`` folder that cannot take this command's results; the message names --out."""


#: what a search (``search``, ``auto``) writes at the top of --out first: a folder holding one of them is
#: a search's own, and the search decides whether it may continue there (--resume)
SEARCH_OUT_MARKERS = ("space.yaml", "progress.json", "recommendations.json")


def int_at_least(text: str, minimum: int) -> int:
    """``text`` as a whole number >= ``minimum``, else an argparse error (argparse names the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    return int_at_least(text, 1)


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def prepare_out_dir(out: Path, owns: Callable[[list[str]], bool], inputs: Sequence[str | None] = (),
                    resume: bool = False) -> Path:
    """Check ``--out`` before any work is done, so that a long run never ends unable to save: the folder
    must be creatable (with its parents) and writable; what the check creates it removes again, so a run
    that fails before writing leaves nothing behind. A file, or a folder already holding things that
    ``owns`` (given the folder's visible entries) does not recognise as this command's own output, is
    refused: results are never mixed into an unrelated folder. The command's own ``inputs`` (e.g. its
    --config) may lie in the folder (as the service lays a search out). ``resume``: the folder must hold
    this command's output to continue."""
    if out.exists() and not out.is_dir():
        raise OutDirError(f"--out {out}: is a file, not a folder; give a new or empty folder")
    given = {Path(p).resolve() for p in inputs if p}
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.resolve() not in given) \
        if out.is_dir() else []
    if entries and not owns(entries):
        shown = ", ".join(itertools.islice(entries, 5)) + (", ..." if len(entries) > 5 else "")
        raise OutDirError(f"--out {out}: the folder already holds files that are not this command's output "
                          f"({shown}); give a new or empty folder")
    if resume and not entries:
        raise OutDirError(f"--out {out}: nothing to resume there (no earlier run's output); drop --resume to "
                          "start a new run, or give the folder of the run to continue")
    created = _first_missing(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise OutDirError(f"--out {out}: cannot write there ({err.strerror or err}); give a writable folder") \
            from None
    finally:
        if created is not None:
            _remove_empty_folders(out, up_to=created)
    return out


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what ``mkdir(parents=True)`` creates first)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_empty_folders(path: Path, up_to: Path) -> None:
    """Remove ``path`` and its parents up to ``up_to`` while they are empty."""
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except OSError:   # missing, or not empty: leave it and what holds it
            return
        if folder == up_to:
            return


def is_search_out(entries: list[str]) -> bool:
    """A folder a search (``search`` or ``auto``) wrote."""
    return any(name in SEARCH_OUT_MARKERS for name in entries)


def space_data_train(space: str) -> str | None:
    """The ``data.train`` a search space's base names, if any."""
    return (load_space(space).base.get("data") or {}).get("train")


def data_or_bundled(data: str | None, configured: str | None = None) -> str:
    """``--data``, else the config's ``data.train``, else the bundled dataset (said on stderr)."""
    if data:
        return data
    if configured:
        return configured
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
    """Ctrl-C before any student: how to go on (``--resume`` only once the run has written something)."""
    resumable = out.is_dir() and is_search_out([p.name for p in out.iterdir()])
    how = f"`autodistill {command} --resume --out {out}` and the same options" if resumable else \
        "the same command (nothing in --out to resume yet)"
    print(f"\ninterrupted before any student completed: nothing to keep yet. Continue with {how} (a fine-tuned "
          "teacher is cached and reused; one interrupted mid-way resumes from its last evaluation).", file=sys.stderr)
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
