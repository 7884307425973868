"""The gate task's accuracy on the validation rows, scored in the training process as lm-eval
scores a multiple-choice document (`train.early_stopping_metric: accuracy`).

The gate judges a tuned model by the task's accuracy: lm-eval computes the log-likelihood of
every choice (the target delimiter and the choice's text) after the document's prompt, and
the model's answer is the choice with the highest one (divided by the choice's length in
characters for `acc_norm`). The validation loss ranks steps by how well the model writes the
rows' answer tokens, which is not the same thing: on an imbalanced set it can keep falling
while the model drifts onto the commonest class. Scoring the validation rows here (per row the
prompt once, then its choices side by side on the prompt's cached keys and values) lets
early stopping keep the step the gate would prefer, at about the cost of the validation
loss and without starting an lm-eval process during training.

Zero-shot and without a chat template (`Recipe` allows this metric only so). The tokens are
lm-eval's (`TemplateLM._encode_pair`): whitespace ending the prompt moves to the front of the
continuation, and a choice's tokens are what encoding prompt and continuation together adds
to the prompt's own tokens, both without special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from finetune.data import IGNORE_INDEX, Split
from finetune.labels import TaskLabels, task_labels
from finetune.rows import DataValidationError, RowError


class ChoiceTaskError(ValueError):
    """Accuracy was asked for, but the gate task has no choices to score in training."""


@dataclass(frozen=True)
class Question:
    """One validation row as lm-eval asks it: the prompt's tokens, each choice's tokens after
    it, the gold choice's position, and each choice's length in characters (`acc_norm`)."""

    context: list[int]
    continuations: list[list[int]]
    gold: int
    lengths: list[int]


def gate_choices(recipe: Recipe) -> TaskLabels:
    """The gate task's templates, or ChoiceTaskError naming the field when it has none."""
    labels = task_labels(recipe)
    if labels is None:
        raise ChoiceTaskError(
            f"train.early_stopping_metric accuracy: the gate task {recipe.gate.task!r} is not "
            "a multiple-choice task YAML of the recipe (output_type multiple_choice with "
            "doc_to_choice), so there are no answers to score during training; use loss")
    return labels


def questions(labels: TaskLabels, tokenizer: PreTrainedTokenizerBase,
              split: Split) -> list[Question]:
    """The split's rows (already checked against the task's choices) as questions;
    DataValidationError naming each row whose prompt the task's templates cannot render."""
    asked, problems = [], []
    for encoded in split.encoded:
        try:
            asked.append(_question(labels, tokenizer, encoded.row))
        except RowError as exc:
            problems.append(f"{encoded.where}: {exc}")
    if problems:
        raise DataValidationError(split.source, problems, split.rows)
    return asked


def _question(labels: TaskLabels, tokenizer: PreTrainedTokenizerBase, row: dict) -> Question:
    choices = [str(c) for c in labels.choices(row)]
    gold = labels.gold(row)
    if gold is None:
        raise RowError("the label is not one of the task's choices")
    context = labels.prompt(row)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    spaces = len(context) - len(context.rstrip())
    stem, moved = (context[:-spaces], context[-spaces:]) if spaces else (context, "")
    if not stem:  # lm-eval starts an empty prompt with the model's prefix token
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
            else tokenizer.eos_token_id
        return Question([prefix], [encode(moved + labels.delimiter + c) for c in choices],
                        gold, [len(c) for c in choices])
    context_ids = encode(stem)
    continuations = [encode(stem + moved + labels.delimiter + c)[len(context_ids):]
                     for c in choices]
    return Question(context_ids, continuations, gold, [len(c) for c in choices])


def loglikelihoods(model: torch.nn.Module, question: Question,
                   device: torch.device) -> torch.Tensor:
    """Each choice's summed log-probability after the prompt: the prompt runs once (its keys
    and values cached), then the choices side by side after it, right-padded."""
    context, continuations = question.context, question.continuations
    cache = None
    if len(context) > 1:
        cache = model(input_ids=torch.tensor([context[:-1]], device=device), use_cache=True,
                      logits_to_keep=1).cache
        cache.batch_repeat_interleave(len(continuations))
    width = max(len(c) for c in continuations)
    ids = torch.zeros(len(continuations), width, dtype=torch.long)
    targets = torch.full_like(ids, IGNORE_INDEX)
    for i, continuation in enumerate(continuations):  # the prompt's last token, then the choice
        ids[i, :len(continuation)] = torch.tensor([context[-1], *continuation[:-1]])
        targets[i, :len(continuation)] = torch.tensor(continuation)
    mask = torch.cat([torch.ones(len(continuations), len(context) - 1, dtype=torch.long),
                      (targets != IGNORE_INDEX).long()], dim=1)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   cache=cache, use_cache=cache is not None).logits.float()
    targets = targets.to(device)
    picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (targets != IGNORE_INDEX)).sum(-1)


def correct(model: torch.nn.Module, asked: Sequence[Question], device: torch.device,
            normalise: bool = False) -> int:
    """How many questions the model answers right (the first highest score wins ties, as
    numpy's argmax does in lm-eval)."""
    right = 0
    for question in asked:
        scores = loglikelihoods(model, question, device)
        if normalise:
            scores = scores / torch.tensor(question.lengths, device=device)
        right += int(scores.argmax()) == question.gold
    return right


def accuracy(acc: Accelerator, model: torch.nn.Module, asked: Sequence[Question],
             normalise: bool) -> float:
    """The share answered right, each rank scoring its slice of the rows (collectives: every
    rank calls it). The unwrapped model, so no rank waits on another's forward pass."""
    mine = asked[acc.process_index::acc.num_processes]
    model.eval()
    with torch.no_grad(), acc.autocast():
        right = correct(model, mine, acc.device, normalise)
    model.train()
    counts = acc.reduce(torch.tensor([right, len(mine)], device=acc.device), "sum")
    return counts[0].item() / max(1, counts[1].item())
