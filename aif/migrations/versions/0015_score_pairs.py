"""the gate's paired comparisons with every score: tuned against base and against the
constant majority answer, document by document

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_JSONS = ("vs_base", "vs_majority")


def upgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        for name in _JSONS:
            batch.add_column(sa.Column(name, sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        for name in _JSONS:
            batch.drop_column(name)
