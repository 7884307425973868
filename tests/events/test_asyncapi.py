"""asyncapi.yaml against the code: every event type, topic and header, and the reference
AsyncAPI parser (Node, `@asyncapi/parser` pinned in tests/events/asyncapi/) accepts it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.consumer.fetcher import ConsumerRecord

from aif.orchestrator.dead_letters import DLQ_MAX_COPY_BYTES, dead_letter_copy
from events.envelope import CloudEvent
from events.messages import EVENT_TYPES, TYPE_PREFIX, CancelRequested, FineTuneRequested
from events.signing import KEY_ID_HEADER, SIGNATURE_HEADER
from events.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "asyncapi.yaml"
PARSER_PACKAGE = Path(__file__).resolve().parent / "asyncapi"
TOPICS = Topics("{prefix}")
CHANNEL_OF_TOPIC = {TOPICS.requests: "requests", TOPICS.status("{tenant}"): "status",
                    TOPICS.models("{tenant}"): "models", TOPICS.dead_letter: "deadLetters"}
REQUESTS = {FineTuneRequested.TYPE, CancelRequested.TYPE}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text())


def _messages(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """CloudEvents type (the message's name) -> message."""
    return {m["name"]: m for m in doc["components"]["messages"].values()}


def _ref(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_every_event_type_is_a_message_with_its_committed_schema(doc: dict[str, Any]) -> None:
    messages = _messages(doc)
    assert set(EVENT_TYPES) <= set(messages)
    for type_name in EVENT_TYPES:
        envelope, body = messages[type_name]["payload"]["allOf"]
        assert body["properties"]["type"] == {"const": type_name}
        schema = f"events/schemas/{type_name.removeprefix(TYPE_PREFIX + '.')}.schema.json"
        assert body["properties"]["data"] == {"$ref": schema}
        assert (ROOT / schema).is_file()
        expected = "requestEnvelope" if type_name in REQUESTS else "serviceEnvelope"
        assert envelope == {"$ref": f"#/components/schemas/{expected}"}


def test_channels_are_the_topics_and_carry_the_right_messages(doc: dict[str, Any]) -> None:
    channels = doc["channels"]
    assert {channels[channel]["address"]: channel for channel in channels} == CHANNEL_OF_TOPIC
    on = {channel: {_ref(doc, m["$ref"])["name"] for m in c["messages"].values()}
          for channel, c in channels.items()}
    assert on["requests"] == REQUESTS
    assert on["status"] | on["models"] == set(EVENT_TYPES) - REQUESTS
    assert on["deadLetters"] == {"dead-letter"}


def test_headers_are_the_ones_the_code_reads_and_writes(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(schemas["signingHeaders"]["properties"]) == {KEY_ID_HEADER, SIGNATURE_HEADER}
    assert doc["components"]["securitySchemes"]["eventSignature"]["x-headers"] == [
        KEY_ID_HEADER, SIGNATURE_HEADER]
    big = b"x" * (DLQ_MAX_COPY_BYTES + 1)
    record = ConsumerRecord("aif.requests", 0, -1, 7, 1, 0, b"k", big, [], None, 1, len(big), 0)
    written = {name for name, _ in dead_letter_copy(record, "r")[2]}
    dlq = schemas["deadLetterHeaders"]
    assert set(dlq["properties"]) == written
    assert set(dlq["required"]) == written - {"aif.dlq.truncated"}


def test_the_example_request_is_one_the_service_accepts(doc: dict[str, Any]) -> None:
    (example,) = _messages(doc)[FineTuneRequested.TYPE]["examples"]
    event = CloudEvent.model_validate(example["payload"])
    FineTuneRequested.model_validate(event.data)
    assert set(example["headers"]) == {KEY_ID_HEADER, SIGNATURE_HEADER}


def _installed_parser() -> Path:
    """The pinned parser, installed once per lock file into a cache folder (npm ci)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed to validate asyncapi.yaml (Debian: nodejs, npm)")
    lock = PARSER_PACKAGE / "package-lock.json"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aif-tuning"
    folder = cache / f"asyncapi-parser-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    if not (folder / "node_modules" / "@asyncapi" / "parser" / "package.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(PARSER_PACKAGE / name, folder / name)
        done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                              cwd=folder, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"npm ci of @asyncapi/parser in {folder} failed:\n{done.stderr[-3000:]}")
    shutil.copy(PARSER_PACKAGE / "validate.mjs", folder / "validate.mjs")  # resolves from there
    return folder


def test_the_reference_parser_accepts_the_document() -> None:
    folder = _installed_parser()
    done = subprocess.run(["node", str(folder / "validate.mjs"), str(DOCUMENT)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(parsed["channels"].values()) == sorted(CHANNEL_OF_TOPIC)
    assert set(EVENT_TYPES) <= set(parsed["messages"])
