"""Ready-made recipes, one folder per task under a sector folder, each with a recipe.yaml."""

from __future__ import annotations

import difflib
from pathlib import Path

from events.recipe import Recipe, RecipeError, load_recipe_file

RECIPES_DIR = Path(__file__).parent


def recipe_files(root: Path = RECIPES_DIR) -> dict[str, Path]:
    """Recipe name -> file; the name inside the file, not the folder, is what requests use."""
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*/*/recipe.yaml")):
        name = load_recipe_file(path).name
        if name in found:
            raise RecipeError(f"{path}: recipe name {name!r} already used by {found[name]}")
        found[name] = path
    return found


def load_recipe(name: str, root: Path = RECIPES_DIR) -> Recipe:
    files = recipe_files(root)
    if name not in files:
        hint = difflib.get_close_matches(name, files, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise RecipeError(
            f"Unknown recipe {name!r}.{did_you_mean} Available: {', '.join(sorted(files))}"
        )
    return load_recipe_file(files[name])
