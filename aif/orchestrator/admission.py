"""Admission at intake: refuse a request whose effective recipe can never train.

The worker's validation (data, tokenizer, pre-flight report) needs files and models; these
checks need only the recipe, so a partner hears at once, on the dead-letter topic, instead
of after a job was created. Reasons name the field and the rule, never the request's values.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from events.messages import FineTuneRequested
from events.recipe import Recipe, RecipeError, load_recipe_file
from recipes import RECIPES_DIR


def warmup_steps(recipe: Recipe) -> int:
    """As `finetune.train` computes it for the scheduler."""
    return math.ceil(recipe.train.warmup_ratio * recipe.train.max_steps)


def trainability_problems(recipe: Recipe, max_processes: int | None = None) -> list[str]:
    """Each rule the effective recipe breaks, as `field: rule`."""
    problems = []
    if recipe.train.max_steps <= warmup_steps(recipe):
        problems.append("train.max_steps: must be above the warmup steps "
                        "(ceil(train.warmup_ratio x train.max_steps)), or no step trains at "
                        "the full learning rate")
    if not recipe.train.learning_rate > 0:
        problems.append("train.learning_rate: must be above zero")
    if max_processes is not None:
        for section in ("train", "eval"):
            if getattr(recipe, section).num_processes > max_processes:
                problems.append(f"{section}.num_processes: at most {max_processes} on this "
                                "service")
    return problems


class RecipeBook:
    """The shipped recipes by name, re-read only when a recipe file changes: intake looks one
    up for every request, and parsing all of them each time would cap its throughput."""

    def __init__(self, root: Path = RECIPES_DIR) -> None:
        self.root = root
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._recipes: dict[str, Recipe] = {}

    def get(self, name: str) -> Recipe:
        stamp = tuple(sorted((str(p), (st := p.stat()).st_mtime_ns, st.st_size)
                             for p in self.root.glob("*/*/recipe.yaml")))
        if stamp != self._stamp:
            recipes = [load_recipe_file(Path(p)) for p, _, _ in stamp]
            self._recipes, self._stamp = {r.name: r for r in recipes}, stamp
        if name not in self._recipes:
            hint = difflib.get_close_matches(name, self._recipes, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise RecipeError(f"data.recipe: no such recipe.{did_you_mean} Available: "
                              f"{', '.join(sorted(self._recipes))}")
        return self._recipes[name]


class Admission:
    """The intake's checks of a request's effective recipe; `max_processes` None: no limit."""

    def __init__(self, max_processes: int | None = None, recipes: RecipeBook | None = None
                 ) -> None:
        self.max_processes = max_processes
        self.recipes = recipes or RecipeBook()

    def refusal(self, request: FineTuneRequested) -> str | None:
        """Why the request cannot train, or None if it may be stored."""
        try:
            recipe = request.recipe_inline or self.recipes.get(request.recipe or "")
            recipe = request.overrides.apply(recipe)
        except RecipeError as exc:
            return str(exc)
        return "; ".join(trainability_problems(recipe, self.max_processes)) or None
