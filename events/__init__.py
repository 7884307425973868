"""The wire contract: what a partner needs to talk to the service over Kafka.

The CloudEvents envelope, one pydantic model per event type, job states, topic names, the
recipe schema carried by requests, signing, the bus and the client. Files exchanged with the
stages live in `stagefiles`.
"""
