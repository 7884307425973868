"""Hostile dataset references: each is refused naming the field and the rule, before anything
opens it, and nothing of the file it names, or of another tenant, shows up anywhere.

Intake refuses what the spelling shows already (a dead letter; one test on the real broker
and service); the worker's validation refuses the rest (symlinks, hard links, pipes, task
YAMLs and what they name, archives, host names) and again everything intake would have, for
jobs stored some other way. Every target file holds a marker (rows that would render into
the pre-flight report's examples if they were read) that must appear nowhere. Remote data
comes from real HTTP servers on loopback addresses that the site's allow-list opens.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import DeadLetter, Job
from aif.orchestrator.admission import Admission
from aif.orchestrator.errors import FinalError
from aif.orchestrator.intake import Outcome, accept
from aif.orchestrator.references import References
from aif.orchestrator.specs import effective_recipe
from aif.service import Service
from aif.settings import Settings
from aif.tenants import create_tenant
from events.bus import KafkaConfig, envelope, make_producer, publish
from events.envelope import job_id_for
from events.messages import FineTuneRequested
from events.states import JobState
from events.topics import Topics
from recipes import load_recipe
from tests.aif.conftest import everything_said, local_worker, signing_key, store_trusted
from tests.conftest import free_port

MARKER = "SECRET-REF-MARKER-51c9"
OUTSIDE = "outside the tenant's data root"
SHIPPED = load_recipe("grid-ticket-routing")
ROWS = "".join(f'{{"text": "{MARKER} ticket {i} about a fallen line", "label": "emergency"}}\n'
               for i in range(8))


@dataclass
class Site:
    """Tenant acme's data root, files outside it (each with the marker), another tenant's
    upload and job directory, and the tiny inline recipe whose files live in acme's root."""

    root: Path
    outside: Path
    globex_upload: Path
    globex_job_file: Path
    acme_job_file: Path
    tiny: dict
    loopback_port: int = field(default_factory=free_port)

    @property
    def task_dir(self) -> Path:
        """Where the tiny recipe's first task YAML lies, in acme's root."""
        return Path(self.tiny["eval"]["tasks"][0]["yaml"]).parent

    def inline(self, **task: object) -> dict:
        """The tiny recipe inline, its first task YAML replaced by one beside it with these
        top-level keys changed."""
        config = yaml.safe_load(Path(self.tiny["eval"]["tasks"][0]["yaml"]).read_text())
        config.update(task)
        hostile = self.task_dir / "hostile.yaml"
        hostile.write_text(yaml.safe_dump(config))
        return self.with_task_yaml(str(hostile))

    def with_task_yaml(self, path: str) -> dict:
        tasks = [{**self.tiny["eval"]["tasks"][0], "yaml": path}, *self.tiny["eval"]["tasks"][1:]]
        return {"recipe_inline": {**self.tiny, "eval": {**self.tiny["eval"], "tasks": tasks}}}


def _write(path: Path, text: str = ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def site(tmp_path: Path, data_root: Path, tiny_request: FineTuneRequested) -> Site:
    assert tiny_request.recipe_inline is not None
    jobs = Settings(home=tmp_path).jobs_dir  # type: ignore[call-arg]
    return Site(
        root=data_root / "acme",
        outside=_write(tmp_path / "outside" / "secret.jsonl"),
        globex_upload=_write(data_root / "globex" / "files" / "file-1" / "data.jsonl"),
        globex_job_file=_write(jobs / "globex" / "job-1" / "train.jsonl"),
        acme_job_file=_write(jobs / "acme" / "job-2" / "train.jsonl"),
        tiny=tiny_request.recipe_inline.model_dump(mode="json"),
    )


@dataclass(frozen=True)
class Case:
    request: Callable[[Site], dict]
    reason: str
    at_intake: bool = True  # refused by its spelling already
    remote: bool = False  # the site enables remote data


def _named(train_file: str | Callable[[Site], str]) -> Callable[[Site], dict]:
    def request(site: Site) -> dict:
        value = train_file(site) if callable(train_file) else train_file
        return {"recipe": "grid-ticket-routing", "train_file": value}
    return request


def _symlink(site: Site) -> str:
    (site.root / "link.jsonl").symlink_to(site.outside)
    return "link.jsonl"


def _linked_dir(site: Site) -> str:
    (site.root / "elsewhere").symlink_to(site.outside.parent, target_is_directory=True)
    return "elsewhere/secret.jsonl"


def _hard_link(site: Site) -> str:
    os.link(site.outside, site.root / "hard.jsonl")
    return str(site.root / "hard.jsonl")


def _fifo(site: Site) -> str:
    os.mkfifo(site.root / "pipe.jsonl")
    return "pipe.jsonl"


def _zip_slip(site: Site) -> str:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("../../escaped.jsonl", ROWS)
    (site.root / "train.jsonl").write_bytes(out.getvalue())  # named as data, magic says zip
    return "train.jsonl"


def _tar(site: Site, mode: str, name: str) -> str:
    with tarfile.open(site.root / name, mode) as archive:  # type: ignore[call-overload]
        member = tarfile.TarInfo("train.jsonl")
        member.type, member.linkname = tarfile.SYMTYPE, str(site.outside)
        archive.addfile(member)
        evil = tarfile.TarInfo("../escaped.jsonl")
        evil.size = len(ROWS)
        archive.addfile(evil, io.BytesIO(ROWS.encode()))
    return name


def _task_data(files: Callable[[Site], object]) -> Callable[[Site], dict]:
    def request(site: Site) -> dict:
        return site.inline(dataset_kwargs={"data_files": {"test": files(site)}})
    return request


def _task_data_symlink(site: Site) -> str:
    (site.task_dir / "docs.jsonl").symlink_to(site.outside)
    return "docs.jsonl"


def _base_model(site: Site, base: str) -> dict:
    return {"recipe_inline": {**site.tiny, "model": {**site.tiny["model"], "base": base}}}


CASES = {
    "etc-passwd": Case(_named("/etc/passwd"), f"data.train_file: {OUTSIDE}"),
    "etc-shadow": Case(_named("/etc/shadow"), f"data.train_file: {OUTSIDE}"),
    "dot-dot-etc-hosts": Case(_named("../../../etc/hosts"), f"data.train_file: {OUTSIDE}"),
    "outside-file": Case(_named(lambda s: str(s.outside)), f"data.train_file: {OUTSIDE}"),
    "another-tenants-upload": Case(_named(lambda s: str(s.globex_upload)),
                                   f"data.train_file: {OUTSIDE}"),
    "another-tenant-by-dot-dot": Case(_named("../globex/files/file-1/data.jsonl"),
                                      f"data.train_file: {OUTSIDE}"),
    "another-tenants-job-dir": Case(_named(lambda s: str(s.globex_job_file)),
                                    f"data.train_file: {OUTSIDE}"),
    "own-job-dir": Case(_named(lambda s: str(s.acme_job_file)), f"data.train_file: {OUTSIDE}"),
    "nul-byte": Case(_named("train\0.jsonl"), "data.train_file: not a valid path"),
    "file-url": Case(_named("file:///etc/passwd"),
                     "data.train_file: not a file in the tenant's data root"),
    "gopher-url": Case(_named("gopher://127.0.0.1:70/_x"),
                       "data.train_file: not a file in the tenant's data root"),
    "ftp-url": Case(_named("ftp://example.org/t.jsonl"),
                    "data.train_file: not a file in the tenant's data root"),
    "s3-url": Case(_named("s3://bucket/tenants/acme/t.jsonl"),
                   "data.train_file: s3:// data is not enabled on this site"),
    "remote-data-off": Case(_named("https://example.org/t.jsonl"),
                            "data.train_file: remote data (http/https URLs) is not enabled"),
    "cloud-metadata": Case(_named("http://169.254.169.254/latest/meta-data/"),
                           "data.train_file: the URL's host is a link-local address",
                           remote=True),
    "loopback-port": Case(_named(lambda s: f"http://127.0.0.1:{s.loopback_port}/t.jsonl"),
                          "data.train_file: the URL's host is a loopback address", remote=True),
    "ipv4-mapped-ipv6": Case(_named("http://[::ffff:127.0.0.1]/t.jsonl"),
                             "data.train_file: the URL's host is a loopback address",
                             remote=True),
    "nat64": Case(_named("http://[64:ff9b::a9fe:a9fe]/t.jsonl"),
                  "data.train_file: the URL's host is a link-local address", remote=True),
    "decimal-ipv4": Case(_named("http://2130706433/t.jsonl"),
                         "data.train_file: the URL's host is a loopback address", remote=True),
    "hex-ipv4": Case(_named("http://0x7f000001/t.jsonl"),
                     "data.train_file: the URL's host is a loopback address", remote=True),
    "octal-ipv4": Case(_named("http://0177.0.0.1/t.jsonl"),
                       "data.train_file: the URL's host is a loopback address", remote=True),
    "short-ipv4": Case(_named("http://127.1/t.jsonl"),
                       "data.train_file: the URL's host is a loopback address", remote=True),
    "private-ipv4": Case(_named("http://10.0.0.1/t.jsonl"),
                         "data.train_file: the URL's host is a private address", remote=True),
    "url-credentials": Case(_named("http://user:pw@example.org/t.jsonl"),
                            "data.train_file: a URL with credentials", remote=True),
    "hub-dataset-off": Case(lambda s: {"recipe": "grid-ticket-routing", "dataset": "acme/x"},
                            "data.dataset: hub datasets are not enabled on this site"),
    "inline-task-yaml-outside": Case(lambda s: s.with_task_yaml("/etc/passwd"),
                                     f"eval.tasks.0.yaml: {OUTSIDE}"),
    "inline-task-yaml-url": Case(lambda s: s.with_task_yaml("http://example.org/t.yaml"),
                                 "eval.tasks.0.yaml: not a file in the tenant's data root"),
    "inline-validation-file": Case(
        lambda s: {"recipe_inline": {**s.tiny, "data": {**s.tiny["data"],
                                                         "validation_file": str(s.outside)}}},
        f"data.validation_file: {OUTSIDE}"),
    "inline-base-model-in-jobs": Case(lambda s: _base_model(s, str(s.globex_job_file.parent)),
                                      "model.base: an inline recipe may name a base model"),
    "inline-base-model-etc": Case(lambda s: _base_model(s, "/etc"),
                                  "model.base: an inline recipe may name a base model"),
    "inline-base-model-hub-id": Case(lambda s: _base_model(s, "someone/some-model"),
                                     "model.base: an inline recipe may name a base model"),
    # Refused only once the file system (or DNS) is asked: by the worker's validation.
    "symlink-out": Case(_named(_symlink), f"data.train_file: {OUTSIDE}", at_intake=False),
    "symlinked-dir-out": Case(_named(_linked_dir), f"data.train_file: {OUTSIDE}",
                              at_intake=False),
    "hard-link-out": Case(_named(_hard_link), "data.train_file: a file with more than one name "
                          "(a hard link)", at_intake=False),
    "fifo": Case(_named(_fifo), "data.train_file: not a regular file", at_intake=False),
    "the-root-itself": Case(_named("."), "data.train_file: not a regular file", at_intake=False),
    "localhost-name": Case(_named(lambda s: f"http://localhost:{s.loopback_port}/t.jsonl"),
                           "data.train_file: the URL's host is a loopback address",
                           at_intake=False, remote=True),
    "zip-with-dot-dot-member": Case(_named(_zip_slip), "data.train_file: a zip archive",
                                    at_intake=False),
    "tar-with-symlink-member": Case(_named(lambda s: _tar(s, "w", "train.tar.jsonl")),
                                    "data.train_file: a tar archive", at_intake=False),
    "tar-gz": Case(_named(lambda s: _tar(s, "w:gz", "train.tar.gz")),
                   "data.train_file: a gzip archive", at_intake=False),
    "task-data-outside": Case(_task_data(lambda s: os.path.relpath(s.outside, s.task_dir)),
                              f"eval.tasks.0.yaml dataset_kwargs.data_files: {OUTSIDE}",
                              at_intake=False),
    "task-data-etc": Case(_task_data(lambda s: ["/etc/passwd"]),
                          f"eval.tasks.0.yaml dataset_kwargs.data_files: {OUTSIDE}",
                          at_intake=False),
    "task-data-symlink": Case(_task_data(_task_data_symlink),
                              f"eval.tasks.0.yaml dataset_kwargs.data_files: {OUTSIDE}",
                              at_intake=False),
    "task-data-url": Case(_task_data(lambda s: "https://example.org/docs.jsonl"),
                          "eval.tasks.0.yaml dataset_kwargs.data_files: each must be a path",
                          at_intake=False),
    "task-dataset-path-dir": Case(lambda s: s.inline(dataset_path=str(s.outside.parent)),
                                  "eval.tasks.0.yaml: dataset_path must be one of json, csv",
                                  at_intake=False),
    "task-data-dir": Case(lambda s: s.inline(dataset_kwargs={"data_dir": str(s.outside.parent)}),
                          "eval.tasks.0.yaml: dataset_kwargs may not set data_dir",
                          at_intake=False),
}
INTAKE = {name: case for name, case in CASES.items() if case.at_intake}


def _settings(home: Path, case: Case, **more: object) -> Settings:
    return Settings(home=home, lease_s=30, allow_remote_data=case.remote,  # type: ignore[call-arg]
                    **more)


@pytest.mark.parametrize("name", INTAKE)
def test_intake_refuses_by_the_spelling_alone(
    sessions: sessionmaker[Session], tmp_path: Path, site: Site, name: str
) -> None:
    case = INTAKE[name]
    data = case.request(site)
    admission = Admission(None, References.of(_settings(tmp_path, case)))
    event = envelope(FineTuneRequested.model_validate(data), source="urn:t", tenant="acme")
    with sessions() as s:
        result = accept(s, event.to_bytes(), Settings().topics, admission, require_signed=False)
        s.commit()
        assert s.scalars(select(Job)).all() == []
    assert result.outcome is Outcome.dead_letter
    assert result.reason.startswith(case.reason), result.reason
    assert MARKER not in result.reason and str(site.outside) not in result.reason


@pytest.mark.parametrize("name", CASES)
def test_the_worker_rejects_before_any_stage_and_says_nothing_of_the_file(
    sessions: sessionmaker[Session], tmp_path: Path, site: Site, name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    case = CASES[name]
    job_id = store_trusted(sessions, **case.request(site))  # as if intake had not checked
    w = local_worker(sessions, tmp_path, allow_remote_data=case.remote)
    assert w.leases.claim() == job_id
    with caplog.at_level(logging.DEBUG):
        w.run_job(job_id)
    job = w.load(job_id)
    assert (job.state, job.attempts) == (JobState.rejected, 0)
    assert job.reason.startswith(case.reason), job.reason
    assert job.preflight is None and job.work_dir is None  # no stage ran, no job dir
    said = everything_said(sessions, job_id) + caplog.text
    assert MARKER not in said and str(site.outside) not in said
    assert "root:" not in said  # nothing of /etc/passwd or /etc/hosts either
    assert not list(site.root.parent.parent.rglob("escaped.jsonl"))  # no archive unpacked


def test_after_refusals_the_next_job_still_runs(
    sessions: sessionmaker[Session], tmp_path: Path, site: Site
) -> None:
    refused = [store_trusted(sessions, **CASES[n].request(site))
               for n in ("etc-passwd", "symlink-out", "hard-link-out")]
    good = store_trusted(sessions, **site.inline())  # the same task YAML, copied: all inside
    w = local_worker(sessions, tmp_path)
    for job_id in refused:
        assert w.leases.claim() == job_id
        w.run_job(job_id)
    assert w.leases.claim() == good
    w.steps.validate(w.load(good))
    job = w.load(good)
    assert job.state == JobState.queued, job.reason
    assert job.recipe["eval"]["tasks"][0]["yaml"] == str(site.task_dir / "hostile.yaml")


class _Server(ThreadingHTTPServer):
    """Answers each path from `routes` (status, headers, body) and counts the requests."""

    def __init__(self, host: str, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.routes, self.hits = routes, 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server: _Server = self.server  # type: ignore[assignment]
                server.hits += 1
                status, headers, body = server.routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__((host, 0), Handler)

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    """A 'mirror' on 127.0.0.2 (the one network the site allows) and a loopback server on
    127.0.0.1 holding the secret rows."""
    mirror, loopback = _Server("127.0.0.2", {}), _Server("127.0.0.1", {})
    loopback.routes["/secret.jsonl"] = (200, {}, ROWS.encode())
    for server in (mirror, loopback):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield mirror, loopback
    for server in (mirror, loopback):
        server.shutdown()
        server.server_close()


def test_a_redirect_to_loopback_is_refused_at_its_hop_and_the_allowed_hop_downloads(
    sessions: sessionmaker[Session], tmp_path: Path, site: Site,
    servers: tuple[_Server, _Server], caplog: pytest.LogCaptureFixture,
) -> None:
    mirror, loopback = servers
    rows = _tickets()
    mirror.routes.update({
        "/tickets.jsonl": (200, {}, rows),
        "/moved.jsonl": (302, {"Location": "/tickets.jsonl"}, b""),  # re-checked, allowed
        "/sneaky.jsonl": (302, {"Location": f"{loopback.base}/secret.jsonl"}, b""),
        "/loop.jsonl": (302, {"Location": "/loop.jsonl"}, b""),
        "/packed.jsonl": (200, {}, b"\x1f\x8b\x08" + b"\0" * 40),
    })
    w = local_worker(sessions, tmp_path, allow_remote_data=True,
                     remote_data_allow_networks=["127.0.0.2/32"])
    jobs = {path: store_trusted(sessions, recipe_inline=site.tiny,
                                train_file=f"{mirror.base}{path}")
            for path in ("/sneaky.jsonl", "/loop.jsonl", "/packed.jsonl", "/moved.jsonl")}
    with caplog.at_level(logging.DEBUG):
        for path, job_id in jobs.items():
            assert w.leases.claim() == job_id
            if path == "/moved.jsonl":  # only validated: the job is not trained here
                w.steps.validate(w.load(job_id))
            else:
                w.run_job(job_id)
    sneaky = w.load(jobs["/sneaky.jsonl"])
    assert sneaky.state == JobState.rejected, sneaky.reason
    assert "data.train_file: the URL's host is a loopback address" in sneaky.reason
    assert loopback.hits == 0  # the refused hop was never connected to
    said = everything_said(sessions, sneaky.id) + caplog.text
    assert MARKER not in said
    assert "data.train_file: more than 5 redirects" in w.load(jobs["/loop.jsonl"]).reason
    assert "data.train_file: a gzip archive" in w.load(jobs["/packed.jsonl"]).reason
    moved = w.load(jobs["/moved.jsonl"])
    assert moved.state == JobState.queued, moved.reason
    copy = Path(moved.work_dir or "") / "remote" / "train_file.jsonl"
    assert copy.read_bytes() == rows and moved.preflight["train"]["rows_usable"] == 40
    assert moved.recipe["data"]["train_file"] == str(copy)  # training reads the local copy


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_over_kafka_hostile_references_are_dead_letters_and_the_service_serves_on(
    broker: str, topics: Topics, sessions: sessionmaker[Session], db_url: str,
    tmp_path: Path, site: Site,
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        home=tmp_path, database_url=db_url, kafka=KafkaConfig(bootstrap_servers=broker),
        topic_prefix=topics.prefix, embedded_broker=False, web_port=free_port(),
        max_poll_interval_ms=3000, session_timeout_ms=3000,
    )
    hostile = ["etc-passwd", "another-tenants-upload", "file-url", "remote-data-off",
               "inline-task-yaml-outside"]
    key = signing_key(sessions, "acme")
    with sessions() as s:
        api_key = create_tenant(s, "observer").api_key
        s.commit()
    benign = {"recipe": "grid-ticket-routing", "train_file": "not-there.jsonl"}
    events = [envelope(FineTuneRequested.model_validate(d), source="urn:test:refs",
                       tenant="acme") for d in [*(CASES[n].request(site) for n in hostile),
                                                benign]]
    api = f"http://127.0.0.1:{settings.web_port}"
    with Service(settings):
        producer = make_producer(settings.kafka)
        for event in events:
            publish(producer, settings.topics.requests, event, key=event.id, signing_key=key)
        producer.close()
        benign_id = job_id_for("acme", "urn:test:refs", events[-1].id)
        deadline = time.monotonic() + 120
        while True:
            with sessions() as s:
                letters = s.scalars(select(DeadLetter.reason).order_by(DeadLetter.id)).all()
                job = s.get(Job, benign_id)
                done = job is not None and JobState(job.state).terminal
            if len(letters) == len(hostile) and done:
                break
            assert time.monotonic() < deadline, (letters, job and job.state)
            time.sleep(0.5)
        assert sorted(r.split(":")[0] for r in letters) == [  # partitions: any order
            "data.train_file", "data.train_file", "data.train_file", "data.train_file",
            "eval.tasks.0.yaml"]
        assert all(MARKER not in r and "/etc" not in r and str(site.root.parent) not in r
                   for r in letters)
        assert job is not None and job.state == JobState.rejected
        assert job.reason == "data.train_file: no such file in the tenant's data root"
        assert httpx.get(f"{api}/readyz").status_code == 200
        listed = httpx.get(f"{api}/v1/jobs",
                           headers={"Authorization": f"Bearer {api_key}"})
        assert listed.status_code == 200 and listed.json()["data"] == []  # another tenant's
        assert MARKER not in listed.text


S3_PREFIX = "s3://aif-data/tenants/{tenant}/"
S3_REFUSED = {
    "s3://aif-data/tenants/globex/secret.jsonl": "data.train_file: outside the tenant's s3 prefix",
    "s3://aif-data/tenants/acme-x/secret.jsonl": "data.train_file: outside the tenant's s3 prefix",
    "s3://other-bucket/tenants/acme/t.jsonl": "data.train_file: outside the tenant's s3 prefix",
    "s3://aif-data/tenants/acme/../globex/secret.jsonl":
        "data.train_file: the s3 key may not have empty, '.' or '..' segments",
    "s3://aif-data/tenants/acme//t.jsonl":
        "data.train_file: the s3 key may not have empty, '.' or '..' segments",
    "s3://aif-data/tenants/acme/t.jsonl?versionId=1":
        "data.train_file: an s3 URL is s3://bucket/key",
}


@pytest.fixture
def s3_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real (moto) S3 server on loopback: acme's tickets and globex's secret rows in one
    bucket, each under its tenant's prefix; the endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)  # the pre-flight stage inherits them
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    store = boto3.client("s3", endpoint_url=endpoint)
    store.create_bucket(Bucket="aif-data")
    store.put_object(Bucket="aif-data", Key="tenants/acme/tickets.jsonl", Body=_tickets())
    store.put_object(Bucket="aif-data", Key="tenants/globex/secret.jsonl", Body=ROWS.encode())
    yield endpoint
    server.stop()


def _tickets() -> bytes:
    return b"".join(Path(SHIPPED.data.train_file or "").read_bytes().splitlines(True)[:40])


@pytest.mark.parametrize("url", S3_REFUSED)
def test_s3_outside_the_tenants_prefix_is_refused_at_intake(
    sessions: sessionmaker[Session], tmp_path: Path, url: str
) -> None:
    admission = Admission(None, References.of(Settings(home=tmp_path, s3_prefix=S3_PREFIX)))
    event = envelope(FineTuneRequested(recipe="grid-ticket-routing", train_file=url),
                     source="urn:t", tenant="acme")
    with sessions() as s:
        result = accept(s, event.to_bytes(), Settings().topics, admission, require_signed=False)
    assert result.outcome is Outcome.dead_letter
    assert result.reason.startswith(S3_REFUSED[url]), result.reason


def test_s3_objects_under_the_tenants_prefix_are_downloaded_and_others_refused(
    sessions: sessionmaker[Session], tmp_path: Path, site: Site, s3_store: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = local_worker(sessions, tmp_path, s3_prefix=S3_PREFIX, s3_endpoint_url=s3_store)
    good, missing = "s3://aif-data/tenants/acme/tickets.jsonl", "s3://aif-data/tenants/acme/no.jsonl"
    jobs = {url: store_trusted(sessions, recipe_inline=site.tiny, train_file=url)
            for url in [*S3_REFUSED, missing, good]}
    with caplog.at_level(logging.DEBUG):
        for url, job_id in jobs.items():
            assert w.leases.claim() == job_id
            if url == good:  # only validated: the job is not trained here
                w.steps.validate(w.load(job_id))
            else:
                w.run_job(job_id)
    for url, reason in S3_REFUSED.items():
        job = w.load(jobs[url])
        assert (job.state, job.preflight) == (JobState.rejected, None)  # before any stage
        assert job.reason.startswith(reason), job.reason
        assert MARKER not in everything_said(sessions, job.id)
    assert MARKER not in caplog.text
    absent = w.load(jobs[missing])
    assert absent.state == JobState.rejected and absent.attempts == 0
    assert "data.train_file: the object store answered NoSuchKey" in absent.reason
    job = w.load(jobs[good])
    assert job.state == JobState.queued, job.reason
    copy = Path(job.work_dir or "") / "remote" / "train_file.jsonl"
    assert copy.read_bytes() == _tickets() and job.preflight["train"]["rows_usable"] == 40
    assert job.recipe["data"]["train_file"] == str(copy)  # training reads the local copy


def test_paths_inside_the_root_are_admitted_and_made_canonical(
    tmp_path: Path, site: Site
) -> None:
    """Relative to the tenant root (not the service's working directory), `..` that stays
    inside, a symlink that stays inside: admitted, and frozen as the canonical path."""
    references = References.of(Settings(home=tmp_path))  # type: ignore[call-arg]
    train = site.root / "energy" / "grid_ticket_routing" / "data" / "train.jsonl"
    (site.root / "latest.jsonl").symlink_to(train)
    for spelling in ("energy/grid_ticket_routing/data/train.jsonl",
                     "energy/../energy/grid_ticket_routing/data/train.jsonl",
                     str(train), "latest.jsonl"):
        request = FineTuneRequested(recipe="grid-ticket-routing", train_file=spelling)
        assert Admission(None, references).refusal(request, "acme") is None
        recipe = effective_recipe(request, references, "acme")
        assert recipe.data.train_file == str(train.resolve())
    inline = FineTuneRequested.model_validate(site.inline())
    frozen = effective_recipe(inline, references, "acme")
    assert frozen.eval.tasks[0].yaml == str(site.task_dir / "hostile.yaml")


@pytest.mark.parametrize(("dataset", "reason"), [
    ("acme/tickets", None), ("tickets", None), ("acme/tickets.v2", None),
    ("/etc", "data.dataset: must be a hub dataset id"),
    ("../globex", "data.dataset: must be a hub dataset id"),
    ("acme/../../etc", "data.dataset: must be a hub dataset id"),
])
def test_hub_datasets_when_enabled_are_hub_ids_never_paths(
    tmp_path: Path, dataset: str, reason: str | None
) -> None:
    references = References.of(Settings(home=tmp_path, allow_hub_datasets=True))
    request = FineTuneRequested(recipe="grid-ticket-routing", dataset=dataset)
    refusal = Admission(None, references).refusal(request, "acme")
    assert refusal == reason if reason is None else refusal.startswith(reason)


@pytest.mark.parametrize("spelling", [
    lambda site: str(site.outside), lambda site: "../../outside/secret.jsonl", _symlink,
    lambda site: str(site.globex_upload), lambda site: "http://127.0.0.1/own.jsonl",
])
def test_an_eval_file_is_confined_like_a_train_file(
    tmp_path: Path, site: Site, spelling: Callable[[Site], str]
) -> None:
    references = References.of(Settings(home=tmp_path))  # type: ignore[call-arg]
    request = FineTuneRequested(recipe="grid-ticket-routing", eval_file=spelling(site))
    with pytest.raises(FinalError, match=r"^data\.eval_file: ") as refused:
        effective_recipe(request, references, "acme")
    assert MARKER not in str(refused.value)


def test_an_eval_file_in_the_root_gates_the_job(tmp_path: Path, site: Site) -> None:
    references = References.of(Settings(home=tmp_path))  # type: ignore[call-arg]
    own = _write(site.root / "own" / "eval.jsonl")
    request = FineTuneRequested(recipe="grid-ticket-routing", eval_file="own/eval.jsonl")
    assert Admission(None, references).refusal(request, "acme") is None
    recipe = effective_recipe(request, references, "acme")
    assert recipe.gate.task == "grid_ticket_routing_own"
    assert recipe.eval.tasks[0].data_file == str(own.resolve())
    assert "grid_ticket_routing" in [t.name for t in recipe.eval.tasks]  # still reported
