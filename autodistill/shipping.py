"""What a search's trials need, packed once by the driver and sent through Ray's object store.

A trial may land on a node that shares nothing with the driver but Ray: no ``$AUTODISTILL_CACHE``, no
dataset file, no backbone folder. The driver fine-tunes the teacher(s) once, computes the teacher's
logits once, and packs them with the loaded dataset (:class:`~autodistill.data.TaskData`, the texts
and labels, not a path) and the tokenizer into :class:`SearchInputs`, which ``tune.with_parameters``
puts in the object store. A trial turns it back into models and tensors in its own temp folder
(:func:`materialize`, once per worker process) and ``run_distillation`` uses them instead of reading
anything from disk (:class:`Given`).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_SUFFIXES = (".json", ".safetensors", ".txt", ".model")


def _read_folder(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(Path(path).iterdir()) if f.is_file() and f.suffix in MODEL_SUFFIXES}


def _write_folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / Path(name).name).write_bytes(data)
    return path


@dataclass
class ShippedTeacher:
    key: str                       # the teacher cache key (names its folder; keys its cached outputs)
    score: float
    training: dict[str, Any]
    files: dict[str, bytes]        # config.json, model.safetensors, teacher.json


@dataclass
class SearchInputs:
    """Everything a trial reads, as bytes and tensors (picklable, sent once through the object store)."""

    data_config: dict[str, Any]             # the DataConfig the task was loaded with
    teacher_configs: list[dict[str, Any]]   # the TeacherConfigs the teachers were fine-tuned by
    task: Any                               # TaskData: texts and labels, not a path
    tokenizer_files: dict[str, bytes]
    teachers: list[ShippedTeacher]
    outputs: dict[str, Any] = field(default_factory=dict)   # teacher-outputs cache key -> TeacherOutputs
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def nbytes(self) -> int:
        files = sum(len(b) for t in self.teachers for b in t.files.values())
        logits = sum(o.logits.numel() * 4 for o in self.outputs.values())
        return files + logits + sum(len(b) for b in self.tokenizer_files.values())

    def check_matches(self, cfg) -> None:
        """A trial's config must use the data and teachers the driver prepared (spaces vary neither)."""
        from .config import ConfigError
        if cfg.data.model_dump(mode="json") != self.data_config:
            raise ConfigError("a search trial's data settings differ from the ones the driver loaded the "
                              "dataset with: a search space may not vary data.* (set it in base)")
        if [t.model_dump(mode="json") for t in cfg.teachers] != self.teacher_configs:
            raise ConfigError("a search trial's teachers differ from the ones the driver fine-tuned: a search "
                              "space may not vary teachers (set them in base)")


def pack(cfg, task, tokenizer, teachers, outputs: dict[str, Any]) -> SearchInputs:
    """The driver's side: ``teachers`` are TeacherResults (their cache folders hold the weights)."""
    with tempfile.TemporaryDirectory(prefix="autodistill-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        tok_files = _read_folder(Path(tmp))
    shipped = [ShippedTeacher(t.path.name, float(t.score), dict(t.training), _read_folder(t.path)) for t in teachers]
    return SearchInputs(cfg.data.model_dump(mode="json"), [t.model_dump(mode="json") for t in cfg.teachers],
                        task, tok_files, shipped, dict(outputs))


@dataclass
class Given:
    """What ``run_distillation`` uses instead of loading: the task, tokenizer, teachers, cached outputs."""

    inputs: SearchInputs
    tokenizer: Any
    teachers: list[Any]            # TeacherResult, on CPU (run_distillation moves them)
    folder: Path

    @property
    def task(self):
        return self.inputs.task

    @property
    def outputs(self) -> dict[str, Any]:
        return self.inputs.outputs


_MATERIALIZED: dict[str, Given] = {}   # per worker process (reused actors run many trials)
INPUTS_PREFIX = "autodistill-inputs-"   # + the owning process's pid + "-": a folder whose process is gone is stale


def _drop_materialized() -> None:
    for token, old in list(_MATERIALIZED.items()):
        shutil.rmtree(old.folder, ignore_errors=True)
        del _MATERIALIZED[token]


def remove_stale_inputs(root: Path | None = None) -> list[Path]:
    """Remove the input folders of processes that are gone (a worker Ray killed never ran its exit hook: each
    folder holds the teachers' weights, so they would pile up in the temp dir). Returns what was removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{INPUTS_PREFIX}*-*"):
        pid = folder.name[len(INPUTS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


atexit.register(_drop_materialized)


def materialize(inputs: SearchInputs) -> Given:
    """The trial's side: models and tokenizer rebuilt in a private temp folder (once per process; removed at
    the process's exit, or by the next process that materializes when it was killed)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .teacher.fine_tuned import TeacherResult
    if inputs.token in _MATERIALIZED:
        return _MATERIALIZED[inputs.token]
    _drop_materialized()   # a new search in a reused process: drop the old one
    remove_stale_inputs()
    folder = Path(tempfile.mkdtemp(prefix=f"{INPUTS_PREFIX}{os.getpid()}-"))
    tokenizer = AutoTokenizer.from_pretrained(_write_folder(folder / "tokenizer", inputs.tokenizer_files))
    teachers = []
    for t in inputs.teachers:
        path = _write_folder(folder / "teachers" / t.key, t.files)
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True).eval()
        teachers.append(TeacherResult(model, path, t.score, from_cache=True, training=t.training))
    given = Given(inputs, tokenizer, teachers, folder)
    _MATERIALIZED[inputs.token] = given
    return given
