"""The job store's rules, each written once: the state table and its transitions
(`transitions`), the outbox every event goes through (`outbox`), and what others may do to a
job: cancel, reject, retire (`commands`). The orchestrator, the web app, the model registry
and erasure all call these; none of them reaches into another's modules for a store rule."""
