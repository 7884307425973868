#!/usr/bin/env bash
# GPU check (issue 28): bf16 LoRA, QLoRA (NF4), evaluation scoring and the evaluation stage on
# random-initialised 1B and 8B Llama shapes; tokens/s, MFU against the card's dense bf16 peak,
# peak memory.
# No network, no weights to download; at most 8 minutes. Body: benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh --out gpu.json        # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry --out dry.json  # tiny shapes on CPU (or GPU_CHECK_DRY=1)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
    python="$(command -v python3)"
fi
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
timeout 480 "$python" -m benchmarks.gpu_check "$@"
