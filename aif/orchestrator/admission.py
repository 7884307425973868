"""Admission at intake: refuse a request whose effective recipe can never train.

The worker's validation (data, tokenizer, pre-flight report) needs files and models; these
checks need only the recipe and the request's data references (their spelling: nothing is
resolved, see `references`), so a partner hears at once, on the dead-letter topic, instead
of after a job was created. Reasons name the field and the rule, never the request's values.
"""

from __future__ import annotations

import math

from aif.orchestrator.references import References
from events.messages import FineTuneRequested
from events.recipe import AUTO, Recipe, RecipeError
from recipes import load_recipe


def warmup_steps(recipe: Recipe) -> int:
    """As `finetune.train` computes it for the scheduler."""
    return math.ceil(recipe.train.warmup_ratio * recipe.train.max_steps)


def trainability_problems(recipe: Recipe, max_processes: int | None = None) -> list[str]:
    """Each rule the effective recipe breaks, as `field: rule`."""
    problems = []
    if recipe.train.epochs is None and recipe.train.max_steps <= warmup_steps(recipe):
        problems.append("train.max_steps: must be above the warmup steps "
                        "(ceil(train.warmup_ratio x train.max_steps)), or no step trains at "
                        "the full learning rate")
    if recipe.train.learning_rate != AUTO and not float(recipe.train.learning_rate) > 0:
        problems.append("train.learning_rate: must be above zero")
    if max_processes is not None:
        for section in ("train", "eval"):
            if getattr(recipe, section).num_processes > max_processes:
                problems.append(f"{section}.num_processes: at most {max_processes} on this "
                                "service")
    return problems


class Admission:
    """The intake's checks of a request's effective recipe; `max_processes` None: no limit;
    `references` None: data references are left to the worker's validation."""

    def __init__(self, max_processes: int | None = None,
                 references: References | None = None) -> None:
        self.max_processes, self.references = max_processes, references

    def refusal(self, request: FineTuneRequested, tenant: str) -> str | None:
        """Why the request of `tenant` cannot train, or None if it may be stored."""
        try:
            recipe = request.recipe_inline or load_recipe(request.recipe or "")
            recipe = request.overrides.apply(recipe)
        except RecipeError as exc:
            return str(exc)
        problems = trainability_problems(recipe, self.max_processes)
        if self.references is not None:
            data = recipe.data.with_source(request.train_file, request.dataset).with_eval(
                request.eval_file, request.eval_split)
            problems += self.references.refusals(
                request, recipe.model_copy(update={"data": data}), tenant)
        return "; ".join(problems) or None
