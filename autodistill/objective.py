"""The KD objective: one weighted sum of hard-label, prediction, intermediate, mixup and adaptive terms.

    L = w_hard·mean_i CE_i + w_kd·mean_{i∈S} KD_i + w_inter·mean_{i∈S} INTER_i
        + w_SM·CE(ỹ, f_S(ê)) + w_TMKD·KD(f_T(ê), f_S(ê))

S is the KD subset of the batch (Dynamic KD data selection; all samples by default). With a
weighting strategy, w_hard and w_kd become (1 − λ_i) and λ_i per sample; with Dynamic KD teacher
adoption, KD_i mixes the teachers' KD losses; with objective adaptation, KD_i ← (1 − u_i)KD_i + u_i REP_i.
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence

import torch
from torch import nn

from .augmentation import mix_embeddings, mix_targets, mixup_permutation, sample_mixup_lambda
from .augmentation import soft_target_cross_entropy
from .callbacks import TrainerState
from .config import PipelineConfig
from .dynamic import adapt_objective, adoption_weights, select_for_kd, uncertainty
from .losses import build_prediction_loss
from .losses.intermediate import normalized_rep_mse
from .pool import TrainingPool
from .teacher_outputs import TeacherOutputs, pool_states
from .trainer import StepObjective, supervised_loss
from .training import EncodedSplit, collate, model_inputs, to_device
from .weighting import build_weighting, sample_signals


class TeacherSource:
    """Teacher logits (and hidden features) for rows of a batch, from a cache or computed on the fly."""

    def __init__(self, model: nn.Module, cached: TeacherOutputs | None, layers: Sequence[int] = (),
                 feature: str | None = None):
        self.model = model
        self.cached = cached
        self.layers = sorted(set(layers))
        self.feature = feature
        self.forward_examples = 0

    @property
    def online(self) -> bool:
        return self.cached is None

    def outputs(self, batch: dict[str, torch.Tensor], rows: torch.Tensor, with_hidden: bool
                ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        device = batch["input_ids"].device
        if not self.online:
            indices = batch["indices"][rows]
            hidden = self.cached.batch_hidden(indices, batch["input_ids"].shape[1], device) if with_hidden else {}
            return self.cached.batch_logits(indices).to(device), hidden
        sub = {k: v[rows] for k, v in model_inputs(batch).items()}
        self.forward_examples += int(rows.numel())
        with torch.no_grad():
            out = self.model(**sub, output_hidden_states=with_hidden and bool(self.layers))
        hidden = {}
        if with_hidden:
            for layer in self.layers:
                hidden[layer] = pool_states(out.hidden_states[layer].float(), sub["attention_mask"], self.feature)
        return out.logits.float(), hidden

    def logits_for_embeddings(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                              token_type_ids: torch.Tensor | None) -> torch.Tensor:
        self.forward_examples += inputs_embeds.shape[0]
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with torch.no_grad():
            return self.model(**kwargs).logits.float()


class KDObjective(StepObjective):
    def __init__(self, cfg: PipelineConfig, pool_builder, teachers: list[TeacherSource], task_type: str,
                 intermediate: nn.Module | None, rep_mapping, student_dim: int, teacher_dim: int,
                 num_labels: int, meta_split: EncodedSplit | None, pad_id: int):
        self.cfg = cfg
        self.pool_builder = pool_builder
        self.pool: TrainingPool = pool_builder.initial()
        super().__init__(self.pool.split, task_type)
        self.teachers = teachers
        self.num_labels = num_labels
        self.prediction = build_prediction_loss(cfg.loss.prediction)
        self.intermediate = intermediate
        self.rep_mapping = rep_mapping
        self.rep_projections = nn.ModuleDict()
        if self.rep_mapping is not None and student_dim != teacher_dim:
            for s, _t, _w in self.rep_mapping.pairs():
                self.rep_projections[str(s)] = nn.Linear(student_dim, teacher_dim)
        self.weighting = build_weighting(cfg.weighting)
        self.meta_split = meta_split
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(cfg.optim.seed)
        self.meta_rng = random.Random(cfg.optim.seed + 1)
        self.progress = 0.0
        self.last_logs: dict[str, float] = {}

    # ---------------------------------------------------------------- bookkeeping
    def trainable_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = []
        if self.intermediate is not None:
            modules.append(self.intermediate)
        if len(self.rep_projections):
            modules.append(self.rep_projections)
        return modules

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.prediction.on_epoch_start(epoch, num_epochs)
        if self.intermediate is not None:
            self.intermediate.on_epoch_start(epoch)
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

    def stats(self) -> dict[str, Any]:
        return {"teacher_forward_examples": sum(t.forward_examples for t in self.teachers)}

    # ---------------------------------------------------------------- RW-KD look-ahead
    def before_step(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState) -> None:
        self.progress = state.global_step / max(1, state.total_steps)
        if self.weighting is None or self.meta_split is None:
            return
        rows = torch.arange(batch["input_ids"].shape[0], device=batch["input_ids"].device)
        teacher_logits, _ = self.teachers[0].outputs(batch, rows, with_hidden=False)
        meta_idx = self.meta_rng.sample(range(len(self.meta_split)), min(len(self.meta_split),
                                                                          len(rows)))
        meta = to_device(collate(self.meta_split, meta_idx, self.pad_id), batch["input_ids"].device)
        self.last_logs.update(self.weighting.meta_step(
            model, model_inputs(batch), batch["labels"], teacher_logits, self.prediction.per_sample,
            {"inputs": model_inputs(meta), "labels": meta["labels"]}))

    # ---------------------------------------------------------------- the loss
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], state: TrainerState
             ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        need_hidden = self.intermediate is not None or self.rep_mapping is not None
        out = model(**model_inputs(batch), output_hidden_states=need_hidden)
        z_s, labels = out.logits, batch["labels"]
        ce = supervised_loss(z_s, labels, self.task_type)
        logs: dict[str, float] = {"ce": float(ce.detach().mean())}

        if self.prediction.hard_labels_only:  # Annealing KD phase 2
            return ce.mean(), logs

        sel = select_for_kd(z_s, cfg.dynamic.selection, cfg.dynamic.selection_ratio, self.generator)
        kd, teacher_hidden, teacher_logits = self._kd_terms(batch, z_s, out.hidden_states, sel, need_hidden)
        total = self._label_and_kd(ce, kd, z_s, labels, sel, teacher_logits, logs)

        if self.intermediate is not None and sel.numel():
            student_hidden = [h[sel] for h in out.hidden_states]
            inter = self.intermediate(student_hidden, teacher_hidden, batch["attention_mask"][sel])
            self.intermediate.on_step()
            total = total + cfg.loss.intermediate.weight * inter.mean()
            logs["intermediate"] = float(inter.detach().mean())
        if cfg.mixup.enabled:
            total = total + self._mixup_terms(model, batch, logs)
        self.last_logs = logs
        return total, logs

    def _kd_terms(self, batch, z_s, student_hidden, sel, need_hidden):
        """Per-sample KD on the selected rows, mixing teachers and adapting the objective as configured."""
        cfg = self.cfg
        if sel.numel() == 0:
            return z_s.new_zeros(0), {}, z_s.new_zeros(0, z_s.shape[-1])
        outputs = [t.outputs(batch, sel, with_hidden=(k == 0 and need_hidden))
                   for k, t in enumerate(self.teachers)]
        kd_per_teacher = torch.stack([self.prediction.per_sample(z_s[sel], logits) for logits, _ in outputs], -1)
        if cfg.dynamic.adoption != "none":
            u = uncertainty(z_s[sel].detach())
            kd = (adoption_weights(u, cfg.dynamic.adoption, len(self.teachers)) * kd_per_teacher).sum(-1)
        else:
            kd = kd_per_teacher[:, 0]
        teacher_hidden = outputs[0][1]
        if self.rep_mapping is not None:
            rep = self._representation_loss(batch, student_hidden, sel, teacher_hidden)
            kd = adapt_objective(kd, cfg.dynamic.rep_weight * rep, uncertainty(z_s[sel].detach()))
        return kd, teacher_hidden, outputs[0][0]

    def _representation_loss(self, batch, hidden, sel, teacher_hidden) -> torch.Tensor:
        rep = 0.0
        mask = batch["attention_mask"][sel]
        for s, t, w in self.rep_mapping.pairs():
            proj = self.rep_projections[str(s)] if str(s) in self.rep_projections else None
            rep = rep + w * normalized_rep_mse(hidden[s][sel], teacher_hidden[t], mask, proj)
        return rep

    def _label_and_kd(self, ce, kd, z_s, labels, sel, teacher_logits, logs) -> torch.Tensor:
        cfg = self.cfg
        batch_size = ce.shape[0]
        if self.weighting is None:
            total = cfg.loss.hard_label_weight * ce.mean()
            if kd.numel():
                total = total + cfg.loss.prediction.weight * kd.mean()
        else:
            kd_full = torch.zeros_like(ce)
            kd_full[sel] = kd
            teacher_full = torch.zeros_like(z_s)
            teacher_full[sel] = teacher_logits
            lam = self.weighting.lambdas(sample_signals(z_s, teacher_full, labels, ce, kd_full), self.progress)
            in_sel = torch.zeros(batch_size, dtype=torch.bool, device=ce.device)
            in_sel[sel] = True
            lam = torch.where(in_sel, lam, torch.zeros_like(lam))
            total = ((1 - lam) * ce).mean() + (lam * kd_full).sum() / max(1, int(sel.numel()))
            logs["lambda"] = float(lam[in_sel].mean()) if sel.numel() else 0.0
        if kd.numel():
            logs["kd"] = float(kd.detach().mean())
        return total

    def _mixup_terms(self, model: nn.Module, batch: dict[str, torch.Tensor], logs: dict[str, float]) -> torch.Tensor:
        """MixKD: student-mixup CE on mixed labels + teacher-mixup KD on the same mixed embeddings."""
        cfg = self.cfg
        ids, mask = batch["input_ids"], batch["attention_mask"]
        types = batch.get("token_type_ids")
        lam = sample_mixup_lambda(cfg.mixup.beta_a, self.generator)
        perm = mixup_permutation(ids.shape[0], self.generator).to(ids.device)
        s_emb, mixed_mask = mix_embeddings(model.get_input_embeddings()(ids), mask, lam, perm)
        kwargs = {"inputs_embeds": s_emb, "attention_mask": mixed_mask}
        if types is not None:
            kwargs["token_type_ids"] = types
        z_mix = model(**kwargs).logits
        targets = mix_targets(batch["labels"], lam, perm, self.num_labels)
        student_mix = soft_target_cross_entropy(z_mix, targets) if self.task_type != "regression" \
            else (z_mix - targets) ** 2
        teacher = self.teachers[0]
        with torch.no_grad():
            t_emb, _ = mix_embeddings(teacher.model.get_input_embeddings()(ids), mask, lam, perm)
        z_t_mix = teacher.logits_for_embeddings(t_emb, mixed_mask, types)
        teacher_mix = self.prediction.per_sample(z_mix, z_t_mix)
        logs["mixup_student"] = float(student_mix.detach().mean())
        logs["mixup_teacher"] = float(teacher_mix.detach().mean())
        return cfg.mixup.student_weight * student_mix.mean() + cfg.mixup.teacher_weight * teacher_mix.mean()
