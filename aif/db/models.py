"""Tables of the job store. Every job carries its tenant, for quotas, isolation and erasure."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    # De-duplication is per tenant: one tenant cannot squat another's source + id.
    __table_args__ = (UniqueConstraint("tenant", "request_source", "request_id",
                                       name="uq_jobs_tenant_request"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    request_source: Mapped[str] = mapped_column(String(500))
    request_id: Mapped[str] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict] = mapped_column(JSON)
    recipe_name: Mapped[str | None] = mapped_column(String(63))
    recipe: Mapped[dict | None] = mapped_column(JSON)  # frozen when validated
    state: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    work_dir: Mapped[str | None] = mapped_column(Text)
    adapter_uri: Mapped[str | None] = mapped_column(Text)
    run_ref: Mapped[dict | None] = mapped_column(JSON)  # launcher's handle on the stage run
    gate_passed: Mapped[bool | None]
    gate_reason: Mapped[str | None] = mapped_column(Text)
    preflight: Mapped[dict | None] = mapped_column(JSON)  # finetune.preflight.PreflightReport
    # Retryable (infrastructure) failures of the current step; claim skips a job in back-off.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # Scores shown on every tenant's leaderboard (never the data, reports or samples).
    public: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Bytes of each stage's progress file already relayed, so a re-adopted job resends none.
    progress_offsets: Mapped[dict | None] = mapped_column(JSON)
    # Compute: the pre-flight's estimate (stagefiles.preflight_report.Estimate) and, once trained,
    # what training measured (aif.orchestrator.throughput.Measured); quotas sum them.
    estimate: Mapped[dict | None] = mapped_column(JSON)
    measured: Mapped[dict | None] = mapped_column(JSON)

    transitions: Mapped[list[Transition]] = relationship(
        back_populates="job", order_by="Transition.id", cascade="all, delete-orphan"
    )
    scores: Mapped[list[Score]] = relationship(
        back_populates="job", order_by="Score.id", cascade="all, delete-orphan"
    )


class Transition(Base):
    __tablename__ = "job_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="transitions")


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("job_id", "task", "metric", name="uq_scores_metric"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(100))
    base: Mapped[float] = mapped_column(Float)
    tuned: Mapped[float] = mapped_column(Float)
    base_stderr: Mapped[float | None] = mapped_column(Float)
    tuned_stderr: Mapped[float | None] = mapped_column(Float)
    # Multiple-choice tasks (evaluation.baselines): the constant majority answer and a uniform
    # guess on the same documents, and each model's macro-F1 and recall per target class.
    majority: Mapped[float | None] = mapped_column(Float)
    chance: Mapped[float | None] = mapped_column(Float)
    base_macro_f1: Mapped[float | None] = mapped_column(Float)
    tuned_macro_f1: Mapped[float | None] = mapped_column(Float)
    base_recall: Mapped[dict | None] = mapped_column(JSON)
    tuned_recall: Mapped[dict | None] = mapped_column(JSON)
    # The gate's paired comparisons (events.messages.PairedComparison), where per-document
    # outcomes exist: tuned against base, and against the constant majority answer.
    vs_base: Mapped[dict | None] = mapped_column(JSON)
    vs_majority: Mapped[dict | None] = mapped_column(JSON)
    num_fewshot: Mapped[int] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(Integer)
    lm_eval_version: Mapped[str] = mapped_column(String(40))
    task_config_sha256: Mapped[str] = mapped_column(String(64))

    job: Mapped[Job] = relationship(back_populates="scores")


class Outbox(Base):
    """Events written in the same transaction as the state change they announce."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(250))
    key: Mapped[str | None] = mapped_column(String(250), index=True)  # the job id
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class DeadLetter(Base):
    """A record intake refused, written in its batch's transaction and forwarded to the
    dead-letter topic once: a batch re-delivered after a crash finds the row and sends
    nothing again, unless the earlier send never completed (`published_at` unset)."""

    __tablename__ = "dead_letters"
    __table_args__ = (UniqueConstraint("source_topic", "source_partition", "source_offset",
                                       name="uq_dead_letters_record"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_topic: Mapped[str] = mapped_column(String(250))
    source_partition: Mapped[int] = mapped_column(Integer)
    source_offset: Mapped[int] = mapped_column(BigInteger)
    # sha256 of the record's timestamp, key and value: the same record re-delivered, or
    # another one at an offset reused after the memory-only broker restarted.
    fingerprint: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    # The tenant that signed (or, on a trusted network, claimed) the record, when known: its
    # erasure removes the row with the rest of the tenant's data.
    tenant: Mapped[str | None] = mapped_column(String(63), index=True)
    size: Mapped[int] = mapped_column(Integer)  # of the original value
    value: Mapped[bytes | None] = mapped_column(LargeBinary)  # its first bytes only
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)


class Tenant(Base):
    """An organisation using the service; every job, file and key belongs to one."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Set by `aif tenants erase`: the row stays as a tombstone, so the name is never given to
    # another organisation and intake can refuse the erased tenant's events by name.
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TenantQuota(Base):
    """A tenant's own limits (see `aif.quotas`); a null column falls back to the site default,
    and without one the resource is unlimited."""

    __tablename__ = "tenant_quotas"

    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"),
                                        primary_key=True)
    concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    dataset_bytes: Mapped[int | None] = mapped_column(BigInteger)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger)
    monthly_device_hours: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """A bearer key of the HTTP API, stored only as the sha256 of its secret part.

    The key's secret is 32 random bytes, so a plain hash is as strong as a slow one; the
    public `id` in the key finds the row without comparing hashes of every key.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"),
                                        index=True)
    role: Mapped[str] = mapped_column(String(10))  # aif.tenants.Role
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SigningKey(Base):
    """A tenant's secret for signing request events on Kafka (HMAC-SHA256).

    Verifying an HMAC needs the secret itself, so it is kept as is: the job store is the
    service's trust anchor and must be protected like the broker's credentials.
    """

    __tablename__ = "signing_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"),
                                        index=True)
    secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DataFile(Base):
    """Training data a tenant uploaded through the API; a request names it by `file_id`."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name", ondelete="CASCADE"),
                                        index=True)
    filename: Mapped[str] = mapped_column(String(255))  # as uploaded, for people only
    path: Mapped[str] = mapped_column(Text)  # where it is stored, under the tenant's root
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebSession(Base):
    """A signed-in browser: the cookie holds a random secret, this row only its sha256 and
    the API key it was opened with, so a revoked key ends its sessions at the next request."""

    __tablename__ = "web_sessions"

    secret_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"),
                                            index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
class Audit(Base):
    """Who did what, appended in the transaction of the act (see `aif.audit`).

    Append-only: a database trigger refuses UPDATE and DELETE (migration 0011), so even the
    erasure of a tenant leaves its audit rows. Rows hold ids and sha256 digests, never content.
    """

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    tenant: Mapped[str | None] = mapped_column(String(63), index=True)
    actor: Mapped[str] = mapped_column(String(100))  # "api:<id>", "signing:<id>", operator...
    action: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    event_id: Mapped[str | None] = mapped_column(String(300))
    sha256: Mapped[str | None] = mapped_column(String(64))  # of the act's payload
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class RegisteredModel(Base):
    """One handed-off adapter version of a tenant's model (`aif.registry`): what it is, where
    its files are and how to verify them, how it scored and where it is served."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant", "name", "version", name="uq_models_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(63), index=True)
    name: Mapped[str] = mapped_column(String(200))  # "<tenant>/<recipe or label>"
    version: Mapped[int] = mapped_column(Integer)
    served_name: Mapped[str] = mapped_column(String(300), unique=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    status: Mapped[str] = mapped_column(String(20))  # ready, serving, retired
    base_model: Mapped[str] = mapped_column(String(500))
    base_revision: Mapped[str] = mapped_column(String(64))
    adapter_uri: Mapped[str] = mapped_column(Text)
    files_sha256: Mapped[dict] = mapped_column(JSON)
    merged_uri: Mapped[str | None] = mapped_column(Text)
    merged_files_sha256: Mapped[dict] = mapped_column(JSON, default=dict)
    adapter: Mapped[dict] = mapped_column(JSON)  # events.messages.AdapterShape
    scores: Mapped[list] = mapped_column(JSON)
    gate_reason: Mapped[str] = mapped_column(Text)
    serving: Mapped[dict] = mapped_column(JSON, default=dict)  # endpoint -> outcome
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
