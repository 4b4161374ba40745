"""`autodistill meta unseen`: the recommender's pick against the fair single best and vanilla KD on datasets
the meta-dataset never saw, trained for real (tiny models), resumable, paired in a report."""
from __future__ import annotations

import io
import json

import pytest

from autodistill.config import pipeline_only, with_pipeline
from autodistill.data import bundled_dataset_path
from autodistill.meta.portfolio import META_PRESET, candidate_config
from autodistill.meta.recommender import Recommender
from autodistill.meta.table import records_to_table
from autodistill.progress import EventLog
from autodistill.meta.unseen import (cost_ratios, fair_single_best, run_unseen, unseen_comparisons, unseen_runs,
                                     unseen_table, write_unseen_report)
from autodistill.records import RecordStore, RunRecord


@pytest.fixture(autouse=True)
def clean_checkout(monkeypatch):
    """The runner refuses to continue a dataset from a dirty checkout; the tests' own may be dirty: their runs
    record one clean commit, as a worktree's would."""
    from autodistill.meta import build, unseen
    engine = {"commit": "c" * 40, "dirty": False}
    monkeypatch.setattr(build, "git_commit", lambda: engine)
    monkeypatch.setattr(unseen, "git_commit", lambda: engine)


def _records(folder):
    """Three datasets where mixup is the best pipeline everywhere (so it is the fair single best)."""
    store = RecordStore(folder / "runs.jsonl")
    for d in range(3):
        for name, y in (("vanilla_kd", 0.80), ("mixup", 0.86), ("kd_kl_t4", 0.82)):
            store.append(RunRecord.create(
                dataset_fingerprint=f"fp{d}", meta_features={"log_n_train": 6.0 + d}, config=candidate_config(name),
                metrics={"student_score": y + 0.01 * d}, teacher_score=0.9, wall_seconds=1.0, student_parameters=1,
                status="completed", search={"dataset": f"ds{d}", "candidate": name}))
    return store


def _tiny_dataset(root, name, rows=48):
    src = bundled_dataset_path()
    (root / name).mkdir(parents=True)
    for split, n in (("train", rows), ("validation", rows // 2)):
        lines = (src / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
        (root / name / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _planned(tmp_path, tiny_backbone, **teacher):
    """The runner's arguments for the dataset ``alpha``: a model fitted on :func:`_records`, a tiny budget."""
    from autodistill.config import PipelineConfig

    store = _records(tmp_path / "records")
    Recommender.fit(records_to_table(store.read()), method="rf", model_params={"n_estimators": 10}).save(
        tmp_path / "model")
    _tiny_dataset(tmp_path / "data", "alpha")
    budget = PipelineConfig.model_validate({"teachers": [{"backbone": tiny_backbone, **teacher}],
                                            "data": {"max_length": 32}})
    return dict(model_dir=tmp_path / "model", records=tmp_path / "records", out=tmp_path / "out", seeds=(1, 2),
                budget=budget)


def test_the_pick_single_best_and_vanilla_kd_are_trained_paired_and_resumed(tmp_path, tiny_backbone, monkeypatch):
    from autodistill.config import PipelineConfig

    store = _records(tmp_path / "records")
    assert fair_single_best(tmp_path / "records") == "mixup"
    Recommender.fit(records_to_table(store.read()), method="rf", model_params={"n_estimators": 10}).save(
        tmp_path / "model")
    for name in ("alpha", "beta"):
        _tiny_dataset(tmp_path / "data", name)
    budget = PipelineConfig.model_validate({
        "teachers": [{"backbone": tiny_backbone, "epochs": 2, "learning_rate": 3e-3}],
        "student": {"num_layers": 1}, "data": {"max_length": 32},
        "optim": {"epochs": 2, "batch_size": 16, "eval_batch_size": 64}})
    kwargs = dict(model_dir=tmp_path / "model", records=tmp_path / "records", out=tmp_path / "out", seeds=(1, 2),
                  budget=budget, log=lambda _: None)
    lines = io.StringIO()
    assert run_unseen(tmp_path / "data", ["alpha"], limit=1, events=EventLog(lines), **kwargs) == (1, 0)   # --limit
    said = lines.getvalue()
    assert "[teacher] epoch 1.00" in said and "[student] epoch 1.00" in said   # the long fine-tunes show progress
    partial = write_unseen_report(tmp_path / "out", ["alpha", "beta"]).read_text()
    assert "## Not paired" in partial and "- beta: not run: no plan yet" in partial
    assert "- alpha: not in recommended vs single_best: " in partial and "misses seed 2" in partial
    ran, failed = run_unseen(tmp_path / "data", ["alpha", "beta"], **kwargs)
    assert failed == 0
    plans = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "plans").glob("*.json")}
    assert set(plans) == {"alpha", "beta"}
    for name, plan in plans.items():
        arms = {a["name"]: a for a in plan["arms"]}
        assert set(arms) == {"recommended", "single_best", "vanilla_kd"} and arms["single_best"]["candidate"] == "mixup"
        assert plan["meta_model_top1"] in {"vanilla_kd", "mixup", "kd_kl_t4"}   # the model's own pick, kept
        assert plan["budget"]["teachers"][0]["backbone"] == tiny_backbone   # the given budget, not the build's
        assert plan["budget"]["data"]["max_train_examples"] is None         # all of the dataset's rows
        # every run trained its arm's pipeline on the budget, and each arm's seeds are there
        runs = RecordStore(tmp_path / "out" / "runs" / f"{name}.jsonl").read()
        for arm in arms.values():
            want = pipeline_only(with_pipeline(budget, arm["pipeline"]))
            assert sorted(r.seed for r in runs if pipeline_only(r.config) == want) == [1, 2], arm["name"]
    distinct = sum(len({json.dumps(a["pipeline"], sort_keys=True) for a in p["arms"]}) for p in plans.values())
    assert ran + 1 == 2 * distinct                                          # arms that agree share their runs
    assert run_unseen(tmp_path / "data", ["alpha", "beta"], **kwargs) == (0, 0)   # resumed: nothing left
    from autodistill.meta import unseen
    monkeypatch.setattr(unseen, "git_commit", lambda: {"commit": "d" * 40, "dirty": True})
    assert run_unseen(tmp_path / "data", ["alpha", "beta"], **kwargs) == (0, 0)   # another engine, nothing to run
    with pytest.raises(ValueError, match="another seeds"):                 # a different plan needs a new --out
        run_unseen(tmp_path / "data", ["alpha"], **{**kwargs, "seeds": (1,)})
    table = unseen_table(tmp_path / "out")
    assert len(table) == 6 and table["ratio"].notna().all() and (table["ratio"] > 0).all()
    report = write_unseen_report(tmp_path / "out", ["alpha", "beta"]).read_text()
    assert "recommended vs single_best" in report and "recommended vs vanilla_kd" in report
    assert "Not paired" not in report and "## The product's pick" in report
    assert f"| alpha | {plans['alpha']['warm_start_source']} |" in report
    # each run says how it stopped and what its student's training cost
    runs = unseen_runs(tmp_path / "out")
    assert len(runs) == ran + 1 and runs["stop_reason"].notna().all() and (runs["train_seconds"] > 0).all()
    assert runs["steps"].gt(0).all() and "## Runs: convergence and cost" in report and "Stop reasons: " in report
    assert "The recommended pipeline's student training costs " in report and "(mean train seconds per dataset, 2 " \
        "datasets)" in report
    # runs of one dataset from two engine commits are named (their pairing assumes the training did not change)
    assert "more than one engine commit" not in report and runs["commit"].notna().all()
    runs_file = tmp_path / "out" / "runs" / "alpha.jsonl"
    lines = runs_file.read_text().splitlines()
    first = json.loads(lines[0])
    first["provenance"]["git"] = {"commit": "deadbeef" * 5, "dirty": False}
    runs_file.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    report = write_unseen_report(tmp_path / "out", ["alpha", "beta"]).read_text()
    assert "more than one engine commit" in report and "alpha: " in report and "deadbee" in report


def test_a_test_begun_before_a_setting_existed_goes_on_only_as_it_ran(tmp_path):
    """A manifest's budget written before data.dev_split ran at "row" (LEGACY_VALUES): the default budget
    now ("text") is another budget, refused; the budget as it ran goes on."""
    from autodistill.config import PipelineConfig
    from autodistill.meta.unseen import _manifest

    stored = PipelineConfig().to_dict()
    del stored["data"]["dev_split"]
    wanted = {"model": {"fingerprint": "f"}, "decision": {"source": "portfolio", "fingerprint": "d"},
              "seeds": [1, 2], "budget": stored, "max_train_examples": None}
    _manifest(tmp_path, wanted, lambda: "mixup")
    with pytest.raises(ValueError, match="another budget .*: data.dev_split 'row' there, 'text' here"):
        _manifest(tmp_path, {**wanted, "budget": PipelineConfig().to_dict()}, lambda: "mixup")
    as_ran = PipelineConfig.model_validate({**stored, "data": {**stored["data"], "dev_split": "row"}}).to_dict()
    assert _manifest(tmp_path, {**wanted, "budget": as_ran}, lambda: "mixup")["single_best"] == "mixup"


def test_the_manifest_is_written_once_refuses_another_plan_and_gains_a_missing_single_best(tmp_path):
    from autodistill.meta.unseen import MANIFEST, _manifest

    wanted = {"model": {"fingerprint": "f"}, "decision": {"source": "portfolio", "fingerprint": "d"},
              "seeds": [1, 2], "budget": {}, "max_train_examples": None}
    asked = []
    pick = lambda: asked.append(1) or "mixup"   # noqa: E731
    assert _manifest(tmp_path, wanted, pick)["single_best"] == "mixup"
    assert _manifest(tmp_path, wanted, pick)["single_best"] == "mixup" and len(asked) == 1   # read, not re-picked
    with pytest.raises(ValueError, match="another seeds"):
        _manifest(tmp_path, {**wanted, "seeds": [1]}, pick)
    moved = {**wanted, "model": {"dir": "/another/checkout/meta_dataset/model", "fingerprint": "f"}}
    assert _manifest(tmp_path, moved, pick)["single_best"] == "mixup"     # the same model, read from elsewhere
    with pytest.raises(ValueError, match="another model"):
        _manifest(tmp_path, {**wanted, "model": {"fingerprint": "g"}}, pick)
    assert not list(tmp_path.glob("*.tmp"))                                # written whole, nothing left over
    # the warm-start decision picks the recommended arm: another one (the same model files) is refused too
    with pytest.raises(ValueError, match="another decision"):
        _manifest(tmp_path, {**wanted, "decision": {"source": "meta_model", "fingerprint": "e"}}, pick)
    older = {k: v for k, v in wanted.items() if k != "decision"}
    (tmp_path / MANIFEST).write_text(json.dumps(older))                   # written by older code
    assert _manifest(tmp_path, wanted, pick)["single_best"] == "mixup" and len(asked) == 2
    assert json.loads((tmp_path / MANIFEST).read_text())["decision"] == wanted["decision"]   # added once
    # ... (with a single best already there: read, not re-picked) ...
    (tmp_path / MANIFEST).write_text(json.dumps({**older, "single_best": "kept"}))
    assert _manifest(tmp_path, wanted, pick)["single_best"] == "kept" and len(asked) == 2
    assert json.loads((tmp_path / MANIFEST).read_text())["decision"] == wanted["decision"]
    # ... but only when the plans made so far followed that decision: its source, and a pick from its portfolio
    wanted["decision"]["portfolio"] = ["mixup", "vanilla_kd"]
    (tmp_path / "plans").mkdir()
    for plan, source, pick_name in (("a", "portfolio", "mixup"), ("b", "meta_model", "mixup"),
                                    ("c", "portfolio", "kd_kl_t4")):
        (tmp_path / "plans" / f"{plan}.json").write_text(json.dumps({
            "dataset": plan, "warm_start_source": source, "arms": [{"name": "recommended", "candidate": pick_name}]}))
        (tmp_path / MANIFEST).write_text(json.dumps(older))
        if plan == "a":
            assert _manifest(tmp_path, wanted, pick)["decision"]["portfolio"] == ["mixup", "vanilla_kd"]
        else:
            with pytest.raises(ValueError, match=rf"plans of \['{plan}'\] were made with another warm-start decision"):
                _manifest(tmp_path, wanted, pick)
        (tmp_path / "plans" / f"{plan}.json").unlink()
    # a key an older manifest lacks is compared all the same (only the decision may be missing)
    (tmp_path / MANIFEST).write_text(json.dumps({k: v for k, v in older.items() if k != "max_train_examples"}))
    with pytest.raises(ValueError, match="another max_train_examples"):
        _manifest(tmp_path, {**wanted, "max_train_examples": 500}, pick)


def test_the_report_names_each_comparison_a_dataset_misses_and_spreads_only_complete_seeds():
    import pandas as pd

    from autodistill.meta.unseen import seed_spread, unpaired_datasets

    def row(dataset, arm, candidate, s1, s2, applies=True):
        ratio = (s1 + s2) / 2 if applies and s1 == s1 and s2 == s2 else float("nan")
        return {"dataset": dataset, "arm": arm, "candidate": candidate, "applies": applies,
                "seed_1": s1, "seed_2": s2, "ratio": ratio}
    nan = float("nan")
    table = pd.DataFrame([
        # the pick does not apply to the task: in no comparison, and said so
        row("reg", "recommended", "dyn", nan, nan, applies=False), row("reg", "single_best", "mixup", 0.8, 0.9),
        row("reg", "vanilla_kd", "vanilla_kd", 0.7, 0.8),
        # only the single best misses a seed: still in recommended vs vanilla_kd
        row("half", "recommended", "t4", 0.9, 0.95), row("half", "single_best", "mixup", 0.9, nan),
        row("half", "vanilla_kd", "vanilla_kd", 0.8, 0.9),
        # the pick is the single best: one pipeline, counted once in the spread
        row("same", "recommended", "mixup", 0.5, 0.9), row("same", "single_best", "mixup", 0.5, 0.9),
        row("same", "vanilla_kd", "vanilla_kd", 0.6, 0.6)])
    why = unpaired_datasets(table, ["reg", "half", "same", "new"])
    assert why["new"] == "not run: no plan yet"
    assert why["reg"].count("recommended (dyn) does not apply to the task") == 2
    assert why["half"] == "not in recommended vs single_best: single_best misses seed 2"
    assert "same" not in why
    spread = seed_spread(table)      # reg: mixup 0.1, vanilla 0.1; half: t4 0.05, vanilla 0.1; same: mixup 0.4, vanilla 0
    assert sorted(spread.round(4)) == [0.0, 0.05, 0.1, 0.1, 0.1, 0.4]


def test_the_comparison_says_which_arm_is_better():
    import pandas as pd
    rows = [{"dataset": f"d{i}", "arm": arm, "ratio": r}
            for i in range(5) for arm, r in (("recommended", 0.90 + 0.01 * i), ("single_best", 0.85),
                                             ("vanilla_kd", 0.95 + 0.01 * i))]
    comparisons = unseen_comparisons(pd.DataFrame(rows)).set_index("comparison")
    better = comparisons.loc["recommended vs single_best"]
    assert better["wins"] == 5 and better["mean_difference"] > 0 and better["ci_low"] > 0
    worse = comparisons.loc["recommended vs vanilla_kd"]
    assert worse["losses"] == 5 and abs(worse["mean_difference"] + 0.05) < 1e-9 and worse["ci_high"] < 0


def test_the_cost_ratio_is_the_recommended_runs_mean_training_seconds_over_vanilla_kds_per_dataset():
    import pandas as pd
    runs = pd.DataFrame([{"dataset": d, "candidate": c, "arms": arms, "train_seconds": t}
                         for d, c, arms, t in (
                             ("a", "mixup", "recommended+single_best", 300.0), ("a", "mixup", "recommended+single_best", 500.0),
                             ("a", "vanilla_kd", "vanilla_kd", 100.0),
                             # b: mixup is only the single best; the pick is t4
                             ("b", "t4", "recommended", 90.0), ("b", "mixup", "single_best", 900.0),
                             ("b", "vanilla_kd", "vanilla_kd", 60.0), ("b", "vanilla_kd", "vanilla_kd", 120.0),
                             # c: the pick is vanilla KD itself, one set of runs serves both arms
                             ("c", "vanilla_kd", "recommended+vanilla_kd", 50.0),
                             ("d", "mixup", "recommended", 70.0))])      # d: no vanilla_kd run yet
    assert cost_ratios(runs).round(4).to_dict() == {"a": 4.0, "b": 1.0, "c": 1.0}
    assert cost_ratios(runs, "single_best").round(4).to_dict() == {"a": 4.0, "b": 10.0}
    assert cost_ratios(runs.iloc[:0]).empty


def test_a_failing_run_leaves_its_siblings_their_turn(tmp_path, tiny_backbone, monkeypatch):
    """One run that fails (every session, say) used to abort the rest of its dataset after the teacher's
    fine-tune: every other run is still tried, and the dataset counts as failed, saying which runs."""
    from autodistill import distill

    kwargs = _planned(tmp_path, tiny_backbone)
    tried = []

    def fails(config, **kwargs):
        tried.append((config.optim.seed, json.dumps(pipeline_only(config), sort_keys=True)))
        raise RuntimeError("boom")
    monkeypatch.setattr(distill, "run_distillation", fails)
    logged = []
    assert run_unseen(tmp_path / "data", ["alpha"], log=logged.append, **kwargs) == (0, 1)
    plan = json.loads((tmp_path / "out" / "plans" / "alpha.json").read_text())
    distinct = len({json.dumps(a["pipeline"], sort_keys=True) for a in plan["arms"]})
    assert len(set(tried)) == len(tried) == 2 * distinct
    assert any("run(s) failed" in line and "boom" in line for line in logged)
    assert any("Traceback" in line for line in logged)


def test_the_cheaper_pipelines_run_first_all_their_seeds(tmp_path, tiny_backbone, monkeypatch):
    """A dataset whose runs take hours: a session that ends mid-dataset should have recorded what it could, so
    pipelines that train no augmented copies run before those that do, each with all its seeds."""
    from autodistill import distill

    kwargs = dict(_planned(tmp_path, tiny_backbone), log=lambda _: None)
    tried = []

    def fails(config, **kwargs):
        tried.append((config.optim.seed, bool(config.augmentation.augmenters)))
        raise RuntimeError("boom")
    monkeypatch.setattr(distill, "run_distillation", fails)
    run_unseen(tmp_path / "data", ["alpha"], **kwargs)
    plan_file = tmp_path / "out" / "plans" / "alpha.json"
    plan = json.loads(plan_file.read_text())
    plan["arms"][0]["pipeline"] = pipeline_only(candidate_config("aug_random"))   # the pick augments, listed first
    plan_file.write_text(json.dumps(plan))
    tried.clear()
    run_unseen(tmp_path / "data", ["alpha"], **kwargs)
    assert tried[-2:] == [(1, True), (2, True)] and not any(augmented for _, augmented in tried[:-2])
    assert [seed for seed, _ in tried[:2]] == [1, 2]


def test_runs_of_one_dataset_must_share_their_teacher(tmp_path):
    from autodistill.meta.build import TeacherMismatch
    from autodistill.meta.unseen import _check_same_teacher

    def record(teacher_score, seed):
        return RunRecord.create(dataset_fingerprint="fp", meta_features={}, config=candidate_config("vanilla_kd"),
                                metrics={"student_score": 0.8}, teacher_score=teacher_score, wall_seconds=1.0,
                                student_parameters=1, status="completed", search={"dataset": "d"}).replace(seed=seed)
    store = RecordStore(tmp_path / "runs.jsonl")
    _check_same_teacher(store, 0.9, "d")           # the first run sets the teacher
    store.append(record(0.9, 1))
    _check_same_teacher(store, 0.9, "d")
    with pytest.raises(TeacherMismatch, match="would not pair"):
        _check_same_teacher(store, 0.88, "d")


def test_a_teacher_unlike_the_recorded_runs_is_refused_before_any_student_trains(tmp_path, tiny_backbone,
                                                                                 monkeypatch):
    """The check used to come after a whole student run (an hour on a tweet dataset), on its record."""
    from autodistill import distill

    kwargs = dict(_planned(tmp_path, tiny_backbone, epochs=1), seeds=(1,))
    RecordStore(tmp_path / "out" / "runs" / "alpha.jsonl").append(RunRecord.create(
        dataset_fingerprint="fp", meta_features={}, config=candidate_config("vanilla_kd"), metrics={},
        teacher_score=0.123, wall_seconds=1.0, student_parameters=1, status="completed", search={"dataset": "alpha"},
        provenance={"seed": 7}))
    trained = []
    monkeypatch.setattr(distill, "run_distillation", lambda config, **kwargs: trained.append(config))
    logged = []
    assert run_unseen(tmp_path / "data", ["alpha"], log=logged.append, **kwargs) == (0, 1)
    assert trained == [] and any("would not pair" in line and "0.123" in line for line in logged), logged


def test_a_datasets_runs_continue_only_from_a_clean_checkout_of_its_engine_commit(tmp_path):
    from autodistill.meta.unseen import EngineMismatch, _check_same_engine

    def record(seed, commit, dirty=False):
        return RunRecord.create(dataset_fingerprint=f"fp{seed}", meta_features={}, config=candidate_config("vanilla_kd"),
                                metrics={"student_score": 0.8}, teacher_score=0.9, wall_seconds=1.0,
                                student_parameters=1, status="completed", search={"dataset": "d"},
                                provenance={"git": {"commit": commit, "dirty": dirty}}).replace(seed=seed)
    store = RecordStore(tmp_path / "runs.jsonl")
    _check_same_engine(store, "d", {"commit": "b" * 40, "dirty": True})      # no runs yet: any checkout starts
    store.append(record(1, "a" * 40))
    _check_same_engine(store, "d", {"commit": "a" * 40, "dirty": False})
    _check_same_engine(store, "d", {"commit": None, "dirty": None})          # git cannot say: the teacher check
    with pytest.raises(EngineMismatch, match="trained at aaaaaaa, this checkout is bbbbbbb: .* add --detach "
                                             "<folder> aaaaaaa"):
        _check_same_engine(store, "d", {"commit": "b" * 40, "dirty": False})
    with pytest.raises(EngineMismatch, match="aaaaaaa with uncommitted changes"):
        _check_same_engine(store, "d", {"commit": "a" * 40, "dirty": True})
    store.append(record(2, "0" * 40))                                         # a later commit, sorted first
    with pytest.raises(EngineMismatch, match="trained at aaaaaaa, 0000000, .* <folder> aaaaaaa"):
        _check_same_engine(store, "d", {"commit": "b" * 40, "dirty": False})  # the first run's commit advised
    dirty = RecordStore(tmp_path / "dirty.jsonl")
    dirty.append(record(1, "e" * 40, dirty=True))                            # a dirty run names no engine
    with pytest.raises(EngineMismatch, match="none from a clean checkout.*new --out"):
        _check_same_engine(dirty, "d", {"commit": "e" * 40, "dirty": False})


def test_a_plans_relative_data_path_is_read_from_this_invocations_dataset_folder(tmp_path):
    from autodistill.config import PipelineConfig
    from autodistill.meta.unseen import _trained_from
    planned = PipelineConfig.model_validate({"data": {"train": "../shared/datasets/alpha"}})
    assert _trained_from(planned, tmp_path / "data" / "alpha").data.train == str((tmp_path / "data" / "alpha").resolve())


def test_only_the_engine_makes_a_checkout_dirty(tmp_path, monkeypatch):
    """The records, reports and logs a run writes into the tree are not the engine: a second session from the
    same worktree was refused "with uncommitted changes" because its first had rewritten the report."""
    import subprocess

    monkeypatch.undo()                                                        # the real git_commit, not clean_checkout's
    from autodistill.meta.build import git_commit

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    for name in ("autodistill/engine.py", "meta_dataset/report.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("one\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    (tmp_path / "meta_dataset" / "report.md").write_text("rewritten\n")
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "autodistill" / "engine.py").write_text("changed\n")
    assert git_commit.__wrapped__(tmp_path)["dirty"] is True                # uncached: the tree changed
