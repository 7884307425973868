"""Outbox relay: publishes committed events in order, marks them published afterwards.

If the broker is down the rows wait; a crash between the broker's ack and the mark re-sends
the row, and consumers recognise the duplicate by its CloudEvents id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka import KafkaProducer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Outbox, utcnow

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        producer: KafkaProducer,
        repair: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessions, self.producer = sessions, producer
        self.repair = repair  # e.g. recreate topics lost with a memory-only broker's restart
        self.stopping = threading.Event()

    def publish_pending(self, limit: int = 200) -> int:
        with self.sessions() as session:
            rows = session.scalars(
                select(Outbox).where(Outbox.published_at.is_(None)).order_by(Outbox.id).limit(limit)
            ).all()
            for row in rows:
                self.producer.send(
                    row.topic,
                    key=row.key.encode() if row.key else None,
                    value=row.payload.encode(),
                ).get(timeout=30)
                row.published_at = utcnow()
                session.commit()
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
                try:
                    self.repair()
                except Exception as repair_exc:
                    log.warning("outbox relay repair: %s", repair_exc)
            if not sent:
                self.stopping.wait(0.2)
