"""Searches as Ray Jobs: submit (job id = search id), follow (Ray's job state + the search's
``progress.json``), cancel, find again after a restart, and read trials and the best student.

The job runs ``autodistill search`` with the venv's python. On the embedded local head it writes into
``<state_dir>/searches/<id>`` (the same machine). On a remote cluster (``ray_address`` with
``search_storage``) nothing is shared but Ray and the storage URI: the job's runtime_env carries the
autodistill package (py_modules) and a folder with the dataset and the request (working_dir); the
search writes its Tune results and publishes its progress, records and best student to
``<search_storage>/<id>``, and the service pulls them from there into its own folder.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from autodistill.config import ConfigError, PipelineConfig, with_legacy_values
from autodistill.records import RecordStore
from autodistill.search.export import PROGRESS_FILE
from autodistill.search.space import SearchSpace, SpaceError

from . import storage
from .datasets import private_dir
from .errors import ApiError, not_found, public_model_names, public_text
from .ray_backend import JobBackend
from .schemas import SearchRequest
from .settings import ServiceSettings
from .store import Store, new_id

log = logging.getLogger("autodistill.service")

TERMINAL_STATES = ("succeeded", "failed", "cancelled")
MAX_SUBMISSIONS = 3
# a job submitted this recently may not be known to Ray yet (its submission still in flight, perhaps from
# another service process): not taken for lost
SUBMIT_GRACE_S = 60.0
PURGE_EVERY_S = 60.0   # how often the monitor forgets idempotency records past their retention
_EXCEPTION_LINE = re.compile(r"^([\w.]*(Error|Exception)\b|error: )")   # a Python exception, or a CLI error
ENV_FORWARD = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "AUTODISTILL_CACHE", "OMP_NUM_THREADS")


@functools.lru_cache(maxsize=8)
def _space_time_budget(space: str) -> float | None:
    return SearchSpace.load(space).budget.time_budget_s


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
        self._unpulled: dict[str, float] = {}  # ended jobs whose results are not yet read back: since when

    # ------------------------------------------------------------------ submitting
    @property
    def remote(self) -> bool:
        """A cluster that shares no disk with the service: inputs travel with the job, results come back
        through the search storage."""
        return bool(self.settings.ray_address and self.settings.search_storage)

    def storage_uri(self, search: dict[str, Any]) -> str:
        return storage.join(self.settings.search_storage, search["id"])

    def entrypoint(self, search: dict[str, Any], dataset: dict[str, Any], resume: bool) -> list[str]:
        req, out = search["request"], Path(search["out_dir"])
        if self.remote:   # paths inside the job's working_dir (see _package)
            data, config, job_out, warm = _job_data(dataset), "request_config.json", "out", "warm_start.json"
        else:
            data, config, job_out = dataset["data_config"]["train"], str(out / "request_config.json"), str(out)
            warm = str(out / "warm_start.json")
        space = "space.yaml" if self.remote else req["space"]    # presets live outside the shipped package
        cmd = [sys.executable, "-m", "autodistill.cli", "search", "--data", data,
               "--space", space, "--address", "auto", "--config", config, "--out", job_out]
        if self.remote:
            cmd += ["--storage-path", self.storage_uri(search)]
        for flag, key in (("--trials", "trials"), ("--max-concurrent", "max_concurrent_trials"), ("--seed", "seed")):
            if req.get(key) is not None:
                cmd += [flag, str(req[key])]
        cmd += ["--time-budget", str(self.time_budget(search))]
        if self.settings.search_cpus_per_trial:
            cmd += ["--cpus-per-trial", str(self.settings.search_cpus_per_trial)]
        if self.settings.search_memory_gb_per_trial:
            cmd += ["--memory-per-trial", str(self.settings.search_memory_gb_per_trial)]
        if self.settings.search_memory_gb_per_driver:
            cmd += ["--driver-memory", str(self.settings.search_memory_gb_per_driver)]
        gpus = req.get("gpus_per_trial", self.settings.search_gpus_per_trial)
        if gpus is None:
            gpus = self.settings.search_gpus_per_trial
        if gpus is not None:
            cmd += ["--gpus-per-trial", str(gpus)]
        if (out / "warm_start.json").is_file():
            cmd += ["--warm-start", warm]
        if resume:
            cmd.append("--resume")
        return cmd

    def _package(self, out: Path, dataset: dict[str, Any], config: dict[str, Any], request_space: str
                 ) -> Path | None:
        """The folder that travels with a remote job (its working_dir): the dataset's files under data/,
        the request's config (its validation path made relative) and the warm-start seeds."""
        if not self.remote:
            return None
        job = out / "job"
        if job.is_dir():
            return job          # built at creation; a resubmission sends the same
        (job / "data").mkdir(parents=True)
        config = json.loads(json.dumps(config))
        for key in ("train", "validation"):
            src = dataset["data_config"].get(key)
            if not src or not Path(src).exists():
                continue        # a hub dataset: the job loads it by name
            dest = job / "data" / Path(src).name
            shutil.copytree(src, dest) if Path(src).is_dir() else shutil.copy2(src, dest)
            if key == "validation":
                config.setdefault("data", {})["validation"] = f"data/{Path(src).name}"
        (job / "request_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        if (out / "warm_start.json").is_file():
            shutil.copy2(out / "warm_start.json", job / "warm_start.json")
        space = SearchSpace.load(request_space)
        shutil.copy2(space.source, job / "space.yaml")
        return job

    def _pull(self, search: dict[str, Any], final: bool) -> bool:
        """A remote search's progress and records (and when it ended, its leaderboard and best student)
        from the search storage into the service's folder, where the rest of the service reads them;
        whether that worked."""
        if not self.remote:
            return True
        out, uri = Path(search["out_dir"]), self.storage_uri(search)
        names = (PROGRESS_FILE, "records.jsonl") + (("leaderboard.json",) if final else ())
        try:
            for name in names:
                storage.fetch(storage.join(uri, name), out / name)
            if final and not (out / "best" / "student").is_dir():
                storage.fetch_dir(storage.join(uri, "best"), out / "best")
        except OSError as err:   # storage unreachable for a moment: the next refresh retries
            log.warning("reading %s from the search storage failed: %s", search["id"], err)
            return False
        return True

    def _results_still_unread(self, search: dict[str, Any]) -> bool:
        """The job ended but its results could not be read back: leave the search unfinished, so a later
        refresh reads them, for up to ``search_grace_s``; after that it ends without them (its error says so)."""
        since = self._unpulled.setdefault(search["id"], time.time())
        return time.time() - since < self.settings.search_grace_s

    def _env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in ENV_FORWARD if os.environ.get(k)}
        if self.remote:       # the cluster's own cache, not a path of this machine
            env.pop("AUTODISTILL_CACHE", None)
        else:
            env.setdefault("AUTODISTILL_CACHE", str((self.settings.state_dir / "cache").resolve()))
        env["TOKENIZERS_PARALLELISM"] = "false"
        env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"   # the search driver adds its own runtime env
        return env

    def time_budget(self, search: dict[str, Any]) -> float:
        """The search's time budget in seconds: its own, else its space's, capped by the setting."""
        request = search.get("request") or {}
        asked = request.get("time_budget") or _space_time_budget(request.get("space") or "cpu-fast")
        return min(float(asked), self.settings.max_time_budget_s) if asked else self.settings.max_time_budget_s

    def create(self, owner: str, dataset: dict[str, Any], request: dict[str, Any],
               warm_start: list[dict[str, Any]] | None, job_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record and submit a search; the job runs ``job_config`` (the request's config with its backbones
        resolved, see ``check_search_request``), while the row keeps the request as the client sent it."""
        sid = new_id("search")
        out = (self.root / sid).resolve()
        private_dir(self.root)
        out.mkdir(mode=0o700)
        config = dict((job_config if job_config is not None else request.get("config")) or {})
        config["data"] = {**{k: v for k, v in dataset["data_config"].items() if k != "train"},
                          **(config.get("data") or {})}
        (out / "request_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        if warm_start:
            (out / "warm_start.json").write_text(json.dumps(warm_start, indent=2), encoding="utf-8")
        self._package(out, dataset, config, request.get("space") or "cpu-fast")
        now = time.time()
        row = {"id": sid, "owner": owner, "dataset_id": dataset["id"], "state": "queued", "request": request,
               "out_dir": str(out), "progress": {}, "best": None, "error": None, "submissions": 1,
               "created_at": now, "started_at": None, "finished_at": None, "updated_at": now, "folded": False}
        self._submitting.add(sid)   # before the row exists: this process's monitor must not take it for lost
        added = "error"   # if the database raises
        try:
            added = self.store.add_search(row, self.settings.max_searches_per_key, self.settings.max_searches_total,
                                          self.settings.max_stored_searches_per_key)
        finally:
            if added != "added":
                self._submitting.discard(sid)
                shutil.rmtree(out, ignore_errors=True)
        if added != "added":
            if added == "no_dataset":
                raise ApiError(404, "not_found", f"no dataset {dataset['id']!r} for this API key", field="dataset_id")
            if added == "stored_limit":
                raise ApiError(429, "too_many_requests", f"this API key keeps "
                               f"{self.settings.max_stored_searches_per_key} searches (finished ones included), the "
                               "most it may; delete finished searches you no longer need (DELETE /searches/{id}) "
                               "to make room")
            cap = (f"{self.settings.max_searches_per_key} for this API key" if added == "owner_limit"
                   else f"{self.settings.max_searches_total} on this service")
            raise ApiError(429, "too_many_requests", f"searches in flight are capped at {cap}; retry when one "
                           "ends or cancel one", headers={"Retry-After": str(int(self.settings.poll_seconds * 5) + 1)})
        try:
            self.backend.submit(sid, self.entrypoint(row, dataset, resume=False), self._env(), out / "job"
                                if self.remote else None)
        except Exception as err:  # noqa: BLE001 - the cluster refused: record why, tell the client
            if self._known_to_ray(sid):   # it took the job after all (an answer lost on the way)
                return self.store.get_search(owner, sid)
            log.error("submitting %s to Ray failed: %s", sid, err)
            self.store.update_search(sid, state="failed", error="submission to the Ray cluster failed",
                                     finished_at=time.time())
            raise ApiError(503, "unavailable", "the Ray cluster did not accept the search; retry later") from None
        finally:
            self._submitting.discard(sid)
        return self.store.get_search(owner, sid)

    def _known_to_ray(self, sid: str) -> bool:
        try:
            return self.backend.status(sid) is not None
        except Exception:  # noqa: BLE001 - unreachable: not known
            return False

    # ------------------------------------------------------------------ following
    def refresh(self, search: dict[str, Any]) -> dict[str, Any]:
        """Bring one search's row up to date with Ray and its output folder."""
        if search["state"] in TERMINAL_STATES or search["id"] in self._submitting:
            return search
        out = Path(search["out_dir"])
        fields: dict[str, Any] = {}
        self._pull(search, final=False)
        progress = _read_json(out / PROGRESS_FILE)
        if progress is not None and progress != search.get("progress"):
            fields["progress"] = progress
        try:
            state = self.backend.status(search["id"])
        except Exception as err:  # noqa: BLE001 - cluster unreachable: keep the last known state
            log.warning("cannot reach Ray for %s: %s", search["id"], err)
            state = search["state"]
        if state is None:
            if time.time() - (search.get("updated_at") or search["created_at"]) < SUBMIT_GRACE_S:
                return search
            return self._lost(search, fields)
        if state == "running" and not search.get("started_at"):
            fields["started_at"] = time.time()
        if state == "running" and self._over_time(search):
            state = self._stop_over_time(search, fields)
        elif state == "cancelled" and search["state"] == "running" and self._over_time(search):
            # stopped for its time budget by a concurrent refresh (the monitor's) that has not written yet:
            # the user's cancel writes "cancelled" itself, so this stop was the service's
            state, fields["error"] = "failed", self._over_time_error(search)
        if state in TERMINAL_STATES:
            if not self._pull(search, final=True):
                if self._results_still_unread(search):
                    return search
                fields["error"] = (fields.get("error") or f"the search job {state}") + \
                    "; its results could not be read from the search storage"
                state = "failed"
            self._unpulled.pop(search["id"], None)
            progress = _read_json(out / PROGRESS_FILE)
            if progress is not None and progress != search.get("progress"):
                fields["progress"] = progress
            fields = {**self._final_fields(search, state, out, explained="error" in fields), **fields}
        if state != search["state"]:
            fields["state"] = state
        if fields:
            self.store.update_search(search["id"], **fields)
            search = {**search, **fields}
        return search

    def _over_time(self, search: dict[str, Any]) -> bool:
        """Running past its budget plus the grace: the budget covers the whole job, teacher included."""
        started = search.get("started_at") or search["created_at"]
        return time.time() - started > self.time_budget(search) + self.settings.search_grace_s

    def _stop_over_time(self, search: dict[str, Any], fields: dict[str, Any]) -> str:
        try:
            self.backend.stop(search["id"])
        except Exception as err:  # noqa: BLE001 - retried on the next refresh
            log.warning("stopping %s (over its time budget) failed: %s", search["id"], err)
            return "running"
        fields["error"] = self._over_time_error(search)
        return "failed"

    def _over_time_error(self, search: dict[str, Any]) -> str:
        return (f"stopped by the service: ran longer than its time budget of "
                f"{self.time_budget(search):.0f} s plus {self.settings.search_grace_s:.0f} s")

    def _final_fields(self, search: dict[str, Any], state: str, out: Path, explained: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"finished_at": time.time()}
        board = _read_json(out / "leaderboard.json")
        if board and board.get("best"):
            fields["best"] = board["best"]
        if state == "failed" and not explained:
            fields["error"] = self._public_failure(search)
        return fields

    def _public_failure(self, search: dict[str, Any]) -> str:
        """What the client learns of a failed job: the last error line, without server paths; the end of
        the log (command line, traceback) goes to the server log."""
        try:
            logs = self.backend.log_tail(search["id"])   # the error is at the end
        except Exception:  # noqa: BLE001
            logs = ""
        log.warning("search %s failed; job log tail:\n%s", search["id"], logs[-4000:])
        lines = [ln.strip() for ln in logs.splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), lines[-1] if lines else "")
        last = public_text(last, [(search["out_dir"], "<search folder>")])[:300]
        return f"the search job failed{': ' + last if last else ''} (details in the server log)"

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
                resume = storage.exists(storage.join(self.storage_uri(search), "search")) if self.remote \
                    else (Path(search["out_dir"]) / "search").exists()
                try:
                    self.backend.submit(search["id"], self.entrypoint(search, dataset, resume), self._env(),
                                        Path(search["out_dir"]) / "job" if self.remote else None)
                    fields.update(state="queued", submissions=search["submissions"] + 1)
                except Exception as err:  # noqa: BLE001
                    log.warning("resubmitting %s failed: %s", search["id"], err)
        if fields:
            self.store.update_search(search["id"], **fields)
        return {**search, **fields}

    def refresh_all(self) -> None:
        try:
            searches = self.store.active_searches()
        except Exception:  # noqa: BLE001 - the database refused (down, locked): the next round retries
            log.exception("listing the searches in flight failed")
            return
        for search in searches:
            try:
                self.refresh(search)
            except Exception:  # noqa: BLE001 - one bad search must not stop the monitor
                log.exception("refreshing %s failed", search["id"])

    def start_monitor(self) -> None:
        """A daemon thread that keeps searches in flight up to date (also after a restart); a round that
        fails is logged and the next one runs as usual."""
        def loop() -> None:
            purged_at = 0.0
            while not self._stop.wait(self.settings.poll_seconds):
                try:
                    self.refresh_all()
                    if time.time() - purged_at > PURGE_EVERY_S:
                        purged_at = time.time()
                        self.store.idempotency_purge(self.settings.idempotency_retention_s)
                except Exception:  # noqa: BLE001 - retried on the next round
                    log.exception("a round of the search monitor failed")
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
        if search["id"] in self._unpulled:   # its job ended; only its results are still being read back
            raise ApiError(409, "conflict", f"search {search['id']} has ended; its results are being read back")
        try:
            self.backend.stop(search["id"])
        except Exception as err:  # noqa: BLE001 - the cluster's error names its addresses: server log only
            log.warning("stopping search %s failed: %s", search["id"], err)
            raise ApiError(503, "unavailable", "the Ray cluster did not stop the job; retry the cancel "
                           "(details in the server log)", headers={"Retry-After": "10"}) from None
        self.store.update_search(search["id"], state="cancelled", finished_at=time.time())
        return self.store.get_search(None, search["id"])

    def delete(self, search: dict[str, Any]) -> None:
        """Forget a finished search: its row, its folder and its copy in the search storage (409 while
        queued or running)."""
        outcome = self.store.delete_search(search["owner"], search["id"])
        if outcome == "missing":
            raise not_found("search", search["id"])
        if outcome == "active":
            raise ApiError(409, "conflict", f"search {search['id']} is still queued or running; cancel it first "
                           f"(POST /searches/{search['id']}/cancel)")
        shutil.rmtree(search["out_dir"], ignore_errors=True)
        if self.remote:
            try:
                storage.remove(self.storage_uri(search))
            except OSError as err:   # the row is gone either way; the operator can clear the storage
                log.warning("removing %s from the search storage failed: %s", search["id"], err)

    @staticmethod
    def trials(search: dict[str, Any]) -> list[dict[str, Any]]:
        """Finished trials (completed or stopped early), oldest first."""
        rows = []
        for r in RecordStore(Path(search["out_dir"])).read():
            info = r.search or {}
            rows.append({"trial_id": info.get("trial_id", "?"), "status": r.status or "?",
                         "score": r.metrics.get("student_score"), "dev_score": r.metrics.get("best_dev_score"),
                         "params": dict(r.params or {}),
                         "wall_seconds": r.wall_seconds, "student_parameters": r.student_parameters,
                         "finished_at": info.get("finished_at")})
        rows.sort(key=lambda row: row["finished_at"] or 0)
        return rows

    @staticmethod
    def best_dir(search: dict[str, Any]) -> Path | None:
        best = Path(search["out_dir"]) / "best"
        return best if (best / "student").is_dir() and search["state"] in TERMINAL_STATES else None

    def public_config(self, search: dict[str, Any], best: Path) -> PipelineConfig:
        """The best student's config as its owner may see it: the data named by dataset id and the model
        folders as the client names them, never by a server path."""
        stored = yaml.safe_load((best / "config.yaml").read_text(encoding="utf-8")) or {}
        config = PipelineConfig.model_validate(with_legacy_values(stored))
        config.data.train, config.data.validation = f"dataset:{search['dataset_id']}", None
        return public_model_names(config, self.settings.backbone_roots)

    def best_archive(self, search: dict[str, Any], best: Path) -> Path:
        """``best/`` as a .tar.gz (built once, next to it), with :meth:`public_config` as its config.yaml and
        without the trial's server folder in trial.json."""
        # ".v2": an archive built before the public config existed (with server paths) is never served
        archive = Path(search["out_dir"]) / f"{search['id']}-best.v2.tar.gz"
        if not archive.is_file():
            # one temporary file per request: two first downloads at once each build their own, and the
            # second replace swaps in an identical archive
            tmp = archive.with_name(f".{archive.name}.{uuid.uuid4().hex}.tmp")
            root = f"{search['id']}-best"
            rewritten = {"config.yaml": yaml.safe_dump(self.public_config(search, best).to_dict(), sort_keys=False)}
            if (best / "trial.json").is_file():
                trial = json.loads((best / "trial.json").read_text(encoding="utf-8"))
                trial.pop("path", None)
                rewritten["trial.json"] = json.dumps(trial, indent=2)
            try:
                with tarfile.open(tmp, "w:gz") as tar:
                    tar.add(best, arcname=root, filter=lambda info: None if info.name.removeprefix(root + "/")
                            in rewritten else info)
                    for name, text in rewritten.items():
                        data = text.encode("utf-8")
                        info = tarfile.TarInfo(f"{root}/{name}")
                        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                        tar.addfile(info, io.BytesIO(data))
                os.replace(tmp, archive)
            finally:
                tmp.unlink(missing_ok=True)
        return archive


def _job_data(dataset: dict[str, Any]) -> str:
    """``--data`` inside a remote job's working_dir: the copy under data/, or a hub dataset's name."""
    train = dataset["data_config"]["train"]
    return f"data/{Path(train).name}" if Path(train).exists() else train


# --------------------------------------------------------------------------- what a search may ask for
MAX_TEACHERS = 4


def _bad(field: str, detail: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field}: {detail}", field=field)


def allowed_backbone(value: str, settings: ServiceSettings, field: str) -> str:
    """``value`` if it is an allowed backbone id, else the real folder it names under a backbone root.
    Every refusal reads the same, so it tells nothing of what exists on the server."""
    if value in settings.allowed_backbones:
        return value
    refusal = _bad(field, f"not an allowed backbone (allowed ids: {sorted(settings.allowed_backbones)}, or a "
                   "folder under the server's backbone roots)")
    if "\x00" in value or not settings.backbone_roots:
        raise refusal
    for root in settings.backbone_roots:
        root_real = Path(os.path.realpath(root))
        real = Path(os.path.realpath(root_real / value))   # an absolute value stays itself
        if (root_real in real.parents) and (real / "config.json").is_file():
            return str(real)
    raise refusal


def _cap(value: float | None, limit: float, field: str) -> None:
    if value is not None and value > limit:
        raise _bad(field, f"at most {limit:g} on this server")


def check_search_request(body: SearchRequest, settings: ServiceSettings) -> dict[str, Any]:
    """422 naming the field when ``body`` is beyond the service's limits (checked on the typed config the
    request parsed once, ``body.config.pipeline``); else the config the job runs: the request's, with its
    backbones resolved to allowed ids or real folders under the backbone roots (kept out of what the
    client is shown)."""
    _cap(body.trials, settings.max_trials, "trials")
    _cap(body.time_budget, settings.max_time_budget_s, "time_budget")
    _cap(body.max_concurrent_trials, settings.max_concurrent_trials, "max_concurrent_trials")
    _cap(body.gpus_per_trial, settings.max_gpus_per_trial, "gpus_per_trial")
    config = copy.deepcopy(body.overrides)
    if not config:
        return config
    cfg = body.config.pipeline
    if len(cfg.teachers) > MAX_TEACHERS:
        raise _bad("config.teachers", f"at most {MAX_TEACHERS} teachers")
    for i, (raw, teacher) in enumerate(zip(config.get("teachers") or [], cfg.teachers)):
        _cap(teacher.epochs, settings.max_epochs, f"config.teachers.{i}.epochs")
        _cap(teacher.batch_size, settings.max_batch_size, f"config.teachers.{i}.batch_size")
        if "backbone" in raw:
            raw["backbone"] = allowed_backbone(teacher.backbone, settings, f"config.teachers.{i}.backbone")
    _cap(len(cfg.augmentation.augmenters), settings.max_augmenters, "config.augmentation.augmenters")
    for i, (raw, aug) in enumerate(zip((config.get("augmentation") or {}).get("augmenters") or [],
                                       cfg.augmentation.augmenters)):
        _cap(aug.top_k, settings.max_augmenter_top_k, f"config.augmentation.augmenters.{i}.top_k")
        if aug.mlm_model is not None:
            raw["mlm_model"] = allowed_backbone(aug.mlm_model, settings, f"config.augmentation.augmenters.{i}.mlm_model")
        for j, model in enumerate(aug.translation_models or ()):
            raw["translation_models"][j] = allowed_backbone(
                model, settings, f"config.augmentation.augmenters.{i}.translation_models.{j}")
    _cap(cfg.optim.epochs, settings.max_epochs, "config.optim.epochs")
    _cap(cfg.optim.batch_size, settings.max_batch_size, "config.optim.batch_size")
    _cap(cfg.optim.eval_batch_size, settings.max_batch_size, "config.optim.eval_batch_size")
    _check_batch_memory(cfg, settings)
    st = cfg.student
    _cap(st.num_layers, settings.max_student_layers, "config.student.num_layers")
    _cap(st.hidden_size, settings.max_student_hidden_size, "config.student.hidden_size")
    _cap(st.intermediate_size, settings.max_student_intermediate_size, "config.student.intermediate_size")
    _cap(st.num_attention_heads, settings.max_student_heads, "config.student.num_attention_heads")
    _check_auxiliary_widths(cfg, settings.max_auxiliary_width)
    return config


def _check_batch_memory(cfg: PipelineConfig, settings: ServiceSettings) -> None:
    """What one batch's activations take grows with batch size x sequence length (attention with the length
    squared): both capped, so no config a client sends can ask a job for unbounded memory."""
    _cap(cfg.data.max_length, settings.max_sequence_length, "config.data.max_length")
    batches = [(f"config.teachers.{i}.batch_size", t.batch_size) for i, t in enumerate(cfg.teachers)]
    batches += [("config.optim.batch_size", cfg.optim.batch_size), ("config.optim.eval_batch_size",
                                                                    cfg.optim.eval_batch_size)]
    for field, size in batches:
        if size * cfg.data.max_length > settings.max_batch_tokens:
            raise _bad(field, f"{size} x data.max_length {cfg.data.max_length} tokens per batch; at most "
                              f"{settings.max_batch_tokens} on this server (max_batch_tokens)")


def _check_auxiliary_widths(cfg: PipelineConfig, limit: int) -> None:
    inter = cfg.loss.intermediate
    for name in ("critic_hidden", "critic_dim", "projection_dim"):
        _cap(getattr(inter, name), limit, f"config.loss.intermediate.{name}")
    _cap(cfg.weighting.meta_hidden, limit, "config.weighting.meta_hidden")


def search_space(body: SearchRequest) -> SearchSpace:
    """The request's search space: its preset with the request's config merged into the base, validated
    once (a 422 naming ``config`` when the two do not make valid configs together)."""
    space = SearchSpace.load(body.space)
    if not body.overrides:
        return space
    try:
        return space.with_base(body.overrides)
    except (SpaceError, ConfigError) as err:
        raise _bad("config", public_text(str(err), [(space.source, f"search space {body.space!r}")])) from None
