"""Topic names, all under one configurable prefix so several deployments can share a cluster."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = "aif"

    @property
    def requests(self) -> str:
        """Fine-tuning and cancel requests from partners."""
        return f"{self.prefix}.requests"

    @property
    def status(self) -> str:
        """Job status transitions and progress."""
        return f"{self.prefix}.status"

    @property
    def models(self) -> str:
        """Evaluation results and model-ready hand-offs for the inference module."""
        return f"{self.prefix}.models"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dlq"

    def all(self) -> list[str]:
        return [self.requests, self.status, self.models, self.dead_letter]
