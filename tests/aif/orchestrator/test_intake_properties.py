"""Property: whatever a batch holds, each record ends exactly once as a job, a duplicate, a
cancel or a dead letter, and every well-formed request becomes a job (real SQLite store)."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import DeadLetter, Job
from aif.db.session import session_factory
from aif.orchestrator.admission import Admission
from aif.orchestrator.intake import Outcome
from aif.orchestrator.kafka_intake import store_batch
from events.messages import CancelRequested, FineTuneRequested
from events.signing import SigningKey, sign
from events.topics import Topics
from tests.aif.conftest import signing_key

TOPICS = Topics("prop")
ADMISSION = Admission()
OFFSETS = itertools.count()  # dead letters are keyed by offset: unique across examples

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _valid() -> dict[str, Any]:
    return {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "urn:prop",
            "tenant": "acme", "type": FineTuneRequested.TYPE,
            "data": {"recipe": "grid-ticket-routing", "overrides": {"max_steps": 20},
                     "labels": {"team": "a"}}}


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid request with one field (of the envelope, its data or overrides) changed."""
    event = _valid()
    where = draw(st.sampled_from([event, event["data"], event["data"]["overrides"]]))
    field = draw(st.sampled_from([*where, "specversion", "type", "recipe_inline", "dataset",
                                  "learning_rate", "num_processes"]))
    if draw(st.booleans()) and field in where:
        del where[field]
    else:
        where[field] = draw(json_values | st.sampled_from(
            [CancelRequested.TYPE, "1.0", 0, 1, 10**6, -1, "", "no-such-recipe"]))
    return json.dumps(event).encode()


hostile = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_valid(),
)
# Each entry: (is a well-formed request, bytes).
batches = st.lists(
    st.one_of(hostile.map(lambda raw: (False, raw)),
              st.builds(lambda: (True, json.dumps(_valid()).encode()))),
    min_size=1, max_size=8,
)


@pytest.fixture(scope="module")
def sqlite_sessions(tmp_path_factory: pytest.TempPathFactory) -> sessionmaker[Session]:
    return session_factory(f"sqlite:///{Path(tmp_path_factory.mktemp('prop')) / 'aif.db'}")


@pytest.fixture(scope="module")
def acme(sqlite_sessions: sessionmaker[Session]) -> SigningKey:
    """Every record is signed by acme: the bytes, not the signature, are what varies here."""
    return signing_key(sqlite_sessions, "acme")


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=batches)
def test_every_record_is_accounted_for_exactly_once(
    sqlite_sessions: sessionmaker[Session], acme: SigningKey, batch: list[tuple[bool, bytes]]
) -> None:
    records = [ConsumerRecord(TOPICS.requests, 0, -1, next(OFFSETS), 0, 0, None, raw,
                              sign(raw, acme.id, acme.secret), None, -1, len(raw), 0)
               for _, raw in batch]
    stored = store_batch(sqlite_sessions, records, TOPICS, ADMISSION)
    assert len(stored.results) == len(records)
    with sqlite_sessions() as s:
        dead = {row.source_offset: row.reason for row in s.scalars(select(DeadLetter).where(
            DeadLetter.source_offset.in_([r.offset for r in records])))}
        for (well_formed, _), rec, res in zip(batch, records, stored.results, strict=True):
            if well_formed:
                assert res.outcome is Outcome.accepted, res.reason
            if res.outcome is Outcome.dead_letter:
                assert dead.pop(rec.offset) == res.reason and res.reason
                assert rec.offset in {r.offset for r, _ in stored.forward.values()}
            elif res.outcome in (Outcome.accepted, Outcome.duplicate):
                assert s.get(Job, res.job_id) is not None
            else:
                assert res.outcome is Outcome.cancel
        assert dead == {}  # no dead letter for a record that was not refused
