"""The Alembic migrations build exactly the schema the models declare, on both databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from aif.db.models import Base
from aif.db.session import make_engine, upgrade

pytestmark = pytest.mark.store  # the migrated schema


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    upgrade(db_url)
    with make_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
