"""item embeddings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:09:19.960119
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "itemembedding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("fm_version", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("blob", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["item.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_id", "fm_version"),
    )
    with op.batch_alter_table("itemembedding", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_itemembedding_fm_version"), ["fm_version"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_itemembedding_item_id"), ["item_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("itemembedding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_itemembedding_item_id"))
        batch_op.drop_index(batch_op.f("ix_itemembedding_fm_version"))

    op.drop_table("itemembedding")
