"""What each stage is given: the effective recipe and the spec files built from a job.

Kept apart from the steps that launch them so that each spec is built in one named place.
Nothing here opens training data or loads a model; the stages do that.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from aif import registry, storage
from aif.db.models import DataFile, Job
from aif.orchestrator.errors import FinalError
from aif.orchestrator.handoff import load_path
from aif.orchestrator.references import References
from aif.settings import Settings
from events.messages import FineTuneRequested
from events.recipe import Recipe, RecipeError
from events.recipe_eval import EvalTask
from recipes import RECIPES_DIR, load_recipe
from stagefiles.jobspec import (
    BaseScoreCache,
    EvaluationSpec,
    PreflightSpec,
    Throughput,
    TrainingResult,
    TrainingSpec,
)
from stagefiles.remote_data import url_scheme
from stagefiles.tasks import TaskConfigError, eval_data_files


def effective_recipe(request: FineTuneRequested, references: References, tenant: str,
                     uploaded: str | None = None) -> Recipe:
    """The recipe as this job runs it: named or inline, overrides, extra tasks and the
    request's data (`uploaded`: the path its `file_id` names) applied, every data reference
    confined to what the site allows the tenant; FinalError when it cannot be resolved."""
    try:
        recipe = request.recipe_inline or load_recipe(request.recipe or "")
        recipe = request.overrides.apply(recipe)
        recipe = with_extra_tasks(recipe, request.extra_eval_tasks)
        recipe = recipe.model_copy(update={"data": recipe.data.with_source(
            uploaded or request.train_file, request.dataset).with_eval(
            request.eval_file, request.eval_split)})
        recipe = references.confine(request, recipe, tenant, uploaded is not None)
        recipe = recipe.gated_on_own_eval()
        train_file = recipe.data.train_file
        if train_file is not None and url_scheme(train_file) is None and not Path(
                train_file).is_file():
            raise RecipeError("data.train_file: no such file")
        eval_data_files(recipe.eval)  # every task YAML readable, its data files present
    except (RecipeError, TaskConfigError) as exc:
        raise FinalError(str(exc)) from exc
    return recipe


def uploaded_file(session: Session, tenant: str, file_id: str | None) -> str | None:
    """Where the request's uploaded file is stored; only the job's own tenant's files count,
    and another tenant's is refused exactly like one that never existed."""
    if file_id is None:
        return None
    row = session.get(DataFile, file_id)
    if row is None or row.tenant != tenant or not Path(row.path).is_file():
        raise FinalError("data.file_id: no such file for this tenant")
    return row.path


def with_extra_tasks(recipe: Recipe, names: list[str]) -> Recipe:
    """The request's additional (built-in) evaluation tasks, each scored once."""
    known = {t.name for t in recipe.eval.tasks}
    extra = [EvalTask(name=n) for n in dict.fromkeys(names) if n not in known]
    if not extra:
        return recipe
    return recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"tasks": [*recipe.eval.tasks, *extra]})})


def preflight_spec(job_id: str, tenant: str, recipe: Recipe, work: Path, settings: Settings,
                   throughput: Throughput) -> PreflightSpec:
    """A job's pre-flight spec, or `aif preflight`'s (no job, no tenant)."""
    return PreflightSpec(job_id=job_id, tenant=tenant, recipe=recipe, work_dir=str(work),
                         model_cache_dir=str(settings.models_dir), throughput=throughput,
                         remote_data_allow_networks=settings.remote_data_allow_networks,
                         max_download_bytes=settings.max_upload_bytes,
                         s3_endpoint_url=settings.s3_endpoint_url)


def starting_adapter(session: Session, settings: Settings, tenant: str, recipe: Recipe
                     ) -> tuple[Recipe, str | None]:
    """`train.init_from` resolved: the recipe with the version pinned (a newer version
    registered while the job waits does not change what it trains on) and that version's
    adapter folder; FinalError naming the field where it is not a usable model of the
    tenant's own (another tenant's is refused exactly like one that never existed)."""
    ref = recipe.train.init_from
    if ref is None:
        return recipe, None
    try:
        row = registry.find(session, tenant, *registry.parse_ref(ref))
    except registry.RegistryError as exc:
        raise FinalError(f"train.init_from: {exc}") from exc
    named = f"model {row.name}:{row.version}"
    base = settings.served_base_models.get(recipe.model.base, recipe.model.base)
    folder = load_path(row.adapter_uri)
    if row.status == registry.Status.retired:
        problem = "is retired (its adapter files are removed)"
    elif row.base_model != base:
        problem = (f"was trained on base model {row.base_model}, not on this recipe's "
                   f"{base}")
    elif not (Path(folder) / "adapter_config.json").is_file():
        problem = "has no adapter on the shared file system training reads"
    else:
        pinned = recipe.train.model_copy(update={"init_from": f"{row.name}:{row.version}"})
        return recipe.model_copy(update={"train": pinned}), folder
    raise FinalError(f"train.init_from: {named} {problem}")


def training_spec(job: Job, recipe: Recipe, work: Path, settings: Settings,
                  init_adapter_dir: str | None = None) -> TrainingSpec:
    return TrainingSpec(job_id=job.id, tenant=job.tenant, recipe=recipe, work_dir=str(work),
                        model_cache_dir=str(settings.models_dir),
                        init_adapter_dir=init_adapter_dir)


SHIPPED_TASKS = RECIPES_DIR.resolve()
"""Task YAMLs under here are the project's own: their base scores may be shared."""


def base_score_cache(settings: Settings, tenant: str | None, recipe: Recipe,
                     refresh: bool = False) -> BaseScoreCache:
    """Where the base model's scores are kept: shipped and built-in tasks in the shared
    folder, every other task in `tenant`'s own (not cached without a tenant). A shipped
    template over the tenant's own rows (`data_file`) is the tenant's task."""
    shared = [t.name for t in recipe.eval.tasks if t.data_file is None and (
        t.yaml is None or Path(t.yaml).resolve().is_relative_to(SHIPPED_TASKS))]
    own = None if tenant is None else storage.base_scores(settings.base_scores_dir, tenant)
    return BaseScoreCache(shared_dir=str(storage.base_scores(settings.base_scores_dir, None)),
                          tenant_dir=None if own is None else str(own), shared_tasks=shared,
                          refresh=refresh)


def evaluation_spec(job: Job, recipe: Recipe, trained: TrainingResult, output_dir: Path,
                    settings: Settings) -> EvaluationSpec:
    return EvaluationSpec(job_id=job.id, base_model_dir=trained.base_model_dir,
                          adapter_dir=trained.adapter_dir, recipe=recipe,
                          output_dir=str(output_dir),
                          base_cache=base_score_cache(settings, job.tenant, recipe))
