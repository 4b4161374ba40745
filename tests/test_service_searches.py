"""SearchManager's bookkeeping against a scripted JobBackend (the Ray path itself is covered by the
API and integration tests): a job the cluster lost is resubmitted with --resume, a few times at most."""
from __future__ import annotations

import time

import pytest

from service import db
from service.errors import ApiError
from service.searches import MAX_SUBMISSIONS, SUBMIT_GRACE_S, SearchManager
from service.settings import ServiceSettings
from service.store import Store
from service_support import ScriptedBackend


@pytest.fixture
def manager(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    db.migrate(engine)
    store = Store(engine)
    store.add_dataset({"id": "ds1", "owner": "k", "name": "d", "source_kind": "upload", "source": "x",
                       "data_config": {"train": str(tmp_path / "train.jsonl")}, "fingerprint": "f",
                       "stats": {}, "meta_features": {}, "created_at": time.time()})
    return SearchManager(store, ScriptedBackend(), ServiceSettings(state_dir=tmp_path))


def _search(manager, tmp_path, state="running", age=2 * SUBMIT_GRACE_S):
    out = tmp_path / "searches" / "s1"
    (out / "search").mkdir(parents=True)          # an experiment folder: a resumable search
    now = time.time() - age
    manager.store.add_search({"id": "s1", "owner": "k", "dataset_id": "ds1", "state": state,
                              "request": {"space": "cpu-fast", "trials": 4}, "out_dir": str(out), "progress": {},
                              "best": None, "error": None, "submissions": 1, "created_at": now, "started_at": now,
                              "finished_at": None, "updated_at": now, "folded": False})
    return manager.store.get_search(None, "s1")


def test_a_job_the_cluster_lost_is_resubmitted_to_resume(manager, tmp_path, monkeypatch):
    search = _search(manager, tmp_path)
    row = manager.refresh(search)
    assert row["state"] == "queued" and row["submissions"] == 2
    job_id, cmd = manager.backend.submitted[-1]
    assert job_id == "s1" and "--resume" in cmd and cmd[cmd.index("--trials") + 1] == "4"
    monkeypatch.setattr("service.searches.SUBMIT_GRACE_S", 0.0)   # each loss below comes long after its submission
    for _ in range(MAX_SUBMISSIONS - 1):              # lost again and again: gives up, says why
        manager.backend.states.pop("s1")
        row = manager.refresh(manager.store.get_search(None, "s1"))
    assert row["state"] == "failed" and "lost" in row["error"]
    assert len(manager.backend.submitted) == MAX_SUBMISSIONS - 1


def test_terminal_states_record_the_end(manager, tmp_path):
    search = _search(manager, tmp_path)
    manager.backend.states["s1"] = "failed"
    row = manager.refresh(search)
    assert row["state"] == "failed" and row["finished_at"] and "boom" in row["error"]
    assert manager.refresh(row) == row                 # terminal rows are left alone


def test_a_lost_job_whose_dataset_is_gone_fails(manager, tmp_path):
    search = _search(manager, tmp_path)
    with manager.store.engine.begin() as conn:   # gone behind the service's back (its API refuses: in use)
        conn.execute(db.datasets.delete())
    row = manager.refresh(search)
    assert row["state"] == "failed" and "deleted" in row["error"] and not manager.backend.submitted


def test_a_remote_search_sends_its_inputs_with_the_job_not_as_paths(tmp_path):
    """With ray_address + search_storage: the job folder holds the dataset, config and space; the
    entrypoint names only paths inside it and the search's storage URI; per-request GPUs pass through."""
    import json
    from pathlib import Path

    from service_support import small_jsonl
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    db.migrate(engine)
    store = Store(engine)
    train, val = small_jsonl(tmp_path / "train.jsonl"), small_jsonl(tmp_path / "val.jsonl", seed=1)
    store.add_dataset({"id": "ds1", "owner": "k", "name": "d", "source_kind": "upload", "source": "x",
                       "data_config": {"train": str(train), "validation": str(val)}, "fingerprint": "f",
                       "stats": {}, "meta_features": {}, "created_at": time.time()})
    settings = ServiceSettings(state_dir=tmp_path, ray_address="http://cluster:8265",
                               search_storage="s3://bucket/searches", search_gpus_per_trial=0.5)
    manager = SearchManager(store, ScriptedBackend(), settings)
    search = manager.create("k", store.get_dataset(None, "ds1"), {"space": "cpu-fast", "trials": 3}, None)
    job_id, cmd = manager.backend.submitted[-1]
    job = manager.backend.files[job_id]
    assert job == Path(search["out_dir"]) / "job"
    assert (job / "data" / "train.jsonl").read_bytes() == train.read_bytes()
    assert json.loads((job / "request_config.json").read_text())["data"]["validation"] == "data/val.jsonl"
    assert (job / "space.yaml").is_file()
    assert cmd[cmd.index("--data") + 1] == "data/train.jsonl" and cmd[cmd.index("--space") + 1] == "space.yaml"
    assert cmd[cmd.index("--storage-path") + 1] == f"s3://bucket/searches/{job_id}"
    assert cmd[cmd.index("--gpus-per-trial") + 1] == "0.5"                 # the service's default
    assert cmd[cmd.index("--memory-per-trial") + 1] == "4.0"               # every trial is bounded in memory
    assert cmd[cmd.index("--driver-memory") + 1] == "6.0"                  # and so is the driver
    assert not any(str(tmp_path) in part for part in cmd[2:])              # no path of this machine
    assert "AUTODISTILL_CACHE" not in manager._env()
    row = manager.store.get_search(None, job_id)
    row = {**row, "request": {**row["request"], "gpus_per_trial": 2}}
    cmd = manager.entrypoint(row, store.get_dataset(None, "ds1"), resume=False)
    assert cmd[cmd.index("--gpus-per-trial") + 1] == "2"                   # the request's own


def test_an_ended_remote_search_whose_results_cannot_be_read_yet_stays_unfinished(manager, tmp_path, monkeypatch):
    """A terminal row is never refreshed again: ending it while the storage is unreachable lost its leaderboard
    and best student for good. It stays unfinished (later refreshes read them) for up to search_grace_s,
    then ends failed, saying why."""
    search = _search(manager, tmp_path)
    manager.backend.states["s1"] = "succeeded"
    reachable = {"now": False}
    monkeypatch.setattr(SearchManager, "_pull", lambda self, s, final: reachable["now"] or not final)
    row = manager.refresh(search)
    assert row["state"] == "running" and manager.store.get_search(None, "s1")["state"] == "running"
    with pytest.raises(ApiError) as refused:        # ended: a cancel would lose its results for good
        manager.cancel(row)
    assert refused.value.status == 409 and manager.store.get_search(None, "s1")["state"] == "running"
    reachable["now"] = True
    assert manager.refresh(row)["state"] == "succeeded"

    second = manager.store.add_search({**search, "id": "s2", "out_dir": str(tmp_path / "s2")})
    assert second == "added"
    manager.backend.states["s2"] = "succeeded"
    reachable["now"] = False
    monkeypatch.setattr(manager.settings, "search_grace_s", 0.0)
    row = manager.refresh(manager.store.get_search(None, "s2"))
    assert row["state"] == "failed" and "could not be read from the search storage" in row["error"]


def test_a_cluster_that_never_answers_does_not_hold_a_request_forever(monkeypatch):
    """Ray's job SDK sets no timeout: a job server that accepts the connection and never answers held the
    request thread (a GET, a cancel) for good. Every call is bounded by RayJobsBackend.REQUEST_TIMEOUT."""
    import socket
    import threading

    from service.ray_backend import RayJobsBackend

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    monkeypatch.setattr(RayJobsBackend, "REQUEST_TIMEOUT", (1.0, 1.0))
    backend = RayJobsBackend(f"http://127.0.0.1:{server.getsockname()[1]}")
    started = time.monotonic()
    with pytest.raises(Exception):
        backend.status("search_x")
    assert time.monotonic() - started < 30
    server.close()


def test_a_job_submitted_moments_ago_is_not_taken_for_lost(manager, tmp_path):
    """Its submission may still be in flight (from another service process): resubmitting it made create's own
    submit fail as a duplicate, the search marked failed while its job ran."""
    search = _search(manager, tmp_path, state="queued", age=1.0)
    assert manager.refresh(search)["state"] == "queued" and not manager.backend.submitted


def test_a_submission_ray_took_though_its_answer_was_lost_is_not_failed(manager, tmp_path, monkeypatch):
    backend = manager.backend
    real_submit = backend.submit

    def took_it_then_failed(job_id, entrypoint, env, files=None):
        real_submit(job_id, entrypoint, env, files)
        raise ConnectionError("the answer was lost")
    monkeypatch.setattr(backend, "submit", took_it_then_failed)
    monkeypatch.setattr(SearchManager, "_package", lambda self, out, dataset, config, space: None)
    row = manager.create("k", manager.store.get_dataset(None, "ds1"), {"space": "cpu-fast", "trials": 2}, None)
    assert row["state"] == "queued" and not row["error"]


def test_a_failed_jobs_error_is_its_last_exception_or_cli_error(manager, tmp_path):
    """The job's own last word: a retried trial's earlier exception is not why the job failed."""
    search = _search(manager, tmp_path, state="running")
    manager.backend.log_text = ("ValueError: a trial failed and was retried\n"
                                "error: this process held 9.10 GiB, over --driver-memory=8 GiB: raise --driver-memory\n"
                                "(raylet) a line Ray adds after\n")
    manager.backend.states["s1"] = "failed"
    row = manager.refresh(search)
    assert row["state"] == "failed" and "held 9.10 GiB, over --driver-memory=8 GiB" in row["error"]


def test_an_empty_memory_setting_means_no_limit(tmp_path):
    from service.settings import ServiceSettings
    env = {"AUTODISTILL_SERVICE_STATE_DIR": str(tmp_path), "AUTODISTILL_SERVICE_SEARCH_MEMORY_GB_PER_TRIAL": "",
           "AUTODISTILL_SERVICE_SEARCH_MEMORY_GB_PER_DRIVER": "2.5"}
    settings = ServiceSettings.from_env(env)
    assert settings.search_memory_gb_per_trial is None and settings.search_memory_gb_per_driver == 2.5
    with pytest.raises(ValueError, match="SEARCH_MEMORY_GB_PER_DRIVER"):
        ServiceSettings.from_env({**env, "AUTODISTILL_SERVICE_SEARCH_MEMORY_GB_PER_DRIVER": "0"})
