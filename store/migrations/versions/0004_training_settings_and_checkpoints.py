"""project training settings, job checkpoints

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 12:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.add_column(sa.Column("training", sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("checkpoint", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("checkpoint")
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.drop_column("training")
