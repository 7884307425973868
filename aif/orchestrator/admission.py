"""The front door: every check a request can be refused by on its own, before any job runs.

Intake (Kafka) and `POST /v1/jobs` (HTTP) both call `read_event` on the request's bytes and
then `screen` on the event, so a partner on either way in is refused by the same rules with
the same reason: size and JSON depth of the event, the request's schema, the recipe (with a
did-you-mean), the effective recipe's trainability, the spelling of its data references (see
`references`: nothing is resolved) and the tenant's quota. The worker's validation (data,
tokenizer, pre-flight report) needs files and models and comes later. Reasons name the field
and the rule, never the request's values or a server path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from pydantic import ValidationError
from sqlalchemy.orm import Session

from aif import quotas
from aif.db.models import utcnow
from aif.db.session import transaction_cache
from aif.orchestrator.references import References
from aif.settings import QuotaLimits
from events.envelope import MAX_EVENT_BYTES, CloudEvent, EnvelopeError, describe_validation_error
from events.messages import FineTuneRequested
from events.recipe import Recipe, RecipeError
from events.recipe_train import AUTO
from recipes import load_recipe


class Rule(StrEnum):
    """What kind of rule refused a request; the HTTP API answers each with its own status."""

    size = "size"  # the event is over MAX_EVENT_BYTES: 413
    envelope = "envelope"  # not a CloudEvent we can read (JSON, depth, attributes): 422
    schema = "schema"  # the data is not a FineTuneRequested: 422
    request = "request"  # recipe, trainability, data references: 422
    quota = "quota"  # the tenant has nothing left of a limit: 429


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: `reason` is `field: rule` clauses joined by `; `."""

    reason: str
    rule: Rule
    request: FineTuneRequested | None = None  # the request, where its schema was valid

    @property
    def field(self) -> str | None:
        """The field the first clause names (None for rules of the whole event)."""
        if self.rule in (Rule.size, Rule.envelope):
            return None
        return self.reason.split(":", 1)[0]


def read_event(raw: bytes | None) -> CloudEvent | Refusal:
    """The CloudEvent in `raw`, its size and depth checked on the bytes before parsing."""
    try:
        return CloudEvent.from_bytes(raw)
    except EnvelopeError as exc:
        too_large = raw is not None and len(raw) > MAX_EVENT_BYTES
        return Refusal(str(exc), Rule.size if too_large else Rule.envelope)


def warmup_steps(recipe: Recipe) -> int:
    """As `finetune.train` computes it for the scheduler."""
    return math.ceil(recipe.train.warmup_ratio * recipe.train.max_steps)


def trainability_problems(recipe: Recipe, max_processes: int | None = None) -> list[str]:
    """Each rule the effective recipe breaks, as `field: rule`."""
    problems = []
    if recipe.train.epochs is None and recipe.train.max_steps <= warmup_steps(recipe):
        problems.append("train.max_steps: must be above the warmup steps "
                        "(ceil(train.warmup_ratio x train.max_steps)), or no step trains at "
                        "the full learning rate")
    if recipe.train.learning_rate != AUTO and not float(recipe.train.learning_rate) > 0:
        problems.append("train.learning_rate: must be above zero")
    if max_processes is not None:
        for section in ("train", "eval"):
            if getattr(recipe, section).num_processes > max_processes:
                problems.append(f"{section}.num_processes: at most {max_processes} on this "
                                "service")
    return problems


def quota_problems(session: Session, tenant: str, defaults: QuotaLimits) -> list[str]:
    """Each limit of `tenant` that no job could fit in now, as `quota.<limit>: rule`.

    Only what a request alone can be refused for: the concurrent jobs are taken, or nothing
    is left of this month's tokens or device-hours. Whether the job's own estimate fits is
    known after its pre-flight, when the worker checks again under the tenant's quota lock.
    """
    found = quotas.limits(session, tenant, defaults)
    if not found:
        return []
    used = quotas.usage(session, tenant, utcnow())
    problems = []
    if (limit := found.get("concurrent_jobs")) is not None and used.running_jobs >= limit.value:
        problems.append(f"quota.concurrent_jobs: this tenant's queued or running jobs: "
                        f"{used.running_jobs} ({limit} concurrent jobs); submit again once "
                        "one has ended")
    if (limit := found.get("monthly_tokens")) is not None and used.tokens >= limit.value:
        problems.append(f"quota.monthly_tokens: no tokens left this month ({limit} tokens a "
                        "month)")
    if (limit := found.get("monthly_device_hours")) is not None and (
            used.device_hours >= limit.value):
        problems.append(f"quota.monthly_device_hours: no device-hours left this month ({limit} "
                        "device-h a month)")
    return problems


class Admission:
    """The checks of a request's effective recipe; `max_processes` None: no limit;
    `references` None: data references are left to the worker's validation;
    `quota_defaults` None: quotas are left to the worker (else the site's defaults)."""

    def __init__(self, max_processes: int | None = None,
                 references: References | None = None,
                 quota_defaults: QuotaLimits | None = None) -> None:
        self.max_processes, self.references = max_processes, references
        self.quota_defaults = quota_defaults

    def problems(self, request: FineTuneRequested, tenant: str,
                 load: Callable[[str], Recipe] = load_recipe) -> list[str]:
        """Each rule the request of `tenant` breaks that keeps it from ever training;
        `load` finds a shipped recipe by name."""
        try:
            recipe = request.recipe_inline or load(request.recipe or "")
            if request.overrides.model_dump(exclude_none=True):  # else it only validates again
                recipe = request.overrides.apply(recipe)
        except RecipeError as exc:
            return [str(exc)]
        problems = trainability_problems(recipe, self.max_processes)
        if self.references is not None:
            data = recipe.data.with_source(request.train_file, request.dataset).with_eval(
                request.eval_file, request.eval_split)
            problems += self.references.refusals(
                request, recipe.model_copy(update={"data": data}), tenant)
        return problems

    def refusal(self, request: FineTuneRequested, tenant: str) -> str | None:
        """Why the request of `tenant` cannot train, or None if it may be stored."""
        return "; ".join(self.problems(request, tenant)) or None


def screen(session: Session, event: CloudEvent, tenant: str, admission: Admission | None
           ) -> FineTuneRequested | Refusal:
    """The request a fine-tuning event of `tenant` carries, or why it is refused: its schema
    always, the rules of `admission` where given (callers that store requests directly
    leave them to the worker's validation)."""
    try:
        request = FineTuneRequested.model_validate(event.data)
    except ValidationError as exc:
        return Refusal(describe_validation_error(exc, "data", FineTuneRequested), Rule.schema)
    if admission is None:
        return request
    if problems := admission.problems(request, tenant, partial(_recipe_once, session)):
        return Refusal("; ".join(problems), Rule.request, request)
    if admission.quota_defaults is not None and (
            problems := _quota_problems_once(session, tenant, admission.quota_defaults)):
        return Refusal("; ".join(problems), Rule.quota, request)
    return request


def _recipe_once(session: Session, name: str) -> Recipe:
    """`load_recipe`, once per name and transaction: it looks at every recipe file for
    changes (a glob and a stat each), which cost intake more per request than storing it."""
    seen = transaction_cache(session, "aif.admission.recipes")
    if name not in seen:
        seen[name] = load_recipe(name)  # an unknown name raises, and is looked for again
    return seen[name]


_QUOTA_SEEN = "aif.admission.quota_problems"


def _quota_problems_once(session: Session, tenant: str, defaults: QuotaLimits) -> list[str]:
    """`quota_problems` of `tenant`, counted once per transaction: intake screens a poll's
    records in one, and counting again for each record (a flush of the batch's pending
    inserts, then two queries) cost more than storing it. What the batch adds cannot change
    the count (new jobs are `validating`, without an estimate); a cancel can, so intake
    calls `forget_quota` after one."""
    seen = transaction_cache(session, _QUOTA_SEEN)
    if tenant not in seen:
        seen[tenant] = quota_problems(session, tenant, defaults)
    return seen[tenant]


def forget_quota(session: Session, tenant: str) -> None:
    """Count `tenant`'s quota again at its next request in this transaction (a slot may
    have been freed)."""
    transaction_cache(session, _QUOTA_SEEN).pop(tenant, None)
