"""lm-eval's document templates, each compiled once per process.

lm-eval renders a task's Jinja templates (`doc_to_text`, `doc_to_choice`, `doc_to_target`)
for every document by compiling them again (`lm_eval.utils.apply_template`): about a
millisecond each, three for every document and model, so scoring 1,000 documents on base
and tuned compiled 6,000 templates, and checking GermEval's 3,532 test rows took 40 CPU
seconds. `compile_once` makes lm-eval render through the same environment with each
template compiled on first use; what a document renders to does not change.
"""

from __future__ import annotations

import functools
from typing import Any


def compile_once() -> None:
    """Render lm-eval's templates from a per-process cache of compiled ones (idempotent)."""
    import lm_eval.utils

    lm_eval.utils.apply_template = _apply_template


@functools.lru_cache(maxsize=1024)
def _compiled(template: str) -> Any:
    import lm_eval.utils

    return lm_eval.utils.env.from_string(template)


def _apply_template(template: str, doc: dict[str, Any]) -> str:
    return _compiled(template).render(**doc)
