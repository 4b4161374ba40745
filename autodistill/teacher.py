"""Teachers: fine-tuned once per (backbone, dataset fingerprint, training arguments), cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from filelock import FileLock
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from .callbacks import Callback
from .config import TeacherConfig
from .models import backbone_identity, load_classifier
from .trainer import StepObjective, TrainArgs, Trainer
from .training import EncodedSplit, set_seed

# 2: the new head is initialised from the teacher's seed (version 1 teachers depended on earlier draws)
TEACHER_CACHE_VERSION = 2


def cache_root() -> Path:
    return Path(os.environ.get("AUTODISTILL_CACHE", Path.home() / ".cache" / "autodistill"))


def teacher_cache_key(cfg: TeacherConfig, fingerprint: str, max_length: int, metric: str) -> str:
    payload = {
        "version": TEACHER_CACHE_VERSION, "backbone": backbone_identity(cfg.backbone),
        "dataset": fingerprint, "training": cfg.model_dump(mode="json", exclude={"backbone"}),
        "max_length": max_length, "metric": metric,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class TeacherResult:
    model: PreTrainedModel
    path: Path
    score: float
    from_cache: bool


def get_teacher(cfg: TeacherConfig, fingerprint: str, train: EncodedSplit, validation: EncodedSplit,
                num_labels: int, task_type: str, label_names: list[str] | None, metric: str,
                max_length: int, pad_id: int, device: torch.device,
                callbacks: Sequence[Callback] = ()) -> TeacherResult:
    """Load the cached teacher for this key, or fine-tune it and store it (atomically, under a lock)."""
    key = teacher_cache_key(cfg, fingerprint, max_length, metric)
    path = cache_root() / "teachers" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if (path / "teacher.json").is_file():
            return _load_cached(path, device)
        set_seed(cfg.seed)  # the new head's init: a function of the config, not of earlier draws
        model = load_classifier(cfg.backbone, num_labels, task_type, label_names)
        args = TrainArgs(learning_rate=cfg.learning_rate, epochs=cfg.epochs, batch_size=cfg.batch_size,
                         metric=metric, task_type=task_type, warmup_ratio=cfg.warmup_ratio,
                         weight_decay=cfg.weight_decay, seed=cfg.seed)
        result = Trainer(model, StepObjective(train, task_type), validation, args, pad_id, device,
                         callbacks, desc="teacher").train()
        _store(path, model, {"key": key, "backbone": cfg.backbone, "score": result["best_score"],
                             "metric": metric, "train_seconds": result["train_seconds"],
                             "dataset_fingerprint": fingerprint})
        return TeacherResult(model.to(device).eval(), path, float(result["best_score"]), from_cache=False)


def _store(path: Path, model: PreTrainedModel, info: dict) -> None:
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-"))
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "teacher.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _load_cached(path: Path, device: torch.device) -> TeacherResult:
    info = json.loads((path / "teacher.json").read_text(encoding="utf-8"))
    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    return TeacherResult(model.to(device).eval(), path, float(info["score"]), from_cache=True)
