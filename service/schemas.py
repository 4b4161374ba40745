"""Request and response bodies. Pipeline configs are the library's :class:`PipelineConfig` (and its
:class:`DataConfig`): the REST schema and the engine share one source of truth. Unknown keys are errors."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError, create_model,
                      field_validator, model_validator)
from pydantic_core import core_schema

from autodistill.config import DataConfig, PipelineConfig, unknown_config_path


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Strict):
    error: str = Field(description="machine-readable class, e.g. not_found, validation_error")
    detail: str
    field: str | None = Field(None, description="the request field at fault, dotted")
    errors: list[dict[str, Any]] | None = None


# How a dataset's columns are read: DataConfig's fields minus where the data lives and the limits the
# server sets. Derived from DataConfig, so the REST schema cannot drift from the engine's config.
_SERVER_SET = ("train", "validation", "max_file_mb", "max_train_examples")
DataColumns = create_model(
    "DataColumns", __config__=ConfigDict(extra="forbid"),
    **{name: (f.annotation, f) for name, f in DataConfig.model_fields.items() if name not in _SERVER_SET})


def data_config(columns: BaseModel, train: str, validation: str | None = None,
                max_file_mb: float | None = None) -> DataConfig:
    extra = {"max_file_mb": max_file_mb} if max_file_mb else {}
    return DataConfig(train=train, validation=validation, **columns.model_dump(), **extra)


class DatasetReference(Strict):
    """A dataset the server can read itself: a path under an allowed root, or an HF datasets name."""

    name: str | None = Field(None, max_length=200)
    path: str | None = Field(None, description="file or folder under one of the server's allowed roots")
    validation_path: str | None = None
    hf_name: str | None = Field(None, description="Hugging Face datasets name (needs the hub or its cache)")
    columns: DataColumns = Field(default_factory=DataColumns)

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetReference":
        if (self.path is None) == (self.hf_name is None):
            raise ValueError("give exactly one of path or hf_name")
        if self.validation_path is not None and self.path is None:
            raise ValueError("validation_path needs path")
        return self


class Dataset(Strict):
    id: str
    name: str
    source_kind: Literal["upload", "path", "hf"]
    source: str
    fingerprint: str
    stats: dict[str, Any]
    meta_features: dict[str, Any]
    created_at: str


class Page(Strict):
    items: list[Any]
    total: int
    limit: int
    offset: int
    next: str | None = Field(None, description="URL of the next page, if any")


class DatasetPage(Page):
    items: list[Dataset]


class Constraints(Strict):
    max_student_parameters: int | None = Field(None, gt=0)
    config: dict[str, Any] | None = Field(
        None, description="dotted config path -> required value or list of values, e.g. "
        "{\"student.num_layers\": [2, 3]}")

    @field_validator("config")
    @classmethod
    def _paths_name_settings(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        for path in config or {}:
            why = unknown_config_path(path)
            if why:
                raise ValueError(f"{path!r}: {why}")
        return config


class RecommendationRequest(Strict):
    dataset_id: str
    top_k: int = Field(5, ge=1, le=50)
    constraints: Constraints = Field(default_factory=Constraints)


class RecommendedPipeline(Strict):
    rank: int
    candidate: str
    config: PipelineConfig
    predicted_score: float
    uncertainty: float | None = Field(description="the meta-model ensemble's spread (std) of the prediction; "
                                                  "null for a single model, which has none")
    student_parameters: int | None
    why: dict[str, Any]


class RecommendationResponse(Strict):
    dataset_id: str
    target: str = Field(description="what predicted_score estimates: ratio = student/teacher score")
    model: dict[str, Any]
    source: str = Field(description="meta_model or portfolio: what the order follows, as the model's evaluation chose")
    reason: str
    recommendations: list[RecommendedPipeline]


SEARCH_DATA_KEYS = {"max_train_examples", "max_length"}


class PipelineOverrides:
    """A search request's partial pipeline config, merged over the search space's base. Parsed once, at
    the edge, into what the rest of the service uses: ``overrides``, the keys as the client sent them
    (merged over the space's base, and what the job is given), and ``pipeline``, the typed
    :class:`PipelineConfig` they make with the defaults (what the service's limits are checked on). In
    the OpenAPI schema and in a dumped request it is the JSON object the client sent."""

    __slots__ = ("overrides", "pipeline")

    def __init__(self, overrides: dict[str, Any], pipeline: PipelineConfig):
        self.overrides = overrides
        self.pipeline = pipeline

    @classmethod
    def parse(cls, overrides: dict[str, Any]) -> "PipelineOverrides":
        data = overrides.get("data") or {}
        if not isinstance(data, dict) or set(data) - SEARCH_DATA_KEYS:
            raise ValueError(f"data: only {sorted(SEARCH_DATA_KEYS)} may be set here; the dataset's "
                             "location and columns are fixed when it is created")
        try:
            pipeline = PipelineConfig.model_validate(overrides)
        except ValidationError as err:
            e = err.errors()[0]
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            raise ValueError(f"{'.'.join(map(str, e['loc']))}: {msg}") from None
        return cls(overrides, pipeline)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls.parse, handler(dict[str, Any]),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda value: value.overrides))


class SearchRequest(Strict):
    dataset_id: str
    space: Literal["cpu-fast", "distiller", "full"] = "cpu-fast"
    trials: int | None = Field(None, ge=1, description="default: the space's budget")
    time_budget: float | None = Field(None, gt=0, description="seconds; default: the space's budget")
    warm_start: bool | list[dict[str, Any]] = Field(
        False, description="true: the recommender's top configs seed the search; or seed configs in the "
        "space's parameter names")
    max_concurrent_trials: int | None = Field(None, ge=1)
    gpus_per_trial: float | None = Field(None, ge=0, description=(
        "GPUs per trial; a fraction (e.g. 0.5) shares one GPU between trials; default: the space's, else one "
        "per trial on a cluster with GPUs and none without"))
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="TPE sampler seed (numpy's range)")
    config: PipelineOverrides | None = Field(
        None, description="partial pipeline config merged over the space's base (e.g. teachers, optim)")

    @property
    def overrides(self) -> dict[str, Any]:
        """The request's partial config (empty without one)."""
        return self.config.overrides if self.config is not None else {}


class SearchProgress(Strict):
    phase: str | None = None
    trials_total: int | None = None
    finished: int = 0
    stopped_early: int = 0
    failed: int = 0
    running: int = 0
    best_score: float | None = Field(None, description="validation score of the best student so far")
    best_dev_score: float | None = Field(None, description="its dev-slice score, by which it is the best")
    best_trial: str | None = None


class Search(Strict):
    id: str
    dataset_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    request: dict[str, Any]
    progress: SearchProgress
    best_score: float | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str


class SearchPage(Page):
    items: list[Search]


class Trial(Strict):
    trial_id: str
    status: str
    score: float | None = Field(description="validation score (completed trials only); never used to choose")
    dev_score: float | None = Field(None, description="best score on the dev slice held out of train: what the "
                                                      "search ranks and chooses the best student by")
    params: dict[str, Any]
    wall_seconds: float | None
    student_parameters: int | None
    finished_at: str | None


class TrialPage(Page):
    items: list[Trial]


class BestStudent(Strict):
    search_id: str
    trial_id: str | None
    score: float | None = Field(description="the student's validation score (not used to choose it)")
    dev_score: float | None = Field(None, description="its dev-slice score, by which it was chosen")
    config: PipelineConfig
    metrics: dict[str, Any]
    download: str = Field(description="URL of the student as a .tar.gz archive")


class RefitResponse(Strict):
    searches_folded: int
    records_added: int
    rows: int
    datasets: int
    candidates: int
    method: str
    model_path: str
    base_records: int = Field(0, description="record files or folders of the base meta-dataset the refit started "
                              "from (the model's own, or the service's configured base records)")
    # datasets whose teacher scores no better than the majority class carry no signal for the meta-model
    # and are left out by the one fitting rule (`autodistill meta fit` does the same); named, not hidden
    left_out_uninformative: list[str] = []


class Health(Strict):
    status: Literal["ok"]
    database: Literal["ok"]
    schema_version: int
    version: str
