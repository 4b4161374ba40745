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
LIST_SETTINGS = ("allowed_roots", "base_records")


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "autodistill-service"


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(default_factory=default_state_dir,
                            description="uploads, search outputs, the local Ray head's files, the refitted model")
    database_url: str | None = Field(None, description="any SQLAlchemy URL; default: SQLite in state_dir")
    allowed_roots: list[Path] = Field(default_factory=list,
                                      description="server folders a dataset may be referenced from by path")
    max_upload_mb: float = Field(100.0, gt=0)
    model_dir: Path | None = Field(None, description="meta-model folder; default: the committed one")
    base_records: list[Path] | None = Field(
        None, description="meta-dataset records a refit starts from; default: the committed ones")
    meta_features_backbone: str | None = Field(
        "default", description="backbone for the embedding meta-features ('default' = the MiniLM teacher "
        "backbone; empty = skip those features)")
    ray_address: str | None = Field(None, description="Ray dashboard/job-server URL of an existing cluster "
                                    "(http://host:8265); default: a local head on loopback started by the service")
    ray_auth_token: str | None = Field(None, description="token of that cluster (Ray 2.60 token auth)")
    ray_host: str = Field("127.0.0.1", description="interface the local head's dashboard/job server binds")
    ray_num_cpus: int | None = Field(None, ge=1)
    search_cpus_per_trial: float | None = Field(None, gt=0)
    poll_seconds: float = Field(2.0, gt=0, description="how often searches in flight are refreshed")
    max_trials: int = Field(200, ge=1)
    max_time_budget_s: float = Field(24 * 3600.0, gt=0)

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
        if values.get("meta_features_backbone") == "":
            values["meta_features_backbone"] = None
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = "; ".join(f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: "
                                 f"{'unknown setting' if e['type'] == 'extra_forbidden' else e['msg']}"
                                 for e in err.errors())
            raise ValueError(f"invalid service settings: {problems}") from None
