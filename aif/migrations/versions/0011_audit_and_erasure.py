"""append-only audit log; erased-tenant tombstones; the tenant of a dead letter

Revision ID: 0011
Revises: 0010

Planned as 0008 after 0007; 0009 (quotas) and 0010 (web sessions) landed first, so this one
follows them and the history keeps one head.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The database itself refuses to change or remove an audit row, whoever connects.
_PG_FUNCTION = """
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only: % refused', TG_OP;
END $$
"""
_PG_TRIGGER = """
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()
"""
_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER audit_no_{op_name.lower()} BEFORE {op_name} ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only: {op_name} refused'); END"""
    for op_name in ("UPDATE", "DELETE")
]


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(63), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("event_id", sa.String(300), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_audit_tenant", "audit", ["tenant"])
    op.create_index("ix_audit_job_id", "audit", ["job_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)
    op.add_column("tenants", sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("dead_letters", sa.Column("tenant", sa.String(63), nullable=True))
    op.create_index("ix_dead_letters_tenant", "dead_letters", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_tenant", "dead_letters")
    with op.batch_alter_table("dead_letters") as batch_op:
        batch_op.drop_column("tenant")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("erased_at")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_append_only ON audit")
        op.execute("DROP FUNCTION audit_append_only()")
    op.drop_index("ix_audit_job_id", "audit")
    op.drop_index("ix_audit_tenant", "audit")
    op.drop_table("audit")
