"""Teacher-student layer mappings for intermediate distillation.

Layer indices follow HF's ``output_hidden_states``: 0 = embedding output, 1..L = transformer
layers. A mapping yields ``(student_layer, teacher_layer, weight)`` triples.
"""
from __future__ import annotations

import numpy as np

from autodistill.config import ConfigError, IntermediateConfig
from autodistill.registry import LAYER_MAPPINGS


class LayerMapping:
    """Base: a fixed list of pairs; subclasses override ``_build`` or the hooks."""

    name = "base"
    many_to_many = False

    def __init__(self, cfg: IntermediateConfig, student_layers: int, teacher_layers: int, seed: int = 0):
        if student_layers < 1 or teacher_layers < 1:
            raise ConfigError(f"loss.intermediate.mapping={self.name!r}: need at least one student and one "
                              f"teacher layer (got {student_layers}, {teacher_layers})")
        self.cfg = cfg
        self.student_layers = int(student_layers)
        self.teacher_layers = int(teacher_layers)
        self.seed = int(seed)
        self._pairs: list[tuple[int, int, float]] = self._build()
        self._validate(self._pairs)

    def _build(self) -> list[tuple[int, int, float]]:
        raise NotImplementedError

    def _needs_shallower_student(self) -> None:
        if self.student_layers > self.teacher_layers:
            raise ConfigError(f"loss.intermediate.mapping={self.name!r} needs student layers "
                              f"({self.student_layers}) <= teacher layers ({self.teacher_layers})")

    def _validate(self, pairs, field: str = "loss.intermediate.mapping") -> None:
        for s, t, _ in pairs:
            if not 0 <= s <= self.student_layers:
                raise ConfigError(f"{field}: student layer {s} does not exist "
                                  f"(student has layers 0..{self.student_layers})")
            if not 0 <= t <= self.teacher_layers:
                raise ConfigError(f"{field}: teacher layer {t} does not exist "
                                  f"(teacher has layers 0..{self.teacher_layers})")

    def pairs(self) -> list[tuple[int, int, float]]:
        """Current (student layer, teacher layer, weight) triples."""
        return list(self._pairs)

    def possible_pairs(self) -> list[tuple[int, int]]:
        """Every (student, teacher) pair this mapping may ever produce (for per-pair parameters)."""
        return sorted({(s, t) for s, t, _ in self._pairs})

    def teacher_layers_needed(self) -> set[int]:
        """Every teacher layer the mapping may ever ask for (the trainer caches these)."""
        return {t for _, t in self.possible_pairs()}

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every (0-based) epoch."""

    def on_step(self) -> None:
        """Called once per optimisation step."""


@LAYER_MAPPINGS.register("skip")
class SkipMapping(LayerMapping):
    """Skip (Distiller ``cal_layer_mapping`` / PKD-skip): (i, floor(i * L_T / L_S)) for i = 0..L_S."""

    name = "skip"

    def _build(self):
        self._needs_shallower_student()
        return [(i, (i * self.teacher_layers) // self.student_layers, 1.0) for i in range(self.student_layers + 1)]


@LAYER_MAPPINGS.register("last")
class LastMapping(LayerMapping):
    """Last (PKD-Last, Sun et al. 2019, as Distiller's ``cal_layer_mapping`` implements it):
    (i, L_T - L_S + i) for i = 0..L_S.

    The student's hidden states 0..L_S (0 = its embedding output) learn from the teacher's last L_S + 1
    hidden states before its output layer, so the student's top layer meets the teacher's top layer and
    its embedding output meets teacher layer L_T - L_S (never the teacher's embeddings unless
    L_S = L_T). PKD-Last itself names teacher layers L_T - L_S + 1..L_T - 1 for student layers
    1..L_S - 1 and leaves the top pair to the prediction loss; we follow Distiller's superset, which
    is what the imported Distiller runs (``intermediate_strategy = last``) mean.
    """

    name = "last"

    def _build(self):
        self._needs_shallower_student()
        off = self.teacher_layers - self.student_layers
        return [(i, off + i, 1.0) for i in range(self.student_layers + 1)]


@LAYER_MAPPINGS.register("uniform")
class UniformMapping(LayerMapping):
    """Uniform (TinyBERT, Jiao et al. 2020): (m, round(m * L_T / L_S)) for m = 1..L_S (halves round up)."""

    name = "uniform"

    def _build(self):
        self._needs_shallower_student()
        ls, lt = self.student_layers, self.teacher_layers
        return [(m, (2 * m * lt + ls) // (2 * ls), 1.0) for m in range(1, ls + 1)]


@LAYER_MAPPINGS.register("custom")
class CustomMapping(LayerMapping):
    """User-given pairs ``loss.intermediate.pairs``, weight 1 each."""

    name = "custom"

    def _build(self):
        if not self.cfg.pairs:
            raise ConfigError("loss.intermediate.pairs is required when mapping='custom'")
        pairs = [(int(s), int(t), 1.0) for s, t in self.cfg.pairs]
        self._validate(pairs, field="loss.intermediate.pairs")
        return pairs


@LAYER_MAPPINGS.register("random")
class RandomMapping(LayerMapping):
    """RAIL-KD (Haidar et al. 2022): every epoch (or every step when random_resample="batch") draw
    L_S distinct teacher layers uniformly without replacement from 1..L_T, sort them, and pair them
    with student layers 1..L_S. The draw for (epoch e, step n) uses ``default_rng([seed, e, n])``,
    so it is reproducible regardless of history (step counter n resets every epoch)."""

    name = "random"

    def __init__(self, cfg, student_layers, teacher_layers, seed=0):
        self._epoch = 0
        self._step = 0
        super().__init__(cfg, student_layers, teacher_layers, seed)

    def _build(self):
        self._needs_shallower_student()
        rng = np.random.default_rng([self.seed, self._epoch, self._step])
        layers = np.sort(rng.choice(np.arange(1, self.teacher_layers + 1), size=self.student_layers,
                                    replace=False))
        return [(i + 1, int(t), 1.0) for i, t in enumerate(layers)]

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch, self._step = int(epoch), 0
        self._pairs = self._build()

    def on_step(self) -> None:
        if self.cfg.random_resample == "batch":
            self._step += 1
            self._pairs = self._build()

    def possible_pairs(self):
        # the s-th smallest of L_S distinct layers in 1..L_T lies in [s, L_T - L_S + s]
        ls, lt = self.student_layers, self.teacher_layers
        return [(s, t) for s in range(1, ls + 1) for t in range(s, lt - ls + s + 1)]


def emd_flow(cost, student_weights=None, teacher_weights=None) -> np.ndarray:
    """Earth mover's flow (BERT-EMD, Li et al. 2020): solve the transportation LP

    min_F sum_ij F_ij C_ij  s.t.  F >= 0, sum_j F_ij = w_S[i], sum_i F_ij = w_T[j]

    with ``scipy.optimize.linprog`` (HiGHS). Weights default to uniform 1/L_S and 1/L_T (total mass 1);
    given weights must be non-negative and have equal totals.
    """
    from scipy.optimize import linprog

    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be (L_S, L_T), got shape {cost.shape}")
    ls, lt = cost.shape
    ws = np.full(ls, 1.0 / ls) if student_weights is None else np.asarray(student_weights, dtype=np.float64)
    wt = np.full(lt, 1.0 / lt) if teacher_weights is None else np.asarray(teacher_weights, dtype=np.float64)
    if ws.shape != (ls,) or wt.shape != (lt,):
        raise ValueError("weights must match the cost matrix's rows and columns")
    if (ws < 0).any() or (wt < 0).any():
        raise ValueError("layer weights must be non-negative")
    if not np.isclose(ws.sum(), wt.sum(), rtol=1e-9, atol=1e-12):
        raise ValueError(f"student and teacher weights must have equal totals ({ws.sum()} != {wt.sum()})")
    if not np.isfinite(cost).all():
        raise ValueError("cost matrix has non-finite entries")
    a_rows = np.kron(np.eye(ls), np.ones((1, lt)))          # sum_j F_ij
    a_cols = np.kron(np.ones((1, ls)), np.eye(lt))          # sum_i F_ij
    res = linprog(cost.ravel(), A_eq=np.vstack([a_rows, a_cols]), b_eq=np.concatenate([ws, wt]),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"EMD transportation problem failed: {res.message}")
    return np.clip(res.x.reshape(ls, lt), 0.0, None)


@LAYER_MAPPINGS.register("emd")
class EMDMapping(LayerMapping):
    """BERT-EMD (Li et al. 2020) many-to-many mapping: all (i, j), i in 1..L_S, j in 1..L_T, weighted by
    the EMD flow (0 until ``set_flow``), plus the embedding pair (0, 0) with weight 1 (as Distiller)."""

    name = "emd"
    many_to_many = True

    def _build(self):
        self.student_weights = np.full(self.student_layers, 1.0 / self.student_layers)
        self.teacher_weights = np.full(self.teacher_layers, 1.0 / self.teacher_layers)
        self.flow = np.zeros((self.student_layers, self.teacher_layers))
        return self._from_flow()

    def _from_flow(self):
        return [(0, 0, 1.0)] + [(i, j, float(self.flow[i - 1, j - 1]))
                                for i in range(1, self.student_layers + 1)
                                for j in range(1, self.teacher_layers + 1)]

    def grid_pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(1, self.student_layers + 1) for j in range(1, self.teacher_layers + 1)]

    def solve(self, cost) -> np.ndarray:
        """Compute and store the flow for an (L_S, L_T) cost matrix."""
        self.set_flow(emd_flow(cost, self.student_weights, self.teacher_weights))
        return self.flow

    def set_flow(self, flow) -> None:
        flow = np.asarray(flow, dtype=np.float64)
        if flow.shape != (self.student_layers, self.teacher_layers):
            raise ValueError(f"flow must be ({self.student_layers}, {self.teacher_layers}), got {flow.shape}")
        self.flow = flow
        self._pairs = self._from_flow()


def build_mapping(cfg: IntermediateConfig, student_layers: int, teacher_layers: int, seed: int = 0) -> LayerMapping:
    return LAYER_MAPPINGS.get(cfg.mapping)(cfg, student_layers, teacher_layers, seed)
