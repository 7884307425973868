"""The stage-file contract: what the shell (`aif`) and the stages it launches (`finetune`,
`evaluation`, `serving`) both read and write, and neither may import from the other.

The job specs and result files (`jobspec`), the pre-flight report, a recipe's task YAMLs,
the AI-Act pack and provenance beside an adapter, its checksums, the compute count, remote
data fetching and archive checks (the orchestrator checks, the pre-flight stage downloads),
content hashes, crash points and the gate's sign test. What partners see on the wire is
`events`; this package may import it, never the reverse.
"""
