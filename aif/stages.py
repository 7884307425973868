"""The table of stages: each stage process the shell starts, by name, with its module, spec
and result files, log and progress files, and how it is launched.

The worker's steps, the evaluation batches, the hand-off, the web upload check, `aif eval` /
`aif preflight` and the tests all read the module names and files from here, so a stage's
entry point is written once; a new stage is one row here and the step that runs it. The
shell never imports a stage: it starts `python -m <module>` and reads the files back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from aif.launchers import StageCommand
from stagefiles.jobspec import (
    EVAL_SETUP_RESULT,
    EVAL_SETUP_SPEC,
    EVALUATION_RESULT,
    EVALUATION_SPEC,
    PREFLIGHT_SPEC,
    PROGRESS_LOG,
    SERVING_CHECK_RESULT,
    SERVING_CHECK_SPEC,
    TRAINING_RESULT,
    TRAINING_SPEC,
    EvalSetupResult,
    EvaluationResult,
    ServingCheckResult,
    TrainingResult,
)
from stagefiles.preflight_report import PREFLIGHT as PREFLIGHT_REPORT
from stagefiles.preflight_report import PreflightReport

R = TypeVar("R", PreflightReport, TrainingResult, EvaluationResult, ServingCheckResult,
            EvalSetupResult)

FINAL_EXIT_CODES = frozenset({2, 3})
"""The failure classes every stage shares: these exit codes mean the request itself is
unusable (no retry helps); any other non-zero code may be retried. A stage that writes a
`StageFailure` beside its spec says which of the two it is itself."""


@dataclass(frozen=True)
class Stage(Generic[R]):
    """A stage: `python -m <module> <spec>`, writing `result_file` of type `result`."""

    name: str
    module: str
    spec_file: str
    result_file: str
    result: type[R]
    log_file: str
    progress_file: str
    accelerate: bool | None = False
    """Under `accelerate launch`: always (True), never (False), or with several processes."""

    def command(self, spec_path: Path, num_processes: int = 1) -> StageCommand:
        distributed = num_processes > 1 if self.accelerate is None else self.accelerate
        return StageCommand(self.module, spec_path, num_processes, distributed=distributed)


PREFLIGHT: Stage[PreflightReport] = Stage(
    "preflight", "finetune.preflight", PREFLIGHT_SPEC, PREFLIGHT_REPORT, PreflightReport,
    "preflight.log", "preflight_progress.jsonl")
TRAINING: Stage[TrainingResult] = Stage(
    "training", "finetune.train", TRAINING_SPEC, TRAINING_RESULT, TrainingResult,
    "training.log", PROGRESS_LOG, accelerate=True)
EVALUATION: Stage[EvaluationResult] = Stage(
    "evaluation", "evaluation.run", EVALUATION_SPEC, EVALUATION_RESULT, EvaluationResult,
    "evaluation.log", PROGRESS_LOG, accelerate=None)
SERVING_CHECK: Stage[ServingCheckResult] = Stage(
    "serving_check", "serving.check", SERVING_CHECK_SPEC, SERVING_CHECK_RESULT,
    ServingCheckResult, "serving_check.log", "serving_progress.jsonl")

EVAL_SETUP: Stage[EvalSetupResult] = Stage(
    "eval_setup", "finetune.eval_setup", EVAL_SETUP_SPEC, EVAL_SETUP_RESULT, EvalSetupResult,
    "eval_setup.log", "eval_setup_progress.jsonl")
"""`aif eval` only, before EVALUATION: the base model resolved and the gate's evidence."""

STAGES: dict[str, Stage] = {s.name: s for s in (
    PREFLIGHT, TRAINING, EVALUATION, SERVING_CHECK, EVAL_SETUP)}


@dataclass(frozen=True)
class RowsCheck:
    """The upload check: `python -m <module> <file>` prints a JSON summary of the rows as
    its last line and exits with one of `answers` (usable, refused, unreadable)."""

    module: str
    answers: frozenset[int]

    def argv(self, path: Path, max_bad_fraction: float) -> list[str]:
        return [sys.executable, "-m", self.module, str(path),
                "--max-bad-fraction", repr(max_bad_fraction)]


ROWS_CHECK = RowsCheck("finetune.rows", frozenset({0, 1, 2}))

MODULES = (*(s.module for s in STAGES.values()), ROWS_CHECK.module)
"""Every stage entry point the shell starts."""
