"""retry bookkeeping and relayed progress of each job

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column("progress_offsets", sa.JSON(), nullable=True))
        batch_op.create_index("ix_jobs_next_attempt_at", ["next_attempt_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_next_attempt_at")
        batch_op.drop_column("progress_offsets")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("attempts")
