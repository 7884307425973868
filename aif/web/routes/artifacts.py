"""A job's artifacts: the adapter (and merged model), evaluation outputs and samples.

Only what a stage produced for the tenant is listed, from the job's own `adapter/`,
`merged/` and `evaluation/` folders; specs, logs and scratch stay out. A download names a
path from that listing and nothing else, so `..`, absolute paths and symlinks planted in a
job directory lead nowhere. Public jobs show their scores to everyone, never these files:
only the job's tenant (and staff) may read them.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel

from aif.web.deps import JobDep, Problem, problems

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], responses=problems(401, 404))

ARTIFACT_DIRS = ("adapter", "merged", "evaluation")
CHECKSUMS = "SHA256SUMS"


class ArtifactPublic(BaseModel):
    path: str  # relative to the job, e.g. adapter/adapter_model.safetensors
    size_bytes: int
    sha256: str | None  # from the folder's SHA256SUMS where the stage wrote one


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]


def _checksums(folder: Path) -> dict[str, str]:
    """Path (relative to `folder`) -> sha256, from the `sha256sum`-format manifest a stage
    wrote at the top of its folder (`finetune.model_card.write_manifest`)."""
    manifest = folder / CHECKSUMS
    if not manifest.is_file() or manifest.is_symlink():
        return {}
    sums = {}
    for line in manifest.read_text(errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        if name:
            sums[name] = digest
    return sums


def _artifacts(work_dir: str | None) -> dict[str, ArtifactPublic]:
    """Every regular file under the job's artifact folders, by relative path; links are
    neither followed nor listed."""
    if not work_dir:
        return {}
    root = Path(work_dir)
    found: dict[str, ArtifactPublic] = {}
    for name in ARTIFACT_DIRS:
        top = root / name
        if top.is_symlink() or not top.is_dir():
            continue
        sums = _checksums(top)
        for folder, dirs, files in os.walk(top, followlinks=False):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
            for file in sorted(files):
                path = here / file
                if path.is_symlink() or not path.is_file():
                    continue
                rel = path.relative_to(root).as_posix()
                found[rel] = ArtifactPublic(path=rel, size_bytes=path.stat().st_size,
                                            sha256=sums.get(path.relative_to(top).as_posix()))
    return found


@router.get("/{job_id}/artifacts")
def list_artifacts(job: JobDep) -> ArtifactsPublic:
    """What the job produced so far: adapter, merged model, evaluation results and samples."""
    return ArtifactsPublic(data=list(_artifacts(job.work_dir).values()))


@router.get("/{job_id}/artifacts/{path:path}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_artifact(job: JobDep, path: str) -> FileResponse:
    """One file from the job's artifact listing, as bytes."""
    artifact = _artifacts(job.work_dir).get(path)
    if artifact is None:
        raise Problem(404, "Not found", f"job {job.id} has no artifact at this path",
                      field="path")
    return FileResponse(Path(job.work_dir or "") / artifact.path,
                        media_type="application/octet-stream",
                        filename=Path(artifact.path).name)
