"""The Kubernetes launcher against recorded API server answers (tests/aif/launchers/k8s/*.json).

No cluster runs here. A small HTTP server on loopback plays the API server with answers
recorded from real Job and Pod objects; the real `kubernetes` client talks to it through a
kubeconfig, so its own request building and (de)serialisation are part of every test.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from aif.launchers import LOST, StageCommand, get_launcher
from aif.launchers.kubernetes import KubernetesConfig, KubernetesLauncher
from aif.launchers.kubernetes_jobs import build_job, build_service, job_name
from aif.settings import Settings

RECORDED = Path(__file__).parent / "k8s"
CHART = Path(__file__).resolve().parents[3] / "helm" / "aif-tuning"
JOB_ID = "3f0c1d2e-5b6a-5c7d-8e9f-0a1b2c3d4e5f"
NAME = f"aif-finetune-train-{JOB_ID}"
JOBS = "/apis/batch/v1/namespaces/aif/jobs"
JOB = f"{JOBS}/{NAME}"
PODS = "/api/v1/namespaces/aif/pods"
SERVICES = "/api/v1/namespaces/aif/services"
VERBS = {"POST": "create", "DELETE": "delete"}


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / name).read_text())


def status_of(method: str, body: dict[str, Any]) -> int:
    """As the API server answers: a failure Status carries its code, a created object 201."""
    if body.get("kind") == "Status":
        return body.get("code", 200)
    return 201 if method == "POST" else 200


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any] | None

    @property
    def rule(self) -> tuple[str, str]:
        """(verb, resource) as RBAC sees this call."""
        parts = self.path.strip("/").split("/")
        resource = parts[parts.index("namespaces") + 2]
        verb = VERBS.get(self.method) or ("get" if len(parts) > parts.index(resource) + 1
                                          else "list")
        return verb, resource


@dataclass
class FakeApiServer:
    """Answers (method, path) with the next recorded answer queued for it; the last one
    stays. Anything unexpected is a 500 the test sees."""

    url: str = ""
    answers: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def answer(self, method: str, path: str, *files: str) -> None:
        self.answers[(method, path)] = list(files)

    def respond(self, method: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlsplit(raw_path)
        self.calls.append(Call(method, url.path, parse_qs(url.query),
                               json.loads(body) if body else None))
        queue = self.answers.get((method, url.path))
        if not queue:
            return 500, {"kind": "Status", "message": f"no answer for {method} {url.path}"}
        body = recorded(queue.pop(0) if len(queue) > 1 else queue[0])
        return status_of(method, body), body


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, body = fake.respond(self.command, self.path, self.rfile.read(length))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_port}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": fake.url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield fake
    server.shutdown()
    server.server_close()


def command(tmp_path: Path, module: str = "finetune.train", **kw: Any) -> StageCommand:
    work = tmp_path / "jobs" / "acme" / JOB_ID
    work.mkdir(parents=True, exist_ok=True)
    return StageCommand(module, work / "training_spec.json", **kw)


def launcher(**config: Any) -> KubernetesLauncher:
    settings = Settings(launcher="kubernetes", kubernetes={  # type: ignore[call-arg]
        "namespace": "aif", "image": "registry.example.eu/aif/aif-tuning:0.1.0-cuda",
        "data_claim": "aif-aif-tuning-data", **config})
    made = get_launcher(settings.launcher, settings)
    assert isinstance(made, KubernetesLauncher)
    return made


def test_a_stage_run_becomes_a_job_with_the_settings_resources_and_policies(
    api: FakeApiServer, tmp_path: Path,
) -> None:
    api.answer("POST", JOBS, "job-created.json")
    api.answer("GET", JOB, "job-running.json")
    gpu = launcher(gpus_per_node=1, node_selector={"nvidia.com/gpu.present": "true"},
                   tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                 "effect": "NoSchedule"}],
                   priority_class="aif-training", service_account="aif-stage",
                   active_deadline_s=14_400, backoff_limit=2)
    run = gpu.start(command(tmp_path), tmp_path / "train.log")
    assert run.ref["job"] == NAME and run.ref["namespace"] == "aif"
    assert run.poll() is None  # running
    (create,) = [c for c in api.calls if c.method == "POST"]
    sent = create.body
    assert sent is not None and sent["metadata"]["labels"]["aif.eu/tenant"] == "acme"
    assert sent["metadata"]["labels"]["aif.eu/job-id"] == JOB_ID
    spec = sent["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"],
            spec["ttlSecondsAfterFinished"]) == (2, 14_400, 86_400)
    fail_at_once, ignore = spec["podFailurePolicy"]["rules"]
    assert fail_at_once == {"action": "FailJob", "onExitCodes": {
        "containerName": "stage", "operator": "In", "values": [2, 3]}}
    assert ignore["action"] == "Ignore" and ignore["onPodConditions"] == [
        {"type": "DisruptionTarget", "status": "True"}]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["priorityClassName"] == "aif-training"
    assert pod["serviceAccountName"] == "aif-stage"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    (stage,) = pod["containers"]
    assert stage["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert stage["command"][-2:] == ["finetune.train", str(command(tmp_path).spec_path)]
    env = {e["name"]: e.get("value") for e in stage["env"]}
    assert env["AIF_EXIT_FILE"] == str(tmp_path / "train.exit")


def test_creating_an_existing_job_adopts_it(api: FakeApiServer, tmp_path: Path) -> None:
    """An orchestrator that died between creating the Job and recording it: the next one
    creates it again, finds it and watches it; no second Job."""
    api.answer("POST", JOBS, "status-already-exists.json")
    api.answer("GET", JOB, "job-running.json", "job-running.json", "job-complete.json")
    run = launcher().start(command(tmp_path), tmp_path / "train.log")
    assert run.poll() is None
    assert run.poll() == 0
    assert [c.method for c in api.calls].count("POST") == 1


def test_a_failed_job_of_the_previous_try_is_replaced(api: FakeApiServer,
                                                      tmp_path: Path) -> None:
    api.answer("POST", JOBS, "status-already-exists.json", "job-created.json")
    api.answer("GET", JOB, "job-failed-exit-2.json", "job-running.json")
    api.answer("DELETE", JOB, "status-deleted.json")
    run = launcher().start(command(tmp_path), tmp_path / "train.log")
    assert run.poll() is None  # the new Job runs
    (delete,) = [c for c in api.calls if c.method == "DELETE"]
    assert delete.body == {"propagationPolicy": "Background"}


@pytest.mark.parametrize(("job", "pods", "exit_file", "expected"), [
    ("job-complete.json", None, None, 0),
    ("job-failed-exit-2.json", "pods-failed-exit-2.json", None, 2),  # fail at once, final
    ("job-failed-deadline.json", "pods-none.json", "137\n", 137),  # pods gone: the record
    ("job-failed-deadline.json", "pods-none.json", None, LOST),
    ("status-not-found.json", None, "0\n", 0),  # removed after its TTL: the record
    ("status-not-found.json", None, None, LOST),
], ids=["complete", "exit-2", "deadline-recorded", "deadline-lost", "ttl-recorded", "gone"])
def test_how_a_run_ended_comes_from_the_job_and_pod_status(
    api: FakeApiServer, tmp_path: Path, job: str, pods: str | None, exit_file: str | None,
    expected: int,
) -> None:
    api.answer("GET", JOB, job)
    if pods:
        api.answer("GET", PODS, pods)
    ref = {"launcher": "kubernetes", "module": "finetune.train", "job": NAME,
           "namespace": "aif", "exit_file": str(tmp_path / "train.exit"),
           "log": str(tmp_path / "train.log")}
    if exit_file:
        (tmp_path / "train.exit").write_text(exit_file)
    # A re-adopting orchestrator attaches by the stored ref, through its own launcher.
    assert launcher().attach(ref).poll() == expected
    if pods:
        (listing,) = [c for c in api.calls if c.path == PODS]
        assert listing.query["labelSelector"] == [f"batch.kubernetes.io/job-name={NAME}"]


def test_cancel_deletes_the_job_and_its_pods_in_the_foreground(api: FakeApiServer,
                                                               tmp_path: Path) -> None:
    api.answer("POST", JOBS, "job-created.json")
    api.answer("GET", JOB, "job-running.json", "job-deleting.json", "status-not-found.json")
    api.answer("DELETE", JOB, "job-deleting.json")
    run = launcher().start(command(tmp_path), tmp_path / "train.log")
    run.terminate()
    (delete,) = [c for c in api.calls if c.method == "DELETE"]
    assert delete.body == {"propagationPolicy": "Foreground"}
    assert run.poll() is None  # its pods are still checkpointing
    (tmp_path / "train.exit").write_text("143\n")  # the wrapper recorded the SIGTERM
    assert run.poll() == 143


def test_multi_node_training_is_an_indexed_job_with_a_headless_service(
    api: FakeApiServer, tmp_path: Path,
) -> None:
    api.answer("POST", JOBS, "job-indexed-created.json")
    api.answer("POST", SERVICES, "service-created.json")
    run = launcher(nodes=2, gpus_per_node=4).start(command(tmp_path), tmp_path / "t.log")
    job, service = (c.body for c in api.calls if c.method == "POST")
    assert job is not None and service is not None
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed", 2, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == NAME == service["metadata"]["name"]
    argv = " ".join(pod["containers"][0]["command"])
    for part in ("--num_processes 8", "--num_machines 2", "--machine_rank $(MACHINE_RANK)",
                 f"--main_process_ip {NAME}-0.{NAME}", "--main_process_port 29500"):
        assert part in argv
    (rank,) = [e for e in pod["containers"][0]["env"] if e["name"] == "MACHINE_RANK"]
    assert rank["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": NAME}
    created = recorded("job-indexed-created.json")
    assert service["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert run.ref["job"] == NAME


def test_the_launchers_manifests_pass_the_kubernetes_schemas(tmp_path: Path) -> None:
    ref = {"exit_file": "/data/x/t.exit", "log": "/data/x/t.log"}
    dump = client.ApiClient().sanitize_for_serialization
    one = KubernetesConfig(image="aif:1", gpus_per_node=1, cpu="8", memory="64Gi",
                           tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    many = one.model_copy(update={"nodes": 4})
    single, indexed = (build_job(command(tmp_path), c, ref) for c in (one, many))
    indexed.metadata.uid = "c0a8e1f2-7b3d-4e5a-9f6c-1d2e3f4a5b6c"
    for manifest in (single, indexed, build_service(command(tmp_path), many, indexed)):
        kubernetes_validate.validate(dump(manifest), "1.35.0", strict=True)
    preflight = build_job(command(tmp_path, "finetune.preflight", distributed=False), many, ref)
    assert preflight.spec.completion_mode == "NonIndexed"  # only training spans nodes


def test_job_names_are_dns_labels_from_the_job_id(tmp_path: Path) -> None:
    assert job_name(command(tmp_path)) == NAME
    odd = StageCommand("evaluation.run", tmp_path / "acme" / ("Job_" * 20) / "s.json")
    name = job_name(odd)
    assert name.startswith("aif-evaluation-run-") and len(name) <= 56
    assert name == job_name(odd)  # the same on every try


def test_the_charts_role_allows_exactly_what_the_launcher_calls(
    api: FakeApiServer, tmp_path: Path, helm: str,
) -> None:
    """Every call of a whole run's life (create, adopt, service, status, pods, cancel)."""
    api.answer("POST", JOBS, "status-already-exists.json", "job-indexed-created.json")
    api.answer("GET", JOB, "job-failed-exit-2.json", "job-running.json")
    api.answer("DELETE", JOB, "status-deleted.json")
    api.answer("POST", SERVICES, "service-created.json")
    api.answer("GET", PODS, "pods-failed-exit-2.json")
    run = launcher(nodes=2).start(command(tmp_path), tmp_path / "t.log")
    run.terminate()
    api.answer("GET", JOB, "job-failed-exit-2.json")
    assert run.poll() == 2
    used = {c.rule for c in api.calls}
    rendered = subprocess.run([helm, "template", "aif", str(CHART), "-s",
                               "templates/rbac.yaml"], capture_output=True, text=True,
                              check=True, timeout=120).stdout
    (role,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Role"]
    allowed = {(verb, resource) for rule in role["rules"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert used == allowed
