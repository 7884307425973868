"""class figures with every score: majority and chance baselines, macro-F1, per-class recall

Revision ID: 0014
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

_FLOATS = ("majority", "chance", "base_macro_f1", "tuned_macro_f1")
_JSONS = ("base_recall", "tuned_recall")


def upgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        for name in _FLOATS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        for name in _JSONS:
            batch.add_column(sa.Column(name, sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        for name in (*_FLOATS, *_JSONS):
            batch.drop_column(name)
