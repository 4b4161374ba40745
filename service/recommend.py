"""The meta-model behind ``POST /recommendations`` and its refit from finished searches.

The model is the latest refitted one (recorded in the database) or the committed default
(``meta_dataset/model``). Models are only ever loaded from those server-side folders (skops with a
version check), never from anything a user sends.

Tenants: a refit learns from every key's searches (their datasets are named ``svc-<dataset id>`` in the
meta-dataset), and every key's request is ranked by that model, but a key is only ever *shown* the
committed (public) datasets and candidates and its own: another key's dataset never appears among the
nearest datasets, and a candidate pipeline that only another key's searches produced is never returned.
Which datasets each candidate came from is saved next to a refitted model (``sources.json``).
"""
from __future__ import annotations

import functools
import json
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from autodistill.config import PipelineConfig, StudentConfig
from autodistill.config import with_pipeline
from autodistill.meta.fitting import (DEFAULT_MODEL_DIR, PRODUCT_METHOD, fit_meta_model, meta_model_table,
                                      record_path_from_sidecar)
from autodistill.meta.model_files import SIDECAR_FILE, ModelVersionError
from autodistill.meta.recommender import Recommender, matches_constraints
from autodistill.meta.warm_start import DECISION_FILE, WarmStart, choose_warm_start
from autodistill.records import RecordStore

from .errors import ApiError, public_model_names
from .settings import ServiceSettings
from .store import Store

REFIT_METHOD = PRODUCT_METHOD   # the product's meta-model; "auto" (the nested selection) takes minutes, not seconds
SERVICE_DATASET_PREFIX = "svc-"
SOURCES_FILE = "sources.json"   # candidate -> the meta-dataset datasets it was measured on
DATASET_ROWS_FILE = "dataset_rows.json"   # meta-dataset dataset -> its rows in the refit's table
NEAREST_SHOWN = 3
RANKING_CACHE_SIZE = 256


def base_record_paths(model_dir: Path | None = None) -> list[Path]:
    """The records the meta-model in ``model_dir`` (default: the committed one) was fitted on, as its sidecar
    names them (relative paths are the checkout's), whether or not they exist here: a refit starts from the
    same meta-dataset, and refuses when part of it is missing (:meth:`RecommenderService.refit`)."""
    sidecar_path = Path(model_dir or DEFAULT_MODEL_DIR) / SIDECAR_FILE
    if not sidecar_path.is_file():
        return []
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    return [record_path_from_sidecar(p) for p in sidecar.get("info", {}).get("records", [])]


@functools.lru_cache(maxsize=256)
def _student_parameters(backbone: str, student_json: str, num_labels: int) -> int | None:
    from autodistill.models import ModelLoadError, student_parameters  # torch (~3 s): at the first recommendation
    try:
        return student_parameters(backbone, StudentConfig.model_validate_json(student_json), num_labels)
    except (ModelLoadError, ValueError):
        return None


def student_parameters_of(config: PipelineConfig, num_labels: int) -> int | None:
    return _student_parameters(config.teacher.backbone, config.student.model_dump_json(), max(1, num_labels))


class RecommenderService:
    def __init__(self, store: Store, settings: ServiceSettings):
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: tuple[str, Any, dict[str, list[str]], dict[str, int] | None] | None = None
        self._ranked: OrderedDict[tuple[str, str, str], list[Any]] = OrderedDict()
        self.meta_dir = settings.state_dir / "meta_dataset"

    def model_dir(self) -> Path:
        latest = self.store.latest_meta_model()
        if latest is not None and Path(latest["path"]).is_dir():
            return Path(latest["path"])
        return Path(self.settings.model_dir or DEFAULT_MODEL_DIR)

    def model(self):
        return self._loaded_model()[1]

    def _loaded_model(self) -> tuple[str, Any, dict[str, list[str]], dict[str, int] | None]:
        """(folder, Recommender, the datasets each candidate came from, each dataset's rows: None for a model
        no refit made), loaded once per model folder."""
        folder = str(self.model_dir())
        with self._lock:
            if self._loaded is None or self._loaded[0] != folder:
                try:
                    rec = Recommender.load(folder)
                except (FileNotFoundError, ModelVersionError) as err:
                    raise ApiError(503, "unavailable", f"no usable meta-model: {err}") from None
                sources_path = Path(folder) / SOURCES_FILE
                sources = json.loads(sources_path.read_text(encoding="utf-8")) if sources_path.is_file() else {}
                rows_path = Path(folder) / DATASET_ROWS_FILE
                rows = json.loads(rows_path.read_text(encoding="utf-8")) if rows_path.is_file() else None
                self._loaded = (folder, rec, sources, rows)
                self._ranked.clear()
            return self._loaded

    def _ranking(self, folder: str, rec: Any, dataset: dict[str, Any]) -> WarmStart:
        """Every candidate in the order the product recommends them for this dataset: the meta-model's, or the
        best-of-k portfolio first, as the model folder's committed evaluation chose (``.source`` says which);
        cached per (model, dataset) - both are immutable."""
        key = (folder, dataset["id"], dataset["fingerprint"])
        with self._lock:
            if key in self._ranked:
                self._ranked.move_to_end(key)
                return self._ranked[key]
        ranking = choose_warm_start(rec, folder, dataset["meta_features"], len(rec.candidates))
        with self._lock:
            self._ranked[key] = ranking
            while len(self._ranked) > RANKING_CACHE_SIZE:
                self._ranked.popitem(last=False)
        return ranking

    def warm_start(self, dataset: dict[str, Any], top_k: int) -> WarmStart:
        """The pipelines a search warm-starts from: the first ``top_k`` of :meth:`_ranking` the dataset's
        owner may see."""
        folder, rec, sources, _rows = self._loaded_model()
        ranking = self._ranking(folder, rec, dataset)
        shown = self._shown(dataset["owner"], sources)
        # the cached ranking's nearest datasets are everyone's (other tenants' included): not passed on
        return ranking.keeping([replace(r, why={k: v for k, v in r.why.items() if k != "nearest_datasets"})
                                for r in ranking.recommendations if shown(r.candidate)][:top_k])

    def _visibility(self, owner: str):
        """``visible(meta-dataset dataset name)`` for ``owner``: committed datasets and its own (its dataset ids
        read once, on the first service dataset asked about, not once per other tenant's dataset)."""
        owned: set[str] | None = None

        def visible(name: str) -> bool:
            nonlocal owned
            if not name.startswith(SERVICE_DATASET_PREFIX):
                return True
            if owned is None:
                owned = self.store.dataset_ids(owner)
            return name[len(SERVICE_DATASET_PREFIX):] in owned
        return visible

    def _shown(self, owner: str, sources: dict[str, list[str]]):
        """``shown(candidate)`` for ``owner``: a candidate measured on at least one dataset it may see."""
        visible = self._visibility(owner)

        def shown(candidate: str | None) -> bool:
            return candidate is not None and (candidate not in sources or any(map(visible, sources[candidate])))
        return shown

    def recommend(self, dataset: dict[str, Any], top_k: int, max_params: int | None,
                  config_constraints: dict[str, Any] | None) -> tuple[Any, dict[str, Any], WarmStart,
                                                                      list[dict[str, Any]]]:
        """The top ``top_k`` candidates the dataset's owner may see, in :meth:`_ranking`'s order (see the module
        docstring), with the model, its size as the owner may see it (:func:`_model_shown`) and that ranking
        (its ``source`` and ``reason``)."""
        folder, rec, sources, rows_by_dataset = self._loaded_model()
        visible = self._visibility(dataset["owner"])
        shown = self._shown(dataset["owner"], sources)
        nearest = [n for n in rec.nearest_datasets(dataset["meta_features"], k=len(rec.datasets))
                   if visible(n["dataset"])][:NEAREST_SHOWN]
        nearest = [{**n, "its_best_candidate": n["its_best_candidate"] if shown(n["its_best_candidate"]) else None}
                   for n in nearest]
        # where the model extrapolates, against the ranges of the datasets this key may see: the full range
        # would show other keys' extreme values
        outside = rec.meta_features_outside_training(dataset["meta_features"],
                                                     [name for name in rec.datasets if visible(name)])
        num_labels = int(dataset["stats"].get("num_labels") or 1)
        out, kept = [], []
        ranking = self._ranking(folder, rec, dataset)
        for r in ranking.recommendations:
            if not shown(r.candidate):
                continue
            # the KD pipeline (as it runs on the dataset's task) on the default budget, never the meta-dataset's
            # build budget nor where its data lived on the server
            cfg = _without_data_paths(with_pipeline(PipelineConfig(), r.config))
            params = student_parameters_of(cfg, num_labels)   # from the model folder as the server names it
            cfg = public_model_names(cfg, self.settings.backbone_roots)
            if config_constraints and not matches_constraints(cfg.to_dict(), config_constraints):
                continue
            if max_params is not None and (params is None or params > max_params):
                continue
            out.append({"rank": len(out) + 1, "candidate": r.candidate, "config": cfg,
                        "predicted_score": r.predicted_score, "uncertainty": r.uncertainty,
                        "student_parameters": params,
                        "why": json.loads(json.dumps(_why_shown(r.why, nearest, outside), default=str))})
            kept.append(r)
            if len(out) == top_k:
                break
        return rec, _model_shown(rec, rows_by_dataset, visible, shown), ranking.keeping(kept), out

    # ------------------------------------------------------------------ refit
    def fold_search(self, search: dict[str, Any], dataset: dict[str, Any] | None) -> int:
        """Copy a finished search's completed trial records into the service's meta-dataset, under the
        dataset's name ``svc-<dataset id>`` with the dataset's meta-features; returns records added."""
        name = f"svc-{search['dataset_id']}"
        records_dir, features_dir = self.meta_dir / "runs", self.meta_dir / "features"
        records_dir.mkdir(parents=True, exist_ok=True)
        features_dir.mkdir(parents=True, exist_ok=True)
        if dataset is not None:
            (features_dir / f"{name}.json").write_text(json.dumps(dataset["meta_features"], default=str),
                                                      encoding="utf-8")
        target = RecordStore(records_dir / f"{name}.jsonl")
        added = 0
        for rec in RecordStore(Path(search["out_dir"])).read():
            if rec.status == "completed":
                added += bool(target.append(rec.replace(dataset=name)))
        return added

    def _forget_deleted_datasets(self) -> None:
        """Drop the folded records (and meta-features) of datasets deleted since: no refit learns from them."""
        for records in sorted((self.meta_dir / "runs").glob(f"{SERVICE_DATASET_PREFIX}*.jsonl")):
            if self.store.get_dataset(None, records.stem[len(SERVICE_DATASET_PREFIX):]) is None:
                records.unlink(missing_ok=True)
                (self.meta_dir / "features" / f"{records.stem}.json").unlink(missing_ok=True)

    def refit(self) -> dict[str, Any]:
        """Fold the finished searches into the service's meta-dataset and refit the meta-model on it and
        the committed records: ``autodistill meta fit --method hgb`` on the same records gives the same
        model (one fitting function, :func:`~autodistill.meta.fitting.fit_meta_model`)."""
        base = base_record_paths(self.settings.model_dir) if self.settings.base_records is None \
            else list(self.settings.base_records)
        missing = [str(p) for p in base if not p.exists()]
        if missing:   # refitting on the tenants' records alone would silently drop the whole meta-dataset
            raise ApiError(409, "conflict", f"the meta-dataset records to refit on are missing: {missing} "
                           "(set the service's base records, or deploy them with the model)")
        self._forget_deleted_datasets()
        folded, added = 0, 0
        for search in self.store.finished_unfolded_searches():
            added += self.fold_search(search, self.store.get_dataset(None, search["dataset_id"]))
            self.store.update_search(search["id"], folded=True)
            folded += 1
        runs = self.meta_dir / "runs"
        paths = base + ([runs] if any(runs.glob("*.jsonl")) else [])   # an empty folder makes an untyped table
        if not paths:
            raise ApiError(409, "conflict", "no meta-dataset records to fit on")
        try:
            fitted = fit_meta_model(meta_model_table(paths), method=REFIT_METHOD,
                                    info={"records": [str(p) for p in paths], "refit_by": "service"})
        except ValueError as err:
            raise ApiError(409, "conflict", f"cannot refit the meta-model: {err}") from None
        rec, rows = fitted.recommender, fitted.rows
        folder = self.settings.state_dir / "models" / time.strftime("%Y%m%dT%H%M%S") / str(time.time_ns())
        rec.save(folder)
        # the committed evaluation's warm-start decision (meta-model or portfolio) carries over to the refit
        decision = Path(self.settings.model_dir or DEFAULT_MODEL_DIR) / DECISION_FILE
        if decision.is_file():
            shutil.copyfile(decision, folder / DECISION_FILE)
        sources = {str(c): sorted(map(str, group["dataset"].unique())) for c, group in rows.groupby("candidate")}
        (folder / SOURCES_FILE).write_text(json.dumps(sources), encoding="utf-8")
        (folder / DATASET_ROWS_FILE).write_text(json.dumps(rows.groupby("dataset").size().astype(int).to_dict()),
                                                encoding="utf-8")
        summary = {"searches_folded": folded, "records_added": added, "rows": int(len(rows)),
                   "datasets": int(rows["dataset"].nunique()), "candidates": int(rows["candidate"].nunique()),
                   "method": REFIT_METHOD, "model_path": str(folder), "base_records": len(base),
                   "left_out_uninformative": sorted(fitted.left_out_uninformative)}
        self.store.add_meta_model(str(folder), summary)
        return summary


def _model_shown(rec: Any, rows_by_dataset: dict[str, int] | None, visible, shown) -> dict[str, Any]:
    """The model's method and size as one key may see them: rows, datasets and candidates counted over the
    committed meta-dataset and its own (other keys' counts would tell it of their activity)."""
    datasets = [name for name in rec.datasets if visible(name)]
    if len(datasets) == len(rec.datasets):
        n_rows = rec.info.get("n_rows")
    else:   # a refit's per-dataset rows; an older refit without them shows none
        n_rows = sum(rows_by_dataset.get(name, 0) for name in datasets) if rows_by_dataset is not None else None
    return {"method": rec.info.get("method"), "n_rows": n_rows, "n_datasets": len(datasets),
            "n_candidates": sum(1 for c in rec.candidates if shown(c["name"]))}


def _without_data_paths(config: PipelineConfig) -> PipelineConfig:
    """A candidate's config as shown to a client: where its data lived on the server is not part of it."""
    return config.model_copy(update={"data": config.data.model_copy(update={"train": None, "validation": None})})


def _why_shown(why: dict[str, Any], nearest: list[dict[str, Any]], outside: dict[str, Any]) -> dict[str, Any]:
    """A recommendation's why as one key sees it: its nearest datasets and extrapolation ranges among those
    it may see."""
    shown = {k: v for k, v in why.items() if k != "meta_features_outside_training"}
    return {**shown, "nearest_datasets": nearest, **({"meta_features_outside_training": outside} if outside else {})}
