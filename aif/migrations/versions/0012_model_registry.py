"""model registry: one row per handed-off adapter version

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("served_name", sa.String(300), nullable=False, unique=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("base_model", sa.String(500), nullable=False),
        sa.Column("base_revision", sa.String(64), nullable=False),
        sa.Column("adapter_uri", sa.Text(), nullable=False),
        sa.Column("files_sha256", sa.JSON(), nullable=False),
        sa.Column("merged_uri", sa.Text(), nullable=True),
        sa.Column("merged_files_sha256", sa.JSON(), nullable=False),
        sa.Column("adapter", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("gate_reason", sa.Text(), nullable=False),
        sa.Column("serving", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("tenant", "name", "version", name="uq_models_version"),
    )
    op.create_index("ix_models_tenant", "models", ["tenant"])
    op.create_index("ix_models_job_id", "models", ["job_id"])


def downgrade() -> None:
    op.drop_table("models")
