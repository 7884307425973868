"""Topic names, all under one configurable prefix so several deployments can share a cluster.

Partners write requests to one shared topic, where a signature proves the tenant
(`events.signing`). What the service says back about a job goes to that job's tenant's own
topics, `<prefix>.tenant.<tenant>.status` and `.models`: a broker ACL on the prefix
`<prefix>.tenant.<tenant>.` then lets each partner read its own jobs and nobody else's, which
a shared topic filtered by the reader could never guarantee.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = "aif"

    @property
    def requests(self) -> str:
        """Fine-tuning and cancel requests from partners (signed; shared by all tenants)."""
        return f"{self.prefix}.requests"

    @property
    def dead_letter(self) -> str:
        """Refused request records, with the reason: read by the centre's operators only."""
        return f"{self.prefix}.dlq"

    def tenant_prefix(self, tenant: str) -> str:
        """What a broker ACL grants a tenant read access to (PREFIXED resource pattern)."""
        return f"{self.prefix}.tenant.{tenant}."

    def status(self, tenant: str) -> str:
        """Status transitions and progress of the tenant's jobs."""
        return f"{self.tenant_prefix(tenant)}status"

    def models(self, tenant: str) -> str:
        """Evaluation results and model hand-offs of the tenant's jobs."""
        return f"{self.tenant_prefix(tenant)}models"

    def of_tenant(self, tenant: str) -> list[str]:
        return [self.status(tenant), self.models(tenant)]

    def models_pattern(self) -> str:
        """Every tenant's models topic, for a serving layer that subscribes by pattern."""
        return rf"^{re.escape(self.prefix)}\.tenant\.[a-z0-9-]+\.models$"

    def shared(self) -> list[str]:
        """The topics that exist before any tenant does."""
        return [self.requests, self.dead_letter]
