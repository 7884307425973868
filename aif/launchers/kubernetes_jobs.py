"""The Kubernetes objects of one stage run and its handle; see aif.launchers.kubernetes.

Apart from the launcher's settings because the `kubernetes` client takes seconds to import:
the service and CLI load it only once a Kubernetes launcher starts or attaches to a run.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

from aif.launchers.base import LOST, WRAPPER, RecordedRun, StageCommand
from aif.launchers.kubernetes import DNS_LABEL, KubernetesConfig

FINAL_EXIT_CODES = [2, 3]
"""The trainer's exit codes for a request that cannot succeed: the Job fails at once."""
RANK_ANNOTATION = "batch.kubernetes.io/job-completion-index"


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



@retry(retry=retry_if_exception(_is_conflict), stop=stop_after_delay(30), wait=wait_fixed(1),
       reraise=True)
def create_or_adopt(run: KubernetesRun, job: client.V1Job) -> client.V1Job:
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


def api_client() -> client.ApiClient:
    """In a pod, its service account; elsewhere the kubeconfig ($KUBECONFIG)."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        # Read now: the client takes $KUBECONFIG's value when it is imported.
        return config.new_client_from_config(os.environ.get("KUBECONFIG"))


def start_run(command: StageCommand, cfg: KubernetesConfig, ref: dict[str, Any],
              api: client.ApiClient) -> KubernetesRun:
    """Create (or adopt) the run's Job and, for an Indexed one, its headless Service."""
    job = build_job(command, cfg, ref)
    run = KubernetesRun({**ref, "job": job.metadata.name}, api)
    created = create_or_adopt(run, job)
    if job.spec.completion_mode == "Indexed":
        try:
            run.core.create_namespaced_service(run.namespace, build_service(command, cfg, created))
        except ApiException as exc:
            if exc.status != 409:  # an adopted Job already has its Service
                raise
    return run
