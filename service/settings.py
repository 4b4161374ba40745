"""Service settings: one pydantic model, read from ``AUTODISTILL_SERVICE_*`` environment variables.

Example: ``AUTODISTILL_SERVICE_DATABASE_URL=postgresql+psycopg://user@127.0.0.1:5432/db``. Lists (allowed
roots) are ``os.pathsep``-separated. Unknown ``AUTODISTILL_SERVICE_*`` variables are an error, as in the
pipeline config.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "AUTODISTILL_SERVICE_"
LIST_SETTINGS = ("allowed_roots", "base_records", "allowed_backbones", "backbone_roots")
NULLABLE_SETTINGS = ("meta_features_backbone", "search_memory_gb_per_trial", "search_memory_gb_per_driver")


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "autodistill-service"


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir,
                            description="uploads, search outputs, the local Ray head's files, the refitted model")
    database_url: str | None = Field(None, description="any SQLAlchemy URL; default: SQLite in state_dir")
    allowed_roots: list[Path] = Field(default_factory=list,
                                      description="server folders a dataset may be referenced from by path")
    max_upload_mb: float = Field(100.0, gt=0, description="cap on an upload's bytes (all files of one request)")
    # ---- ingest: what one dataset may cost, whatever its encoding (Parquet compresses 1M rows into KBs)
    max_rows: int = Field(300_000, ge=1, description="rows per dataset file (counted before parsing; 413 beyond)")
    max_decoded_mb: float | None = Field(
        None, gt=0, description="decoded text of a dataset (Parquet: uncompressed values); default: max_upload_mb")
    ingest_workers: int = Field(1, ge=1, le=16, description="processes that read datasets and compute their "
                                "meta-features (off the service's event loop and GIL)")
    ingest_timeout_s: float = Field(600.0, gt=0, description="wall-clock cap on reading and describing one "
                                    "dataset; its worker is killed beyond it (422)")
    # ---- request bodies other than uploads
    max_json_kb: float = Field(256.0, gt=0, description="cap on a JSON (or any non-upload) request body; 413 beyond")
    max_json_depth: int = Field(32, ge=2, le=1000, description="nesting depth of a JSON body; 422 beyond")
    # ---- the Hugging Face hub (hf_name datasets)
    hub_enabled: bool = Field(False, description="allow {\"hf_name\"} datasets (the service goes to the hub); "
                              "off by default: the service makes no outbound request")
    hub_timeout_s: float = Field(60.0, gt=0, description="wall-clock cap on one hub dataset load")
    hub_endpoint: str | None = Field(None, description="hub URL; default: huggingface_hub's (HF_ENDPOINT)")
    hub_workers: int = Field(2, ge=1, le=16, description="hub loads at once (outside the request threads); 429 beyond")
    model_dir: Path | None = Field(None, description="meta-model folder; default: the committed one")
    base_records: list[Path] | None = Field(
        None, description="meta-dataset records a refit starts from; default: those the model "
        "(model_dir, or the committed one) was fitted on, as its model.json names them")
    meta_features_backbone: str | None = Field(
        "default", description="backbone for the embedding meta-features ('default' = the MiniLM teacher "
        "backbone; empty = skip those features)")
    ray_address: str | None = Field(None, description="Ray dashboard/job-server URL of an existing cluster "
                                    "(http://host:8265); default: a local head on loopback started by the service")
    ray_auth_token: str | None = Field(None, description="token of that cluster (Ray 2.60 token auth)")
    ray_host: str = Field("127.0.0.1", description="interface the local head's dashboard/job server binds")
    ray_num_cpus: int | None = Field(None, ge=1)
    search_cpus_per_trial: float | None = Field(None, gt=0)
    search_gpus_per_trial: float | None = Field(None, ge=0, description="default GPUs per trial (a fraction "
                                                "shares a GPU); unset: one per trial where the cluster has GPUs")
    search_storage: str | None = Field(None, description=(
        "URI of a folder both the Ray cluster and the service reach (s3://bucket/prefix, gs://..., file:///mnt/x): "
        "with ray_address, a search ships its code and dataset with the job's runtime_env and its Tune results, "
        "progress, trials and best student come back through <search_storage>/<search id>; no shared disk needed"))
    poll_seconds: float = Field(2.0, gt=0, description="how often searches in flight are refreshed")
    max_trials: int = Field(200, ge=1)
    max_time_budget_s: float = Field(24 * 3600.0, gt=0, description="cap on a search's time_budget; also the "
                                     "default budget of a search that gives none")
    search_grace_s: float = Field(300.0, ge=0, description="a search running longer than its time_budget plus "
                                  "this (teacher fine-tune included) is stopped by the service")
    max_searches_per_key: int = Field(2, ge=1, description="searches queued or running per API key; 429 beyond")
    max_searches_total: int = Field(8, ge=1, description="searches queued or running on this service; 429 beyond")
    # ---- what one key keeps on disk (each dataset up to max_upload_mb; each search its trials and student)
    max_datasets_per_key: int = Field(50, ge=1, description="datasets one API key may keep; 429 beyond (deleting "
                                      "one makes room)")
    max_stored_searches_per_key: int = Field(50, ge=1, description="searches one API key may keep, finished ones "
                                             "included; 429 beyond (DELETE /searches/{id} makes room)")
    search_memory_gb_per_trial: float | None = Field(4.0, gt=0, description=(
        "memory (GiB) each trial of a search asks Ray for and may hold: a trial whose process holds more fails, "
        "naming the setting, so no config a client sends can take a node's memory (empty: no limit)"))
    search_memory_gb_per_driver: float | None = Field(6.0, gt=0, description=(
        "memory (GiB) a search's driver (data, teacher fine-tune) may hold: above it the job exits, saying so. "
        "Not reserved with Ray: by arithmetic, drivers reserving it would leave running searches' trials no memory to "
        "start in (empty: no limit)"))
    search_entrypoint_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for a search's driver "
                                          "(teacher fine-tune, final training)")
    search_entrypoint_gpus: float = Field(0.0, ge=0, description="GPUs Ray gives a search's driver for the "
                                          "teacher's fine-tune (0: it runs on the driver's CPU)")
    max_epochs: float = Field(20.0, gt=0, description="cap on teachers[*].epochs and optim.epochs")
    max_student_layers: int = Field(24, ge=1)
    max_student_hidden_size: int = Field(4096, ge=8)
    max_student_intermediate_size: int = Field(16384, ge=8)
    max_student_heads: int = Field(64, ge=1)
    max_batch_size: int = Field(1024, ge=1, description="cap on every batch size of a search config")
    max_sequence_length: int = Field(512, ge=8, description="cap on data.max_length of a search config (attention "
                                     "memory grows with its square)")
    max_batch_tokens: int = Field(131_072, ge=8, description="cap on every batch size x data.max_length of a search "
                                  "config: what one batch's activations take grows with it")
    max_auxiliary_width: int = Field(4096, ge=4, description="cap on the widths of the small networks a search "
                                     "config trains besides the student (loss.intermediate.critic_hidden, "
                                     "critic_dim, projection_dim; weighting.meta_hidden)")
    max_augmenters: int = Field(8, ge=0, description="augmenters in a search config")
    max_augmenter_top_k: int = Field(100, ge=1, description="cap on augmentation.augmenters[*].top_k")
    max_concurrent_trials: int = Field(16, ge=1, description="cap on a search's max_concurrent_trials")
    max_gpus_per_trial: float = Field(8.0, ge=0, description="cap on a search's gpus_per_trial")
    allowed_backbones: list[str] = Field(
        default_factory=lambda: ["default"],
        description="backbone ids a search may name (besides folders under backbone_roots)")
    backbone_roots: list[Path] = Field(default_factory=list,
                                       description="server folders holding backbones a search may name by path")
    idempotency_retention_s: float = Field(24 * 3600.0, gt=0, description="how long an Idempotency-Key is "
                                           "remembered; a retry after that is a new request")
    max_idempotency_keys_per_key: int = Field(
        10_000, ge=1, description="Idempotency-Keys one API key may have remembered at once (each keeps its "
        "response for idempotency_retention_s); a request with a new one beyond that is a 429")
    idempotency_lease_s: float | None = Field(
        None, gt=0, description="how long a request in progress holds its Idempotency-Key without renewing it "
        "(it renews it every third of this while it runs): a retry after the lease lapsed (the server died "
        "mid-request) takes the key over and runs again; also the age past which a dataset or search folder "
        "with no database row is removed at startup; default: ingest_timeout_s + 60 s")

    @property
    def max_decoded_bytes(self) -> int:
        return int((self.max_decoded_mb or self.max_upload_mb) * 2**20)

    @property
    def idempotency_lease(self) -> float:
        return self.idempotency_lease_s or self.ingest_timeout_s + 60.0

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'service.db').resolve()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "ServiceSettings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            values[name] = [p for p in raw.split(os.pathsep) if p] if name in LIST_SETTINGS else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in NULLABLE_SETTINGS:   # an empty variable unsets it
            if values.get(name) == "":
                values[name] = None
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = "; ".join(f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: "
                                 f"{'unknown setting' if e['type'] == 'extra_forbidden' else e['msg']}"
                                 for e in err.errors())
            raise ValueError(f"invalid service settings: {problems}") from None
