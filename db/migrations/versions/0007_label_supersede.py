"""labels.superseded_by_id: a verdict its annotator changed points at the label that replaced it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 00:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, no constraint: a batch rebuild of labels, which review flags reference, fails on SQLite with
    # foreign keys on.
    op.add_column('labels', sa.Column('superseded_by_id', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('labels', 'superseded_by_id')  # a native DROP COLUMN on SQLite (3.35+), no table rebuild
