"""Service settings from environment variables (prefix `AIF_`, nested with `__`).

Built by `get_settings()`, never at import time, so a training pod can import the packages
without any service configuration.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from aif.launchers import KubernetesConfig, SlurmConfig, check_launcher_name
from events.bus import KafkaConfig
from events.recipe_data import PiiPolicy
from events.topics import Topics
from stagefiles.jobspec import ServingLimits


class QuotaLimits(BaseModel):
    """Limits of one tenant, or the site's defaults; None: no limit from here. Defined here,
    not in `aif.quotas` (which counts usage in the database), so settings load no database."""

    model_config = ConfigDict(extra="forbid")

    concurrent_jobs: int | None = Field(None, ge=0)
    dataset_bytes: int | None = Field(None, ge=0)
    monthly_tokens: int | None = Field(None, ge=0)
    monthly_device_hours: float | None = Field(None, ge=0.0)


class EstimateTokensPerS(BaseModel):
    """Training tokens/s of one device (one training process) by device kind, for the
    pre-flight estimate until the tenant has a measured figure for the same base model and
    launcher. Rough: measured for the shipped 135M-parameter model (CPU: about 180 tokens/s
    on two shared cores); a larger model is proportionally slower."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(150.0, gt=0.0)
    cuda: float = Field(20_000.0, gt=0.0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIF_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(Path(".aif"), description="Jobs, converted models and the SQLite file.")
    data_root: Path = Field(
        None, validate_default=False,  # type: ignore[arg-type]  # filled in from home below
        description="Tenants' training data: `<data_root>/<tenant>/` is the only place a "
        "request's data paths may point to; default `<home>/data`.",
    )
    allow_hub_datasets: bool = Field(
        False, description="Requests may read a hub dataset (`dataset`, `data.dataset`)."
    )
    allow_remote_data: bool = Field(
        False, description="Requests may name http(s) URLs as data files; only public "
        "addresses (or remote_data_allow_networks) are fetched, by the pre-flight stage.",
    )
    remote_data_allow_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list, description="Networks that remote data may come from although "
        "they are not public, e.g. an internal mirror; a JSON list of CIDRs.",
    )
    base_model_roots: list[Path] = Field(
        default_factory=list, description="Folders of the centre's own base models (HF "
        "directories, .gguf files) that an inline recipe's model.base may name by path; "
        "otherwise it may name only a registered base model. A JSON list of paths.",
    )
    s3_prefix: str | None = Field(
        None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/(.*/)?$",
        description="Where a tenant's s3:// data may be, `{tenant}` replaced by the tenant, "
        "e.g. s3://aif-data/tenants/{tenant}/ (ends in /); None: s3 is not enabled.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="An S3-compatible store's endpoint (MinIO, Ceph) instead of AWS; "
        "credentials come from the standard AWS environment of the pre-flight stage.",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite.")
    kafka: KafkaConfig = KafkaConfig()
    topic_prefix: str = Field("aif", pattern=r"^[A-Za-z0-9._-]+$")
    embedded_broker: bool = Field(
        True, description="Start the bundled Tansu broker if nothing listens on loopback."
    )
    consumer_group: str | None = Field(
        None, description="The orchestrators' Kafka consumer group; default "
        "`<topic_prefix>-orchestrator`, so that two deployments (or test runs) with their own "
        "topics on one cluster never join, and rebalance, each other's group.",
    )
    require_signed_events: bool = Field(
        True, description="Dead-letter request records without a valid signature "
        "(events.signing); false only on a trusted network, where an unsigned event's tenant "
        "attribute is believed. Signed records are verified either way.",
    )
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    session_timeout_ms: int = Field(10_000, ge=1000)
    worker_slots: int = Field(1, ge=1, le=64, description="Jobs this orchestrator runs at once.")
    lease_s: float = Field(
        60.0, gt=1.0, description="A job whose worker stops heartbeating is re-adopted after this."
    )
    max_attempts: int = Field(
        3, ge=1, le=20,
        description="Tries of a job step that fails for infrastructure reasons before the job "
                    "fails with the last error.",
    )
    retry_backoff_s: float = Field(
        10.0, ge=0.0, description="Wait before the 2nd try of a step; doubled for each next."
    )
    retry_backoff_max_s: float = Field(600.0, ge=0.0, description="Longest wait between tries.")
    eval_batch_max: int = Field(
        4, ge=1, le=64, description="Jobs evaluated in one evaluation run (one base-model load, "
        "adapters switched): a job starting its evaluation takes along other jobs of the same "
        "tenant waiting in `evaluating` with the same base model, eval settings and base-score "
        "cache, up to this many in all; 1 evaluates each job alone.",
    )
    eval_batch_wait_s: float = Field(
        30.0, ge=0.0, description="A job reaching evaluation while another job of its tenant "
        "on the same base model is still training waits up to this long (once, its lease let "
        "go), so that the other can take it along into one evaluation run; 0: never waits.",
    )
    preflight_timeout_s: float = Field(
        1800.0, gt=0.0, description="A pre-flight stage running longer is stopped; job rejected."
    )
    pii_policy: PiiPolicy = Field(
        PiiPolicy.report, description="The site's minimum personal-data policy (off, report, "
        "redact, reject); a recipe's data.pii may be stricter, never laxer.",
    )
    launcher: Annotated[str, AfterValidator(check_launcher_name)] = Field(
        "local", description="Where stage processes run: `local` (this machine), `slurm` "
        "(sbatch) or `kubernetes` (a Job per run); see aif.launchers.LAUNCHERS.",
    )
    slurm: SlurmConfig = SlurmConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the orchestrator's Prometheus `/metrics` "
        "listener (on web_host); unset: none. The web app serves `/metrics` on web_port.")
    log_format: Literal["console", "json"] = Field(
        "console", description="Service log lines: for a terminal, or one JSON object each "
        "with the job id and tenant (containers).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    max_upload_bytes: int = Field(
        512 * 2**20, ge=1, description="Largest training file POST /v1/files stores; larger: 413."
    )
    max_body_bytes: int = Field(
        256 * 2**10, ge=1, description="Largest request body of every other route (JSON "
        "requests, forms); larger: 413 before it is read.",
    )
    estimate_tokens_per_s: EstimateTokensPerS = EstimateTokensPerS()
    quota_defaults: QuotaLimits = Field(
        QuotaLimits(), description="Every tenant's limits unless `aif tenants set-quota` "
        "gives it its own; unset: unlimited.")
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    # Hand-off and serving (aif.registry, aif.artifact_stores, aif.serving_endpoints).
    serving_limits: ServingLimits = Field(
        ServingLimits(), description="What the inference servers accept: max_lora_rank, "
        "allowed_target_modules, allow_modules_to_save, allow_dora; checked before publishing.")
    serving_check_docs: int = Field(
        200, ge=1, description="Documents of the primary task the serving check re-scores "
        "(at most the evaluation's own limit, so the same documents are scored).")
    serving_probe_prompts: list[str] = Field(
        default_factory=lambda: ["Hello"], description="Prompts whose greedy completions "
        "the serving check records (a JSON list).")
    served_base_models: dict[str, str] = Field(
        default_factory=dict, description="Recipe `model.base` -> the id the inference "
        "servers serve it under (a JSON object); unlisted: the recipe's name.")
    artifact_store: str = Field(
        "", description="Where adapters are published, one folder per model version: a "
        "file:// or s3:// URI (s3 credentials from the AWS environment, endpoint from "
        "s3_endpoint_url); empty: <home>/published.")
    serving_endpoints: list[HttpUrl] = Field(
        default_factory=list, description="vLLM-compatible servers (replicas) that load each "
        "handed-off adapter (POST /v1/load_lora_adapter); a JSON list of base URLs.")
    serving_timeout_s: float = Field(30.0, gt=0.0, description="Per request to an endpoint.")
    serving_attempts: int = Field(4, ge=1, le=20, description="Tries per endpoint request.")

    @model_validator(mode="after")
    def default_data_root(self) -> Settings:
        if self.data_root is None:
            self.data_root = self.home / "data"
        if self.consumer_group is None:
            self.consumer_group = f"{self.topic_prefix}-orchestrator"
        if self.s3_prefix is not None and "{tenant}" not in self.s3_prefix:
            raise ValueError("s3_prefix: must contain {tenant}, so each tenant has its own")
        if self.launcher == "kubernetes" and not self.kubernetes.image:
            raise ValueError("kubernetes.image: required with launcher kubernetes "
                             "(AIF_KUBERNETES__IMAGE)")
        return self

    def retry_delay_s(self, attempts: int) -> float:
        """Back-off before the next try, after `attempts` failed ones (exponential, capped)."""
        return min(self.retry_backoff_s * 2 ** (attempts - 1), self.retry_backoff_max_s)

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'aif.db').resolve()}"

    @property
    def jobs_dir(self) -> Path:
        return (self.home / "jobs").resolve()

    @property
    def published_dir(self) -> Path:
        """The default artifact store: handed-off adapters, one folder per model version."""
        return (self.home / "published").resolve()

    @property
    def models_dir(self) -> Path:
        return (self.home / "models").resolve()

    @property
    def base_scores_dir(self) -> Path:
        """Base-model scores kept across jobs (`aif.storage.base_scores`)."""
        return (self.home / "base_scores").resolve()


def get_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
