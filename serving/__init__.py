"""Serving-compatibility stage: proves, in a fresh process, that an inference server can load
a tuned adapter and that it behaves as evaluated, before the service announces it.

Like the other stages it reads a frozen spec and answers only through files beside it, so
the orchestrator never imports torch or peft.
"""
