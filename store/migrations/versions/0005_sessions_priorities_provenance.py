"""server-side sessions, user preferences, job priorities, proposal provenance, series
identity for duplicate imports

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:50:00
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usersession",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("ended_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("end_reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("usersession", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usersession_token_sha256"), ["token_sha256"],
                              unique=True)
        batch_op.create_index(batch_op.f("ix_usersession_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.add_column(sa.Column("preferences", sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.create_index("ix_job_status_priority", ["status", "priority"], unique=False)

    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prompt_model_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_label_prompt_model", "modelversion",
                                    ["prompt_model_id"], ["id"])

    with op.batch_alter_table("volume", schema=None) as batch_op:
        batch_op.add_column(sa.Column("series_uid", sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))
        batch_op.create_index(batch_op.f("ix_volume_series_uid"), ["series_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_volume_blob"), ["blob"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("volume", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_volume_blob"))
        batch_op.drop_index(batch_op.f("ix_volume_series_uid"))
        batch_op.drop_column("series_uid")
    with op.batch_alter_table("label", schema=None) as batch_op:
        batch_op.drop_constraint("fk_label_prompt_model", type_="foreignkey")
        batch_op.drop_column("prompt_model_id")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index("ix_job_status_priority")
        batch_op.drop_column("priority")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_column("preferences")
    with op.batch_alter_table("usersession", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usersession_user_id"))
        batch_op.drop_index(batch_op.f("ix_usersession_token_sha256"))
    op.drop_table("usersession")
