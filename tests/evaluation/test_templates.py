"""lm-eval renders every document as it does itself, with each template compiled once."""

from __future__ import annotations

from pathlib import Path

import lm_eval.utils
from lm_eval.tasks import TaskManager

from evaluation import templates
from evaluation.tasks import materialise_tasks
from recipes import load_recipe


def test_every_document_renders_as_lm_eval_renders_it_with_each_template_compiled_once(
    tmp_path: Path
) -> None:
    recipe = load_recipe("grid-ticket-routing")
    include = materialise_tasks(recipe.eval, tmp_path).include_dir
    name = recipe.gate.task

    def rendered() -> list[tuple[str, list[str], int]]:
        task = TaskManager(include_path=str(include), include_defaults=False).load_task_or_group(
            [name])[name]
        return [(task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc))
                for doc in task.test_docs()]

    installed = lm_eval.utils.apply_template
    try:  # lm-eval's own definition: a template compiled for every call
        lm_eval.utils.apply_template = lambda template, doc: lm_eval.utils.env.from_string(
            template).render(**doc)
        before = rendered()
        templates._compiled.cache_clear()
        templates.compile_once()
        after = rendered()
    finally:
        lm_eval.utils.apply_template = installed
    assert len(before) > 50 and after == before
    compiled = templates._compiled.cache_info()
    assert compiled.misses <= 3 and compiled.hits >= len(before)
