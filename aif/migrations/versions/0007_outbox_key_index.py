"""index the outbox by job, for a job's event stream (GET /v1/jobs/{id}/events)

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_key", "outbox", ["key"])


def downgrade() -> None:
    op.drop_index("ix_outbox_key", "outbox")
