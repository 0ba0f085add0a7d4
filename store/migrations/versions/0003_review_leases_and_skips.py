"""review leases and skips

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 04:18:28.686447
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "reviewskip",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["item.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_id", "user_id"),
    )
    with op.batch_alter_table("reviewskip", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviewskip_item_id"), ["item_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reviewskip_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("item", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leased_by", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_item_priority"), ["priority"], unique=False)
        batch_op.create_foreign_key("fk_item_leased_by_user", "user", ["leased_by"], ["id"])

    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.create_index("ix_label_item_kind", ["item_id", "kind"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.drop_index("ix_label_item_kind")

    with op.batch_alter_table("item", schema=None) as batch_op:
        # WARNING: constraint name is None; this directive will fail as
        # rendered.  Add a name, or use a naming convention; see
        # https://alembic.sqlalchemy.org/en/latest/naming.html
        batch_op.drop_constraint("fk_item_leased_by_user", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_item_priority"))
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("leased_by")

    with op.batch_alter_table("reviewskip", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reviewskip_user_id"))
        batch_op.drop_index(batch_op.f("ix_reviewskip_item_id"))

    op.drop_table("reviewskip")
