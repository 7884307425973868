"""The published OpenAPI document is the truth about the API: schemathesis runs against the
live app (uvicorn, the real broker, a tenant's key, a job, a file and a model of its own),
every route and every check but the EXCEPTIONS listed with their reasons, with a fixed seed
and a bounded number of examples, and fails on any 5xx and on any answer the document does
not describe. Beside it, the rules it found broken, each checked on its own."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from aif import registry
from aif.db.models import Job, RegisteredModel
from aif.db.session import session_factory
from aif.settings import Settings
from aif.tenants import Credentials, create_tenant
from aif.web.app import create_app
from aif.web.routes.jobs import JobCreate
from aif.web.screenshots import serving
from events.bus import KafkaConfig, ensure_topics
from events.recipe import RecipeError, load_recipe_file
from recipes import load_recipe
from tests.aif.web.test_pages import seed_model
from tests.conftest import free_port

ST = Path(sys.executable).with_name("st")

ACCEPTS_422 = 'checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422]'
EXCEPTIONS = [
    ("POST", "/v1/files", ACCEPTS_422,
     "a schema-valid upload is refused (422, documented) when its rows are not readable "
     "or its name does not end in .jsonl, .csv or .parquet: no JSON Schema of a multipart "
     "file says that"),
    ("POST", "/v1/jobs", ACCEPTS_422,
     "a schema-valid request is refused (422, documented, naming field and rule) by what "
     "only the service knows: which recipes it has, whether the effective recipe trains, "
     "whether a data reference stays in the tenant's folder (admission.py); the fields "
     "that exclude each other are in the schema (EXCLUSIVE_FIELDS)"),
    ("GET", "/v1/jobs", ACCEPTS_422,
     "`cursor` must be one this API returned (an opaque token), which no schema can say"),
]
"""Every exception to the run's checks, each with its reason; every other check holds for
every operation."""

CONFIG = """\
seed = 24
workers = 1
continue-on-failure = true

[cache]
enabled = false

[generation]
max-examples = {examples}
deterministic = true
database = "none"

[checks]
enabled = true

[phases.stateful]
max-steps = 6

[headers]
Authorization = "Bearer {key}"

[parameters]
"path.job_id" = "{job_id}"
"path.file_id" = "{file_id}"
"path.path" = "adapter/adapter_config.json"
"path.name" = "grid-ticket-routing"
"path.tenant" = "acme"
"path.label" = "grid-ticket-routing"
"path.version" = 1
"""


@dataclass
class Live:
    url: str
    acme: Credentials
    job_id: str
    file_id: str


@pytest.fixture
def live(tmp_path: Path, broker: str, topics: object) -> Iterator[Live]:
    """The app on loopback with the real broker, SQLite, tenant acme with a finished job, an
    uploaded file and a registered model; another tenant's job beside them."""
    settings = Settings(home=tmp_path, topic_prefix=topics.prefix,  # type: ignore[attr-defined]
                        kafka=KafkaConfig(bootstrap_servers=broker))
    ensure_topics(settings.kafka, settings.topics.shared())
    sessions = session_factory(f"sqlite:///{tmp_path / 'aif.db'}")
    with sessions() as s:
        acme = create_tenant(s, "acme")
        create_tenant(s, "globex")
        s.commit()
    job_id = seed_model(sessions, settings, "acme", "contract")
    seed_model(sessions, settings, "globex", "theirs")
    _register(sessions, job_id)
    _adapter(sessions, job_id, tmp_path / "jobs" / job_id)
    app = create_app(sessions, settings)
    uploaded = TestClient(app).post(
        "/v1/files", headers={"Authorization": f"Bearer {acme.api_key}"},
        files={"file": ("t.jsonl", b'{"text": "a ticket", "label": "outage"}\n')})
    assert uploaded.status_code == 201, uploaded.text
    with serving(app) as url:
        yield Live(url, acme, job_id, uploaded.json()["id"])


def _register(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions() as s:
        job = s.get_one(Job, job_id)
        name = registry.model_name(job)
        s.add(RegisteredModel(
            tenant="acme", name=name, version=1, served_name=registry.served_name(name, 1),
            job_id=job_id, status=registry.Status.ready, base_model="smollm2-135m-instruct",
            base_revision="r1", adapter_uri="file:///nowhere/", files_sha256={"a": "b" * 64},
            merged_uri=None, merged_files_sha256={}, adapter={"r": 8}, scores=[],
            gate_reason="acc +0.5", serving={}))
        s.commit()


def _adapter(sessions: sessionmaker[Session], job_id: str, work_dir: Path) -> None:
    """The job's adapter folder as training leaves it, with its checksums."""
    adapter = work_dir / "adapter"
    adapter.mkdir(parents=True)
    config = b'{"r": 8}'
    (adapter / "adapter_config.json").write_bytes(config)
    (adapter / "SHA256SUMS").write_text(
        f"{hashlib.sha256(config).hexdigest()}  adapter_config.json\n")
    with sessions() as s:
        s.get_one(Job, job_id).work_dir = str(work_dir)
        s.commit()


def _config(live: Live, examples: int) -> str:
    text = CONFIG.format(examples=examples, key=live.acme.api_key, job_id=live.job_id,
                         file_id=live.file_id)
    for method, path, setting, why in EXCEPTIONS:
        # One filter: schemathesis takes an operation that matches any include-* given.
        text += f"\n# {why}\n[[operations]]\ninclude-name = \"{method} {path}\"\n{setting}\n"
    return text


def test_schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_describe(
        live: Live, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(live, examples=8))
    done = subprocess.run(
        # Every check is on in the config (`--checks all` would override its exceptions);
        # no --max-time, which makes fuzzing and stateful testing repeat until it is spent.
        [str(ST), "--config-file", str(config), "run", f"{live.url}/openapi.json"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    document = create_app(sessionmaker(), Settings(home=tmp_path)).openapi()
    operations = sum(len(ops) for ops in document["paths"].values())
    skipped = sum(setting == "enabled = false" for *_, setting, _ in EXCEPTIONS)
    assert f"{operations - skipped} selected / {operations} total" in report, report


def _client(tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    """The app without a broker (nothing here publishes), and tenant acme's Authorization."""
    client = TestClient(create_app(session_factory(f"sqlite:///{tmp_path / 'aif.db'}"),
                                   Settings(home=tmp_path, kafka=KafkaConfig(
                                       bootstrap_servers=f"127.0.0.1:{free_port()}"))),
                        raise_server_exceptions=False)
    with client.app.state.sessions() as s:  # type: ignore[attr-defined]
        auth = {"Authorization": f"Bearer {create_tenant(s, 'acme').api_key}"}
        s.commit()
    return client, auth


def test_a_number_field_takes_only_a_number(tmp_path: Path) -> None:
    """Lax mode read `false` as 0.0 and `true` as 1 step; JSON has numbers for that."""
    client, auth = _client(tmp_path)
    inline = load_recipe("grid-ticket-routing").model_dump(mode="json")
    for body, field in (
            ({"overrides": {"learning_rate": False}}, "body.overrides.learning_rate.float"),
            ({"overrides": {"max_steps": True}}, "body.overrides.max_steps"),
            ({"overrides": {"batch_size": "8"}}, "body.overrides.batch_size.int"),
            ({"eval_split": "0.2"}, "body.eval_split"),
            ({"recipe_inline": inline | {"lora": {"use_dora": 1}}},
             "body.recipe_inline.lora.use_dora"),
            ({"recipe_inline": inline | {"train": {"packing": "yes"}}},
             "body.recipe_inline.train.packing")):
        request = {} if "recipe_inline" in body else {"recipe": "grid-ticket-routing"}
        answer = client.post("/v1/jobs", headers=auth, json=request | body)
        assert answer.status_code == 422, answer.text
        assert field in [e["field"] for e in answer.json()["errors"]], answer.text


def test_the_published_schema_says_which_request_fields_exclude_each_other(tmp_path: Path
                                                                          ) -> None:
    """'Exactly one of recipe or recipe_inline', 'at most one of train_file, dataset and
    file_id', 'of eval_file and eval_split': the document's JobCreate accepts a body exactly
    when the model does, for every mix of each field given, null or left out; the same for
    the overrides' 'max_steps or epochs, not both' and batch_size's bounds."""
    document = create_app(sessionmaker(), Settings(home=tmp_path)).openapi()
    validator = Draft202012Validator({"$ref": "#/components/schemas/JobCreate",
                                      "components": document["components"]})
    values = {"recipe": "grid-ticket-routing",
              "recipe_inline": load_recipe("grid-ticket-routing").model_dump(mode="json"),
              "train_file": "t.jsonl", "dataset": "owner/name", "file_id": "f-1",
              "eval_file": "e.jsonl", "eval_split": 0.2}
    agreed = 0
    for mix in itertools.product(("given", None, "absent"), repeat=len(values)):
        body = {name: value if how == "given" else None
                for (name, value), how in zip(values.items(), mix, strict=True)
                if how != "absent"}
        try:
            JobCreate.model_validate(body)
            model_accepts = True
        except ValidationError:
            model_accepts = False
        assert validator.is_valid(body) == model_accepts, body
        agreed += model_accepts
    assert agreed == 4 * 20 * 8, agreed  # recipes x data references x evaluation rows
    for overrides, valid in (({"max_steps": 7}, True), ({"epochs": 2}, True),
                             ({"max_steps": 7, "epochs": None}, True),
                             ({"max_steps": 7, "epochs": 2}, False),
                             ({"max_steps": 7, "epochs": "auto"}, False),
                             ({"batch_size": 256}, True), ({"batch_size": 257}, False),
                             ({"batch_size": 0}, False), ({"batch_size": "auto"}, True)):
        body = {"recipe": "grid-ticket-routing", "overrides": overrides}
        assert validator.is_valid(body) is valid, body
        try:
            JobCreate.model_validate(body)
            assert valid, body
        except ValidationError:
            assert not valid, body


def test_an_override_the_recipe_cannot_take_is_refused_by_name(tmp_path: Path) -> None:
    """Each override is valid alone; with the recipe it breaks a rule (learning_rate at most
    0.01): a RecipeError, as the front door expects, where a ValidationError was a 500."""
    client, auth = _client(tmp_path)
    answer = client.post("/v1/jobs", headers=auth, json={
        "recipe": "grid-ticket-routing", "overrides": {"learning_rate": 3.4e16}})
    assert answer.status_code == 422, answer.text
    assert "train.learning_rate: must be above 0 and at most 0.01" in answer.json()["detail"]


def test_a_recipe_file_reads_numbers_as_yaml_1_2_does(tmp_path: Path) -> None:
    """`2e-4` is a number in YAML 1.2 and JSON; PyYAML's YAML 1.1 made it text, which a
    number field now refuses, so the recipe loader reads it as a number. (Loading checks no
    file's existence, so the shipped recipe is read from a copy of its text.)"""
    text = (Path(__file__).resolve().parents[3] / "recipes" / "energy" / "grid_ticket_routing"
            / "recipe.yaml").read_text()
    assert "learning_rate: 5.0e-4" in text
    mine = tmp_path / "recipe.yaml"
    mine.write_text(text.replace("learning_rate: 5.0e-4", "learning_rate: 2e-4"))
    assert load_recipe_file(mine).train.learning_rate == 2e-4
    mine.write_text(text.replace("learning_rate: 5.0e-4", "learning_rate: 'two'"))
    with pytest.raises(RecipeError, match=r"train\.learning_rate"):
        load_recipe_file(mine)


def test_a_wrong_method_is_told_every_method_of_the_path(tmp_path: Path) -> None:
    client = TestClient(create_app(sessionmaker(), Settings(home=tmp_path)))
    for method, url, allowed in (("OPTIONS", "/v1/files", "GET, POST"),
                                 ("PUT", "/v1/files/f", "DELETE, GET"),
                                 ("DELETE", "/v1/jobs", "GET, POST")):
        answer = client.request(method, url)
        assert answer.status_code == 405 and answer.headers["allow"] == allowed
        assert answer.json()["detail"] == f"{method} is not allowed here; allowed: {allowed}"


def test_every_operation_that_takes_a_body_documents_400_and_413(tmp_path: Path) -> None:
    document = create_app(sessionmaker(), Settings(home=tmp_path)).openapi()
    with_body = [op for ops in document["paths"].values() for op in ops.values()
                 if "requestBody" in op]
    assert with_body
    for operation in with_body:
        for status in ("400", "413"):
            content = operation["responses"][status]["content"]
            assert content == {"application/problem+json": {"schema": {
                "$ref": "#/components/schemas/ProblemPublic"}}}

def test_an_optional_parameter_may_be_left_out_not_null(tmp_path: Path) -> None:
    """FastAPI documents `X | None = None` as `anyOf: [X, null]`; a query parameter or a
    header cannot be null, and `?state=null` is refused as no state."""
    document = create_app(sessionmaker(), Settings(home=tmp_path)).openapi()
    parameters = [p for ops in document["paths"].values() for op in ops.values()
                  for p in op.get("parameters", [])]
    assert len(parameters) > 10
    assert not [p["name"] for p in parameters if "null" in json.dumps(p["schema"])]
