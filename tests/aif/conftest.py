"""Fixtures of the orchestrator tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.messages import FineTuneRequested
from recipes import load_recipe


@pytest.fixture
def tiny_request(tiny_model_dir: Path) -> FineTuneRequested:
    """The shipped recipe on the tiny model: short training, 20 eval docs, a gate that lets a
    random model pass (these tests are about the orchestrator, not about learning)."""
    recipe = load_recipe("grid-ticket-routing")
    recipe = recipe.model_copy(update={
        "name": "tiny-grid-routing",
        "model": recipe.model.model_copy(update={"base": str(tiny_model_dir)}),
        "train": recipe.train.model_copy(update={"max_steps": 40, "batch_size": 4,
                                                 "logging_steps": 1}),
        "eval": recipe.eval.model_copy(update={"limit": 20}),
        "gate": recipe.gate.model_copy(update={"min_gain": -1.0, "stderr_factor": 0.0,
                                               "guards": []}),
    })
    return FineTuneRequested(recipe_inline=recipe)
