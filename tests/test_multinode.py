"""A search on a real two-node Ray cluster whose second node shares nothing with the head but Ray.

The worker node runs in its own mount namespace: a tmpfs on /tmp (so it sees neither the test's
temp folders, where the tiny teacher backbone and the driver's cache live, nor the head's Ray
session), its own HOME and $AUTODISTILL_CACHE, and a tmpfs over the dataset's folder. A custom
resource only that node has forces every trial onto it. Tune's storage_path is a file:// URI on a
folder outside /tmp (standing in for the object storage or NFS every node of a real cluster reaches).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from autodistill.data import bundled_dataset_path
from autodistill.records import RecordStore
from ray_cluster_support import VENV_BIN, WORKER_CACHE, LocalCluster, unshare_available
from test_search import tiny_space

CR = bundled_dataset_path()


@pytest.fixture
def shared_storage():
    """A folder both namespaces see (not under /tmp), removed afterwards."""
    path = Path("/var/tmp") / f"autodistill-storage-{uuid.uuid4().hex[:10]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_search_on_two_nodes_sharing_only_ray(tiny_backbone, tmp_path, shared_storage):
    why = unshare_available()
    if why:
        pytest.skip(f"needs a private mount namespace for the second node: {why}")
    space = tiny_space(tiny_backbone, trials=2, max_concurrent_trials=1)
    space["budget"]["resources"] = {"worker_only": 1}
    space["params"][1]["choices"] = ["none", "mse"]          # mse: the trial runs the teacher live too
    del space["params"][2]                                    # (alpha: mi_alpha only)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space), encoding="utf-8")
    out = tmp_path / "out"
    with LocalCluster(head_cpus=1) as cluster:
        cluster.start_head()
        worker = cluster.add_worker(num_cpus=1, resources='{"worker_only": 1}', hide=(str(CR),))
        cluster.wait_for_nodes(2)
        worker_root = Path(f"/proc/{worker.pid}/root")          # the worker's view of the filesystem
        assert not (worker_root / str(CR).lstrip("/") / "train.jsonl").exists()
        assert not (worker_root / str(tiny_backbone).lstrip("/")).exists()
        run = subprocess.run(
            [str(VENV_BIN / "autodistill"), "search", "--data", str(CR), "--space", str(space_file),
             "--trials", "2", "--address", cluster.address, "--out", str(out),
             "--storage-path", f"file://{shared_storage}"],
            # a cache of the driver's own: the teacher is fine-tuned here, not loaded from an earlier test's
            env={**cluster.env, "AUTODISTILL_CACHE": str(tmp_path / "driver-cache")},
            capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        worker_cache = worker_root / WORKER_CACHE.lstrip("/")
        worker_cache_teachers = sorted(p.name for p in (worker_cache / "teachers").glob("*")) \
            if (worker_cache / "teachers").exists() else []

    records = RecordStore(out).read()
    assert len(records) == 2 and {r.status for r in records} <= {"completed", "stopped_early"}
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["budget"]["teacher_fine_tunes"] == 1               # once, in the driver
    assert board["budget"]["storage_path"].startswith(f"file://{shared_storage}")
    done = [r for r in records if r.status == "completed"]
    assert done, "no trial completed"
    for r in done:
        m = r.metrics
        assert m["teacher_fine_tunes_in_trial"] == 0 and m["inputs_from_object_store"] is True
        assert m["trial_cache_root"] == WORKER_CACHE                  # ran on the isolated node
    assert worker_cache_teachers == []                                 # no teacher was fine-tuned or stored there
    # the best student came back through Tune's storage (checkpoints under storage_path), complete
    best = out / "best"
    assert (best / "student" / "config.json").is_file() and (best / "student" / "model.safetensors").is_file()
    assert json.loads((best / "metrics.json").read_text())["student_score"] == pytest.approx(board["best"]["score"])
    assert any((shared_storage / "search").rglob("checkpoint_*"))
    # what another machine (the REST service) reads back from the storage: progress, records, best student
    assert json.loads((shared_storage / "progress.json").read_text())["phase"] == "finished"
    assert len((shared_storage / "records.jsonl").read_text().splitlines()) == 2
    assert (shared_storage / "best" / "student" / "model.safetensors").is_file()
    assert "teacher" in run.stdout
