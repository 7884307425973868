"""Rows of the append-only tables (audit, outbox) of one transaction, inserted together.

The ORM inserts each row of a table with an integer key on its own to learn its id, where
SQLite cannot return the ids of a multi-row INSERT in order; intake writes two audit rows and
a status event per request, so that was most of what storing a poll's batch cost. Inside
`together`, `add` queues such rows and they go in as one executemany per table at its end.
Nothing of the transaction reads them back before it commits (the relay and the audit log
read committed rows), and a transaction stored this way rolls back as a whole: a savepoint
rolled back inside would not take its queued rows with it, so savepoints use plain `add`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from aif.db.models import Base

_QUEUED = "aif.db.appends"


def add(session: Session, model: type[Base], **values: Any) -> None:
    """A new row of `model`: queued inside `together`, else added to the session."""
    queued = session.info.get(_QUEUED)
    if queued is None:
        session.add(model(**values))
    else:
        queued.setdefault(model, []).append(values)


@contextmanager
def together(session: Session) -> Iterator[None]:
    """Queue the rows `add` is given and insert them when the block ends without raising."""
    queued: dict[type[Base], list[dict[str, Any]]] = {}
    session.info[_QUEUED] = queued
    try:
        yield
        session.info.pop(_QUEUED)
        for model, rows in queued.items():
            session.execute(insert(model), rows)
    finally:
        session.info.pop(_QUEUED, None)
