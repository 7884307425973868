"""Outbox relay: publishes committed events in order, marks them published afterwards.

If the broker is down the rows wait; a crash between the broker's ack and the mark re-sends
the row, and consumers recognise the duplicate by its CloudEvents id. Before each batch the
relay makes sure its topics exist, because a restarted memory-only broker would otherwise
ack and drop records sent to topics it has forgotten (see `events.bus.TopicKeeper`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from kafka import KafkaProducer
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Outbox, utcnow
from events.bus import Outgoing, send_and_wait
from stagefiles.failpoints import failpoint

log = logging.getLogger(__name__)


RELAY_LOCK = 0x61696672  # "aifr": the advisory lock that makes one relay the active one


def _sole_relay(session: Session) -> bool:
    """Whether this relay may publish now. Orchestrators sharing a PostgreSQL store take turns
    under a transaction-scoped advisory lock: two relays sending the same rows would publish
    each event twice, and splitting the rows between them would reorder a job's events. (On
    SQLite one orchestrator owns the file.)"""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"),
                               {"key": RELAY_LOCK}))


class OutboxRelay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        producer: KafkaProducer,
        ensure_topics: Callable[[Iterable[str]], None] = lambda topics: None,
    ) -> None:
        self.sessions, self.producer, self.ensure_topics = sessions, producer, ensure_topics
        self.stopping = threading.Event()

    def publish_pending(self, limit: int = 200) -> int:
        with self.sessions() as session:
            if not _sole_relay(session):
                return 0
            rows = session.scalars(
                select(Outbox).where(Outbox.published_at.is_(None)).order_by(Outbox.id).limit(limit)
            ).all()
            if rows:  # tenants' topics appear with their first event
                self.ensure_topics({row.topic for row in rows})
            acked, failed = send_and_wait(self.producer, (
                Outgoing(row.topic, row.key.encode() if row.key else None, row.payload.encode())
                for row in rows))
            for row, ok in zip(rows, acked, strict=False):  # rows after a refused send wait
                if ok:
                    row.published_at = utcnow()
            if any(acked):  # the broker has some: a kill here re-sends them
                failpoint("relay.after_send")
            session.commit()
            if failed:
                raise failed
            return len(rows)

    def run(self) -> None:
        backoff = 0.2
        while not self.stopping.is_set():
            try:
                sent = self.publish_pending()
                backoff = 0.2
            except Exception as exc:
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
                sent = 0
                backoff = min(backoff * 2, 10.0)
                self.stopping.wait(backoff)
            if not sent:
                self.stopping.wait(0.2)
