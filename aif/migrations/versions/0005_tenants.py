"""tenants, their API keys, event-signing keys and uploaded files; per-tenant de-duplication

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    for table, secret in (("api_keys", sa.Column("secret_sha256", sa.String(64),
                                                 nullable=False)),
                          ("signing_keys", sa.Column("secret", sa.String(64), nullable=False))):
        columns = [
            sa.Column("id", sa.String(16), primary_key=True),
            sa.Column("tenant", sa.String(63),
                      sa.ForeignKey("tenants.name", ondelete="CASCADE"), nullable=False),
            secret,
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        ]
        if table == "api_keys":
            columns.insert(2, sa.Column("role", sa.String(10), nullable=False))
        op.create_table(table, *columns)
        op.create_index(f"ix_{table}_tenant", table, ["tenant"])


    op.create_table(
        "files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(63), sa.ForeignKey("tenants.name", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_files_tenant", "files", ["tenant"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_request", type_="unique")
        batch_op.create_unique_constraint("uq_jobs_tenant_request",
                                          ["tenant", "request_source", "request_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_tenant_request", type_="unique")
        batch_op.create_unique_constraint("uq_jobs_request", ["request_source", "request_id"])
    op.drop_index("ix_files_tenant", "files")
    op.drop_table("files")
    for table in ("signing_keys", "api_keys"):
        op.drop_index(f"ix_{table}_tenant", table)
        op.drop_table(table)
    op.drop_table("tenants")
