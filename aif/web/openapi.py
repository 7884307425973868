"""The HTTP API's OpenAPI document, committed as `openapi.json` so partners need no running
service to read or generate clients from it.

    python -m aif.web.openapi    # rewrite the file after changing a route or model

A test fails when the committed file and the app drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from aif.settings import Settings
from aif.web.app import create_app

OPENAPI_FILE = Path(__file__).resolve().parents[2] / "openapi.json"


def generated() -> str:
    """The document as text; building the app touches neither database nor broker."""
    return json.dumps(create_app(sessionmaker(), Settings()).openapi(), indent=2) + "\n"


if __name__ == "__main__":
    OPENAPI_FILE.write_text(generated())
