"""A search the service submits to a Ray cluster it shares no folder with (``ray_address`` with
``search_storage``): the job's runtime_env ships the autodistill package (py_modules) and the dataset
(working_dir), and progress, trials and the best student come back through the storage URI.

The cluster is a real local Ray head (with its job server) started without this tree on its
PYTHONPATH, so the job runs the shipped code; the dataset's file is deleted once the search is
submitted, so the job reads the shipped copy."""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from service import db
from service.ray_backend import LocalRayHead, backend_from_settings, job_runtime_env
from service.searches import SearchManager
from service.settings import ServiceSettings
from service.store import Store
from service_support import CR_TRAIN


def test_runtime_env_ships_the_package_and_the_job_folder(tmp_path):
    import autodistill
    env = job_runtime_env({"A": "1"}, tmp_path)
    assert env["working_dir"] == str(tmp_path) and env["env_vars"] == {"A": "1"}
    assert env["py_modules"] == [str(Path(autodistill.__file__).resolve().parent)]
    assert job_runtime_env({"A": "1"}, None) == {"env_vars": {"A": "1"}}     # the embedded local head


@pytest.fixture
def storage_dir():
    path = Path("/var/tmp") / f"autodistill-search-storage-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_remote_search_ships_code_and_data_and_reports_through_storage(tiny_backbone, tmp_path, storage_dir,
                                                                          monkeypatch):
    cluster_state = tmp_path / "cluster"
    monkeypatch.delenv("PYTHONPATH", raising=False)     # the cluster's python has the installed package only
    head = LocalRayHead(cluster_state, num_cpus=2)
    info = head.start()
    try:
        settings = ServiceSettings(state_dir=tmp_path / "service", ray_address=info.dashboard_url,
                                   ray_auth_token=info.token, search_storage=f"file://{storage_dir}",
                                   search_entrypoint_cpus=0)
        engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
        db.migrate(engine)
        store = Store(engine)
        data = tmp_path / "upload" / "train.jsonl"
        data.parent.mkdir()
        data.write_text("".join(CR_TRAIN.read_text().splitlines(keepends=True)[:400]), encoding="utf-8")
        store.add_dataset({"id": "ds1", "owner": "k", "name": "d", "source_kind": "upload", "source": "x",
                           "data_config": {"train": str(data)}, "fingerprint": "f", "stats": {},
                           "meta_features": {}, "created_at": time.time()})
        backend, _ = backend_from_settings(settings)
        manager = SearchManager(store, backend, settings)
        assert manager.remote
        request = {"space": "cpu-fast", "trials": 2, "max_concurrent_trials": 2, "time_budget": 600}
        config = {"teachers": [{"backbone": tiny_backbone, "epochs": 2, "learning_rate": 3e-3}],
                  "data": {"max_length": 32}, "optim": {"eval_batch_size": 256, "epochs": 1}}
        search = manager.create("k", store.get_dataset(None, "ds1"), request, None, job_config=config)
        shutil.rmtree(data.parent)                         # the job must use the copy it was sent
        job_info = backend.client.get_job_info(search["id"])
        assert job_info.runtime_env["working_dir"].startswith("gcs://")          # uploaded by Ray
        assert job_info.runtime_env["py_modules"][0].startswith("gcs://")
        assert str(data) not in job_info.entrypoint
        deadline = time.time() + 300
        while search["state"] not in ("succeeded", "failed", "cancelled"):
            assert time.time() < deadline, f"search still {search['state']}"
            time.sleep(2)
            search = manager.refresh(store.get_search(None, search["id"]))
        assert search["state"] == "succeeded", backend.log_tail(search["id"])
    finally:
        head.stop()
    out = Path(search["out_dir"])
    assert search["progress"]["phase"] == "finished" and search["best"]["score"] is not None
    trials = manager.trials(search)
    assert len(trials) == 2 and all(t["status"] in ("completed", "stopped_early") for t in trials)
    best = manager.best_dir(search)
    assert best is not None and (best / "student" / "model.safetensors").is_file()
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["budget"]["teacher_fine_tunes"] == 1
    assert board["budget"]["storage_path"] == f"file://{storage_dir}/{search['id']}"
    assert (storage_dir / search["id"] / "best" / "student").is_dir()
    assert not (out / "search").exists()                 # the Tune run lives in the storage, not here
