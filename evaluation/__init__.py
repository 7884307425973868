"""Evaluation stage: score the base model and the tuned adapter with lm-eval.

It runs as its own worker (`python -m evaluation.run spec.json`, the entry point; the lm-eval
calls are in `evaluation.harness`) so that scoring happens in the same way on a laptop, a
Slurm node or a Kubernetes pod, and it reports scores without deciding anything:
`evaluation.gate` is the orchestrator's judgement on those scores. It uses lm-eval's Python
API, and `evaluation.harness.cli_command` gives the identical command line so anyone can
reproduce a stored score with the stock `lm_eval` tool.
"""
