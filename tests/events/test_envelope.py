import json

import pytest

from events.bus import envelope
from events.envelope import MAX_EVENT_BYTES, CloudEvent, EnvelopeError, job_id_for
from events.messages import EVENT_TYPES, FineTuneRequested


def test_round_trip_keeps_every_attribute() -> None:
    ev = envelope(FineTuneRequested(recipe="grid-ticket-routing"), source="urn:x", tenant="acme")
    back = CloudEvent.from_bytes(ev.to_bytes())
    assert back == ev
    assert back.specversion == "1.0"
    assert EVENT_TYPES[back.type] is FineTuneRequested


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"type": "x", "specversion": "1.0"}).encode(), "source"),
        (json.dumps({"source": "s", "type": "x", "specversion": "0.3"}).encode(), "specversion"),
        (json.dumps({"source": "s", "type": "x", "tenant": "Bad Tenant"}).encode(), "tenant"),
        (None, "tombstone"),
        (b"x" * (MAX_EVENT_BYTES + 1), "over the 65536 limit"),
    ],
)
def test_bad_bytes_name_the_problem(raw: bytes | None, fragment: str) -> None:
    with pytest.raises(EnvelopeError, match=fragment):
        CloudEvent.from_bytes(raw)


def test_job_id_is_stable_per_source_and_id() -> None:
    assert job_id_for("urn:a", "1") == job_id_for("urn:a", "1")
    assert job_id_for("urn:a", "1") != job_id_for("urn:b", "1")


def test_request_needs_exactly_one_recipe() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        FineTuneRequested()
