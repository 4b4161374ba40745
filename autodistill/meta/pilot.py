"""The pilot of a meta-dataset build: which candidates differ beyond the seed noise.

A build's portfolio should hold pipelines that *differ*: a candidate whose mean (over student seeds)
is within the noise of another candidate's on every context computes nothing the other does not, and
costs a run per context for no information. The pilot runs every candidate on a few contexts at ≥ 2
seeds and this module turns its records into

- the seed noise of each context: σ = sqrt(mean over candidates of d² / 2), d a candidate's difference
  between two seeds (the std of one run's score); the difference of two candidates' 2-seed means then
  has std σ, and a difference beyond ``2σ`` is called real;
- each candidate's mean target per context, centred on the context's mean over candidates;
- the merge: the references (``no_kd``, ``vanilla_kd``) are kept and absorb nothing; the other
  candidates in order of mean centred target; one within ``2σ`` of an earlier kept candidate on every
  context joins that candidate's group (the kept one, its best-mean member, stands for the group);
- convergence facts from the records: optimisation steps, how runs stopped (early stopping or a cap),
  and wall seconds.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import with_legacy_values
from ..records import RunRecord
from .evaluate import markdown_table
from . import DATASETS_DIR
from .table import REFERENCE_ROLES, SKIPPED_STATUSES

#: a difference of two candidates' seed means beyond this many σ (one run's seed std) is called real
NOISE_MULTIPLE = 2.0


def dev_trivial_score(record: RunRecord, datasets_root: str | Path | None = None) -> float:
    """What a constant prediction scores on the run's dev slice: the record's own figure, or (records
    made before it was recorded) the dev slice rebuilt from the dataset's copy under ``datasets_root``
    (checked against the record: same data fingerprint, same dev size)."""
    recorded = (record.metrics or {}).get("dev_trivial_score")
    if recorded is not None:
        return float(recorded)
    data = {**with_legacy_values(record.config)["data"], "validation": None,
            "train": str(Path(datasets_root or DATASETS_DIR) / record.group)}
    fingerprint, dev_size, score = _rebuilt_dev_trivial(json.dumps(data, sort_keys=True), record.metrics["metric"])
    if fingerprint != record.dataset_fingerprint or dev_size != record.metrics.get("dev_examples"):
        raise ValueError(f"{record.dataset_name}: the dataset under {datasets_root or DATASETS_DIR} is not the one "
                         f"the run trained on (fingerprint or dev slice size differ)")
    return score


@functools.lru_cache(maxsize=64)
def _rebuilt_dev_trivial(data_json: str, metric: str) -> tuple[str, int, float]:
    """(data fingerprint, dev slice size, constant prediction's dev score) of a data config, as the
    trainer's dev slice is made (:func:`~autodistill.batching.dev_indices` on the loaded train rows)."""
    import torch

    from ..batching import EncodedSplit, dev_indices
    from ..config import DataConfig
    from ..data import load_task_data
    from ..evaluation import trivial_score

    data = DataConfig.model_validate(json.loads(data_json))
    task = load_task_data(data)
    _, dev = dev_indices(task.train, data, task.task_type)
    dtype = torch.float32 if task.task_type == "regression" else torch.long
    dev_labels = EncodedSplit([[0]] * len(dev), None, torch.tensor([task.train.labels[i] for i in dev], dtype=dtype))
    return task.fingerprint, len(dev), trivial_score(dev_labels, metric, task.task_type)


def stopped_before_learning(record: RunRecord, datasets_root: str | Path | None = None) -> bool:
    """A run of the first-evaluation start rule (before ``early_stopping_start``) that never beat the
    constant prediction on its dev slice: that rule may have stopped it before it began to learn.
    Every other run of that rule trains exactly as under ``above_trivial`` (with ``min_delta`` 0, as in
    every pilot run: both reset at the first evaluation above the constant, and neither stops before
    it), so its record stands. The teacher's rule changed the same way; :func:`pilot_runs` checks that
    each context has one teacher score."""
    rule = ((record.config or {}).get("optim") or {}).get("early_stopping_start", "first_evaluation")
    m = record.metrics or {}
    return rule == "first_evaluation" and m.get("stop_reason") == "plateau" and m.get("best_dev_score") is not None \
        and float(m["best_dev_score"]) <= dev_trivial_score(record, datasets_root)


def pilot_runs(records: Sequence[RunRecord | Mapping[str, Any]],
               datasets_root: str | Path | None = None) -> pd.DataFrame:
    """One row per completed run: context, candidate, seed, target (student/teacher ratio), steps, how
    it stopped and its wall seconds. A run that :func:`stopped_before_learning` is left out (run it
    again under the current rule); of two records of one (context, candidate, seed), the later counts."""
    rows = {}
    for r in map(RunRecord.of, records):
        if r.status in SKIPPED_STATUSES or r.role in REFERENCE_ROLES or stopped_before_learning(r, datasets_root):
            continue
        m = r.metrics or {}
        rows[(r.dataset_name, r.candidate_name, r.seed)] = {
            "context": r.dataset_name, "candidate": r.candidate_name, "seed": r.seed, "target": r.ratio,
            "steps": m.get("steps"), "stop_reason": m.get("stop_reason"), "wall_seconds": r.wall_seconds,
            "best_step": m.get("best_step"), "learned": _left_the_constant(m)}
    teachers = {}
    for r in map(RunRecord.of, records):
        teachers.setdefault(r.dataset_name, set()).add(round(float(r.teacher_score), 9))
    mixed = {ctx: sorted(t) for ctx, t in teachers.items() if len(t) > 1}
    if mixed:
        raise ValueError(f"runs of one context were made with different teachers: {mixed}")
    return pd.DataFrame(list(rows.values()), columns=["context", "candidate", "seed", "target", "steps", "stop_reason",
                                                      "wall_seconds", "best_step", "learned"])


def _left_the_constant(metrics: Mapping[str, Any]) -> bool | None:
    """Whether the best dev score beat the score where a curve starts (the best constant prediction's; for a
    correlation also chance, recorded as ``dev_start_score`` since) (None for records without both)."""
    best = metrics.get("best_dev_score")
    trivial = metrics.get("dev_start_score", metrics.get("dev_trivial_score"))
    return None if best is None or trivial is None else bool(float(best) > float(trivial))


CAP_STOPS = ("max_steps", "max_epochs")  # the stop reasons of a budget cap (not a plateau, not an interruption)


def _capped(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["stop_reason"].isin(CAP_STOPS)]


def still_rising(runs: pd.DataFrame, last: float = 0.25) -> pd.Series:
    """Runs stopped by a cap (not a plateau) that had learned and found their best checkpoint in the last
    ``last`` of their steps: curves that may still have been rising (the runs the rule means to avoid)."""
    capped = _capped(runs)
    return (capped["learned"] == True) & (capped["best_step"] >= (1 - last) * capped["steps"])  # noqa: E712


def seed_sigma(runs: pd.DataFrame) -> pd.Series:
    """Per context: σ, the std of one run's target across student seeds, pooled over candidates."""
    out = {}
    for ctx, g in runs.groupby("context"):
        by = g.pivot_table(index="candidate", columns="seed", values="target")
        if by.shape[1] < 2:
            continue
        var = by.var(axis=1, ddof=1).dropna()
        out[ctx] = float(np.sqrt(var.mean())) if len(var) else float("nan")
    return pd.Series(out, name="sigma", dtype=float)


def centred_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Candidates x contexts: the mean target over seeds minus the context's mean over candidates
    (only candidates that ran on every context, so the centring is over the same set)."""
    means = runs.pivot_table(index="candidate", columns="context", values="target", aggfunc="mean")
    means = means.dropna()
    return means - means.mean(axis=0)


def merge_candidates(centred: pd.DataFrame, sigma: pd.Series, multiple: float = NOISE_MULTIPLE,
                     keep_first: Sequence[str] = ()) -> dict[str, list[str]]:
    """{kept candidate: the candidates it stands for (itself first)}. ``keep_first`` (the references)
    are kept whatever and stand for nothing but themselves: a pipeline within the noise of ``no_kd`` is
    still a pipeline. The others are visited best mean first; one within ``multiple``·σ of an earlier
    kept one on every context joins the first such, so each group is led by its best-mean member."""
    refs = [c for c in keep_first if c in centred.index]
    order = [c for c in centred.mean(axis=1).sort_values(ascending=False).index if c not in refs]
    tol = multiple * sigma.reindex(centred.columns).to_numpy()
    groups: dict[str, list[str]] = {c: [c] for c in refs}
    for cand in order:
        row = centred.loc[cand].to_numpy()
        home = next((k for k in groups if k not in refs and np.all(np.abs(centred.loc[k].to_numpy() - row) <= tol)),
                    None)
        if home is None:
            groups[cand] = [cand]
        else:
            groups[home].append(cand)
    return groups


@dataclass
class PilotReport:
    runs: pd.DataFrame
    sigma: pd.Series
    centred: pd.DataFrame
    groups: dict[str, list[str]]

    def beyond_noise(self) -> pd.DataFrame:
        """Candidates x contexts: +1 / -1 where the centred mean is beyond 2σ of the context's mean
        over candidates (σ·sqrt(1 + 1/n) ≈ σ for the difference), else 0."""
        tol = NOISE_MULTIPLE * self.sigma.reindex(self.centred.columns)
        return np.sign(self.centred).where(self.centred.abs() > tol, 0).astype(int)

    def convergence(self) -> pd.DataFrame:
        """Per context: steps, how runs stopped, wall time; of the runs a cap stopped, how many never beat
        the constant prediction (failures, not unconverged curves) and how many may still have been rising."""
        r = self.runs
        out = r.groupby("context").agg(runs=("target", "size"), median_steps=("steps", "median"),
                                        max_steps=("steps", "max"),
                                        early_stopped=("stop_reason", lambda s: float(np.mean(
                                            [x == "plateau" for x in s]))),
                                        median_wall_s=("wall_seconds", "median"),
                                        total_wall_h=("wall_seconds", lambda s: float(np.nansum(s)) / 3600))
        capped = _capped(r)
        out = out.assign(
            capped=capped.groupby("context").size().reindex(out.index, fill_value=0),
            capped_never_learned=capped[capped["learned"] == False].groupby("context").size()  # noqa: E712
            .reindex(out.index, fill_value=0),
            capped_still_rising=capped[still_rising(r)].groupby("context").size().reindex(out.index, fill_value=0))
        return out


def pilot_report(records: Sequence[Mapping[str, Any]], keep_first: Sequence[str] = ("no_kd", "vanilla_kd"),
                 datasets_root: str | Path | None = None) -> PilotReport:
    runs = pilot_runs(records, datasets_root)
    sigma = seed_sigma(runs)
    centred = centred_means(runs)
    return PilotReport(runs, sigma, centred, merge_candidates(centred, sigma, keep_first=keep_first))


def write_pilot_report(report: PilotReport, out_dir: str | Path) -> Path:
    """``pilot.md`` (the tables) and ``pilot_runs.csv`` in ``out_dir``."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.runs.to_csv(out / "pilot_runs.csv", index=False)
    table = report.centred.copy()
    table["mean"] = table.mean(axis=1)
    table = table.sort_values("mean", ascending=False)
    marks = report.beyond_noise()
    shown = table.round(4).astype(object)
    for c in report.centred.columns:
        shown[c] = [f"{v:+.4f}{'*' if marks.loc[i, c] else ''}" for i, v in zip(table.index, table[c])]
    shown["mean"] = [f"{v:+.4f}" for v in table["mean"]]
    lines = ["# Pilot: candidates on converged students", "",
             f"{len(report.runs)} runs, {report.runs['context'].nunique()} contexts, "
             f"{report.runs['candidate'].nunique()} candidates, seeds {sorted(report.runs['seed'].dropna().unique())}.",
             "", "## Seed noise per context (σ: std of one run's student/teacher ratio across seeds)", "",
             markdown_table(report.sigma.to_frame(), "context"), "",
             "## Convergence", "", markdown_table(report.convergence(), "context"), "",
             "## Mean ratio over seeds, centred on the context's mean (* beyond 2σ)", "",
             markdown_table(shown, "candidate"), "",
             f"## Merge: candidates within {NOISE_MULTIPLE:g}σ of a kept one on every context", ""]
    lines += [f"- **{k}**" + (f" stands for {', '.join(v[1:])}" if len(v) > 1 else "")
              for k, v in report.groups.items()]
    path = out / "pilot.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
