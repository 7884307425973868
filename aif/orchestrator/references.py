"""Where a job's data may come from: every dataset reference checked before anything opens it.

A request names data by `file_id` (an upload, stored by us in the tenant's data area), by
path, by URL or by hub id, and an inline recipe names files of its own: training and
validation files, task YAMLs and the data files those YAMLs name. Each must stay inside the
tenant's data root (`<data_root>/<tenant>/`), or be a URL or hub id the site switched on:

- a path is canonicalised (`..` and every symlink resolved; a relative one against the tenant
  root, never the service's working directory) and must lie inside the root and outside the
  jobs tree; it must be a regular file with one name (a hard link to a file elsewhere looks
  like any other file, so none is accepted), and a data file must not be an archive;
- `http(s)://` only with `allow_remote_data`, and only to public addresses or the site's
  allow-list (`stagefiles.remote_data`); the pre-flight stage downloads it into the job directory;
- `s3://bucket/key` only under the tenant's `s3_prefix` (none: not enabled), fetched by the
  pre-flight stage too; no other scheme;
- a hub dataset only with `allow_hub_datasets`, and by hub id only, never a path.

Named (shipped) recipes read their own files from the repository; only what a request
changes in them is checked. Intake applies the rules that need neither file system nor
network (`refusals`); the worker's validation applies all of them (`confine`), where symlinks
and host names are resolved. Reasons name the field and the rule, never a path or contents.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from aif.orchestrator.errors import FinalError
from aif.settings import Settings
from events.messages import FineTuneRequested
from events.recipe import PUBLISHED_FIGURES, Recipe
from stagefiles.archives import archive_rule, file_archive_kind
from stagefiles.remote_data import (
    PORTS,
    Network,
    RemoteDataError,
    check_s3_url,
    check_url,
    local_copy,
    url_scheme,
)
from stagefiles.tasks import TaskConfigError, data_file_names, task_config

OUTSIDE = "outside the tenant's data root"
PACKAGED_LOADERS = ("json", "csv", "parquet")
LOCATION_KWARGS = ("data_dir", "cache_dir", "storage_options")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*"
                     r"(/[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*)?$")
_ACCEPTED = ("files in the tenant's data root, uploaded files (file_id) and, where the site "
             "enables them, http(s) URLs are accepted")


class Kind(Enum):
    data = "a training or validation file"
    dataset = "a hub dataset"
    task = "a task YAML"
    model = "a base model"


@dataclass(frozen=True)
class Reference:
    field: str  # as the reason names it, e.g. data.train_file or eval.tasks.0.yaml
    kind: Kind
    value: str
    task: int = -1  # a task YAML's index in eval.tasks


@dataclass(frozen=True)
class References:
    """The site's rules for a tenant's data references (see the module's docstring)."""

    data_root: Path
    jobs_dir: Path
    allow_hub_datasets: bool = False
    allow_remote_data: bool = False
    allow_networks: tuple[Network, ...] = ()
    s3_prefix: str | None = None  # with {tenant}; None: s3 not enabled
    base_model_roots: tuple[Path, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> References:
        return cls(settings.data_root, settings.jobs_dir, settings.allow_hub_datasets,
                   settings.allow_remote_data, tuple(settings.remote_data_allow_networks),
                   settings.s3_prefix, tuple(settings.base_model_roots))

    def refusals(self, request: FineTuneRequested, recipe: Recipe, tenant: str) -> list[str]:
        """Every rule the request's references break that needs no file system or network;
        `recipe`: the effective recipe with the request's data applied."""
        problems = []
        for ref in named(request, recipe, request.file_id is not None):
            try:
                self._check(ref, tenant, offline=True)
            except FinalError as exc:
                problems.append(str(exc))
        return problems

    def confine(self, request: FineTuneRequested, recipe: Recipe, tenant: str,
                uploaded: bool = False) -> Recipe:
        """`recipe` (the request's data applied; `uploaded`: its train file is the request's
        upload) with each reference checked and each path canonical, or FinalError naming
        the field and rule of the first one refused."""
        data: dict[str, str] = {}
        tasks, model = list(recipe.eval.tasks), recipe.model
        for ref in named(request, recipe, uploaded):
            checked = self._check(ref, tenant, offline=False)
            if ref.kind is Kind.data:
                data[ref.field.removeprefix("data.")] = checked
            elif ref.kind is Kind.model:
                model = recipe.model.model_copy(update={"base": checked})
            elif ref.kind is Kind.task:
                tasks[ref.task] = tasks[ref.task].model_copy(update={"yaml": checked})
                self._task_data(ref.field, Path(checked), tasks[ref.task].name, tenant)
        return recipe.model_copy(update={
            "model": model, "data": recipe.data.model_copy(update=data),
            "eval": recipe.eval.model_copy(update={"tasks": tasks})})

    def _check(self, ref: Reference, tenant: str, *, offline: bool) -> str:
        if ref.kind is Kind.dataset:
            self._dataset(ref)
            return ref.value
        if ref.kind is Kind.model:
            return self._base_model(ref, offline=offline)
        if url_scheme(ref.value) is not None:
            if ref.field == "data.eval_file":
                raise FinalError("data.eval_file: must be a file in the tenant's data root "
                                 "(evaluation rows are not fetched from URLs)")
            return self._url(ref, tenant, offline=offline)
        path = self._path(ref.field, ref.value, tenant, offline=offline)
        if ref.kind is Kind.data and not offline and (kind := _archive(ref.field, path)):
            raise FinalError(f"{ref.field}: {archive_rule(kind)}")
        return str(path)

    def _base_model(self, ref: Reference, *, offline: bool) -> str:
        """A registered base model, or one of the site's own under `base_model_roots`: a
        path elsewhere could name another tenant's merged model in the jobs tree.
        `offline`: judge the spelling only (symlinks are resolved by the worker)."""
        if ref.value in PUBLISHED_FIGURES:  # the registered base models, by name
            return ref.value
        canonical = os.path.abspath if offline else os.path.realpath
        path = Path(canonical(ref.value)) if "\0" not in ref.value else None
        if (path is None or url_scheme(ref.value) is not None or self._in_jobs(path)
                or not any(path.is_relative_to(os.path.realpath(r))
                           for r in self.base_model_roots)):
            raise FinalError(f"{ref.field}: an inline recipe may name a base model the site "
                             f"registers ({', '.join(sorted(PUBLISHED_FIGURES))}) or one in "
                             "the site's base_model_roots; other paths and hub ids are not "
                             "accepted")
        return str(path)

    def _dataset(self, ref: Reference) -> None:
        if not self.allow_hub_datasets:
            raise FinalError(f"{ref.field}: hub datasets are not enabled on this site "
                             "(allow_hub_datasets); upload the file or place it in the "
                             "tenant's data root")
        if not _HUB_ID.match(ref.value):
            raise FinalError(f"{ref.field}: must be a hub dataset id (name or owner/name), "
                             "not a path")

    def _url(self, ref: Reference, tenant: str, *, offline: bool) -> str:
        scheme = url_scheme(ref.value)
        if ref.kind is not Kind.data or scheme not in (*PORTS, "s3"):
            raise FinalError(f"{ref.field}: not a file in the tenant's data root; only "
                             f"{_ACCEPTED}")
        if scheme == "s3" and self.s3_prefix is None:
            raise FinalError(f"{ref.field}: s3:// data is not enabled on this site; upload "
                             "the file or place it in the tenant's data root")
        if scheme != "s3" and not self.allow_remote_data:
            raise FinalError(f"{ref.field}: remote data (http/https URLs) is not enabled on "
                             "this site (allow_remote_data)")
        try:
            if self.s3_prefix is not None and scheme == "s3":
                check_s3_url(ref.value, self.s3_prefix.replace("{tenant}", tenant))
            else:
                check_url(ref.value, self.allow_networks, resolve=not offline)
            local_copy(Path(), ref.field.removeprefix("data."), ref.value)
        except RemoteDataError as exc:
            raise FinalError(f"{ref.field}: {exc}") from exc
        return ref.value

    def _path(self, field: str, value: str, tenant: str, *, offline: bool,
              base: Path | None = None) -> Path:
        """The canonical file `value` names (relative: to `base`, default the tenant root),
        if it is inside the tenant root, a regular file and has one name. `offline`: judge
        the spelling only (`..` but no symlinks), for intake."""
        if "\0" in value:
            raise FinalError(f"{field}: not a valid path")
        root = self.data_root / tenant
        if offline:
            path = Path(os.path.normpath(os.path.join(os.path.abspath(base or root), value)))
            roots = {Path(os.path.abspath(root)), Path(os.path.realpath(root))}
            if not any(path.is_relative_to(r) for r in roots) or self._in_jobs(path):
                raise FinalError(f"{field}: {OUTSIDE}")
            return path
        real_root = Path(os.path.realpath(root))
        path = Path(os.path.realpath(os.path.join(base or real_root, value)))
        if not path.is_relative_to(real_root) or self._in_jobs(path):
            raise FinalError(f"{field}: {OUTSIDE}")
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise FinalError(f"{field}: no such file in the tenant's data root") from exc
        except OSError as exc:  # not permitted, a name too long
            raise FinalError(f"{field}: the service may not read this file") from exc
        if not stat.S_ISREG(info.st_mode):
            raise FinalError(f"{field}: not a regular file (directories, devices, pipes and "
                             "sockets are refused)")
        if info.st_nlink > 1:
            raise FinalError(f"{field}: a file with more than one name (a hard link) is not "
                             "accepted; copy it into the tenant's data root")
        return path

    def _in_jobs(self, path: Path) -> bool:
        jobs = {Path(os.path.abspath(self.jobs_dir)), Path(os.path.realpath(self.jobs_dir))}
        return any(path.is_relative_to(j) for j in jobs)

    def _task_data(self, field: str, yaml_path: Path, name: str, tenant: str) -> None:
        """An inline recipe's task YAML reads only packaged loaders over files in the root."""
        try:
            config = task_config(yaml_path, name)
        except TaskConfigError as exc:
            raise FinalError(str(exc)) from exc
        if config.get("dataset_path") not in PACKAGED_LOADERS:
            raise FinalError(f"{field}: dataset_path must be one of {', '.join(PACKAGED_LOADERS)}"
                             " in an inline recipe's task, reading data_files in the tenant's "
                             "data root")
        kwargs = config.get("dataset_kwargs") or {}
        if any(key in kwargs for key in LOCATION_KWARGS):
            raise FinalError(f"{field}: dataset_kwargs may not set {', '.join(LOCATION_KWARGS)}"
                             " in an inline recipe's task")
        where = f"{field} dataset_kwargs.data_files"
        for value in data_file_names(config):
            if not isinstance(value, str) or url_scheme(value) is not None:
                raise FinalError(f"{where}: each must be a path of a file in the tenant's "
                                 "data root")
            self._path(where, value, tenant, offline=False, base=yaml_path.parent)


def named(request: FineTuneRequested, recipe: Recipe, replaced: bool) -> Iterator[Reference]:
    """The references the request brings in, in `recipe` (its data applied): what it sets
    itself, and everything an inline recipe names. `replaced`: the train file is an upload."""
    inline = request.recipe_inline is not None
    data = recipe.data
    if data.train_file is not None and not replaced and (inline or request.train_file):
        yield Reference("data.train_file", Kind.data, data.train_file)
    if inline and data.validation_file is not None:
        yield Reference("data.validation_file", Kind.data, data.validation_file)
    if data.eval_file is not None and (inline or request.eval_file):
        yield Reference("data.eval_file", Kind.data, data.eval_file)
    if data.train_file is None and data.dataset is not None and (inline or request.dataset):
        yield Reference("data.dataset", Kind.dataset, data.dataset)
    if inline:
        # A path here could name another tenant's merged model under the jobs tree.
        yield Reference("model.base", Kind.model, recipe.model.base)
        for i, task in enumerate(recipe.eval.tasks):
            if task.yaml is not None:
                yield Reference(f"eval.tasks.{i}.yaml", Kind.task, task.yaml, i)


def _archive(field: str, path: Path) -> str | None:
    try:
        return file_archive_kind(path)
    except PermissionError as exc:
        raise FinalError(f"{field}: the service may not read this file") from exc
