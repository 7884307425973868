"""The orchestrator: Kafka intake, the job state machine, job workers and the outbox relay."""
