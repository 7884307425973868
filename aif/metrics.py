"""Prometheus metrics of the service, computed at scrape time.

The job figures come from the job store on every scrape, not from counters in one process's
memory, so every orchestrator and web replica reports the same numbers and a restart loses
none. No metric has a tenant label: `/metrics` needs no key and reveals nothing of a tenant.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import DeadLetter, Job, Outbox, Transition
from events.bus import KafkaConfig
from events.states import JobState

log = logging.getLogger(__name__)

STAGES = (JobState.validating, JobState.queued, JobState.training, JobState.evaluating,
          JobState.handing_off)
BUCKETS_S = (10, 60, 300, 900, 1800, 3600, 7200, 14_400, 43_200, 86_400)
RECENT_TRAININGS = 50
"""Training tokens/s is the mean of this many most recently updated trained jobs."""


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite returns naive UTC times


class JobStoreCollector(Collector):
    """Jobs by state, the queue, stage durations, training speed, hand-off failures, DLQ."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            yield from self._jobs(session)
            yield from self._stage_durations(session)
            yield from self._training(session)
            failed_handoffs = session.scalar(select(func.count()).select_from(Transition).where(
                Transition.from_state == JobState.handing_off,
                Transition.to_state == JobState.failed))
            dead = session.scalar(select(func.count()).select_from(DeadLetter))
            pending = session.scalar(select(func.count()).select_from(Outbox).where(
                Outbox.published_at.is_(None)))
        yield CounterMetricFamily("aif_handoff_failures", "Jobs that failed in hand-off.",
                                  value=failed_handoffs or 0)
        yield CounterMetricFamily("aif_dead_letters", "Request records sent to the "
                                  "dead-letter topic.", value=dead or 0)
        yield GaugeMetricFamily("aif_outbox_pending", "Events not yet published.",
                                value=pending or 0)

    def _jobs(self, session: Session) -> Iterator[Metric]:
        counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        jobs = GaugeMetricFamily("aif_jobs", "Jobs in the store by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily("aif_queue_depth", "Jobs waiting for a worker.",
                                value=counts.get(JobState.queued.value, 0))
        oldest = session.scalar(select(func.min(Job.updated_at)).where(
            Job.state == JobState.queued))
        age = (datetime.now(UTC) - _aware(oldest)).total_seconds() if oldest else 0.0
        yield GaugeMetricFamily("aif_queue_oldest_age_seconds",
                                "Time the longest-waiting queued job has waited.", value=age)

    def _stage_durations(self, session: Session) -> Iterator[Metric]:
        """Time from entering a state to leaving it, over every ended visit in the store."""
        ended = func.lead(Transition.at, type_=Transition.at.type).over(
            partition_by=Transition.job_id, order_by=Transition.id)
        visits = select(Transition.to_state.label("stage"), Transition.at.label("began"),
                        ended.label("ended")).subquery()
        rows = session.execute(select(visits).where(
            visits.c.ended.is_not(None), visits.c.stage.in_([s.value for s in STAGES])))
        durations: dict[str, list[float]] = {s.value: [] for s in STAGES}
        for stage, began, end in rows:
            durations[stage].append((_aware(end) - _aware(began)).total_seconds())
        family = HistogramMetricFamily(
            "aif_stage_duration_seconds", "Time jobs spent in each stage (evaluating: the "
            "evaluation's duration).", labels=["stage"])
        for stage, values in durations.items():
            buckets = [(str(b), sum(v <= b for v in values)) for b in BUCKETS_S]
            family.add_metric([stage], [*buckets, ("+Inf", len(values))], sum(values))
        yield family

    def _training(self, session: Session) -> Iterator[Metric]:
        measured = session.scalars(select(Job.measured).where(Job.measured.is_not(None))
                                   .order_by(Job.updated_at.desc()).limit(RECENT_TRAININGS))
        speeds = [m["tokens_per_s"] for m in measured if m.get("tokens_per_s")]
        yield GaugeMetricFamily(
            "aif_training_tokens_per_second", "Mean training throughput (all processes) of "
            f"the last {RECENT_TRAININGS} trained jobs.",
            value=statistics.fmean(speeds) if speeds else 0.0)


class ConsumerLagCollector(Collector):
    """Request records not yet consumed by the orchestrators' consumer group."""

    def __init__(self, kafka: KafkaConfig, group: str, topic: str) -> None:
        self.kafka, self.group, self.topic = kafka, group, topic
        self._admin: KafkaAdminClient | None = None
        self._consumer: KafkaConsumer | None = None
        self._lock = threading.Lock()  # scrapes run in threads; kafka clients are not safe

    def collect(self) -> Iterator[Metric]:
        try:
            with self._lock:
                lag = self._lag()
        except Exception as exc:  # the broker away: the scrape still serves the job figures
            log.warning("metrics: consumer lag unavailable: %s", exc)
            return
        family = GaugeMetricFamily("aif_consumer_lag", "Request records not yet consumed, "
                                   "by partition.", labels=["partition"])
        for partition, behind in sorted(lag.items()):
            family.add_metric([str(partition)], behind)
        yield family

    def _lag(self) -> dict[int, int]:
        if self._admin is None or self._consumer is None:
            self._admin = KafkaAdminClient(**self.kafka.client_kwargs())
            self._consumer = KafkaConsumer(**self.kafka.client_kwargs())
        partitions = [TopicPartition(self.topic, p)
                      for p in self._consumer.partitions_for_topic(self.topic) or ()]
        ends = self._consumer.end_offsets(partitions)
        committed = self._admin.list_group_offsets({self.group: partitions}).get(self.group, {})
        return {tp.partition: ends[tp] - max(committed[tp].offset, 0) if tp in committed
                else ends[tp] for tp in partitions}

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                client.close()


def registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own per app: the web app and the orchestrator in one process (`aif
    up`) each serve theirs, and tests build several."""
    reg = CollectorRegistry()
    for collector in collectors:
        reg.register(collector)
    return reg
