"""The base-score cache on the real lm-eval and the tiny model: a warm cache gives the fresh
run's scores without scoring; a changed task file or setting misses; a tenant's own task is
filed only in that tenant's folder; the orchestrator decides the folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lm_eval
import pytest

from aif.orchestrator.gate import decide
from aif.orchestrator.specs import base_score_cache
from aif.settings import Settings
from evaluation import run as run_module
from evaluation.harness import extract_metrics
from events.recipe import Recipe
from events.recipe_eval import EvalTask
from stagefiles.jobspec import BaseScoreCache, EvaluationSpec
from tests.evaluation.conftest import RECIPE, SpecFactory

TASK = "grid_ticket_routing"
GUARD = "general_knowledge_guard"


def _spec(make_spec: SpecFactory, out: Path, cache: BaseScoreCache | None,
          recipe: Recipe | None = None, **eval_settings: object) -> EvaluationSpec:
    spec = make_spec(out, None)
    recipe = recipe or spec.recipe
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"limit": 6, **eval_settings})})
    return spec.model_copy(update={"recipe": recipe, "base_cache": cache})


def _no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**_: object) -> None:
        raise AssertionError("lm-eval was asked to score a cached task")

    monkeypatch.setattr(lm_eval, "simple_evaluate", refuse)


@pytest.fixture(scope="module")
def fresh(make_spec: SpecFactory, tmp_path_factory: pytest.TempPathFactory) -> list:
    """The base model's metrics with no cache at all."""
    out = tmp_path_factory.mktemp("fresh")
    return run_module.run(_spec(make_spec, out, None)).base


def test_warm_cache_gives_the_fresh_scores_without_scoring(
    make_spec: SpecFactory, fresh: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BaseScoreCache(shared_dir=str(tmp_path / "shared"), shared_tasks=[TASK, GUARD])
    cold = run_module.run(_spec(make_spec, tmp_path / "cold", cache))
    assert cold.base_from_cache == [] and cold.base == fresh
    assert len(list((tmp_path / "shared").glob("*.json"))) == 3  # two tasks + the hash memo

    _no_scoring(monkeypatch)
    warm = run_module.run(_spec(make_spec, tmp_path / "warm", cache))
    assert warm.base_from_cache == sorted([TASK, GUARD])
    assert warm.base == fresh
    # per-document outcomes included: the cache keeps lm-eval's rows, the gate pairs them
    assert {(m.task, m.metric) for m in fresh if m.per_doc} >= {(TASK, "acc"), (GUARD, "acc")}
    stored = json.loads((tmp_path / "warm" / "lm_eval_base.json").read_text())
    # the page and the gate read the same numbers (the class figures and per-document
    # outcomes come from the samples)
    assert extract_metrics(stored) == [m.model_copy(update={"classes": None, "per_doc": None})
                                       for m in fresh]


def test_an_entry_without_samples_still_loads_and_the_gate_says_it_is_unpaired(
    make_spec: SpecFactory, fresh: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry without lm-eval's per-document rows (one written without them) gives the same
    scores, without per-document outcomes; the gate then falls back to the stderr rule."""
    cache = BaseScoreCache(shared_dir=str(tmp_path / "shared"), shared_tasks=[TASK, GUARD])
    spec = _spec(make_spec, tmp_path / "cold", cache)
    run_module.run(spec)
    for path in (tmp_path / "shared").glob("*.json"):
        entry = json.loads(path.read_text())
        if "key" in entry:  # not the hash memo
            del entry["results"]["samples"]
            path.write_text(json.dumps(entry))

    _no_scoring(monkeypatch)
    warm = run_module.run(_spec(make_spec, tmp_path / "warm", cache))
    assert warm.base_from_cache == sorted([TASK, GUARD])
    assert [(m.task, m.metric, m.value) for m in warm.base] == [
        (m.task, m.metric, m.value) for m in fresh]
    assert all(m.per_doc is None and m.classes is None for m in warm.base)
    scores, decision = decide(spec.recipe, warm.model_copy(update={"tuned": fresh}))
    assert all(s.vs_base is None for s in scores)
    assert "(no per-document pairs, so the unpaired stderr rule)" in decision.reason


def test_refresh_scores_again(make_spec: SpecFactory, fresh: list, tmp_path: Path) -> None:
    cache = BaseScoreCache(shared_dir=str(tmp_path / "shared"), shared_tasks=[TASK, GUARD])
    run_module.run(_spec(make_spec, tmp_path / "first", cache))
    again = run_module.run(_spec(make_spec, tmp_path / "again",
                                 cache.model_copy(update={"refresh": True})))
    assert again.base_from_cache == [] and again.base == fresh


@pytest.mark.parametrize("change", [{"limit": 5}, {"num_fewshot": 1}, {"seed": 7},
                                    {"batch_size": 3}, {"apply_chat_template": True}])
def test_a_changed_setting_misses(make_spec: SpecFactory, tmp_path: Path,
                                  change: dict) -> None:
    from evaluation.base_cache import settings_key

    before = settings_key(_spec(make_spec, tmp_path, None), None)
    assert settings_key(_spec(make_spec, tmp_path, None, **change), None) != before


def _own_task_recipe(tmp_path: Path, recipe: Recipe) -> tuple[Recipe, Path]:
    """The recipe with its routing task copied to a tenant's folder (YAML and data)."""
    own = tmp_path / "tenant-data"
    shutil.copytree(RECIPE.parent / "tasks", own / "tasks")
    shutil.copytree(RECIPE.parent / "data", own / "data")
    tasks = [EvalTask(name=TASK, yaml=str(own / "tasks" / f"{TASK}.yaml")),
             *(t for t in recipe.eval.tasks if t.name != TASK)]
    return recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"tasks": tasks})}), own / "data" / "test.jsonl"


def test_a_tenants_task_is_kept_only_in_its_folder_and_a_changed_file_misses(
    make_spec: SpecFactory, recipe: Recipe, tmp_path: Path
) -> None:
    own_recipe, data = _own_task_recipe(tmp_path, recipe)
    cache = BaseScoreCache(shared_dir=str(tmp_path / "shared"),
                           tenant_dir=str(tmp_path / "acme"), shared_tasks=[GUARD])
    first = run_module.run(_spec(make_spec, tmp_path / "a", cache, own_recipe))
    assert first.base_from_cache == []
    acme_entries = [json.loads(p.read_text()) for p in (tmp_path / "acme").glob("*.json")
                    if p.name != "content_hashes.json"]
    assert [list(e["results"]["results"]) for e in acme_entries] == [[TASK]]
    shared = [p.read_text() for p in (tmp_path / "shared").glob("*.json")]
    assert not any(str(data) in text or f'"{TASK}"' in text for text in shared)

    second = run_module.run(_spec(make_spec, tmp_path / "b", cache, own_recipe))
    assert second.base_from_cache == [GUARD, TASK]

    rows = data.read_text().splitlines()
    data.write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")  # same size, new bytes
    third = run_module.run(_spec(make_spec, tmp_path / "c", cache, own_recipe))
    assert third.base_from_cache == [GUARD]


def test_without_a_tenant_folder_a_tenants_task_is_not_kept(
    make_spec: SpecFactory, recipe: Recipe, tmp_path: Path
) -> None:
    own_recipe, _ = _own_task_recipe(tmp_path, recipe)
    cache = BaseScoreCache(shared_dir=str(tmp_path / "shared"), shared_tasks=[GUARD])
    run_module.run(_spec(make_spec, tmp_path / "a", cache, own_recipe))
    again = run_module.run(_spec(make_spec, tmp_path / "b", cache, own_recipe))
    assert again.base_from_cache == [GUARD]


def test_the_orchestrator_shares_only_shipped_and_builtin_tasks(
    recipe: Recipe, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home")
    own_recipe, _ = _own_task_recipe(tmp_path, recipe)
    own_recipe = own_recipe.model_copy(update={"eval": own_recipe.eval.model_copy(
        update={"tasks": [*own_recipe.eval.tasks, EvalTask(name="hellaswag")]})})
    cache = base_score_cache(settings, "acme", own_recipe)
    assert cache.shared_tasks == [GUARD, "hellaswag"]
    assert Path(cache.tenant_dir) == settings.base_scores_dir / "tenants" / "acme"
    assert Path(cache.shared_dir) == settings.base_scores_dir / "shared"
    assert base_score_cache(settings, None, recipe).tenant_dir is None
    assert base_score_cache(settings, "acme", recipe).shared_tasks == [TASK, GUARD]
    rows = tmp_path / "own.jsonl"
    rows.write_text("")
    own_rows = recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"eval_file": str(rows)})}).gated_on_own_eval()
    # a shipped template over the tenant's own rows is the tenant's task, never shared
    assert base_score_cache(settings, "acme", own_rows).shared_tasks == [TASK, GUARD]
