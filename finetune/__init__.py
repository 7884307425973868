"""LoRA fine-tuning worker.

It runs as its own process (often under `accelerate launch`, possibly on another node), reads
a frozen TrainingSpec and answers only through files in the job directory, so the orchestrator
never imports torch and a crashed or killed training run cannot take the service down with it.
"""
