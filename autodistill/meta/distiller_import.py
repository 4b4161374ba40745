"""`autodistill meta import-distiller`: the Distiller paper's 1,239 released runs as a second meta-dataset.

Each CSV row (``auto_distiller_tabular_data.csv``) becomes one record with our config names:

| Distiller column | our config |
|---|---|
| `intermediate_loss_type` mi / mse / cos / pkd / ce | `loss.intermediate.objective` mi_alpha / mse / cos / pkd / hidden_ce |
| `alpha` (mi rows only) | `loss.intermediate.alpha` (raw value; see the sigmoid caveat in the anchors README) |
| `intermediate_strategy` skip / last / emd | `loss.intermediate.mapping` |
| `kd_loss_type` ce / mse | `loss.prediction.type` soft_ce / mse |
| `mixup` TRUE / FALSE | `mixup.enabled` |
| `contextual`, `backtranslation`, `random` (positions, 0 = unused) | `augmentation.augmenters`, ordered by position, each with `p = aug_p` |
| `repeated_aug` | `augmentation.repeated_aug` |
| — | `loss.hard_label_weight = 0` (Distiller's default: no hard-label CE) |

Teacher, student, `aug_p` (also when no augmenter is used), the raw `alpha`, `#example` and
`baseline_score` are not part of our config: they go to ``extra_features``, and so do the paper's own task
features (``dataset_features_50_concat.csv``: 100 unnamed embedding-derived numbers and `#label`, as
``distiller_task_f00``..``f99`` and ``distiller_n_labels``), so that "(the paper's task features, config)"
is a model the evaluation can fit (``plain_hgb_stated``). The target is
``ratio`` (student score / teacher score); ``score`` is kept too. Meta-features are ours, computed on
our copies of the GLUE tasks in ``meta_dataset/datasets`` (mnli/qqp/qnli are subsets there: their
``log_n_train`` is the paper's ``#example``, :func:`runs_train_size`), with the
teacher's published GLUE dev score (``teacher_baseline.csv``, /100) as ``teacher_score``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..config import DataConfig, parse_config
from ..data import load_task_data
from ..records import RunRecord, canonical_config_hash, library_versions
from .features import META_FEATURES_VERSION, resolve_backbone_model, task_meta_features

IMPORT_VERSION = 3   # 2: the paper's task features in extra_features; 3: log_n_train of the runs' train sets
RUNS_CSV = "auto_distiller_tabular_data.csv"
TEACHERS_CSV = "teacher_baseline.csv"
TASK_FEATURES_CSV = "dataset_features_50_concat.csv"

TASK_MAP = {"sst-2": "sst2", "sst2": "sst2", "sts-b": "stsb", "stsb": "stsb", "mnli": "mnli", "qqp": "qqp",
            "qnli": "qnli", "cola": "cola", "mrpc": "mrpc", "rte": "rte", "wnli": "wnli"}
OBJECTIVE_MAP = {"mi": "mi_alpha", "mse": "mse", "cos": "cos", "pkd": "pkd", "ce": "hidden_ce"}
MAPPING_MAP = {"skip": "skip", "last": "last", "emd": "emd"}
PREDICTION_MAP = {"ce": "soft_ce", "mse": "mse"}
AUGMENTER_COLUMNS = ("contextual", "backtranslation", "random")
#: our copies of these tasks are subsets of the GLUE train sets the paper's runs used
#: (``meta_dataset/datasets/MANIFEST.md``: ~9-10k of 105k-393k rows); the others are the whole train sets
SUBSET_COPIES = frozenset({"mnli", "qnli", "qqp"})


class DistillerImportError(ValueError):
    """A Distiller row that cannot be mapped; the message names the row and the column."""


def _bool(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _lookup(table: Mapping[str, str], value: str, column: str, row_id: Any) -> str:
    key = str(value).strip().lower()
    if key not in table:
        raise DistillerImportError(f"row {row_id}, column {column!r}: unknown value {value!r} "
                                   f"(known: {sorted(table)})")
    return table[key]


def map_row(row: Mapping[str, str], row_id: Any = "?") -> tuple[dict[str, Any], dict[str, Any]]:
    """(partial PipelineConfig dict, extra_features) for one Distiller CSV row."""
    objective = _lookup(OBJECTIVE_MAP, row["intermediate_loss_type"], "intermediate_loss_type", row_id)
    inter: dict[str, Any] = {"objective": objective,
                             "mapping": _lookup(MAPPING_MAP, row["intermediate_strategy"], "intermediate_strategy",
                                                row_id)}
    alpha_raw = row.get("alpha", "")
    alpha = float(alpha_raw) if str(alpha_raw).strip() not in ("", "nan") else None
    if objective == "mi_alpha" and alpha is not None:
        inter["alpha"] = alpha
    aug_p = float(row["aug_p"])
    positions = []
    for col in AUGMENTER_COLUMNS:
        pos = int(float(row.get(col, 0) or 0))
        if pos > 0:
            positions.append((pos, col))
    augmenters = [{"name": name, "p": aug_p} for _, name in sorted(positions)]
    partial = {
        "loss": {"hard_label_weight": 0.0,
                 "prediction": {"type": _lookup(PREDICTION_MAP, row["kd_loss_type"], "kd_loss_type", row_id)},
                 "intermediate": inter},
        "mixup": {"enabled": _bool(row["mixup"])},
        "augmentation": {"augmenters": augmenters, "repeated_aug": int(float(row["repeated_aug"]))},
    }
    extra = {"teacher": row["Teacher"], "student": row["Model"], "aug_p": aug_p, "alpha_raw": alpha,
             "distiller_n_examples": float(row["#example"]) if row.get("#example") else None,
             "distiller_baseline_score": float(row["baseline_score"]) if row.get("baseline_score") else None,
             "distiller_task": row["task"]}
    return partial, extra


def read_rows(text: str) -> list[dict[str, str]]:
    """Rows of a Distiller CSV (a leading BOM and spaces around the column names are ignored)."""
    return [{(k or "").strip(): v for k, v in row.items()} for row in csv.DictReader(io.StringIO(text.lstrip("\ufeff")))]


def read_teacher_scores(text: str) -> dict[tuple[str, str], float]:
    """(task, teacher) -> the teacher's GLUE dev score as a fraction."""
    return {(r["task"].strip().lower(), r["model"].strip()): float(r["score"]) / 100.0 for r in read_rows(text)}


def read_paper_task_features(text: str) -> dict[str, dict[str, float]]:
    """Our task name -> the paper's task features as ``extra_features`` (``#example`` is in every run row
    already); tasks without runs here (the paper's unseen boolq, cloth) are skipped."""
    out: dict[str, dict[str, float]] = {}
    for i, r in enumerate(read_rows(text)):
        task = TASK_MAP.get(str(r.get("task", "")).strip().lower())
        if task is None:
            continue
        feats = {}
        for name, value in r.items():
            if name.isdigit():
                feats[f"distiller_task_f{int(name):02d}"] = _number(value, name, f"{TASK_FEATURES_CSV} row {i}")
            elif name == "#label":
                feats["distiller_n_labels"] = _number(value, name, f"{TASK_FEATURES_CSV} row {i}")
        out[task] = feats
    return out


def _number(value: Any, column: str, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DistillerImportError(f"{where}, column {column!r}: not a number: {value!r}") from None


def runs_train_size(task: str, n_examples: float | None) -> dict[str, float]:
    """``log_n_train`` of the train set the paper's runs used (its ``#example``) where our copy of the task
    is a subset of it: a meta-feature describes the rows the target was measured on (issue 16). Where our
    copy is the whole set its own count stays (the paper's ``#example`` is rounded: 7000 for STS-B's 5,749)."""
    if task not in SUBSET_COPIES or not (n_examples and math.isfinite(n_examples) and n_examples > 0):
        return {}
    return {"log_n_train": round(math.log1p(n_examples), 6)}   # rounded as compute_meta_features rounds


def paper_train_sizes(rows: Iterable[Mapping[str, str]]) -> dict[str, float]:
    """Our task name -> the paper's ``#example`` (its runs' train set size), one per task."""
    sizes: dict[str, set[float]] = {}
    for i, row in enumerate(rows):
        if row.get("#example"):
            task = _lookup(TASK_MAP, row["task"], "task", i)
            sizes.setdefault(task, set()).add(_number(row["#example"], "#example", f"row {i}"))
    for task, values in sizes.items():
        if len(values) > 1:
            raise DistillerImportError(f"task {task!r} has several #example values: {sorted(values)}")
    return {task: values.pop() for task, values in sizes.items()}


def to_records(rows: Iterable[Mapping[str, str]], teacher_scores: Mapping[tuple[str, str], float],
               task_features: Mapping[str, Mapping[str, Any]],
               paper_task_features: Mapping[str, Mapping[str, float]] | None = None) -> list[RunRecord]:
    """Records for the rows; ``task_features[our task] = {"fingerprint", "meta_features"}``;
    ``paper_task_features[our task]`` (:func:`read_paper_task_features`) are added to ``extra_features``
    when given."""
    versions = library_versions()
    out = []
    for i, row in enumerate(rows):
        task = _lookup(TASK_MAP, row["task"], "task", i)
        partial, extra = map_row(row, i)
        if paper_task_features is not None:
            if task not in paper_task_features:
                raise DistillerImportError(f"row {i}: task {row['task']!r} has no row in {TASK_FEATURES_CSV}")
            extra.update(paper_task_features[task])
        cfg = parse_config(partial, source=f"Distiller row {i}")
        info = task_features[task]
        feats = dict(info["meta_features"])
        t_score = teacher_scores.get((row["task"].strip().lower(), row["Teacher"].strip()))
        if t_score is not None:
            feats["teacher_score"], feats["has_teacher_score"] = round(t_score, 6), 1.0
        ratio, score = float(row["ratio"]), float(row["score"])
        out.append(RunRecord(
            key=f"distiller:{i}", source="distiller", row_index=i,
            dataset=task, dataset_fingerprint=info["fingerprint"], meta_features=feats,
            config=cfg.to_dict(), config_hash=canonical_config_hash(cfg), extra_features=extra,
            target={"ratio": ratio, "score": score}, metrics={"score": score, "ratio": ratio},
            teacher_score=t_score, wall_seconds=None, student_parameters=None, seed=None,
            status="ok", versions=versions,
            provenance={"import_version": IMPORT_VERSION, "meta_features_version": META_FEATURES_VERSION,
                        "csv": RUNS_CSV}))
    return out


def import_distiller(anchors: str | Path, datasets_root: str | Path, out: str | Path = "meta_dataset/distiller",
                     backbone: Any = "default", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``<out>/records.jsonl`` (rewritten each time: the import is idempotent) and
    ``<out>/features/<task>.json``; returns a summary."""
    from ..models import load_tokenizer

    anchors, root, out = Path(anchors), Path(datasets_root), Path(out)
    rows = read_rows((anchors / RUNS_CSV).read_text(encoding="utf-8"))
    teacher_scores = read_teacher_scores((anchors / TEACHERS_CSV).read_text(encoding="utf-8"))
    paper_features = read_paper_task_features((anchors / TASK_FEATURES_CSV).read_text(encoding="utf-8"))
    tasks = sorted({_lookup(TASK_MAP, r["task"], "task", i) for i, r in enumerate(rows)})
    n_examples = paper_train_sizes(rows)
    tokenizer = load_tokenizer("default")
    model = resolve_backbone_model(backbone)
    (out / "features").mkdir(parents=True, exist_ok=True)
    task_features: dict[str, dict[str, Any]] = {}
    for task in tasks:
        t0 = time.perf_counter()
        data = load_task_data(DataConfig(train=str(root / task)))
        runs_size = runs_train_size(task, n_examples.get(task))
        feats = {**task_meta_features(data, model, tokenizer=tokenizer), **runs_size}
        seconds = time.perf_counter() - t0
        task_features[task] = {"fingerprint": data.fingerprint, "meta_features": feats}
        (out / "features" / f"{task}.json").write_text(json.dumps({
            "version": META_FEATURES_VERSION, "dataset": task, "dataset_fingerprint": data.fingerprint,
            "task_type": data.task_type, "rows": {"train": len(data.train), "validation": len(data.validation)},
            "backbone": "default (MiniLM-L6, frozen)" if model is not None else None,
            "seconds": round(seconds, 2), "meta_features": feats,
            **({"log_n_train_from": "#example"} if runs_size else {})},
            indent=2, sort_keys=True), encoding="utf-8")
        log(f"[{task}] meta-features in {seconds:.1f} s")
    records = to_records(rows, teacher_scores, task_features, paper_features)
    tmp = out / "records.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.to_dict(), sort_keys=True) + "\n")
    tmp.replace(out / "records.jsonl")
    return {"records": len(records), "tasks": tasks, "out": str(out)}
