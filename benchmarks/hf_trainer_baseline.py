"""The plain script a user would write instead of a recipe: HF Trainer + PEFT, padded batches.

    .venv/bin/python -m benchmarks.hf_trainer_baseline --model DIR --data FILE.jsonl \
        --prompt-template T --completion-template C [--padding max_length|longest]

Deliberately ordinary: prompt and completion joined and tokenised with the tokenizer's own
padding (`max_length`, as the transformers tutorials do, or the collator's dynamic `longest`),
loss on every real token, same LoRA settings and optimizer as the recipe, bf16 on a GPU (and
on a CPU with --bf16: the model loaded in bf16 as the PEFT and TRL examples load it, peft's
LoRA weights in fp32, Trainer's autocast), fp32 otherwise. Prints one JSON line:
real (non-padding) tokens per second of the training loop and the peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch
from jinja2.sandbox import SandboxedEnvironment
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from finetune.save import peak_memory


class _CountingTrainer(Trainer):
    """Counts the real tokens of the batches actually trained on (the data loader reads one
    batch ahead, so counting in the collator would over-count)."""

    real_tokens = 0

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any) -> torch.Tensor:
        self.real_tokens += int(inputs["attention_mask"].sum())
        return super().training_step(model, inputs, *args)


class _Clock(TrainerCallback):
    """Times the training loop only, as the recipe trainer's tokens_per_s does."""

    started = ended = 0.0

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self.ended = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--prompt-template", required=True)
    parser.add_argument("--completion-template", required=True)
    parser.add_argument("--padding", choices=["max_length", "longest"], default="max_length")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=96)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 weights and autocast on a CPU too (always on a GPU)")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    env = SandboxedEnvironment()
    prompt, completion = (env.from_string(t) for t in
                          (args.prompt_template, args.completion_template))
    with open(args.data, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    texts = [prompt.render(r) + completion.render(r) + tokenizer.eos_token for r in rows]
    padding = "max_length" if args.padding == "max_length" else False
    encoded = tokenizer(texts, truncation=True, max_length=args.max_len, padding=padding)
    dataset = [{"input_ids": i, "attention_mask": m}
               for i, m in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)]

    cuda = torch.cuda.is_available()
    bf16 = cuda or args.bf16
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha,
                                             lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    clock = _Clock()
    trainer = _CountingTrainer(
        model=model,
        args=TrainingArguments(
            output_dir="/tmp/hf-trainer-baseline", max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            lr_scheduler_type="cosine", warmup_steps=math.ceil(0.05 * args.steps),
            logging_steps=10,
            save_strategy="no", report_to=[], bf16=bf16, use_cpu=not cuda,
            dataloader_num_workers=0, seed=42,
        ),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[clock],
    )
    trainer.train()
    tokens = trainer.real_tokens
    print(json.dumps({"tokens_per_s": tokens / (clock.ended - clock.started),
                      "real_tokens": tokens, "peak_memory_mb": peak_memory()}))


if __name__ == "__main__":
    main()
