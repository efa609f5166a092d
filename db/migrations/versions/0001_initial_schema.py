"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 10:44:41.090983
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('annotators',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('default_source', sa.Enum('expert', 'crowd', 'ai', name='source', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotators')),
    sa.UniqueConstraint('name', name=op.f('uq_annotators_name'))
    )
    op.create_table('app_settings',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_app_settings'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('train', 'rescore', 'import', 'noop', name='job_kind', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='job_status', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('dedupe_key', sa.String(length=100), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.Float(), nullable=True),
    sa.Column('heartbeat_at', sa.Float(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('progress', sa.JSON(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('device', sa.String(length=50), nullable=True),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_created', ['status', 'id'], unique=False)
        batch_op.create_index('uq_jobs_queued_dedupe', ['dedupe_key'], unique=True, sqlite_where=sa.text("status = 'queued' AND dedupe_key IS NOT NULL"), postgresql_where=sa.text("status = 'queued' AND dedupe_key IS NOT NULL"))

    op.create_table('prompts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('history', sa.JSON(), nullable=True),
    sa.Column('category', sa.String(length=100), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prompts')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_prompts_content_hash'))
    )
    with op.batch_alter_table('prompts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_prompts_category'), ['category'], unique=False)

    op.create_table('job_logs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('line', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_logs_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_logs'))
    )
    with op.batch_alter_table('job_logs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_logs_job_id'), ['job_id'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('mode', sa.String(length=20), nullable=False),
    sa.Column('backbone', sa.String(length=500), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('data_snapshot', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('norm_stats', sa.JSON(), nullable=False),
    sa.Column('n_pairs', sa.Integer(), nullable=False),
    sa.Column('n_labels', sa.Integer(), nullable=False),
    sa.Column('ensemble_size', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('device', sa.String(length=50), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_model_versions_job_id_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions'))
    )
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_versions_created_at'), ['created_at'], unique=False)

    op.create_table('rankings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.Enum('expert', 'crowd', 'ai', name='source', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('split', sa.Enum('train', 'test', name='split', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('time_spent_ms', sa.Integer(), nullable=True),
    sa.Column('origin', sa.String(length=300), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotators.id'], name=op.f('fk_rankings_annotator_id_annotators')),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_rankings_prompt_id_prompts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rankings')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_rankings_idempotency_key'))
    )
    with op.batch_alter_table('rankings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rankings_annotator_id'), ['annotator_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rankings_prompt_id'), ['prompt_id'], unique=False)

    op.create_table('responses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_responses_prompt_id_prompts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_responses')),
    sa.UniqueConstraint('prompt_id', 'content_hash', name='uq_responses_prompt_content')
    )
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_responses_prompt_id'), ['prompt_id'], unique=False)

    op.create_table('comparisons',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('response_a_id', sa.Integer(), nullable=False),
    sa.Column('response_b_id', sa.Integer(), nullable=False),
    sa.Column('label_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_comparisons_prompt_id_prompts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['response_a_id'], ['responses.id'], name=op.f('fk_comparisons_response_a_id_responses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['response_b_id'], ['responses.id'], name=op.f('fk_comparisons_response_b_id_responses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_comparisons')),
    sa.UniqueConstraint('response_a_id', 'response_b_id', name='uq_comparisons_pair')
    )
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.create_index('ix_comparisons_label_count', ['label_count'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparisons_prompt_id'), ['prompt_id'], unique=False)

    op.create_table('ranking_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ranking_id', sa.Integer(), nullable=False),
    sa.Column('response_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['ranking_id'], ['rankings.id'], name=op.f('fk_ranking_items_ranking_id_rankings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['response_id'], ['responses.id'], name=op.f('fk_ranking_items_response_id_responses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ranking_items')),
    sa.UniqueConstraint('ranking_id', 'response_id', name='uq_ranking_items_response')
    )
    with op.batch_alter_table('ranking_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ranking_items_ranking_id'), ['ranking_id'], unique=False)

    op.create_table('response_scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('response_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('std', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_response_scores_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['response_id'], ['responses.id'], name=op.f('fk_response_scores_response_id_responses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_response_scores')),
    sa.UniqueConstraint('model_version_id', 'response_id', name='uq_response_scores_version_response')
    )
    with op.batch_alter_table('response_scores', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_response_scores_model_version_id'), ['model_version_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_response_scores_response_id'), ['response_id'], unique=False)

    op.create_table('labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.Enum('a', 'b', 'tie', 'both_bad', name='outcome', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('strength', sa.Integer(), nullable=True),
    sa.Column('source', sa.Enum('expert', 'crowd', 'ai', name='source', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('annotator_id', sa.Integer(), nullable=False),
    sa.Column('left', sa.Enum('a', 'b', name='side', native_enum=False, create_constraint=True, length=16), nullable=True),
    sa.Column('time_spent_ms', sa.Integer(), nullable=True),
    sa.Column('split', sa.Enum('train', 'test', name='split', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('origin', sa.String(length=300), nullable=True),
    sa.Column('extra', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotators.id'], name=op.f('fk_labels_annotator_id_annotators')),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparisons.id'], name=op.f('fk_labels_comparison_id_comparisons'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labels')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_labels_idempotency_key'))
    )
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.create_index('ix_labels_annotator_created', ['annotator_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_labels_annotator_id'), ['annotator_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_labels_comparison_id'), ['comparison_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_labels_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_labels_source'), ['source'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_labels_source'))
        batch_op.drop_index(batch_op.f('ix_labels_created_at'))
        batch_op.drop_index(batch_op.f('ix_labels_comparison_id'))
        batch_op.drop_index(batch_op.f('ix_labels_annotator_id'))
        batch_op.drop_index('ix_labels_annotator_created')

    op.drop_table('labels')
    with op.batch_alter_table('response_scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_response_scores_response_id'))
        batch_op.drop_index(batch_op.f('ix_response_scores_model_version_id'))

    op.drop_table('response_scores')
    with op.batch_alter_table('ranking_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ranking_items_ranking_id'))

    op.drop_table('ranking_items')
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_comparisons_prompt_id'))
        batch_op.drop_index('ix_comparisons_label_count')

    op.drop_table('comparisons')
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_responses_prompt_id'))

    op.drop_table('responses')
    with op.batch_alter_table('rankings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rankings_prompt_id'))
        batch_op.drop_index(batch_op.f('ix_rankings_annotator_id'))

    op.drop_table('rankings')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_versions_created_at'))

    op.drop_table('model_versions')
    with op.batch_alter_table('job_logs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_logs_job_id'))

    op.drop_table('job_logs')
    with op.batch_alter_table('prompts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_prompts_category'))

    op.drop_table('prompts')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_jobs_queued_dedupe', sqlite_where=sa.text("status = 'queued' AND dedupe_key IS NOT NULL"), postgresql_where=sa.text("status = 'queued' AND dedupe_key IS NOT NULL"))
        batch_op.drop_index('ix_jobs_status_created')

    op.drop_table('jobs')
    op.drop_table('app_settings')
    op.drop_table('annotators')

