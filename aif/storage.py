"""Where a tenant's bytes live, who may read them, and how they are removed.

Everything the service keeps for a tenant lies under two per-tenant roots: uploads under
`<data_root>/<tenant>/` and jobs under `<home>/jobs/<tenant>/<job id>/` (data copies, the
datasets cache of the stage, checkpoints, adapter, evaluation samples). Folders the service
creates there are owner-only (0700) and stage processes run with umask 077, so their files
are 0600. Only the converted base models (`<home>/models`) and the base-model scores of
public tasks (`<home>/base_scores/shared`) are shared: they hold no tenant data. Scores on a
tenant's own evaluation tasks are kept under `<home>/base_scores/tenants/<tenant>/`.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from events.recipe import Recipe

PRIVATE_UMASK = 0o077
"""umask of stage processes: what they write is readable by the service's user only."""
DATASETS_CACHE = "hf_datasets"
"""The stage's `HF_DATASETS_CACHE`, inside the job's folder: hub data is cached per job."""
CHECKPOINTS = "checkpoints"
"""finetune.checkpoint.CHECKPOINTS_DIR (the stage's name for it; aif cannot import it)."""


def data_root(root: Path, tenant: str) -> Path:
    """The tenant's data folder under the site's data root (`AIF_DATA_ROOT`)."""
    return root.resolve() / tenant


def jobs_root(jobs_dir: Path, tenant: str) -> Path:
    return jobs_dir / tenant


def base_scores(root: Path, tenant: str | None) -> Path:
    """Cached base-model scores: of public tasks (`tenant` None), or of a tenant's own."""
    return root / "shared" if tenant is None else root / "tenants" / tenant


def private_dirs(root: Path, folder: Path) -> None:
    """Create `folder` and the folders between it and `root`, each new one owner-only."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    current = root
    for part in folder.relative_to(root).parts:
        current /= part
        try:
            current.mkdir(mode=0o700)
        except FileExistsError:
            continue


def scratch(work_dir: Path, recipe: Recipe | None) -> list[Path]:
    """What of a finished job's folder is scratch: the datasets cache, and the checkpoints
    unless the recipe keeps them (`output.keep_checkpoints`)."""
    paths = [work_dir / DATASETS_CACHE]
    if recipe is None or not recipe.output.keep_checkpoints:
        paths.append(work_dir / CHECKPOINTS)
    return paths


def file_digests(path: Path) -> dict[str, str]:
    """sha256 of every regular file under `path` (or of `path` itself), by path."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    out = {}
    for file in files:
        digest = hashlib.sha256()
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out[str(file)] = digest.hexdigest()
    return out


def remove(path: Path, *, digests: bool = True) -> dict[str, str]:
    """Delete a file or folder tree; the sha256 of each file it held (for the audit), or
    nothing with `digests=False`."""
    if not path.exists() and not path.is_symlink():
        return {}
    found = file_digests(path) if digests and not path.is_symlink() else {}
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return found
