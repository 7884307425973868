"""The JSON Schema of the AI-Act pack (a file beside each adapter, not an event), committed
for partners who read the pack without Python; a test fails when it drifts from the model.

    python -m stagefiles.schema_export    # rewrite it after changing the model
"""

from __future__ import annotations

from pathlib import Path

from events.schema_export import schemas, write
from stagefiles.ai_act import AiActPack

SCHEMA_DIR = Path(__file__).parent / "schemas"


def generated() -> dict[str, str]:
    return schemas({"ai_act_pack": AiActPack})


if __name__ == "__main__":
    write(generated(), SCHEMA_DIR)
