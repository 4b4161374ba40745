"""What every run starts from, built in one place: the prepared task and its fine-tuned teacher(s).

    load the task -> the teacher's tokenizer -> encode train and validation -> hold the dev slice out
    of train -> fine-tune (or load from the cache) every teacher -> their outputs on train

:func:`prepare` does it all (the search's driver, the meta-dataset build); ``run_distillation`` runs
the stages, :func:`prepare_task` and :func:`prepare_teachers`, with its task checks in between, and
asks :func:`teacher_outputs` for the outputs its objective needs. A search trial's
:class:`~autodistill.shipping.Given` replaces every read from disk (task, tokenizer, teachers, outputs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

from .batching import EncodedSplit, dev_indices, encode_texts
from .callbacks import EventLogCallback
from .config import PipelineConfig
from .data import TaskData, load_task_data
from .device import select_device
from .metrics import resolve_metric
from .models import load_tokenizer
from .pooling import Feature
from .progress import EventLog
from .teacher import outputs_cache
from .teacher.fine_tuned import TeacherResult, get_teacher
from .teacher.outputs import TeacherOutputs, compute_teacher_outputs

if TYPE_CHECKING:
    from .shipping import Given


@dataclass
class PreparedTask:
    """A task as every run sees it, and (after :func:`prepare_teachers`) its teachers."""

    task: TaskData
    tokenizer: Any
    metric: str                        # resolved (never "auto")
    device: torch.device
    max_length: int
    train: EncodedSplit                # train's fit rows: the dev slice held out
    dev: EncodedSplit                  # the dev slice early stopping watches
    validation: EncodedSplit           # the scored split
    fit_rows: list[int]                # rows of task.train in ``train``, in order
    teachers: list[TeacherResult] = field(default_factory=list)
    outputs: dict[str, TeacherOutputs] = field(default_factory=dict)   # outputs-cache key -> logits on train

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0


def prepare_task(cfg: PipelineConfig, *, given: "Given | None" = None, task: TaskData | None = None
                 ) -> PreparedTask:
    """Load ``cfg.data`` (or take ``task`` already loaded, or ``given``'s), the first teacher's tokenizer
    (or ``given``'s), encode train and validation and hold the dev slice out of train."""
    if given is not None:
        given.inputs.check_matches(cfg)
        task = given.task
    if task is None:
        task = load_task_data(cfg.data)
    device = select_device(cfg.optim.device)
    metric = resolve_metric(cfg.optim.metric, task.task_type)
    tokenizer = given.tokenizer if given is not None else load_tokenizer(cfg.teacher.backbone)
    max_length = cfg.data.max_length
    encoded = encode_texts(tokenizer, task.train.text_a, task.train.text_b, task.train.labels, max_length,
                           task.task_type)
    validation = encode_texts(tokenizer, task.validation.text_a, task.validation.text_b,
                              task.validation.labels, max_length, task.task_type)
    fit_rows, dev_rows = dev_indices(task.train, cfg.data, task.task_type)
    return PreparedTask(task, tokenizer, metric, device, max_length, encoded.take(fit_rows), encoded.take(dev_rows),
                        validation, fit_rows)


def prepare_teachers(cfg: PipelineConfig, prepared: PreparedTask, *, given: "Given | None" = None,
                     events: EventLog | None = None) -> list[TeacherResult]:
    """``cfg.teachers`` fine-tuned by the training rule on ``prepared.train`` (early stopping on its dev
    slice), scored on its validation split, cached on disk - or loaded from that cache, or ``given``'s.
    ``events`` gets one line per evaluation of a teacher fine-tuned here. Sets ``prepared.teachers``."""
    p = prepared
    if given is not None:
        teachers = [TeacherResult(t.model.to(p.device).eval(), t.path, t.score, t.from_cache, t.training)
                    for t in given.teachers]
    else:
        teachers = []
        for k, tcfg in enumerate(cfg.teachers):
            label = "teacher" if k == 0 else f"teacher {k}"
            callbacks = [EventLogCallback(label, p.metric, events)] if events else ()
            teachers.append(get_teacher(
                tcfg, fingerprint=p.task.fingerprint, train=p.train, dev=p.dev, validation=p.validation,
                num_labels=p.task.num_labels, task_type=p.task.task_type, label_names=p.task.label_names,
                metric=p.metric, max_length=p.max_length, pad_id=p.pad_id, device=p.device, callbacks=callbacks,
                mixed_precision=cfg.optim.mixed_precision))
    p.teachers = teachers
    return teachers


def teacher_outputs(teacher: TeacherResult, split: EncodedSplit, *, pad_id: int, device: torch.device,
                    layers: Iterable[int] = (), feature: Feature | None = None, share: bool = False,
                    given: Mapping[str, TeacherOutputs] | None = None) -> TeacherOutputs:
    """``teacher``'s outputs on ``split`` (logits, and ``layers`` pooled to ``feature``): ``given``'s when
    it holds them (keyed by :func:`~autodistill.teacher.outputs_cache.outputs_key`), else from the disk
    cache shared by later runs when ``share``, else computed here."""
    if given:
        key = outputs_cache.outputs_key(teacher.path.name, split, layers, feature)
        if key in given:
            return given[key]
    if share:
        return outputs_cache.load_or_compute(teacher.model, teacher.path.name, split, pad_id, device,
                                             layers=layers, feature=feature)[0]
    return compute_teacher_outputs(teacher.model, split, pad_id, device, layers=layers, feature=feature)


def share_teacher_logits(prepared: PreparedTask) -> dict[str, TeacherOutputs]:
    """Every teacher's logits on ``prepared.train``, through the disk cache shared by a search's trials,
    keyed as ``run_distillation`` looks them up (what a search ships to its trials). Sets ``prepared.outputs``."""
    p = prepared
    p.outputs = {outputs_cache.outputs_key(t.path.name, p.train, (), None):
                 teacher_outputs(t, p.train, pad_id=p.pad_id, device=p.device, share=True) for t in p.teachers}
    return p.outputs


def prepare(cfg: PipelineConfig, *, given: "Given | None" = None, task: TaskData | None = None,
            events: EventLog | None = None, teacher_logits: bool = False) -> PreparedTask:
    """The task prepared and its teachers fine-tuned (or loaded); with ``teacher_logits`` also their
    logits on train through the shared disk cache (what a search ships to its trials)."""
    prepared = prepare_task(cfg, given=given, task=task)
    prepare_teachers(cfg, prepared, given=given, events=events)
    if teacher_logits:
        share_teacher_logits(prepared)
    return prepared
