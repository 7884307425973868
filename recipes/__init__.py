"""Ready-made recipes, one folder per task under a sector folder, each with a recipe.yaml."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

from events.recipe import Recipe, RecipeError, load_recipe_file
from stagefiles.tasks import local_data_files

RECIPES_DIR = Path(__file__).parent


_Stamp = tuple[tuple[str, int, int], ...]
_parsed: dict[Path, tuple[_Stamp, dict[str, tuple[Path, Recipe]]]] = {}


def _shipped(root: Path) -> dict[str, tuple[Path, Recipe]]:
    """Recipe name -> (file, recipe), parsed again only when a recipe file changed: intake
    looks a recipe up for every request, and parsing them all each time caps its rate."""
    paths = sorted(root.glob("*/*/recipe.yaml"))
    stamp = tuple((str(p), (st := p.stat()).st_mtime_ns, st.st_size) for p in paths)
    cached = _parsed.get(root)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    found: dict[str, tuple[Path, Recipe]] = {}
    for path in paths:
        recipe = load_recipe_file(path)
        if recipe.name in found:
            raise RecipeError(f"{path}: recipe name {recipe.name!r} already used by "
                              f"{found[recipe.name][0]}")
        found[recipe.name] = (path, recipe)
    _parsed[root] = (stamp, found)
    return found


def recipe_files(root: Path = RECIPES_DIR) -> dict[str, Path]:
    """Recipe name -> file; the name inside the file, not the folder, is what requests use."""
    return {name: path for name, (path, _) in _shipped(root).items()}


def load_recipe(name: str, root: Path = RECIPES_DIR) -> Recipe:
    shipped = _shipped(root)
    if name not in shipped:
        raise _no_such(name, shipped)
    return shipped[name][1]


def shipped_name(ref: str, root: Path = RECIPES_DIR) -> str:
    """A shipped recipe's name from its name or its folder in the recipes tree
    (`public_sector/citizen_reply_de_dpo`, as the tree and the README show it)."""
    shipped = _shipped(root)
    if ref in shipped:
        return ref
    folder = ref.removesuffix("recipe.yaml").strip("/")
    for name, (path, _) in shipped.items():
        if path.parent.relative_to(root).as_posix() == folder:
            return name
    raise _no_such(ref, shipped)


def _no_such(name: str, shipped: dict[str, tuple[Path, Recipe]]) -> RecipeError:
    hint = difflib.get_close_matches(name, shipped, n=1)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    # The name is the caller's input: the reason names the rule, not the value.
    return RecipeError(
        f"recipe: no such recipe.{did_you_mean} Available: {', '.join(sorted(shipped))}")


def copied_into(recipe: Recipe, root: Path) -> Recipe:
    """A shipped recipe reading copies of its files under `root` (e.g. a tenant's data root,
    where an inline recipe's files must be). Each copy keeps its place relative to the recipes
    tree, so that the task YAMLs' relative data files are found beside them."""
    def copy(path: str | None) -> str | None:
        if path is None:
            return None
        target = root / Path(path).relative_to(RECIPES_DIR.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return str(target)

    for task in recipe.eval.tasks:
        if task.yaml is not None:
            for data_file in local_data_files(Path(task.yaml), task.name):
                copy(str(data_file))
    data = recipe.data.model_copy(update={"train_file": copy(recipe.data.train_file),
                                          "validation_file": copy(recipe.data.validation_file)})
    tasks = [t.model_copy(update={"yaml": copy(t.yaml)}) for t in recipe.eval.tasks]
    return recipe.model_copy(update={"data": data,
                                     "eval": recipe.eval.model_copy(update={"tasks": tasks})})
