"""No code path lets a model repository run its own Python: `trust_remote_code` is never on."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from lm_eval.models.huggingface import HFLM

from evaluation.harness import model_args

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aif", "events", "stagefiles", "finetune", "evaluation", "serving", "recipes",
            "benchmarks")


def remote_code_uses(source: str) -> list[int]:
    """Lines that turn trust_remote_code on: a keyword or dict key not literally False, or
    the `trust_remote_code=True` text of lm-eval's model_args strings."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
            value = node.value
        elif isinstance(node, ast.Dict):
            value = next((v for k, v in zip(node.keys, node.values, strict=True)
                          if isinstance(k, ast.Constant) and k.value == "trust_remote_code"),
                         None)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and "trust_remote_code=true" in node.value.lower().replace(" ", "")):
            lines.append(node.lineno)
            continue
        else:
            continue
        if not (isinstance(value, ast.Constant) and value.value is False) and value is not None:
            lines.append(node.value.lineno if isinstance(node, ast.keyword) else node.lineno)
    return sorted(lines)


def test_the_scanner_finds_each_way_of_turning_it_on() -> None:
    source = ("f(trust_remote_code=True)\nf(trust_remote_code=flag)\n"
              "g(**{'trust_remote_code': 1})\nargs = 'pretrained=x,trust_remote_code=True'\n"
              "f(trust_remote_code=False)\n")
    assert remote_code_uses(source) == [1, 2, 3, 4]


def test_no_package_sets_trust_remote_code() -> None:
    found = {str(path.relative_to(ROOT)): lines
             for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
             if (lines := remote_code_uses(path.read_text()))}
    assert found == {}


def test_lm_eval_model_args_leave_it_at_lm_evals_default_of_off() -> None:
    for adapter in (None, "/adapter"):
        assert "trust_remote_code" not in model_args("/base", adapter)
    default = inspect.signature(HFLM.__init__).parameters["trust_remote_code"].default
    assert default is False
