"""Kubernetes launcher: each stage run is a batch/v1 Job in the service's namespace.

The Job's name is derived from the job id and the stage, so creating it twice is harmless:
an orchestrator that died between creating the Job and recording it finds it again (HTTP
409) and adopts it. Stage pods mount the same ReadWriteMany volume as the orchestrator at the
same path, so specs, progress lines, results and the recorded exit code travel as with the
local and Slurm launchers; the Job and pod status say first how a run ended, the exit file
covers the time after `ttlSecondsAfterFinished` removed the Job. Multi-node training is an
Indexed Job with a headless Service: pod N gets machine rank N from its completion index, and
pod 0's DNS name is the main address of `accelerate launch`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field
from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

from aif.launchers.base import LOST, WRAPPER, Launcher, RecordedRun, StageCommand

if TYPE_CHECKING:
    from aif.settings import Settings

FINAL_EXIT_CODES = [2, 3]
"""The trainer's exit codes for a request that cannot succeed: the Job fails at once."""
RANK_ANNOTATION = "batch.kubernetes.io/job-completion-index"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Toleration(BaseModel):
    """A pod toleration, e.g. for the `nvidia.com/gpu` taint of GPU nodes."""

    model_config = ConfigDict(extra="forbid")

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)


class KubernetesConfig(BaseModel):
    """Where and how stage Jobs run; from configuration (`AIF_KUBERNETES__*`)."""

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(
        None, pattern=DNS_LABEL.pattern,
        description="Namespace of the stage Jobs; default: the orchestrator pod's own.")
    image: str | None = Field(None, description="The stage image; required for this launcher.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    python: str = Field("python", description="The image's Python interpreter.")
    data_claim: str | None = Field(
        None, description="ReadWriteMany PVC holding the service's home, mounted in stage "
        "pods at `mount_path`, which must be where the orchestrator sees AIF_HOME.")
    mount_path: Path = Path("/data")
    nodes: int = Field(1, ge=1, le=1024, description="Pods per training run (Indexed Job).")
    gpus_per_node: int = Field(0, ge=0, le=16, description="nvidia.com/gpu per pod; 0: CPU.")
    cpu: str | None = Field(None, description="CPU request and limit per pod, e.g. `8`.")
    memory: str | None = Field(None, description="Memory request and limit per pod, `64Gi`.")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class: str | None = None
    service_account: str | None = Field(None, description="Of the stage pods (S3 access).")
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Secrets whose keys become the stage's environment "
        "(e.g. AWS credentials for s3:// data).")
    backoff_limit: int = Field(1, ge=0, le=20, description="Pod retries of infrastructure "
                               "failures; the trainer's exit codes 2 and 3 are never retried.")
    active_deadline_s: int | None = Field(None, ge=1, description="Job-wide time limit.")
    ttl_after_finished_s: int | None = Field(
        86_400, ge=0, description="Finished Jobs are removed after this; the exit code stays "
        "in the job's folder.")
    termination_grace_s: int = Field(
        120, ge=1, description="SIGTERM to SIGKILL on cancel: time to write a checkpoint.")
    main_port: int = Field(29500, ge=1024, le=65535)

    def processes(self, requested: int) -> int:
        """On every pod one process per GPU, or as many as requested if that is more."""
        return self.nodes * max(self.gpus_per_node, requested)


def job_name(command: StageCommand) -> str:
    """`aif-<stage>-<job id>`: the same for every try to create the run (a DNS label; an id
    that is not one is replaced by its digest)."""
    stage = command.module.replace(".", "-").replace("_", "-")
    ident = command.job_id
    if not DNS_LABEL.match(ident) or len(ident) > 36:
        ident = hashlib.sha256(ident.encode()).hexdigest()[:32]
    return f"aif-{stage}-{ident}"


def labels(command: StageCommand) -> dict[str, str]:
    """Whose run this is; tenant names and job ids are valid label values."""
    return {"app.kubernetes.io/name": "aif-tuning", "app.kubernetes.io/component": "stage",
            "aif.eu/tenant": command.tenant, "aif.eu/job-id": command.job_id,
            "aif.eu/stage": command.module}


def _pod_spec(command: StageCommand, cfg: KubernetesConfig, name: str, ref: dict[str, Any],
              multi_node: bool) -> client.V1PodSpec:
    if multi_node:
        argv = command.argv(cfg.python, num_processes=cfg.processes(command.num_processes),
                            num_machines=cfg.nodes, machine_rank="$(MACHINE_RANK)",
                            main_address=f"{name}-0.{name}", main_port=cfg.main_port)
    elif command.distributed:
        argv = command.argv(cfg.python, num_processes=cfg.processes(command.num_processes))
    else:
        argv = command.argv(cfg.python)
    env = [client.V1EnvVar(name=k, value=v) for k, v in command.env().items()]
    env += [client.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            client.V1EnvVar(name="HOME", value="/tmp"),
            client.V1EnvVar(name="AIF_EXIT_FILE", value=ref["exit_file"]),
            client.V1EnvVar(name="AIF_LOG", value=ref["log"])]
    if multi_node:
        env.append(client.V1EnvVar(name="MACHINE_RANK", value_from=client.V1EnvVarSource(
            field_ref=client.V1ObjectFieldSelector(
                field_path=f"metadata.annotations['{RANK_ANNOTATION}']"))))
    amounts = {k: v for k, v in (("cpu", cfg.cpu), ("memory", cfg.memory)) if v}
    if cfg.gpus_per_node:
        amounts["nvidia.com/gpu"] = str(cfg.gpus_per_node)
    volumes = [client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
               client.V1Volume(name="shm", empty_dir=client.V1EmptyDirVolumeSource(
                   medium="Memory"))]
    mounts = [client.V1VolumeMount(name="tmp", mount_path="/tmp"),
              client.V1VolumeMount(name="shm", mount_path="/dev/shm")]
    if cfg.data_claim:
        volumes.append(client.V1Volume(
            name="data", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                claim_name=cfg.data_claim)))
        mounts.append(client.V1VolumeMount(name="data", mount_path=str(cfg.mount_path)))
    container = client.V1Container(
        name="stage", image=cfg.image, image_pull_policy=cfg.image_pull_policy,
        # The stage's output goes to the log in the job's folder, as on every launcher.
        command=["/bin/sh", "-c", f'exec >>"$AIF_LOG" 2>&1; {WRAPPER}', "aif-stage", *argv],
        env=env, volume_mounts=mounts,
        env_from=[client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=s))
                  for s in cfg.env_from_secrets] or None,
        resources=client.V1ResourceRequirements(requests=amounts or None,
                                                limits=amounts or None),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"])),
    )
    return client.V1PodSpec(
        containers=[container], restart_policy="Never", volumes=volumes,
        node_selector=cfg.node_selector or None,
        tolerations=[client.V1Toleration(**t.model_dump()) for t in cfg.tolerations] or None,
        priority_class_name=cfg.priority_class, service_account_name=cfg.service_account,
        termination_grace_period_seconds=cfg.termination_grace_s,
        subdomain=name if multi_node else None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True, seccomp_profile=client.V1SeccompProfile(
                type="RuntimeDefault")),
    )


def build_job(command: StageCommand, cfg: KubernetesConfig, ref: dict[str, Any]) -> client.V1Job:
    """The Job of one stage run (Indexed, one pod per node, for multi-node training)."""
    name = job_name(command)
    multi_node = command.distributed and cfg.nodes > 1
    failure_policy = client.V1PodFailurePolicy(rules=[
        client.V1PodFailurePolicyRule(action="FailJob", on_exit_codes=(
            client.V1PodFailurePolicyOnExitCodesRequirement(
                container_name="stage", operator="In", values=FINAL_EXIT_CODES))),
        client.V1PodFailurePolicyRule(action="Ignore", on_pod_conditions=[
            client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget",
                                                            status="True")]),
    ])
    return client.V1Job(
        api_version="batch/v1", kind="Job",
        metadata=client.V1ObjectMeta(name=name, labels=labels(command)),
        spec=client.V1JobSpec(
            completions=cfg.nodes if multi_node else 1,
            parallelism=cfg.nodes if multi_node else 1,
            completion_mode="Indexed" if multi_node else "NonIndexed",
            backoff_limit=cfg.backoff_limit, pod_failure_policy=failure_policy,
            active_deadline_seconds=cfg.active_deadline_s,
            ttl_seconds_after_finished=cfg.ttl_after_finished_s,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels(command)),
                spec=_pod_spec(command, cfg, name, ref, multi_node)),
        ),
    )


def build_service(command: StageCommand, cfg: KubernetesConfig, owner: client.V1Job
                  ) -> client.V1Service:
    """The headless Service giving an Indexed Job's pods their DNS names; owned by the Job,
    so it goes when the Job goes."""
    name = owner.metadata.name
    return client.V1Service(
        api_version="v1", kind="Service",
        metadata=client.V1ObjectMeta(name=name, labels=labels(command), owner_references=[
            client.V1OwnerReference(api_version="batch/v1", kind="Job", name=name,
                                    uid=owner.metadata.uid, controller=True)]),
        spec=client.V1ServiceSpec(
            cluster_ip="None", publish_not_ready_addresses=True,
            selector={"batch.kubernetes.io/job-name": name},
            ports=[client.V1ServicePort(name="main", port=cfg.main_port)]),
    )


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 409


def _condition(job: client.V1Job, kind: str) -> bool:
    return any(c.type == kind and c.status == "True" for c in job.status.conditions or [])


class KubernetesRun(RecordedRun):
    def __init__(self, ref: dict[str, Any], api: client.ApiClient) -> None:
        super().__init__(ref)
        self.batch, self.core = client.BatchV1Api(api), client.CoreV1Api(api)
        self.name, self.namespace = ref["job"], ref["namespace"]

    def read(self) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def poll(self) -> int | None:
        job = self.read()
        if job is None:  # removed after its TTL, or deleted: the wrapper's record is left
            code = self._exit_code()
            return LOST if code is None else code
        if _condition(job, "Complete"):
            return 0
        if _condition(job, "Failed"):
            code = self._pod_exit_code()
            if code is None:
                code = self._exit_code()
            return LOST if code is None else code
        return None  # pending, running, retrying a pod, or being deleted (foreground)

    def _pod_exit_code(self) -> int | None:
        """The exit code of the stage container that failed last (the one that failed the
        Job under the pod failure policy), None if no failed pod is left."""
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"batch.kubernetes.io/job-name={self.name}")
        ended = [(s.state.terminated.finished_at, s.state.terminated.exit_code)
                 for pod in pods.items for s in pod.status.container_statuses or []
                 if s.name == "stage" and s.state and s.state.terminated
                 and s.state.terminated.exit_code != 0]
        return max(ended, key=lambda e: (e[0] is not None, e[0]))[1] if ended else None

    def terminate(self) -> None:
        """Delete the Job and, before it goes, its pods: each gets SIGTERM and the pod's
        grace period to checkpoint; the Job stays visible (poll: running) until they end."""
        if self.poll() is not None:
            return
        try:
            self.batch.delete_namespaced_job(
                self.name, self.namespace,
                body=client.V1DeleteOptions(propagation_policy="Foreground"))
        except ApiException as exc:
            if exc.status != 404:
                raise


class KubernetesLauncher(Launcher):
    name = "kubernetes"

    def __init__(self, cfg: KubernetesConfig | None = None) -> None:
        self.config = cfg or KubernetesConfig()
        self._api: client.ApiClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None) -> KubernetesLauncher:
        return cls(settings.kubernetes if settings else None)

    @property
    def api(self) -> client.ApiClient:
        """In a pod, its service account; elsewhere the kubeconfig ($KUBECONFIG)."""
        if self._api is None:
            try:
                config.load_incluster_config()
                self._api = client.ApiClient()
            except config.ConfigException:
                # Read now: the client takes $KUBECONFIG's value when it is imported.
                self._api = config.new_client_from_config(os.environ.get("KUBECONFIG"))
        return self._api

    @property
    def namespace(self) -> str:
        if self.config.namespace:
            return self.config.namespace
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            return "default"

    @property
    def max_processes(self) -> int | None:
        c = self.config
        return c.nodes * c.gpus_per_node if c.gpus_per_node else None

    def processes(self, requested: int) -> int:
        return self.config.processes(requested)

    def submit(self, command: StageCommand, ref: dict[str, Any]) -> KubernetesRun:
        job = build_job(command, self.config, ref)
        run = KubernetesRun({**ref, "job": job.metadata.name, "namespace": self.namespace},
                            self.api)
        created = self._create(run, job)
        if job.spec.completion_mode == "Indexed":
            try:
                run.core.create_namespaced_service(
                    run.namespace, build_service(command, self.config, created))
            except ApiException as exc:
                if exc.status != 409:  # an adopted Job already has its Service
                    raise
        return run

    @retry(retry=retry_if_exception(_is_conflict), stop=stop_after_delay(30),
           wait=wait_fixed(1), reraise=True)
    def _create(self, run: KubernetesRun, job: client.V1Job) -> client.V1Job:
        """Create the Job, or adopt the one of the same name: a previous orchestrator created
        it. A failed one is the previous try's (the worker retries only after a failure): it
        is removed and the Job created again."""
        try:
            return run.batch.create_namespaced_job(run.namespace, job)
        except ApiException as exc:
            if exc.status != 409 or (existing := run.read()) is None:
                raise
        if not _condition(existing, "Failed"):
            return existing
        run.batch.delete_namespaced_job(run.name, run.namespace,
                                        body=client.V1DeleteOptions(propagation_policy="Background"))
        raise ApiException(status=409, reason=f"replacing the failed Job {run.name}")

    def attach(self, ref: dict[str, Any]) -> KubernetesRun:
        return KubernetesRun(ref, self.api)
