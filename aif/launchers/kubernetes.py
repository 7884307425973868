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

import re
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aif.launchers.base import Launcher, StageCommand

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from aif.launchers.kubernetes_jobs import KubernetesRun
    from aif.settings import Settings

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


def _jobs() -> ModuleType:
    """aif.launchers.kubernetes_jobs, imported on first use: the `kubernetes` client takes
    seconds to import, and the settings (hence every CLI command) import this module."""
    from aif.launchers import kubernetes_jobs

    return kubernetes_jobs


class KubernetesLauncher(Launcher):
    name = "kubernetes"

    def __init__(self, cfg: KubernetesConfig | None = None) -> None:
        self.config = cfg or KubernetesConfig()
        self._api: ApiClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None) -> KubernetesLauncher:
        return cls(settings.kubernetes if settings else None)

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            self._api = _jobs().api_client()
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
        return _jobs().start_run(command, self.config, {**ref, "namespace": self.namespace},
                                 self.api)

    def attach(self, ref: dict[str, Any]) -> KubernetesRun:
        return _jobs().KubernetesRun(ref, self.api)
