"""The KD objective: one weighted sum of hard-label, prediction, intermediate, mixup and adaptive terms.

    L = w_hard·mean_i CE_i + mean_{i∈S} (w_kd·KD_i + w_REP·u_i·REP_i) + w_inter·mean_{i∈S} INTER_i
        + w_SM·CE(ỹ, f_S(ê)) + w_TMKD·KD(f_T(ê), f_S(ê))

S is the KD subset of the batch (Dynamic KD data selection; all samples by default). With a
weighting strategy, w_hard and w_kd become (1 − λ_i) and λ_i per sample (λ_i = 0 outside S); with
Dynamic KD teacher adoption, KD_i mixes the teachers' KD losses; with objective adaptation,
KD_i ← (1 − u_i)·KD_i and the REP term is added with its own weight w_REP = dynamic.rep_weight (it
does not depend on loss.prediction.weight nor on λ). The label + KD part is
:func:`~autodistill.weighting.kd_objective`; RW-KD's look-ahead optimises the same function on the
same S and teacher outputs, computed once per step.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .augmentation import mix_targets, mixed_inputs, mixup_permutation, sample_mixup_lambda
from .augmentation import soft_target_cross_entropy
from .augmented_pool import PoolBuilder, TrainingPool
from .batching import EncodedSplit, collate, model_inputs, to_device
from .callbacks import TrainerState
from .config import PipelineConfig
from .dynamic import adapted_terms, build_adoption, build_selection, uncertainty
from .losses import build_prediction_loss
from .teacher.source import TeacherSource
from .trainer import StepObjective, supervised_loss
from .weighting import StepTerms, build_weighting, kd_objective


@dataclass
class TeacherStep:
    """The KD subset S of one step and every teacher's (logits, hidden features) on it."""

    selected: torch.Tensor
    outputs: list[tuple[torch.Tensor, dict[int, torch.Tensor]]]


class KDObjective(StepObjective):
    """The KD step of one pipeline ``cfg``: trains on ``pool_builder``'s pool, distils from ``teachers``
    (the first serves hidden features to ``intermediate`` or to Dynamic KD's ``representation``);
    ``meta_split`` is RW-KD's held-out meta set."""

    def __init__(self, cfg: PipelineConfig, *, pool_builder: PoolBuilder, teachers: list[TeacherSource],
                 task_type: str, intermediate: nn.Module | None, representation: nn.Module | None,
                 num_labels: int, meta_split: EncodedSplit | None, pad_id: int):
        self.cfg = cfg
        self.pool_builder = pool_builder
        self.pool: TrainingPool = pool_builder.initial()
        super().__init__(self.pool.split, task_type)
        self.teachers = teachers
        self.num_labels = num_labels
        self.prediction = build_prediction_loss(cfg.loss.prediction)
        self.intermediate = intermediate
        self.representation = representation  # Dynamic KD's REP: mapping + per-pair REP loss
        self.weighting = build_weighting(cfg.weighting)
        self.selection = build_selection(cfg.dynamic)     # Dynamic KD data selection (the KD subset S)
        self.adoption = build_adoption(cfg.dynamic)       # Dynamic KD teacher adoption (KD over teachers)
        self.meta_split = meta_split
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(cfg.optim.seed)
        self.meta_rng = random.Random(cfg.optim.seed + 1)
        self.progress = 0.0
        self.last_logs: dict[str, float] = {}
        self._meta_logs: dict[str, float] = {}
        self._teacher_step: TeacherStep | None = None

    # ---------------------------------------------------------------- bookkeeping
    def _layer_modules(self) -> list[nn.Module]:
        return [m for m in (self.intermediate, self.representation) if m is not None]

    def trainable_modules(self) -> list[nn.Module]:
        return self._layer_modules()

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.prediction.on_epoch_start(epoch, num_epochs)
        for module in self._layer_modules():
            module.on_epoch_start(epoch)
        self.pool = self.pool_builder.for_epoch(epoch, self.pool)
        self.train = self.pool.split

    def batches(self, batch_size: int, rng: random.Random) -> list[list[int]]:
        repeats = self.cfg.augmentation.repeated_aug
        n = self.pool.n_original
        if repeats == 1 or self.pool.copies == 0:
            order = list(range(len(self.pool.split)))
            rng.shuffle(order)
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        # repeated augmentation (Hoffer et al. 2020): each example with `repeats` variants in one batch
        originals = list(range(n))
        rng.shuffle(originals)
        per_batch = max(1, batch_size // repeats)
        batches = []
        for start in range(0, n, per_batch):
            batch = []
            for i in originals[start:start + per_batch]:
                variants = [i] + [n + c * n + i for c in range(self.pool.copies)]
                batch.extend(variants[v % len(variants)] for v in range(repeats))
            batches.append(batch)
        return batches

    def steps_per_epoch(self, batch_size: int) -> int:
        repeats = self.cfg.augmentation.repeated_aug
        if repeats == 1 or self.pool.copies == 0:
            return super().steps_per_epoch(batch_size)
        return math.ceil(self.pool.n_original / max(1, batch_size // repeats))

    def steps_per_original_pass(self, batch_size: int) -> int:
        return math.ceil(self.pool.n_original / batch_size)

    def stats(self) -> dict[str, Any]:
        return {"teacher_forward_examples": sum(t.forward_examples for t in self.teachers)}

    # ---------------------------------------------------------------- RW-KD look-ahead
    def before_step(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState) -> None:
        self.progress = state.global_step / max(1, state.total_steps)
        self._teacher_step, self._meta_logs = None, {}
        if self.weighting is None or self.meta_split is None:
            return
        meta_idx = self.meta_rng.sample(range(len(self.meta_split)), min(len(self.meta_split),
                                                                          batch["input_ids"].shape[0]))
        meta = to_device(collate(self.meta_split, meta_idx, self.pad_id), batch["input_ids"].device)
        self._meta_logs = self.weighting.meta_step(
            model, model_inputs(batch), batch["labels"], lambda out: self._step_terms(batch, out),
            {"inputs": model_inputs(meta), "labels": meta["labels"]},
            output_hidden_states=self.representation is not None)

    # ---------------------------------------------------------------- the loss
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState
             ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        need_hidden = self.intermediate is not None or self.representation is not None
        out = model(**model_inputs(batch), output_hidden_states=need_hidden)
        labels = batch["labels"]
        if self.prediction.hard_labels_only:  # Annealing KD phase 2
            ce = supervised_loss(out.logits, labels, self.task_type)
            return ce.mean(), {"ce": float(ce.detach().mean())}

        terms = self._step_terms(batch, out)
        step, self._teacher_step = self._teacher_step, None
        sel = terms.selected
        logs: dict[str, float] = {"ce": float(terms.ce.detach().mean()), **self._meta_logs}
        if self.weighting is None:
            total = kd_objective(terms.ce, terms.kd, terms.rep, cfg.loss.hard_label_weight,
                                 cfg.loss.prediction.weight, sel)
        else:
            lam = self.weighting.step_lambdas(terms, labels, self.progress)
            total = kd_objective(terms.ce, terms.kd, terms.rep, 1 - lam, lam, sel)
            logs["lambda"] = float(lam[sel].mean()) if sel.numel() else 0.0
        if sel.numel():
            logs["kd"] = float(terms.kd[sel].detach().mean())
            if terms.rep is not None:
                logs["rep"] = float(terms.rep[sel].detach().mean())

        if self.intermediate is not None and sel.numel():
            student_hidden = [h[sel] for h in out.hidden_states]
            inter = self.intermediate(student_hidden, step.outputs[0][1], batch["attention_mask"][sel])
            total = total + cfg.loss.intermediate.weight * inter.mean()
            logs["intermediate"] = float(inter.detach().mean())
        for module in self._layer_modules():
            module.on_step()
        if cfg.mixup.enabled:
            total = total + self._mixup_terms(model, batch, logs)
        self.last_logs = logs
        return total, logs

    def _teacher_step_outputs(self, batch, z_s) -> list[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
        """S and the teachers' outputs on it, once per step: RW-KD's look-ahead and the step share them."""
        if self._teacher_step is None:
            sel = self.selection.select(z_s, self.generator)
            need_hidden = self.intermediate is not None or self.representation is not None
            outputs = [t.outputs(batch, sel, with_hidden=(k == 0 and need_hidden)) if sel.numel() else
                       (z_s.new_zeros(0, z_s.shape[-1]), {}) for k, t in enumerate(self.teachers)]
            self._teacher_step = TeacherStep(sel, outputs)
        return self._teacher_step.outputs

    def _step_terms(self, batch: dict[str, torch.Tensor], out) -> StepTerms:
        """CE on every sample; on S: KD (teachers mixed by adoption) and, with objective adaptation,
        KD_i ← (1 − u_i)·KD_i and REP_i ← w_REP·u_i·REP_i (Dynamic KD, Li et al. 2021)."""
        cfg = self.cfg
        z_s, labels = out.logits, batch["labels"]
        ce = supervised_loss(z_s, labels, self.task_type)
        outputs = self._teacher_step_outputs(batch, z_s)
        sel = self._teacher_step.selected
        # float32 buffers: under autocast the student's logits (and CE) may be half precision while the
        # teachers' are float32, and an indexed write needs one dtype
        kd_full, teacher_full = torch.zeros_like(ce, dtype=torch.float32), torch.zeros_like(z_s, dtype=torch.float32)
        rep_full = torch.zeros_like(ce, dtype=torch.float32) if self.representation is not None else None
        if sel.numel():
            z_sel = z_s[sel]
            kd_per_teacher = torch.stack([self.prediction.per_sample(z_sel, logits) for logits, _ in outputs], -1)
            kd = self.adoption.combine(kd_per_teacher, z_sel)
            if self.representation is not None:
                u = uncertainty(z_sel.detach())
                student_hidden = [h[sel] for h in out.hidden_states]
                rep = self.representation(student_hidden, outputs[0][1], batch["attention_mask"][sel])
                kd, rep_term = adapted_terms(kd, rep, u, cfg.dynamic.rep_weight)
                rep_full[sel] = rep_term.float()
            kd_full[sel] = kd.float()
            teacher_full[sel] = outputs[0][0].float()
        return StepTerms(z_s, ce, kd_full, rep_full, teacher_full, sel)

    def _mixup_terms(self, model: nn.Module, batch: dict[str, torch.Tensor], logs: dict[str, float]) -> torch.Tensor:
        """MixKD: student-mixup CE on mixed labels + teacher-mixup KD on the same mixed input (same λ, π)."""
        cfg = self.cfg
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        lam = sample_mixup_lambda(cfg.mixup.beta_a, self.generator)
        perm = mixup_permutation(ids.shape[0], self.generator).to(ids.device)
        z_mix = model(**mixed_inputs(model, ids, mask, types, lam, perm)).logits
        targets = mix_targets(batch["labels"], lam, perm, self.num_labels)
        student_mix = soft_target_cross_entropy(z_mix, targets) if self.task_type != "regression" \
            else (z_mix - targets) ** 2
        teacher = self.teachers[0]
        with torch.no_grad():
            teacher_inputs = mixed_inputs(teacher.model, ids, mask, types, lam, perm)
        z_t_mix = teacher.logits_for_inputs(teacher_inputs)
        teacher_mix = self.prediction.per_sample(z_mix, z_t_mix)
        logs["mixup_student"] = float(student_mix.detach().mean())
        logs["mixup_teacher"] = float(teacher_mix.detach().mean())
        return cfg.mixup.student_weight * student_mix.mean() + cfg.mixup.teacher_weight * teacher_mix.mean()
