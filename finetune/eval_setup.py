"""`python -m finetune.eval_setup SPEC`: what an evaluation outside any job (`aif eval`)
needs of the training stage's side before the evaluation stage runs.

It resolves the base model into the model cache as training would (a registered name or a
GGUF file becomes an HF directory) and plans the gate's evidence on the evaluation documents
as the pre-flight does, then writes both beside the spec. The shell, which never loads a
model, reads them and launches `evaluation.run` with the directory.

Exit codes: 0 done, 2 the base model, the data or a task file is unusable (the reason in the
StageFailure beside the spec), 1 anything else, such as a full disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

from finetune.base_model import BaseModelError, resolve_base_model
from finetune.gate_noise import gate_noise
from finetune.rows import DataValidationError
from stagefiles.jobspec import (
    EVAL_SETUP_RESULT,
    EvalSetupResult,
    EvalSetupSpec,
    FailureKind,
    record_failure,
)
from stagefiles.tasks import TaskConfigError

EXIT_UNUSABLE = 2


def main(spec_path: Path) -> int:
    spec = EvalSetupSpec.read(spec_path)
    base_model_dir = resolve_base_model(spec.base, Path(spec.model_cache_dir))
    EvalSetupResult(base_model_dir=str(base_model_dir), gate_noise=gate_noise(spec.recipe)
                    ).write(spec_path.parent / EVAL_SETUP_RESULT)
    return 0


def _cli(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m finetune.eval_setup EVAL_SETUP_SPEC_JSON", file=sys.stderr)
        return EXIT_UNUSABLE
    spec_path = Path(argv[0])
    try:
        return main(spec_path)
    except (BaseModelError, DataValidationError, TaskConfigError) as exc:
        kind, reason, code = FailureKind.final, str(exc), EXIT_UNUSABLE
    except OSError as exc:  # a full disk, a lost mount: not the request's fault
        kind, code = FailureKind.retryable, 1
        reason = f"evaluation setup: {type(exc).__name__}: {exc.strerror or 'I/O error'}"
    print(f"evaluation setup: {reason}", file=sys.stderr)
    record_failure(spec_path, kind, reason)
    return code


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
