"""Tables of the job store. Every job carries its tenant, for quotas, isolation and erasure."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("request_source", "request_id", name="uq_jobs_request"),)

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
    key: Mapped[str | None] = mapped_column(String(250))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
