"""The shipped recipes, as `aif recipes list` and `show` give them."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from aif.web.deps import CurrentTenant, Problem, problems
from events.recipe import Recipe, RecipeError
from recipes import load_recipe, recipe_files

router = APIRouter(prefix="/v1/recipes", tags=["recipes"], responses=problems(401))


class RecipePublic(BaseModel):
    name: str
    sector: str
    language: str
    description: str
    base_model: str
    gate: str


class RecipesPublic(BaseModel):
    data: list[RecipePublic]


@router.get("")
def list_recipes(_: CurrentTenant) -> RecipesPublic:
    shipped = [load_recipe(name) for name in recipe_files()]
    return RecipesPublic(data=[
        RecipePublic(name=r.name, sector=r.sector, language=r.language,
                     description=r.description, base_model=r.model.base,
                     gate=f"{r.gate.metric} on {r.gate.task} >= base + {r.gate.min_gain}")
        for r in shipped])


@router.get("/{name}", responses=problems(404))
def get_recipe(name: str, _: CurrentTenant) -> Recipe:
    """The recipe as the service runs it; an unknown name is answered with the closest."""
    try:
        return load_recipe(name)
    except RecipeError as exc:
        raise Problem(404, "Not found", str(exc), field="name") from exc
