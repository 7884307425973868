"""The service shell: settings, job store, orchestrator, launchers, web app and the `aif` CLI.

It wires the stages together; the stages themselves (`finetune`, `evaluation`) share only the
`events` contract with it and with each other.
"""
