"""Searches as Ray Jobs: submit (job id = search id), follow (Ray's job state + the search's
``progress.json``), cancel, find again after a restart, and read trials and the best student.

The job runs ``autodistill search`` with the venv's python, writing into ``<state_dir>/searches/<id>``;
the cluster and the service must share that folder (true for the embedded local head; a remote cluster
needs shared storage mounted at the same path).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

from autodistill.search.records import RecordStore
from autodistill.search.runner import PROGRESS_FILE

from .errors import ApiError
from .ray_backend import JobBackend
from .settings import ServiceSettings
from .store import ACTIVE_STATES, Store, new_id

log = logging.getLogger("autodistill.service")

TERMINAL_STATES = ("succeeded", "failed", "cancelled")
MAX_SUBMISSIONS = 3
ENV_FORWARD = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "AUTODISTILL_CACHE", "OMP_NUM_THREADS")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class SearchManager:
    def __init__(self, store: Store, backend: JobBackend, settings: ServiceSettings):
        self.store = store
        self.backend = backend
        self.settings = settings
        self.root = settings.state_dir / "searches"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._submitting: set[str] = set()   # rows written, job not yet submitted: not "lost"

    # ------------------------------------------------------------------ submitting
    def entrypoint(self, search: dict[str, Any], dataset: dict[str, Any], resume: bool) -> list[str]:
        req, out = search["request"], Path(search["out_dir"])
        cmd = [sys.executable, "-m", "autodistill.cli", "search", "--data", dataset["data_config"]["train"],
               "--space", req["space"], "--address", "auto", "--config", str(out / "request_config.json"),
               "--out", str(out)]
        for flag, key in (("--trials", "trials"), ("--time-budget", "time_budget"),
                          ("--max-concurrent", "max_concurrent_trials"), ("--seed", "seed")):
            if req.get(key) is not None:
                cmd += [flag, str(req[key])]
        if self.settings.search_cpus_per_trial:
            cmd += ["--cpus-per-trial", str(self.settings.search_cpus_per_trial)]
        if (out / "warm_start.json").is_file():
            cmd += ["--warm-start", str(out / "warm_start.json")]
        if resume:
            cmd.append("--resume")
        return cmd

    def _env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in ENV_FORWARD if os.environ.get(k)}
        env.setdefault("AUTODISTILL_CACHE", str((self.settings.state_dir / "cache").resolve()))
        env["TOKENIZERS_PARALLELISM"] = "false"
        env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"   # the search driver adds its own runtime env
        return env

    def create(self, owner: str, dataset: dict[str, Any], request: dict[str, Any],
               warm_start: list[dict[str, Any]] | None) -> dict[str, Any]:
        sid = new_id("search")
        out = (self.root / sid).resolve()
        out.mkdir(parents=True, exist_ok=False)
        config = dict(request.get("config") or {})
        config["data"] = {**{k: v for k, v in dataset["data_config"].items() if k != "train"},
                          **(config.get("data") or {})}
        (out / "request_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        if warm_start:
            (out / "warm_start.json").write_text(json.dumps(warm_start, indent=2), encoding="utf-8")
        now = time.time()
        row = {"id": sid, "owner": owner, "dataset_id": dataset["id"], "state": "queued", "request": request,
               "out_dir": str(out), "progress": {}, "best": None, "error": None, "submissions": 1,
               "created_at": now, "started_at": None, "finished_at": None, "updated_at": now, "folded": False}
        self._submitting.add(sid)
        try:
            self.store.add_search(row)
            self.backend.submit(sid, self.entrypoint(row, dataset, resume=False), self._env())
        except Exception as err:  # noqa: BLE001 - the cluster refused: record why, tell the client
            self.store.update_search(sid, state="failed", error=f"submission to Ray failed: {err}",
                                     finished_at=time.time())
            raise ApiError(503, "unavailable", f"the Ray cluster did not accept the search: {err}") from None
        finally:
            self._submitting.discard(sid)
        return self.store.get_search(owner, sid)

    # ------------------------------------------------------------------ following
    def refresh(self, search: dict[str, Any]) -> dict[str, Any]:
        """Bring one search's row up to date with Ray and its output folder."""
        if search["state"] in TERMINAL_STATES or search["id"] in self._submitting:
            return search
        out = Path(search["out_dir"])
        fields: dict[str, Any] = {}
        progress = _read_json(out / PROGRESS_FILE)
        if progress is not None and progress != search.get("progress"):
            fields["progress"] = progress
        try:
            state = self.backend.status(search["id"])
        except Exception as err:  # noqa: BLE001 - cluster unreachable: keep the last known state
            log.warning("cannot reach Ray for %s: %s", search["id"], err)
            state = search["state"]
        if state is None:
            return self._lost(search, fields)
        if state == "running" and not search.get("started_at"):
            fields["started_at"] = time.time()
        if state in TERMINAL_STATES:
            fields.update(self._final_fields(search, state, out))
        if state != search["state"]:
            fields["state"] = state
        if fields:
            self.store.update_search(search["id"], **fields)
            search = {**search, **fields}
        return search

    def _final_fields(self, search: dict[str, Any], state: str, out: Path) -> dict[str, Any]:
        fields: dict[str, Any] = {"finished_at": time.time()}
        board = _read_json(out / "leaderboard.json")
        if board and board.get("best"):
            fields["best"] = board["best"]
        if state == "failed":
            try:
                tail = self.backend.logs(search["id"])[-2000:]
            except Exception:  # noqa: BLE001
                tail = ""
            fields["error"] = tail or "the search job failed"
        return fields

    def _lost(self, search: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """Ray does not know the job (e.g. the cluster was restarted): resubmit it to resume, a few times."""
        if search["submissions"] >= MAX_SUBMISSIONS:
            fields.update(state="failed", finished_at=time.time(),
                          error=f"the Ray cluster lost the search job {search['submissions']} times")
        else:
            dataset = self.store.get_dataset(None, search["dataset_id"])
            if dataset is None:
                fields.update(state="failed", finished_at=time.time(), error="its dataset was deleted")
            else:
                resume = (Path(search["out_dir"]) / "search").exists()
                try:
                    self.backend.submit(search["id"], self.entrypoint(search, dataset, resume), self._env())
                    fields.update(state="queued", submissions=search["submissions"] + 1)
                except Exception as err:  # noqa: BLE001
                    log.warning("resubmitting %s failed: %s", search["id"], err)
        if fields:
            self.store.update_search(search["id"], **fields)
        return {**search, **fields}

    def refresh_all(self) -> None:
        for search in self.store.active_searches():
            try:
                self.refresh(search)
            except Exception:  # noqa: BLE001 - one bad search must not stop the monitor
                log.exception("refreshing %s failed", search["id"])

    def start_monitor(self) -> None:
        """A daemon thread that keeps searches in flight up to date (also after a restart)."""
        def loop() -> None:
            while not self._stop.wait(self.settings.poll_seconds):
                self.refresh_all()
        self._thread = threading.Thread(target=loop, name="search-monitor", daemon=True)
        self._thread.start()

    def stop_monitor(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ acting on one search
    def cancel(self, search: dict[str, Any]) -> dict[str, Any]:
        search = self.refresh(search)
        if search["state"] in TERMINAL_STATES:
            raise ApiError(409, "conflict", f"search {search['id']} is already {search['state']}")
        try:
            self.backend.stop(search["id"])
        except Exception as err:  # noqa: BLE001
            raise ApiError(503, "unavailable", f"the Ray cluster did not stop the job: {err}") from None
        self.store.update_search(search["id"], state="cancelled", finished_at=time.time())
        return self.store.get_search(None, search["id"])

    @staticmethod
    def trials(search: dict[str, Any]) -> list[dict[str, Any]]:
        """Finished trials (completed or stopped early), oldest first."""
        rows = []
        for r in RecordStore(Path(search["out_dir"])).read():
            info = r.get("search") or {}
            rows.append({"trial_id": info.get("trial_id", "?"), "status": r.get("status", "?"),
                         "score": (r.get("metrics") or {}).get("student_score"), "params": r.get("params") or {},
                         "wall_seconds": r.get("wall_seconds"), "student_parameters": r.get("student_parameters"),
                         "finished_at": info.get("finished_at")})
        rows.sort(key=lambda row: row["finished_at"] or 0)
        return rows

    @staticmethod
    def best_dir(search: dict[str, Any]) -> Path | None:
        best = Path(search["out_dir"]) / "best"
        return best if (best / "student").is_dir() and search["state"] in TERMINAL_STATES else None

    @staticmethod
    def best_archive(search: dict[str, Any], best: Path) -> Path:
        """``best/`` as a .tar.gz (built once, next to it)."""
        archive = Path(search["out_dir"]) / f"{search['id']}-best.tar.gz"
        if not archive.is_file():
            tmp = archive.with_suffix(".tmp")
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(best, arcname=f"{search['id']}-best")
            os.replace(tmp, archive)
        return archive


def is_active(search: dict[str, Any]) -> bool:
    return search["state"] in ACTIVE_STATES
