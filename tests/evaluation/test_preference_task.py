"""The preference recipes' gate task scores held-out pairs by the model's log-likelihood
preference (issue #26): lm-eval's outcome on each pair is whether the model finds the chosen
reply likelier than the rejected one after the prompt, so `acc` is the win rate of chosen over
rejected, for the base model and a tuned one alike, and the gate pairs it document by document.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from evaluation.harness import evaluate_model
from events.recipe import load_recipe_file
from stagefiles.jobspec import EvaluationSpec
from tests.evaluation.conftest import REPO

RECIPE = REPO / "recipes/public_sector/citizen_reply_de_dpo/recipe.yaml"
TASK = "citizen_reply_preference_de"
PAIRS = 10


def _logp(model: PreTrainedModel, tokenizer: AutoTokenizer, prompt: str, reply: str) -> float:
    """log P(reply | prompt), the reply's tokens as lm-eval splits them off the whole text."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(logits[i - 1, whole[i]].item() for i in range(len(context), len(whole)))


def _chosen_wins(model_dir: Path, adapter_dir: Path | None) -> set[int]:
    """The pairs (line numbers from 0) whose chosen reply the model finds likelier."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = (RECIPE.parent / "data/test.jsonl").read_text().splitlines()[:PAIRS]
    pairs = [json.loads(line) for line in lines]
    return {i for i, p in enumerate(pairs)
            if _logp(model, tokenizer, p["prompt"], p["chosen"])
            > _logp(model, tokenizer, p["prompt"], p["rejected"])}


@pytest.mark.parametrize("tuned", [False, True])
def test_the_preference_task_scores_each_pair_by_which_reply_the_model_finds_likelier(
        tiny_model_dir: Path, random_adapter_dir: Path, tmp_path: Path, tuned: bool) -> None:
    shipped = load_recipe_file(RECIPE)
    recipe = shipped.model_copy(update={
        "eval": shipped.eval.model_copy(update={
            "tasks": [t for t in shipped.eval.tasks if t.name == TASK], "limit": PAIRS}),
        "gate": shipped.gate.model_copy(update={"guards": []})})
    adapter = random_adapter_dir if tuned else None
    spec = EvaluationSpec(job_id="job-test", base_model_dir=str(tiny_model_dir),
                          adapter_dir=None if adapter is None else str(adapter),
                          recipe=recipe, output_dir=str(tmp_path))
    metrics, _ = evaluate_model(spec, spec.adapter_dir)
    [acc] = [m for m in metrics if (m.task, m.metric) == (TASK, "acc")]
    assert acc.per_doc is not None and acc.samples == PAIRS
    wins = _chosen_wins(tiny_model_dir, adapter)
    assert 0 < len(wins) < PAIRS  # both outcomes occur, so the comparison can tell them apart
    assert set(acc.per_doc.right) == wins
    assert set(acc.per_doc.wrong) == set(range(PAIRS)) - wins
    assert acc.value == pytest.approx(len(wins) / PAIRS)
