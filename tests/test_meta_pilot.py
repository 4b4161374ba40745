"""The pilot's arithmetic: seed noise per context, centred means, and the merge of candidates that are
within the noise of one another on every context (golden values on hand-made records)."""
from __future__ import annotations

import math

import pytest

from autodistill.meta.pilot import merge_candidates, pilot_report, seed_sigma, pilot_runs, write_pilot_report


def _rec(ctx, cand, seed, ratio, steps=100, stop="plateau", status="ok"):   # "ok": what `meta build` writes
    return {"dataset": ctx, "candidate": cand, "seed": seed, "status": status,
            "metrics": {"student_score": ratio, "teacher_score": 1.0, "steps": steps, "stop_reason": stop},
            "teacher_score": 1.0, "wall_seconds": 10.0, "config": {}}


# two contexts; seed differences give sigma = sqrt(mean(d^2 / 2)) per context
SCORES = {  # candidate: {ctx: (seed 42, seed 43)}
    "no_kd": {"a": (0.80, 0.82), "b": (0.60, 0.60)},
    "vanilla_kd": {"a": (0.81, 0.81), "b": (0.61, 0.61)},
    "aug": {"a": (0.90, 0.90), "b": (0.70, 0.72)},
    "aug_twin": {"a": (0.91, 0.89), "b": (0.70, 0.73)},      # within noise of aug everywhere
    "odd": {"a": (0.90, 0.90), "b": (0.50, 0.50)},           # like aug on a, far worse on b
}
RECORDS = [_rec(ctx, cand, seed, v) for cand, per in SCORES.items() for ctx, pair in per.items()
           for seed, v in zip((42, 43), pair)] + [
    _rec("a", "no_kd", 44, 0.10, status="failed"),      # a failed run never counts
    {"dataset": "a", "candidate": "teacher", "role": "teacher", "status": "completed", "seed": 42,
     "metrics": {"student_score": 1.0}, "teacher_score": 1.0, "config": {}}]


def test_seed_sigma_golden():
    sigma = seed_sigma(pilot_runs(RECORDS))
    # ctx a: differences 0.02, 0, 0, 0.02, 0 -> variances (d^2/2) 2e-4, 0, 0, 2e-4, 0 -> mean 8e-5
    assert math.isclose(sigma["a"], math.sqrt(8e-5), rel_tol=1e-9)
    # ctx b: differences 0, 0, 0.02, 0.03, 0 -> variances 0, 0, 2e-4, 4.5e-4, 0 -> mean 1.3e-4
    assert math.isclose(sigma["b"], math.sqrt(1.3e-4), rel_tol=1e-9)


def test_teacher_records_are_not_candidates():
    assert "teacher" not in set(pilot_runs(RECORDS)["candidate"])


def test_merge_keeps_references_and_joins_twins_only():
    report = pilot_report(RECORDS)
    # visited best mean first: aug_twin (0.715 on b) is kept and stands for aug
    assert report.groups["aug_twin"] == ["aug_twin", "aug"]
    assert "odd" in report.groups and "no_kd" in report.groups and "vanilla_kd" in report.groups
    # vanilla_kd is within noise of no_kd, but the references are kept whatever
    assert report.groups["no_kd"] == ["no_kd"] and report.groups["vanilla_kd"] == ["vanilla_kd"]
    # a tolerance of zero keeps everything apart
    assert all(len(v) == 1 for v in merge_candidates(report.centred, report.sigma, multiple=0.0).values())


def test_report_files(tmp_path):
    path = write_pilot_report(pilot_report(RECORDS), tmp_path)
    text = path.read_text()
    assert "aug_twin** stands for aug" in text and "Seed noise" in text and "median_steps" in text
    assert (tmp_path / "pilot_runs.csv").read_text().count("\n") == 21


def test_cli_pilot(tmp_path, capsys):
    import json

    from autodistill.cli import main
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert main(["meta", "pilot", "--records", str(runs), "--out", str(tmp_path / "rep")]) == 0
    assert "aug_twin** stands for aug" in capsys.readouterr().out
    (runs / "records.jsonl").write_text("")
    assert main(["meta", "pilot", "--records", str(runs), "--out", str(tmp_path / "rep2")]) == 2


def test_runs_the_old_start_rule_stopped_before_learning_are_left_out_and_the_rerun_counts():
    """Patience counted from the first evaluation stopped some runs while they still predicted the
    majority class; those records are left out, a rerun under the current rule takes their place, and
    a run of the old rule that beat the constant prediction stands (it trains the same under both)."""
    from autodistill.meta.pilot import stopped_before_learning
    from autodistill.records import RunRecord

    def run(ratio, best_dev, rule=None, stop="plateau"):
        r = _rec("a", "inter_pkd_last", 42, ratio, stop=stop)
        r["metrics"].update(best_dev_score=best_dev, dev_trivial_score=0.64)
        r["config"] = {"optim": {"early_stopping_start": rule}} if rule else {"optim": {}}
        return r

    stuck, learned = run(0.64, 0.64), run(0.80, 0.70)
    rerun = run(0.85, 0.75, rule="above_trivial")
    assert stopped_before_learning(RunRecord.of(stuck)) and not stopped_before_learning(RunRecord.of(learned))
    assert not stopped_before_learning(RunRecord.of(run(0.64, 0.64, stop="max_epochs")))    # ran to the cap
    assert not stopped_before_learning(RunRecord.of(run(0.64, 0.64, rule="above_trivial")))  # the current rule
    assert pilot_runs([stuck]).empty
    assert pilot_runs([stuck, rerun])["target"].tolist() == [0.85]
    assert pilot_runs([learned, rerun])["target"].tolist() == [0.85]     # of two records, the later counts


def test_an_old_records_dev_slice_is_rebuilt_from_the_dataset_copy():
    """The first pilot records lack dev_trivial_score: it is rebuilt from meta_dataset/datasets the way the
    trainer cut the dev slice, and checked against the record (fingerprint, dev size)."""
    from pathlib import Path

    from autodistill.meta.pilot import dev_trivial_score
    from autodistill.records import RecordStore

    path = Path(__file__).parents[1] / "meta_dataset/v2_pilot/runs/cr@n1000@fresh4x128.jsonl"
    old = next(r for r in RecordStore(path).read() if "dev_trivial_score" not in r.metrics)
    assert dev_trivial_score(old) == 0.64                           # 64 of the 100 dev rows are the majority class
    moved = old.replace(dataset_fingerprint="another dataset")
    with pytest.raises(ValueError, match="not the one the run trained on"):
        dev_trivial_score(moved)


def test_a_reference_absorbs_nothing_and_a_group_is_led_by_its_best_member():
    import pandas as pd

    centred = pd.DataFrame({"a": [0.00, 0.01, 0.02, 0.03], "b": [0.00, 0.01, 0.02, 0.03]},
                           index=["no_kd", "like_no_kd", "better", "best"])
    groups = merge_candidates(centred, pd.Series({"a": 0.01, "b": 0.01}), keep_first=["no_kd"])
    assert groups == {"no_kd": ["no_kd"], "best": ["best", "better", "like_no_kd"]}   # 2σ = 0.02 of "best"


def test_runs_a_cap_stopped_are_told_apart_as_failures_or_still_rising():
    def capped(cand, seed, best, trivial, best_step):
        r = _rec("a", cand, seed, 0.5, steps=300, stop="max_epochs")
        r["metrics"].update(best_dev_score=best, dev_trivial_score=trivial, best_step=best_step)
        return r

    records = [_rec("a", "no_kd", 42, 0.8), _rec("a", "no_kd", 43, 0.8),
               capped("pkd", 42, 0.56, 0.56, 15),     # never beat the constant: a failure
               capped("pkd", 43, 0.70, 0.56, 285),    # learned, best in the last quarter: maybe still rising
               capped("late", 42, 0.70, 0.56, 120),   # learned, best long before the cap: flat
               _rec("a", "late", 43, 0.6, steps=290, stop="interrupted")]   # stopped by hand: no cap
    row = pilot_report(records).convergence().loc["a"]
    assert (row["runs"], row["capped"], row["capped_never_learned"], row["capped_still_rising"]) == (6, 3, 1, 1)
    # a correlation's curve starts above chance (recorded as dev_start_score): a best between 0 and chance is no start
    records[3]["metrics"].update(dev_trivial_score=0.0, dev_start_score=0.75)
    row = pilot_report(records).convergence().loc["a"]
    assert (row["capped_never_learned"], row["capped_still_rising"]) == (2, 0)
