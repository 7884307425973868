"""Provenance written beside the adapter: the files read, by sha256 and size, and versions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from events.recipe import Recipe
from finetune.model_card import provenance
from stagefiles.jobspec import TrainingSpec

ROW = {"text": "Sparks from the pole", "label": "emergency"}


def _spec(tmp_path: Path, recipe: Recipe) -> TrainingSpec:
    return TrainingSpec(job_id="j", tenant="acme", recipe=recipe, work_dir=str(tmp_path),
                        model_cache_dir=str(tmp_path / "cache"))


def test_provenance_names_each_file_by_hash_and_size(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
    tiny_model_dir: Path,
) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [ROW, ROW])
    validation = write_jsonl(tmp_path / "v.jsonl", [ROW])
    recipe = make_recipe(train, data={"validation_file": str(validation)})
    facts = provenance(_spec(tmp_path, recipe), tiny_model_dir)
    assert [(f.role, f.name, f.bytes) for f in facts.data_files] == [
        ("train", "t.jsonl", train.stat().st_size),
        ("validation", "v.jsonl", validation.stat().st_size)]
    assert facts.data_files[0].sha256 == hashlib.sha256(train.read_bytes()).hexdigest()
    weights = tiny_model_dir / "model.safetensors"
    assert facts.base_model_sha256["model.safetensors"] == hashlib.sha256(
        weights.read_bytes()).hexdigest()
    assert "config.json" in facts.base_model_sha256
    assert {"torch", "transformers", "peft", "accelerate"} <= facts.libraries.keys()


def test_a_hub_dataset_is_named_by_id_and_split_without_a_hash(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
    tiny_model_dir: Path,
) -> None:
    recipe = make_recipe(tmp_path / "unused.jsonl")
    hub = recipe.model_copy(update={"data": recipe.data.with_source(dataset="org/tickets")})
    (file,) = provenance(_spec(tmp_path, hub), tiny_model_dir).data_files
    assert file.name == "hub dataset 'org/tickets' split 'train'" and file.sha256 is None
