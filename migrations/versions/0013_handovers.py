"""handover: the identity check, actual handover and return times (P-18)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 18:40:00

- handovers: one row per booking that reached the counter: its stage (awaiting_check, matched, stopped,
  handed_over, returned), how many selfie links were granted and by whom last, the recorded outcome
  (match / mismatch / licence_missing), the actual handover and return times and the minutes late.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('handovers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=20), nullable=False),
    sa.Column('reveals', sa.Integer(), nullable=False),
    sa.Column('last_revealed_by_id', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=20), nullable=True),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('checked_by_id', sa.Integer(), nullable=True),
    sa.Column('handed_over_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('handed_over_by_id', sa.Integer(), nullable=True),
    sa.Column('returned_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('returned_by_id', sa.Integer(), nullable=True),
    sa.Column('late_by_minutes', sa.Integer(), nullable=True),
    sa.Column('public_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_handovers_agency_id_agencies')),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_handovers_booking_id_bookings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['checked_by_id'], ['users.id'], name=op.f('fk_handovers_checked_by_id_users')),
    sa.ForeignKeyConstraint(['handed_over_by_id'], ['users.id'], name=op.f('fk_handovers_handed_over_by_id_users')),
    sa.ForeignKeyConstraint(['last_revealed_by_id'], ['users.id'], name=op.f('fk_handovers_last_revealed_by_id_users')),
    sa.ForeignKeyConstraint(['returned_by_id'], ['users.id'], name=op.f('fk_handovers_returned_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_handovers')),
    sa.UniqueConstraint('booking_id', name=op.f('uq_handovers_booking_id')),
    sa.UniqueConstraint('public_id', name=op.f('uq_handovers_public_id'))
    )
    with op.batch_alter_table('handovers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_handovers_agency_id'), ['agency_id'], unique=False)


def downgrade():
    with op.batch_alter_table('handovers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_handovers_agency_id'))
    op.drop_table('handovers')
