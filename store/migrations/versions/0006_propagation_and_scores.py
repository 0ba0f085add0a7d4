"""propagated-proposal provenance, active-learning scores, the project's strategy

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 16:45:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_label_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_label_source_label", "label", ["source_label_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_label_source_label_id"), ["source_label_id"],
                              unique=False)

    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strategy", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))

    op.create_table(
        "itemscore",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("strategy", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["item.id"]),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.ForeignKeyConstraint(["model_version_id"], ["modelversion.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("itemscore", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_itemscore_item_id"), ["item_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_itemscore_project_id"), ["project_id"],
                              unique=False)
        batch_op.create_index("ix_itemscore_item_created", ["item_id", "created_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("itemscore", schema=None) as batch_op:
        batch_op.drop_index("ix_itemscore_item_created")
        batch_op.drop_index(batch_op.f("ix_itemscore_project_id"))
        batch_op.drop_index(batch_op.f("ix_itemscore_item_id"))
    op.drop_table("itemscore")
    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.drop_column("strategy")
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_label_source_label_id"))
        batch_op.drop_constraint("fk_label_source_label", type_="foreignkey")
        batch_op.drop_column("source_label_id")
