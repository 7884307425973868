"""A tiny random Llama with the real SmolLM2 tokenizer, so lm-eval runs in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from events.recipe import Recipe, load_recipe_file
from stagefiles.jobspec import EvaluationSpec

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes/energy/grid_ticket_routing/recipe.yaml"

SpecFactory = Callable[[Path, Path | None], EvaluationSpec]


def _adapter(model_dir: Path, path: Path, init_lora_weights: bool, seed: int = 1) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=init_lora_weights
    )
    get_peft_model(model, config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def random_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random A and B: the adapter changes every output."""
    return _adapter(tiny_model_dir, tmp_path_factory.mktemp("random-lora"), False)


@pytest.fixture(scope="session")
def other_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another random adapter: other outputs than `random_adapter_dir`'s."""
    return _adapter(tiny_model_dir, tmp_path_factory.mktemp("other-lora"), False, seed=2)


@pytest.fixture(scope="session")
def zero_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """peft's default init, B = 0: loads fine and changes nothing."""
    return _adapter(tiny_model_dir, tmp_path_factory.mktemp("zero-lora"), True)


@pytest.fixture(scope="session")
def recipe() -> Recipe:
    real = load_recipe_file(RECIPE)
    return real.model_copy(
        update={"eval": real.eval.model_copy(update={"limit": 10, "batch_size": 8})}
    )


@pytest.fixture(scope="session")
def make_spec(recipe: Recipe, tiny_model_dir: Path) -> SpecFactory:
    def make(output_dir: Path, adapter_dir: Path | None) -> EvaluationSpec:
        return EvaluationSpec(
            job_id="job-test",
            base_model_dir=str(tiny_model_dir),
            adapter_dir=None if adapter_dir is None else str(adapter_dir),
            recipe=recipe,
            output_dir=str(output_dir),
        )

    return make
