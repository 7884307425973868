"""The event contract: the only code the stages (orchestrator, fine-tuning, evaluation) share.

Everything a partner needs to talk to the service over Kafka lives here: the CloudEvents
envelope, one pydantic model per event type, topic names, the recipe schema carried by
requests, and the job specs handed to worker processes.
"""
