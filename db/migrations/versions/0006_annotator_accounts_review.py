"""annotator accounts (tiers, personal links, crowd campaigns) and review (flags, exclusions, relabel requests, audit)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 23:40:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ANNOTATOR_COLUMNS = (
    lambda: sa.Column('token_hash', sa.String(length=64), nullable=True),
    lambda: sa.Column('invited_at', sa.DateTime(timezone=True), nullable=True),
    lambda: sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    lambda: sa.Column('campaign_id', sa.Integer(), nullable=True),
    lambda: sa.Column('worker_id', sa.String(length=100), nullable=True),
)


def upgrade() -> None:
    op.create_table('campaigns',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns')),
    sa.UniqueConstraint('name', name=op.f('uq_campaigns_name'))
    )
    op.create_index(op.f('ix_campaigns_token_hash'), 'campaigns', ['token_hash'], unique=True)

    # Plain ADD COLUMNs, no constraint: a batch rebuild of annotators (which labels and rankings reference) fails
    # on SQLite with foreign keys on.
    for col in ANNOTATOR_COLUMNS:
        op.add_column('annotators', col())
    op.create_index(op.f('ix_annotators_campaign_id'), 'annotators', ['campaign_id'], unique=False)
    op.create_index(op.f('ix_annotators_token_hash'), 'annotators', ['token_hash'], unique=True)

    op.add_column('labels', sa.Column('excluded', sa.Boolean(), server_default=sa.false(), nullable=False))

    op.create_table('review_flags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Enum('broken', 'offensive', 'needs_expertise', 'wrong_label', 'other', name='flag_reason', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotators.id'], name=op.f('fk_review_flags_annotator_id_annotators')),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparisons.id'], name=op.f('fk_review_flags_comparison_id_comparisons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['label_id'], ['labels.id'], name=op.f('fk_review_flags_label_id_labels'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_flags'))
    )
    op.create_index(op.f('ix_review_flags_comparison_id'), 'review_flags', ['comparison_id'], unique=False)
    op.create_index(op.f('ix_review_flags_label_id'), 'review_flags', ['label_id'], unique=False)

    op.create_table('relabel_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('done_label_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparisons.id'], name=op.f('fk_relabel_requests_comparison_id_comparisons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['done_label_id'], ['labels.id'], name=op.f('fk_relabel_requests_done_label_id_labels'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['label_id'], ['labels.id'], name=op.f('fk_relabel_requests_label_id_labels'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_relabel_requests'))
    )
    op.create_index(op.f('ix_relabel_requests_comparison_id'), 'relabel_requests', ['comparison_id'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('label_id', sa.Integer(), nullable=True),
    sa.Column('comparison_id', sa.Integer(), nullable=True),
    sa.Column('annotator_id', sa.Integer(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    op.create_index(op.f('ix_audit_events_annotator_id'), 'audit_events', ['annotator_id'], unique=False)
    op.create_index(op.f('ix_audit_events_comparison_id'), 'audit_events', ['comparison_id'], unique=False)
    op.create_index(op.f('ix_audit_events_created_at'), 'audit_events', ['created_at'], unique=False)
    op.create_index(op.f('ix_audit_events_label_id'), 'audit_events', ['label_id'], unique=False)


def downgrade() -> None:
    op.drop_table('audit_events')
    op.drop_table('relabel_requests')
    op.drop_table('review_flags')
    op.drop_column('labels', 'excluded')
    op.drop_index(op.f('ix_annotators_token_hash'), table_name='annotators')
    op.drop_index(op.f('ix_annotators_campaign_id'), table_name='annotators')
    for col in ANNOTATOR_COLUMNS:  # a native DROP COLUMN on SQLite (3.35+), no table rebuild
        op.drop_column('annotators', col().name)
    op.drop_table('campaigns')
