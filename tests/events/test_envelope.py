import json

import pytest
from pydantic import ValidationError

from events.bus import envelope
from events.envelope import (
    MAX_EVENT_BYTES,
    MAX_JSON_DEPTH,
    CloudEvent,
    EnvelopeError,
    check_json_depth,
    describe_validation_error,
    job_id_for,
)
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
        (json.dumps({"id": "1", "type": "x", "specversion": "1.0"}).encode(), "source"),
        (json.dumps({"source": "s", "type": "x"}).encode(), r"^id: Field required"),
        (b'{"source": "s", "type": "x", "tenant": 1}', "^id: .*; tenant: Input should be"),
        (b'{"id": NaN}', "not a finite JSON number"),
        (b'{"id": ' + b"1" * 5000 + b"}", "at most 4300 digits"),
        (b'{"id": "\xff"}', "not UTF-8 at byte 8"),
        (b'{"id": "1",}', "Expecting property name enclosed in double quotes at character 11"),
        (json.dumps({"source": "s", "type": "x", "specversion": "0.3"}).encode(), "specversion"),
        (json.dumps({"source": "s", "type": "x", "tenant": "Bad Tenant"}).encode(), "tenant"),
        (None, "tombstone"),
        (b"x" * (MAX_EVENT_BYTES + 1), "over the 65536 limit"),
    ],
)
def test_bad_bytes_name_the_problem(raw: bytes | None, fragment: str) -> None:
    with pytest.raises(EnvelopeError, match=fragment):
        CloudEvent.from_bytes(raw)


def test_job_id_is_stable_per_tenant_source_and_id() -> None:
    assert job_id_for("acme", "urn:a", "1") == job_id_for("acme", "urn:a", "1")
    assert job_id_for("acme", "urn:a", "1") != job_id_for("acme", "urn:b", "1")
    assert job_id_for("acme", "urn:a", "1") != job_id_for("evil", "urn:a", "1")


def test_request_needs_exactly_one_recipe() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        FineTuneRequested()


def test_events_we_build_get_an_id_and_incoming_ones_must_have_one() -> None:
    built = envelope(FineTuneRequested(recipe="grid-ticket-routing"), source="urn:x",
                     tenant="acme")
    assert built.id
    wire = json.loads(built.to_bytes())
    del wire["id"]
    with pytest.raises(EnvelopeError, match=r"id: Field required \(CloudEvents 1.0\)"):
        CloudEvent.from_bytes(json.dumps(wire).encode())


@pytest.mark.parametrize("opening", [b"[", b"{\"a\":", b"{\"a\": [{\"b\": "])
def test_deep_nesting_is_refused_before_parsing(opening: bytes) -> None:
    with pytest.raises(EnvelopeError, match=f"deeper than {MAX_JSON_DEPTH} levels at byte"):
        CloudEvent.from_bytes(opening * (10_000 // len(opening)))


def test_depth_counts_only_brackets_outside_strings() -> None:
    check_json_depth(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    check_json_depth(b'{"a": "' + b"[{" * 1000 + b'\\"[[[["}')
    with pytest.raises(EnvelopeError, match="at byte 32"):
        check_json_depth(b"[" * (MAX_JSON_DEPTH + 1))
    with pytest.raises(EnvelopeError, match="at byte 37"):  # an escaped quote ends nothing
        check_json_depth(b'["\\"]"' + b"[" * MAX_JSON_DEPTH)


def test_validation_errors_of_untrusted_input_mask_the_senders_keys() -> None:
    data = {"recipe": "grid-ticket-routing", "secret-key": 1, "labels": {"secret-label": 2},
            "overrides": {"max_step": 3}}
    with pytest.raises(ValidationError) as exc:
        FineTuneRequested.model_validate(data)
    masked = describe_validation_error(exc.value, "data", FineTuneRequested)
    assert "secret" not in masked
    assert masked == ("data.overrides.<key> (did you mean 'max_steps'?): Extra inputs are not "
                      "permitted; data.labels.<key>: Input should be a valid string; "
                      "data.<key>: Extra inputs are not permitted")
    assert "data.secret-key" in describe_validation_error(exc.value, "data")  # trusted files


def test_a_reason_lists_at_most_ten_problems() -> None:
    with pytest.raises(ValidationError) as exc:
        FineTuneRequested.model_validate({"recipe": "grid-ticket-routing",
                                          **{f"k{i}": i for i in range(100)}})
    reason = describe_validation_error(exc.value, "data", FineTuneRequested)
    assert reason.count("Extra inputs") == 10 and reason.endswith("and 90 more problems")
