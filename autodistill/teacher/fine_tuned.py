"""Teachers: fine-tuned once per (backbone, dataset fingerprint, training arguments), cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from filelock import FileLock
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from ..batching import EncodedSplit
from ..callbacks import Callback
from ..checkpoints import remove_checkpoint, remove_unfinished_writes
from ..config import TeacherConfig
from ..evaluation import CORRELATION_METRICS, evaluate
from ..models import backbone_identity, load_classifier
from ..trainer import TRAINING_KEYS, StepObjective, TrainArgs, Trainer, set_seed, training_dtype
from .cache import cache_root, split_hash

# 2: the new head is initialised from the teacher's seed (version 1 teachers depended on earlier draws)
# 3: trained by the training rule (early stopping on a dev slice of train), scored on validation after
TEACHER_CACHE_VERSION = 3
FINE_TUNES = [0]   # teachers fine-tuned by this process (a search asserts its trials never do)


def teacher_cache_key(cfg: TeacherConfig, fingerprint: str, max_length: int, metric: str, dev: EncodedSplit,
                      precision: str | None = None) -> str:
    """The cached teacher's name: everything its weights depend on. ``precision`` is the autocast dtype it
    trains in (None, full precision, adds nothing, so full-precision keys are as before). A correlation's
    early-stopping clock starts above chance since 2026-12-06 (above 0 before): such a teacher is keyed
    apart from one cached under the old start; every other key is as before."""
    chance_start = metric in CORRELATION_METRICS and cfg.early_stopping_start == "above_trivial"
    payload = {
        "version": TEACHER_CACHE_VERSION, "backbone": backbone_identity(cfg.backbone),
        "dataset": fingerprint, "training": cfg.model_dump(mode="json", exclude={"backbone"}),
        "max_length": max_length, "metric": metric, "dev": split_hash(dev),
        **({"precision": precision} if precision else {}), **({"start": "above_chance"} if chance_start else {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class TeacherResult:
    model: PreTrainedModel
    path: Path
    score: float                        # on the scored validation split
    from_cache: bool
    training: dict[str, Any] = field(default_factory=dict)   # steps, seconds, stop reason, dev learning curve


def get_teacher(cfg: TeacherConfig, *, fingerprint: str, train: EncodedSplit, dev: EncodedSplit,
                validation: EncodedSplit, num_labels: int, task_type: str, label_names: list[str] | None,
                metric: str, max_length: int, pad_id: int, device: torch.device,
                callbacks: Sequence[Callback] = (), mixed_precision: str = "auto") -> TeacherResult:
    """Load the cached teacher for this key, or fine-tune it by the training rule on ``train`` (early
    stopping on ``dev``), score it on ``validation`` and store it (atomically, under a lock)."""
    key = teacher_cache_key(cfg, fingerprint, max_length, metric, dev, training_dtype(mixed_precision, device))
    path = cache_root() / "teachers" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = path.with_name(f"{key}.partial.pt")    # an interrupted fine-tune resumes from its last evaluation
    with FileLock(str(path) + ".lock"):
        if (path / "teacher.json").is_file():
            remove_checkpoint(checkpoint)       # a process killed between storing the teacher and removing it
            return _load_cached(path, device)
        remove_unfinished_writes(checkpoint)
        set_seed(cfg.seed)  # the new head's init: a function of the config, not of earlier draws
        model = load_classifier(cfg.backbone, num_labels, task_type, label_names)
        args = TrainArgs.from_rule(cfg, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                                   batch_size=cfg.batch_size, metric=metric, task_type=task_type,
                                   warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay, seed=cfg.seed,
                                   mixed_precision=mixed_precision)
        FINE_TUNES[0] += 1
        result = Trainer(model, StepObjective(train, task_type), dev, args, pad_id, device,
                         callbacks, desc="teacher", checkpoint=checkpoint).train()
        score = evaluate(model, validation, metric, task_type, args.eval_batch_size, pad_id, device)
        training = {k: result[k] for k in TRAINING_KEYS}
        _store(path, model, {"key": key, "backbone": cfg.backbone, "score": score, "metric": metric,
                             "dataset_fingerprint": fingerprint, "training": training})
        remove_checkpoint(checkpoint)
        return TeacherResult(model.to(device).eval(), path, float(score), from_cache=False, training=training)


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
    return TeacherResult(model.to(device).eval(), path, float(info["score"]), from_cache=True,
                         training=info.get("training", {}))
