"""workers: live worker processes (host, device, job kinds, last beat), for the app and `rmstudio workers`

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 13:16:50.522376
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('workers',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('device', sa.String(length=50), nullable=False),
    sa.Column('kinds', sa.JSON(), nullable=True),
    sa.Column('every_s', sa.Float(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seen_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_workers'))
    )


def downgrade() -> None:
    op.drop_table('workers')
