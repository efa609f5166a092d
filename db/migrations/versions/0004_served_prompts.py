"""served_prompts: prompts the reward server scored responses to, for the Coverage tab

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 15:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('served_prompts',
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hash', name=op.f('pk_served_prompts'))
    )
    op.create_index(op.f('ix_served_prompts_last_seen'), 'served_prompts', ['last_seen'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_served_prompts_last_seen'), table_name='served_prompts')
    op.drop_table('served_prompts')
