"""Search: spaces as data, the Ray Tune + Optuna + ASHA runner, records, resume and a real local cluster."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from autodistill.config import PipelineConfig
from autodistill.data import bundled_dataset_path, load_task_data
from autodistill.meta import META_DATASET_DIR
from autodistill.progress import EventLog
from autodistill.records import RecordStore, RunRecord, load_records
from service.ray_backend import free_ports
from autodistill.search.space import SearchSpace, SpaceError, encode_points, preset_names

VENV_BIN = Path(sys.executable).parent
CR = str(bundled_dataset_path())


# --------------------------------------------------------------------------- helpers
def tiny_space(backbone: str, **budget) -> dict:
    """A small conditional space over a tiny teacher, sized for tests (1 epoch, 400 rows, len 32)."""
    return {
        "name": "tiny",
        "base": {"data": {"max_train_examples": 400, "max_length": 32},
                 "teachers": [{"backbone": backbone, "epochs": 3, "learning_rate": 3e-3, "batch_size": 32}],
                 "optim": {"epochs": 1, "evals_per_epoch": 2, "batch_size": 32, "eval_batch_size": 256}},
        "budget": {"trials": 4, "max_concurrent_trials": 2, "cpus_per_trial": 1, "grace_period": 1,
                   "reduction_factor": 2, "max_t": 20, **budget},
        "params": [
            {"name": "optim.learning_rate", "float": [3e-4, 5e-3], "log": True},
            {"name": "loss.intermediate.objective", "choices": ["none", "mse", "mi_alpha"]},
            {"name": "loss.intermediate.alpha", "choices": [0.5, 0.9],
             "when": {"loss.intermediate.objective": ["mi_alpha"]}},
            {"name": "augmentation.augmenters", "choices": [[], [{"name": "random", "p": 0.1}]]},
        ],
    }


def write_space(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def cli_env() -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"})
    return env


# --------------------------------------------------------------------------- spaces
def test_invalid_spaces_name_the_entry(tiny_backbone):
    good = tiny_space(tiny_backbone)
    bad_path = json.loads(json.dumps(good))
    bad_path["params"].insert(1, {"name": "optim.learnig_rate", "float": [1e-4, 1e-3]})
    with pytest.raises(SpaceError, match=r"params\[1\] \(optim.learnig_rate\).*no field 'learnig_rate'"):
        SearchSpace.from_dict(bad_path)

    bad_choice = json.loads(json.dumps(good))
    bad_choice["params"][1]["choices"].append("no_such_objective")
    with pytest.raises(SpaceError, match=r"params\[1\] \(loss.intermediate.objective\).*no_such_objective"):
        SearchSpace.from_dict(bad_choice)

    bad_bound = json.loads(json.dumps(good))
    bad_bound["params"][2] = {"name": "loss.intermediate.alpha", "float": [0.0, 1.5],
                              "when": {"loss.intermediate.objective": ["mi_alpha"]}}
    with pytest.raises(SpaceError, match=r"params\[2\] \(loss.intermediate.alpha\).*1.5"):
        SearchSpace.from_dict(bad_bound)

    # alpha without its condition is an invalid config: the space must say "when"
    no_when = json.loads(json.dumps(good))
    del no_when["params"][2]["when"]
    with pytest.raises(SpaceError, match=r"params\[2\] \(loss.intermediate.alpha\)"):
        SearchSpace.from_dict(no_when)

    later = json.loads(json.dumps(good))
    later["params"][0]["when"] = {"loss.intermediate.objective": ["mse"]}
    with pytest.raises(SpaceError, match=r"params\[0\] \(optim.learning_rate\).*not an earlier parameter"):
        SearchSpace.from_dict(later)

    bad_base = json.loads(json.dumps(good))
    bad_base["base"]["optim"]["epochz"] = 1
    with pytest.raises(SpaceError, match="epochz"):
        SearchSpace.from_dict(bad_base)


def test_presets_load_and_validate():
    assert {"full", "distiller", "cpu-fast"} <= set(preset_names())
    full = SearchSpace.load("full")
    names = {p.name for p in full.params}
    for needed in ("loss.intermediate.alpha", "loss.intermediate.critic", "loss.intermediate.mapping",
                   "weighting.strategy", "dynamic.selection", "dynamic.objective_adaptation", "mixup.enabled",
                   "loss.prediction.temperature", "augmentation.augmenters", "optim.learning_rate"):
        assert needed in names
    objectives = next(p for p in full.params if p.name == "loss.intermediate.objective").choices
    assert {"mi_alpha", "rail_l", "rail_c", "pkd", "cos", "hidden_ce"} <= set(objectives)
    mappings = next(p for p in full.params if p.name == "loss.intermediate.mapping").choices
    assert {"random", "emd", "skip", "last"} <= set(mappings)
    distiller = SearchSpace.load("distiller")
    assert len(next(p for p in distiller.params if p.name == "augmentation.augmenters").choices) == 10
    fast = SearchSpace.load(Path(__file__).parents[1] / "search_spaces" / "cpu-fast.yaml")
    assert fast.budget.trials >= 8 and fast.base["data"]["max_length"] == 64
    with pytest.raises(SpaceError, match="no-such-preset"):
        SearchSpace.load("no-such-preset")


def test_conditional_params_only_when_active():
    space = SearchSpace.load("full")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    seen_alpha = seen_mapping_none = 0
    for _ in range(150):
        trial = study.ask()
        space(trial)
        params = trial.params
        objective = params["loss.intermediate.objective"]
        assert ("loss.intermediate.alpha" in params) == (objective == "mi_alpha")
        assert ("loss.intermediate.mapping" in params) == (objective != "none")
        assert ("mixup.student_weight" in params) == params["mixup.enabled"]
        assert ("weighting.strategy" in params) == (params["loss.prediction.type"] != "annealing")
        if "loss.intermediate.random_resample" in params:
            assert params["loss.intermediate.mapping"] == "random"
        seen_alpha += "loss.intermediate.alpha" in params
        seen_mapping_none += objective == "none"
        cfg = space.to_config(params)   # every sampled point is a valid pipeline config
        assert isinstance(cfg, PipelineConfig)
        assert isinstance(cfg.augmentation.augmenters, list)
        study.tell(trial, 0.0)
    assert seen_alpha and seen_mapping_none
    # complex (list) choices reach Optuna as strings and come back as lists; warm starts encode them
    [point] = encode_points(space, [{"augmentation.augmenters": [{"name": "random", "p": 0.1}],
                                     "loss.intermediate.objective": "mi_alpha", "loss.intermediate.alpha": 0.7}])
    assert isinstance(point["augmentation.augmenters"], str)
    assert space.to_config(point).loss.intermediate.alpha == 0.7
    with pytest.raises(SpaceError, match="outside the space"):
        encode_points(space, [{"optim.learning_rate": 5.0}])


def test_records_dedup_and_meta_features(tmp_path):
    from autodistill.data import load_task_data
    from autodistill.config import DataConfig
    task = load_task_data(DataConfig(train=CR, max_train_examples=50))
    meta = {"num_labels": task.num_labels, "n_train": len(task.train)}
    store = RecordStore(tmp_path)
    cfg = PipelineConfig()
    rec = RunRecord.create(dataset_fingerprint="fp", meta_features=meta, config=cfg, metrics={"student_score": 0.5},
                           teacher_score=0.9, wall_seconds=1.0, student_parameters=10, status="completed")
    assert store.append(rec) and not store.append(rec.replace(wall_seconds=2.0))
    assert not store.append(rec.to_dict())                       # the written form is the same record
    moved = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": "/elsewhere"})})
    assert not store.append(RunRecord.create(dataset_fingerprint="fp", meta_features=meta, config=moved, metrics={},
                                             teacher_score=None, wall_seconds=None, student_parameters=None,
                                             status="completed"))
    other_seed = PipelineConfig.model_validate({"optim": {"seed": 7}})
    assert store.append(RunRecord.create(dataset_fingerprint="fp", meta_features=meta, config=other_seed, metrics={},
                                         teacher_score=None, wall_seconds=None, student_parameters=None,
                                         status="completed"))
    rows = store.read()
    assert len(rows) == 2 and all(r.schema_version == 1 and r.created_at for r in rows)
    assert set(rows[0].versions) == {"torch", "transformers", "ray", "optuna", "autodistill"}
    assert rows[0].student_value == 0.5 and rows[0].teacher_value == 0.9 and rows[0].ratio == pytest.approx(0.5 / 0.9)
    assert rows[0].candidate_name == f"cfg-{rows[0].config_hash[:12]}" and rows[1].seed == 7
    line = json.loads(store.path.read_text().splitlines()[0])
    assert set(line) == {"schema_version", "key", "dataset_fingerprint", "meta_features", "config", "config_hash",
                         "params", "metrics", "teacher_score", "wall_seconds", "student_parameters", "seed", "status",
                         "search", "versions", "created_at"}          # the v1 written form


def test_every_committed_record_reads_and_writes_back_unchanged():
    """The committed meta-dataset (schema version 1: search, build and Distiller-import records) reads
    into typed records whose written form is the line as it was."""
    def parsed(line: str):
        try:
            return json.loads(line)
        except json.JSONDecodeError:   # a line the pilot's background job is writing right now
            return None

    lines = [parsed(line) for path in sorted(META_DATASET_DIR.rglob("*.jsonl")) if "datasets" not in path.parts
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lines = [d for d in lines if isinstance(d, dict) and "config" in d]
    assert len(lines) > 1000 and {d.get("schema_version") for d in lines} == {1}
    for d in lines:
        assert RunRecord.from_dict(d).to_dict() == d
    records = load_records([META_DATASET_DIR / "runs", META_DATASET_DIR / "v2_pilot" / "runs",
                            META_DATASET_DIR / "distiller"])
    assert {r.source for r in records} >= {"autodistill-meta-build", "distiller"}
    assert all(r.dataset_name and r.candidate_name for r in records)


# --------------------------------------------------------------------------- searches
def test_four_trial_search_in_process(tiny_backbone, tmp_path):
    from autodistill.meta.features import search_meta_features
    from autodistill.search.driver import SearchRequest, format_leaderboard, run_search
    result = run_search(SearchRequest(CR, tiny_space(tiny_backbone), tmp_path / "out", trials=4, quiet=True,
                                      meta_features=search_meta_features))
    assert not result.interrupted
    records = RecordStore(tmp_path / "out").read()
    assert len(records) == 4
    assert len({r.search["trial_id"] for r in records}) == 4
    for r in records:
        assert r.dataset_fingerprint == result.dataset_fingerprint
        assert r.meta_features["log_n_train"] == pytest.approx(math.log1p(400)) and r.teacher_score is not None
        assert r.meta_features["teacher_score"] == pytest.approx(r.teacher_score)   # the recommender's
        assert r.pipeline_config.data.max_length == 32
        assert r.status in ("completed", "stopped_early")
        assert r.versions["ray"] and r.seed == 42
    done = [r for r in records if r.status == "completed"]
    assert done and all(r.student_parameters > 0 and r.metrics["teacher_outputs"] == "cached" for r in done)
    # the teacher was trained once, in the driver; trials found it (and its logits) in the caches
    assert all(r.metrics["teacher_from_cache"] == [True] for r in done)
    best = result.best_dir
    assert (best / "student" / "config.json").is_file() and (best / "config.yaml").is_file()
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["student_score"] == pytest.approx(result.best_score)
    # chosen on the dev slice: the highest dev score among the completed students, whatever their validation
    completed = [r for r in result.trials if r["status"] == "completed"]
    assert result.best["dev_score"] == max(r["dev_score"] for r in completed) == pytest.approx(metrics["best_dev_score"])
    assert json.loads((best / "trial.json").read_text())["dev_score"] == pytest.approx(metrics["best_dev_score"])
    for r in records:   # a stopped trial never reached validation: its record holds dev scores only
        assert (r.status == "completed") == ("student_score" in r.metrics) and r.metrics["best_dev_score"] is not None
    assert "completed" in format_leaderboard(result.trials)


def test_a_trial_over_its_memory_limit_fails_saying_so(tiny_backbone, tmp_path):
    """memory_gb_per_trial is asked of Ray and enforced in the trial: below what a trial's process holds,
    every trial fails, and the search says which setting to change."""
    from autodistill.search.driver import SearchRequest, run_search
    from autodistill.config import DataConfig

    log = io.StringIO()
    space = tiny_space(tiny_backbone, trials=2, max_failures=0, memory_gb_per_trial=0.05)
    # (and the driver warns of validation rows whose text is also trained on: two rows of the train sample here)
    data = tmp_path / "cr_overlap"
    data.mkdir()
    (data / "train.jsonl").write_bytes((Path(CR) / "train.jsonl").read_bytes())
    trained = load_task_data(DataConfig(train=str(data / "train.jsonl"), validation=str(Path(CR) / "validation.jsonl"),
                                        **space["base"]["data"])).train
    copies = "".join(json.dumps({"text": trained.text_a[i], "label": trained.labels[i]}) + "\n" for i in (0, 1))
    (data / "validation.jsonl").write_text((Path(CR) / "validation.jsonl").read_text() + copies)
    result = run_search(SearchRequest(str(data), space, tmp_path / "out", trials=2), events=EventLog(stream=log))
    said = log.getvalue()
    assert "warning: 2 of the " in said and " validation rows have a text (pair) that is also in train" in said
    assert "each trial asks Ray for 1 cpu, 0.05 GiB of memory (its limit)" in said
    assert all(r["status"] == "error" for r in result.trials) and "every trial failed" in result.failure
    assert said.count("over memory_gb_per_trial=0.05 GiB: raise memory_gb_per_trial") == 2
    assert ("most often: autodistill.resources.MemoryLimitExceeded (2 of 2 trials), e.g. "
            "autodistill.resources.MemoryLimitExceeded: at step 1, this process held") in result.failure


def test_a_search_whose_trials_all_failed_names_their_most_common_kind_of_error():
    from autodistill.search.driver import _most_common_error
    errors = ["MemoryLimitExceeded: at step 3, this process held 4.10 GiB", "ValueError: loss is nan",
              "MemoryLimitExceeded: at step 9, this process held 4.02 GiB", "an error", "ValueError: loss is nan"]
    assert _most_common_error(errors) == ("; most often: MemoryLimitExceeded (2 of 5 trials), e.g. "
                                          "MemoryLimitExceeded: at step 3, this process held 4.10 GiB")
    assert _most_common_error(["an error", None]) == ""


def test_the_best_student_is_chosen_by_dev_score_not_validation():
    """Choosing on the scored validation split would inflate the score the user is shown: the leaderboard
    puts completed trials first, then by dev score, and ignores validation."""
    from autodistill.search.driver import _rank
    rows = [{"trial_id": "a", "status": "completed", "dev_score": 0.80, "score": 0.95},
            {"trial_id": "b", "status": "completed", "dev_score": 0.85, "score": 0.70},
            {"trial_id": "c", "status": "stopped_early", "dev_score": 0.99, "score": None},
            {"trial_id": "d", "status": "error", "dev_score": None, "score": None}]
    assert [r["trial_id"] for r in sorted(rows, key=_rank, reverse=True)] == ["b", "a", "c", "d"]


def test_a_trial_cut_short_by_ctrl_c_or_the_budget_is_unfinished_not_stopped_by_asha(tmp_path, monkeypatch):
    """Ray marks the trials running at a Ctrl-C or at the end of the time budget TERMINATED (no
    ``on_trial_complete``): they are unfinished, get no record, and a resume that runs them again keeps
    their completed record; only the trials ASHA stopped are ``stopped_early``."""
    from types import SimpleNamespace as NS

    from autodistill.search import driver
    from autodistill.search.space import load_space

    monkeypatch.setattr(driver, "_STOPPED_BY_SCHEDULER", {"t_asha"})
    store = RecordStore(tmp_path)
    ctx = driver.SearchContext(load_space("cpu-fast"), store, "fp", {}, 0.9, 3,
                               {"experiment": str(tmp_path / "search"), "space": "cpu-fast"})

    def trial(trial_id, lr, last):
        params = {"optim.learning_rate": lr, "loss.prediction.type": "kl", "loss.prediction.temperature": 2.0,
                  "loss.hard_label_weight": 0.5, "loss.intermediate.objective": "none", "mixup.enabled": False,
                  "augmentation.augmenters": "[]"}
        return NS(trial_id=trial_id, status="TERMINATED", config=params, checkpoint=None, path=None, last_result=last)

    final = {"score": 0.8, "best_score": 0.8, "final": True, "validation_score": 0.79, "training_iteration": 5,
             "metrics_json": json.dumps({"best_dev_score": 0.8, "student_score": 0.79})}
    cut = trial("t_cut", 2e-4, {"score": 0.6, "best_score": 0.6, "training_iteration": 2})
    grid = [trial("t_done", 1e-4, final), cut, trial("t_asha", 3e-4, {"score": 0.5, "training_iteration": 1})]
    rows = driver._reconcile(ctx, grid)
    assert {r["trial_id"]: r["status"] for r in rows} == \
        {"t_done": "completed", "t_cut": "unfinished", "t_asha": "stopped_early"}
    assert {r.search["trial_id"]: r.status for r in store.read()} == {"t_done": "completed", "t_asha": "stopped_early"}
    # resumed: the cut trial runs again and completes; its record is kept
    assert store.append(driver.record_for(ctx, "t_cut", cut.config, final, 1.0, 5, stopped_early=False))
    # and a trial ASHA stopped before the resume stays stopped_early (its record says so)
    monkeypatch.setattr(driver, "_STOPPED_BY_SCHEDULER", set())
    assert {r["trial_id"]: r["status"] for r in driver._reconcile(ctx, grid)}["t_asha"] == "stopped_early"


def test_under_ray_client_a_trial_ended_without_its_final_report_counts_as_stopped_early(tmp_path, monkeypatch):
    """Under Ray Client (ray://) ASHA runs in a remote actor, so the driver never learns which trials it stopped:
    there the rule is the one from before the scheduler could be asked (a score without the final report)."""
    from types import SimpleNamespace as NS

    from autodistill.search import driver
    from autodistill.search.space import load_space

    monkeypatch.setattr(driver, "_STOPPED_BY_SCHEDULER", set())
    params = {"optim.learning_rate": 1e-4, "loss.prediction.type": "kl", "loss.prediction.temperature": 2.0,
              "loss.hard_label_weight": 0.5, "loss.intermediate.objective": "none", "mixup.enabled": False,
              "augmentation.augmenters": "[]"}
    trials = [NS(trial_id="t_stopped", status="TERMINATED", config=params, checkpoint=None, path=None,
                 last_result={"score": 0.5, "best_score": 0.5, "training_iteration": 1}),
              NS(trial_id="t_never_scored", status="TERMINATED", config=params, checkpoint=None, path=None,
                 last_result={"training_iteration": 0})]
    statuses = {}
    for in_driver in (True, False):
        ctx = driver.SearchContext(load_space("cpu-fast"), RecordStore(tmp_path / str(in_driver)), "fp", {}, 0.9, 2,
                                   {"experiment": "e", "space": "cpu-fast"}, scheduler_in_driver=in_driver)
        statuses[in_driver] = {r["trial_id"]: r["status"] for r in driver._reconcile(ctx, trials)}
    assert statuses[True] == {"t_stopped": "unfinished", "t_never_scored": "no result"}
    assert statuses[False] == {"t_stopped": "stopped_early", "t_never_scored": "no result"}


def test_a_resume_through_ray_client_is_refused_before_any_work(tmp_path, monkeypatch):
    from autodistill.resources import ResourceError
    from autodistill.search.driver import SearchRequest, run_search
    with pytest.raises(ResourceError, match="--address auto"):
        run_search(SearchRequest(CR, "cpu-fast", tmp_path / "out", resume=True, address="ray://10.0.0.1:10001",
                                 quiet=True))
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")      # as ray.init reads it for "auto"
    with pytest.raises(ResourceError, match="RAY_ADDRESS unset"):
        run_search(SearchRequest(CR, "cpu-fast", tmp_path / "out", resume=True, address="auto", quiet=True))
    assert not (tmp_path / "out").exists()


def test_a_resumed_search_reads_the_student_time_already_spent(tmp_path):
    """From --out, else from the storage folder it was published to (a cluster job resubmitted into a new
    --out), so the time budget counts what the interrupted run spent."""
    from autodistill.search.export import (make_storage, publish, restore_published, student_seconds_spent,
                                           write_progress)

    first, resubmitted = tmp_path / "first", tmp_path / "resubmitted"
    first.mkdir()
    resubmitted.mkdir()
    storage = make_storage(first, (tmp_path / "shared").as_uri())
    assert student_seconds_spent(storage, first) == 0.0                  # a new search
    write_progress(first / "progress.json", phase="trials", student_seconds=123.5)
    assert student_seconds_spent(storage, first) == 123.5
    publish(storage, first, ("progress.json",))
    assert student_seconds_spent(storage, resubmitted) == 123.5
    assert student_seconds_spent(make_storage(resubmitted, None), resubmitted) == 0.0
    # and its records (which trials ASHA stopped), unless the new folder has its own
    (first / "records.jsonl").write_text('{"a": 1}\n')
    publish(storage, first, ("records.jsonl",))
    assert restore_published(storage, resubmitted, "records.jsonl")
    assert (resubmitted / "records.jsonl").read_text() == '{"a": 1}\n'
    (first / "records.jsonl").write_text('{"a": 2}\n')
    publish(storage, first, ("records.jsonl",))
    assert not restore_published(storage, resubmitted, "records.jsonl")
    assert (resubmitted / "records.jsonl").read_text() == '{"a": 1}\n'


def test_a_run_interrupted_before_its_first_snapshot_left_no_trials(tmp_path):
    """Tune writes tuner.pkl (so ``can_restore``) when the run is set up and its first experiment snapshot only
    once it steps: a Ctrl-C between the two leaves no trial to list, not an error."""
    from ray import tune

    from autodistill.search.driver import _earlier_trials
    from autodistill.search.export import EXPERIMENT_NAME, make_storage

    tune.Tuner(lambda config: None, run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=str(tmp_path)))
    storage = make_storage(tmp_path, None)
    assert tune.Tuner.can_restore(storage.experiment)
    assert _earlier_trials(storage) == []


def test_an_interrupt_before_the_trials_keeps_the_student_time_already_spent(tiny_backbone, tmp_path, monkeypatch):
    """A Ctrl-C while the teacher is prepared, or while the anchor trains, must not lose what earlier runs of the
    search spent (a second early interrupt used to reset it to 0), and the anchor's own time counts."""
    from autodistill.search import driver
    from autodistill.search.export import write_progress

    space_file = write_space(tmp_path, tiny_space(tiny_backbone, max_concurrent_trials=1))
    out = tmp_path / "out"
    out.mkdir()
    write_progress(out / "progress.json", phase="interrupted", student_seconds=123.5)
    shared = tmp_path / "shared"     # a cluster job's storage folder, which a resubmitted job reads
    request = driver.SearchRequest(CR, space_file, out, trials=2, resume=True, quiet=True,
                                   anchor_pipeline=(PipelineConfig().to_dict(), "the default"),
                                   storage_path=shared.as_uri())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(driver, "prepare_teacher", interrupted)
        with pytest.raises(KeyboardInterrupt):
            driver.run_search(request)
    assert json.loads((out / "progress.json").read_text())["student_seconds"] == 123.5

    def anchor_interrupted(*args, **kwargs):
        time.sleep(2)
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "train_anchor", anchor_interrupted)
    with pytest.raises(KeyboardInterrupt):
        driver.run_search(request)
    assert json.loads((out / "progress.json").read_text())["student_seconds"] >= 125.5
    assert json.loads((shared / "progress.json").read_text())["student_seconds"] >= 125.5


def test_a_restored_search_gets_the_budget_left_and_a_fresh_callback(tmp_path):
    """Tune has no public way to change a restored run's budget or callbacks: ``_restored_tuner`` sets them on the
    installed Ray's TunerInternal (this pins that layout: an upgrade that moves it fails here), and says so
    when a Ray lacks it instead of silently granting the first run's whole budget again."""
    from types import SimpleNamespace as NS

    from ray import tune

    from autodistill.search.driver import _restored_tuner

    def restore_as(tuner):
        return NS(Tuner=NS(restore=lambda *args, **kwargs: tuner))

    said = io.StringIO()
    first_run = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(time_budget_s=100.0),
                           run_config=tune.RunConfig(storage_path=str(tmp_path)))
    callback = object()
    tuner = _restored_tuner(restore_as(first_run), "exp", None, callback, 40.0, EventLog(said))
    assert tuner._local_tuner._tune_config.time_budget_s == 40.0
    assert tuner._local_tuner.get_run_config().callbacks == [callback]
    assert said.getvalue() == ""

    other_layout = NS(_local_tuner=NS(get_run_config=lambda: NS(callbacks=None)))
    _restored_tuner(restore_as(other_layout), "exp", None, callback, 40.0, EventLog(said))
    assert "may spend it again, not only the 40 s left" in said.getvalue()
    with pytest.raises(RuntimeError, match="start a new search"):
        _restored_tuner(restore_as(NS()), "exp", None, callback, 40.0, EventLog(said))


def test_asha_stops_a_bad_region_early(tiny_backbone, tmp_path):
    from autodistill.search.driver import SearchRequest, run_search
    space = tiny_space(tiny_backbone, max_concurrent_trials=1)
    space["base"]["optim"]["evals_per_epoch"] = 4
    space["params"] = [{"name": "optim.learning_rate", "float": [1e-4, 50.0], "log": True}]
    seeds = [{"optim.learning_rate": 1e-3}, {"optim.learning_rate": 40.0}]
    result = run_search(SearchRequest(CR, space, tmp_path / "out", trials=3, warm_start=seeds, seed=0, quiet=True))
    statuses = [r["status"] for r in result.trials]
    assert "stopped_early" in statuses, result.trials
    stopped = [r for r in result.trials if r["status"] == "stopped_early"]
    assert all(r["reports"] < 4 for r in stopped)
    records = RecordStore(tmp_path / "out").read()
    assert len(records) == 3 and any(r.status == "stopped_early" for r in records)


def test_interrupted_search_resumes_without_duplicates(tiny_backbone, tmp_path, monkeypatch):
    from autodistill.search import driver
    from autodistill.search.driver import SearchRequest, run_search
    space_file = write_space(tmp_path, tiny_space(tiny_backbone, max_concurrent_trials=1))
    out = tmp_path / "out"
    cmd = [str(VENV_BIN / "autodistill"), "search", "--data", CR, "--space", str(space_file), "--trials", "4",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    records = out / "records.jsonl"
    deadline = time.time() + 150
    try:
        while time.time() < deadline and proc.poll() is None:
            if records.is_file() and records.read_text().strip():
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read()
        assert records.is_file(), "no trial finished in time"
        os.kill(proc.pid, signal.SIGINT)   # Ctrl-C
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = RecordStore(out).read()
    assert 1 <= len(before) < 4, output
    assert proc.returncode != 0, output
    kept = {r.search["trial_id"] for r in before}
    spent = json.loads((out / "progress.json").read_text())["student_seconds"]
    assert spent > 0

    said = io.StringIO()
    result = run_search(SearchRequest(CR, space_file, out, trials=4, resume=True), EventLog(said))
    assert f"{spent:.0f} s of student time were spent before the interruption" in said.getvalue()
    assert result.budget["student_seconds"] > spent      # the time budget counts the first run's students too
    after = RecordStore(out).read()
    assert len(after) == 4
    assert len({r.key for r in after}) == 4 and len({r.search["trial_id"] for r in after}) == 4
    assert kept <= {r.search["trial_id"] for r in after}        # finished trials were kept, not re-run
    assert sum(r["status"] in ("completed", "stopped_early") for r in result.trials) == 4
    assert not result.interrupted

    # resumed again (a new process: ASHA's stops known from the records only) with less budget than one student:
    # the search is skipped, its trials and best student stay
    shutil.rmtree(out / "best")
    monkeypatch.setattr(driver, "_STOPPED_BY_SCHEDULER", set())
    again = run_search(SearchRequest(CR, space_file, out, trials=4, resume=True, time_budget=1, quiet=True))
    assert {r["trial_id"]: r["status"] for r in again.trials} == {r["trial_id"]: r["status"] for r in result.trials}
    assert again.best["dev_score"] == result.best["dev_score"] and (out / "best" / "student").is_dir()
    assert len(json.loads((out / "leaderboard.json").read_text())["trials"]) == 4
    assert len(RecordStore(out).read()) == 4


def test_search_on_a_local_cluster(tiny_backbone, tmp_path):
    import secrets
    ray_bin = VENV_BIN / "ray"
    # Ray 2.60 clusters started with `ray start` use token authentication: head and driver share a token
    env = {**cli_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    (gcs, node_manager, object_manager, metrics, agent_grpc, agent_http, runtime_env, client, dash,
     min_worker) = free_ports(10)
    temp_dir = Path("/tmp") / f"adray-{os.getpid()}-{gcs}"  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=false",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
         f"--metrics-export-port={metrics}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--dashboard-agent-listen-port={agent_http}", f"--runtime-env-agent-port={runtime_env}",
         f"--ray-client-server-port={client}", f"--min-worker-port={min_worker}",
         f"--max-worker-port={min_worker + 40}", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        space_file = write_space(tmp_path, tiny_space(tiny_backbone, trials=2))
        out = tmp_path / "out"
        deadline = time.time() + 60
        while time.time() < deadline:   # wait for the GCS to accept connections
            try:
                socket.create_connection(("127.0.0.1", gcs), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, head.stdout.read()
                time.sleep(0.5)
        time.sleep(2)
        run = subprocess.run(
            [str(VENV_BIN / "autodistill"), "search", "--data", CR, "--space", str(space_file), "--trials", "2",
             "--address", f"127.0.0.1:{gcs}", "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout + run.stderr
        assert len(RecordStore(out).read()) == 2
        assert "completed" in run.stdout and (out / "best" / "student").is_dir()
        # the trials ran on the cluster we started: its session logs show the worker processes
        assert any(temp_dir.glob("session_*/logs/worker-*"))
    finally:
        head.send_signal(signal.SIGTERM)    # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


# --------------------------------------------------------------------------- recommendations as seeds
def test_full_configs_project_onto_a_space_as_distinct_points(tiny_backbone):
    from autodistill.search.space import warm_start_points
    space = SearchSpace.from_dict(tiny_space(tiny_backbone))
    cfgs = [{"optim": {"learning_rate": 1.0}, "loss": {"intermediate": {"objective": "mi_alpha", "alpha": 0.8}}},
            {"optim": {"learning_rate": 1.0}, "loss": {"intermediate": {"objective": "mi_alpha", "alpha": 0.8}}},
            {"optim": {"learning_rate": 1e-3}, "loss": {"intermediate": {"objective": "pkd"}},
             "augmentation": {"augmenters": [{"name": "random", "p": 0.1}]}}]
    full = [PipelineConfig.model_validate(c) for c in cfgs]
    first = space.params_from_config(full[0])
    assert first["optim.learning_rate"] == 5e-3                  # clipped into the range
    assert first["loss.intermediate.alpha"] == 0.9               # nearest numeric choice
    third = space.params_from_config(full[2])
    assert "loss.intermediate.objective" not in third            # pkd is not in this space: left to TPE
    assert third["augmentation.augmenters"] == [{"name": "random", "p": 0.1}]
    points = warm_start_points(space, full, 5)
    assert len(points) == 2 and encode_points(space, points)     # duplicates dropped, all valid points


def test_a_point_that_trains_the_anchor_again_is_not_a_seed():
    """``auto`` trains its top recommendation first; a later one the space projects onto exactly that
    student (vanilla KD then no_kd in cpu-fast, say) would spend a trial on it again."""
    from autodistill.config import with_pipeline
    from autodistill.search.space import distinct_points, load_space

    space = load_space("cpu-fast")
    base = space.to_config({})
    anchor = with_pipeline(base, PipelineConfig().to_dict())
    same = space.to_config(space.params_from_config(anchor))         # the anchor's student, as a trial
    other = space.to_config({**space.params_from_config(anchor), "optim.learning_rate": 2e-4})
    assert [k for k, _ in distinct_points(space, [same, other], 2)] == [0, 1]
    assert [k for k, _ in distinct_points(space, [same, other], 2, trained=[anchor])] == [1]


def test_auto_recommends_then_searches_seeded(tiny_backbone, tmp_path):
    from autodistill.auto import run_auto
    from autodistill.meta.fitting import DEFAULT_MODEL_DIR
    space = SearchSpace.from_dict(tiny_space(tiny_backbone, trials=2))
    result = run_auto(CR, tmp_path / "auto", DEFAULT_MODEL_DIR, space=space, trials=2, time_budget=None,
                      seeds=2, quiet=True)
    saved = json.loads((tmp_path / "auto" / "recommendations.json").read_text())
    assert len(saved["recommendations"]) == 8 and 1 <= len(saved["warm_start"]) <= 2
    assert saved["meta_features"]["num_labels"] == 2
    assert saved["warm_start_source"] in ("meta_model", "portfolio") and saved["reason"]   # says which
    assert all(set(r["config"]) <= {"augmentation", "mixup", "loss", "weighting", "dynamic"}
               for r in saved["recommendations"])                # pipelines only: the budget is the space's
    assert len(result.search.trials) == 2 and result.search.best_dir is not None
    trial_params = [r.params for r in RecordStore(tmp_path / "auto").read()]
    assert any(all(p.get(k) == v for k, v in space.decode(space.encode(result.warm_start[0])).items())
               for p in trial_params)                            # the first seed was evaluated
