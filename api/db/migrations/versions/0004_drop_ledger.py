"""drop ledger: leases, retries, sidecar snapshot

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drop_objects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version_id", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("options", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_drop_objects_due", ["status", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("drop_objects", schema=None) as batch_op:
        batch_op.drop_index("ix_drop_objects_due")
        batch_op.drop_column("finished_at")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("attempts")
        batch_op.drop_column("options")
        batch_op.drop_column("version_id")
