"""Service log lines: for a terminal, or one JSON object each (containers, log shippers).

The worker binds the job id and tenant around each job (`job_context`); they are
contextvars, so every line logged while that thread drives the job, by any module, carries
them. Records are masked when they are created (aif.redaction), before any formatter
runs; the JSON lines take the masked traceback text, never a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job

CONSOLE_FORMAT = "%(asctime)s %(name)s %(message)s"


def _masked_exception(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """The record's traceback as aif.redaction masked it, in place of the raw one."""
    record = event.get("_record")
    if event.pop("exc_info", None) and record is not None and record.exc_text:
        event["exception"] = record.exc_text
    return event


def configure(log_format: Literal["console", "json"], level: str = "WARNING") -> None:
    """Send every logger's records (libraries' too) to stderr in the given format."""
    if log_format == "console":
        logging.basicConfig(level=level, format=CONSOLE_FORMAT)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _masked_exception,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer()],
    ))
    root = logging.getLogger()
    for other in root.handlers[:]:
        root.removeHandler(other)  # not closed: a caller (pytest) may still own its stream
    root.addHandler(handler)
    root.setLevel(level)


@contextmanager
def job_context(sessions: sessionmaker[Session], job_id: str) -> Iterator[None]:
    """Every log line of this thread inside names the job and its tenant."""
    with sessions() as session:
        job = session.get(Job, job_id)
        tenant = job.tenant if job is not None else None
    with structlog.contextvars.bound_contextvars(job_id=job_id, tenant=tenant):
        yield
