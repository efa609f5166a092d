"""jobs.kind: 'cv', cross-validation jobs (rmstudio cv and the Train page, run by the worker)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 17:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

OLD = ('train', 'rescore', 'import', 'noop')
NEW = OLD + ('cv',)


def _kind(values: tuple[str, ...]) -> sa.Enum:
    # the CHECK constraint ck_jobs_job_kind: given as existing_type, alembic drops the old one and creates the new
    return sa.Enum(*values, name='job_kind', native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.alter_column('kind', existing_type=_kind(OLD), type_=_kind(NEW), existing_nullable=False)


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind = 'cv'")
    with op.batch_alter_table('jobs') as batch:
        batch.alter_column('kind', existing_type=_kind(NEW), type_=_kind(OLD), existing_nullable=False)
