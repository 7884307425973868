"""A recipe's lora and train sections: the adapter's shape and how it is trained."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, Tag, model_validator

from events.fields import NUMBER, Bool, Closed, Float, Int


class TrainMethod(StrEnum):
    """What the adapter learns from: answers to imitate, or pairs of a preferred and a
    rejected answer to the same prompt."""

    sft = "sft"
    dpo = "dpo"
    orpo = "orpo"

    @property
    def preference(self) -> bool:
        return self is not TrainMethod.sft


class LoraSection(Closed):
    r: Int = Field(16, ge=1, le=256)
    alpha: Int = Field(32, ge=1, le=1024)
    dropout: Float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: Bool = False
    quantize_4bit: Bool = Field(
        False, description="QLoRA: the frozen base in 4-bit NF4 (bitsandbytes; CUDA only), "
        "the adapter in bf16. A node without both stops the job with a clear error.",
    )
    save_merged: Bool = Field(
        False, description="Also write the base with the adapter merged in (`merged/`), for "
        "servers that cannot load LoRA adapters.",
    )


AUTO = "auto"


Auto = Literal["auto"]


Beta = Annotated[float, Field(gt=0.0, le=10.0), NUMBER, Tag("float")]
"""DPO's beta: above 0, where the loss would ignore the preference (and IPO divides by it)."""


class TrainSection(Closed):
    """How to train. `epochs`, `batch_size` and `learning_rate` may be `auto`: the pre-flight,
    which sees the rows, picks them (`finetune.hyperparameters`) and the job is frozen with
    the picked values, so training and the job record read numbers only."""

    method: TrainMethod = Field(
        TrainMethod.sft, description="sft: learn to write the rows' answers. dpo: prefer each "
        "pair's chosen answer over its rejected one, measured against the base model (the "
        "adapter switched off, so no second copy of the weights). orpo: the SFT loss on the "
        "chosen answer plus an odds-ratio penalty on the rejected one, without a reference "
        "model. dpo and orpo read data.format preference.",
    )
    beta: Beta = Field(
        0.1, description="dpo: how strongly the preference is pushed against staying close "
        "to the base model; smaller lets the adapter move further from it (0.1 as in the DPO "
        "paper). Also scales the reported rewards.",
    )
    dpo_loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="dpo: sigmoid, the DPO paper's loss on the reward margin; "
        "ipo, the squared loss of IPO on per-token log-ratios, which does not keep pushing "
        "pairs that are already separated (less overfitting on small pair sets).",
    )
    orpo_lambda: Float = Field(
        0.1, gt=0.0, le=10.0, description="orpo: weight of the odds-ratio term next to the "
        "SFT loss on the chosen answer (0.1 as in the ORPO paper).",
    )
    init_from: str | None = Field(
        None, min_length=1, max_length=300, description="Train on from a registered model "
        "version of the job's own tenant instead of a fresh adapter: `NAME[:VERSION]` as "
        "`aif models` lists it (without a version, the latest), e.g. DPO after an SFT job. Its "
        "adapter is the starting, trainable adapter (its LoRA shape replaces the lora "
        "section); DPO's reference stays the base model with every adapter switched off.",
    )

    max_steps: Int = Field(100, ge=1, le=1_000_000, description="Optimizer steps; derived "
                           "from epochs when epochs is given.")
    epochs: Float | Auto | None = Field(
        None, description="Passes over the training rows (max_steps follows from the row "
        "count and the batch); auto: picked from the data set's size; None: max_steps.",
    )
    learning_rate: Float | Auto = Field(2e-4, description="Peak learning rate, or auto "
                                        "(picked from the batch size).")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: Float = Field(0.05, ge=0.0, le=0.5)
    batch_size: Int | Auto = Field(8, description="Examples per micro-batch and process, or "
                                   "auto (picked from the rows' count and length).")
    class_balance: Bool = Field(
        False, description="Sample training rows inversely to how often their answer (the "
        "trained tokens) occurs, so every class is seen equally often; for skewed labels.",
    )
    early_stopping_patience: Annotated[int, Field(ge=1), NUMBER, Tag("int")] | None = Field(
        None, description="Stop after this many validation losses (every eval_steps) "
        "without a new best, and keep the adapter of the best one; needs validation rows.",
    )
    early_stopping_metric: Literal["loss", "accuracy"] = Field(
        "loss", description="What picks the kept step: loss, the validation loss; accuracy, "
        "the gate task's accuracy on the validation rows (each row's answer chosen by "
        "log-likelihood over the task's choices, as lm-eval does; ties go to the lower "
        "loss). accuracy needs a multiple-choice gate task of the recipe's own.",
    )
    early_stopping_min_delta: Float = Field(
        0.01, ge=0.0, description="A new best must improve on the best so far by more than "
        "this: the validation loss lower, or the validation accuracy higher.",
    )
    gradient_accumulation_steps: Int = Field(1, ge=1, le=1024)
    max_seq_len: Int = Field(256, ge=16, le=131072)
    weight_decay: Float = Field(0.0, ge=0.0, le=1.0)
    seed: Int = 42
    num_processes: Int = Field(1, ge=1, le=1024)
    logging_steps: Int = Field(5, ge=1)
    max_grad_norm: Float = Field(1.0, gt=0.0, description="Gradients are clipped to this norm.")
    grad_norm_limit: Float = Field(
        1e4, gt=0.0, description="A gradient norm above this (before clipping) stops the job.",
    )
    eval_steps: Annotated[int, Field(ge=1), NUMBER, Tag("int")] | None = Field(
        None, description="Validation loss every N optimizer steps (besides the end); "
        "None: only at the end.",
    )
    gradient_checkpointing: Bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% "
        "more compute; for long sequences or large models.",
    )
    packing: Bool = Field(
        True, description="Padding-free batches: a micro-batch's examples side by side in one "
        "row, each attending only to itself. Off: each batch is padded to its longest example.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        AUTO, description="auto: bf16 autocast where the training node computes bf16 "
        "natively (a CUDA GPU with bf16; a CPU with AVX-512 BF16 or AMX), fp32 elsewhere. "
        "fp32: full precision everywhere. bf16: autocast everywhere (slow on CPUs without "
        "bf16 instructions). Under bf16 the frozen base weights are held in bf16; the "
        "adapter's weights and the optimizer state stay fp32.",
    )
    checkpoint_steps: Annotated[int, Field(ge=1), NUMBER, Tag("int")] | None = Field(
        100, description="Resumable checkpoint every N optimizer steps; None: only on "
        "SIGTERM.",
    )

    @model_validator(mode="after")
    def check_values(self) -> TrainSection:
        """Bounds of the numeric values (`auto` has none), and what early stopping needs."""
        if isinstance(self.learning_rate, float) and not 0.0 < self.learning_rate <= 1e-2:
            raise ValueError("train.learning_rate: must be above 0 and at most 0.01, or auto")
        if isinstance(self.batch_size, int) and not 1 <= self.batch_size <= 1024:
            raise ValueError("train.batch_size: must be 1 to 1024, or auto")
        if isinstance(self.epochs, float) and not 0.0 < self.epochs <= 100:
            raise ValueError("train.epochs: must be above 0 and at most 100, or auto")
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError("train.early_stopping_patience: needs train.eval_steps (how "
                             "often the validation loss is measured)")
        if self.early_stopping_metric == "accuracy" and self.early_stopping_patience is None:
            raise ValueError("train.early_stopping_metric: accuracy needs "
                             "train.early_stopping_patience (it picks the step early stopping "
                             "keeps)")
        if self.early_stopping_metric == "accuracy" and self.method.preference:
            raise ValueError(f"train.early_stopping_metric: accuracy is not for train.method "
                             f"{self.method}; a pair has no choices to score")
        if self.class_balance and self.method.preference:
            raise ValueError(f"train.class_balance: not for train.method {self.method}; a "
                             "pair has two answers, not one class")
        return self

    def picked(self) -> bool:
        """True once nothing is left to pick: every value is a number and max_steps holds."""
        return self.epochs is None and AUTO not in (self.batch_size, self.learning_rate)
