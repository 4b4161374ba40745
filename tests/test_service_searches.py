"""SearchManager's bookkeeping against a scripted JobBackend (the Ray path itself is covered by the
API and integration tests): a job the cluster lost is resubmitted with --resume, a few times at most."""
from __future__ import annotations

import time

import pytest

from service import db
from service.searches import MAX_SUBMISSIONS, SearchManager
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


def _search(manager, tmp_path, state="running"):
    out = tmp_path / "searches" / "s1"
    (out / "search").mkdir(parents=True)          # an experiment folder: a resumable search
    now = time.time()
    manager.store.add_search({"id": "s1", "owner": "k", "dataset_id": "ds1", "state": state,
                              "request": {"space": "cpu-fast", "trials": 4}, "out_dir": str(out), "progress": {},
                              "best": None, "error": None, "submissions": 1, "created_at": now, "started_at": now,
                              "finished_at": None, "updated_at": now, "folded": False})
    return manager.store.get_search(None, "s1")


def test_a_job_the_cluster_lost_is_resubmitted_to_resume(manager, tmp_path):
    search = _search(manager, tmp_path)
    row = manager.refresh(search)
    assert row["state"] == "queued" and row["submissions"] == 2
    job_id, cmd = manager.backend.submitted[-1]
    assert job_id == "s1" and "--resume" in cmd and cmd[cmd.index("--trials") + 1] == "4"
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
