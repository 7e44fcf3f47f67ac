"""charges: post-rental charges with their notices, evidence and collection attempts (P-20, P-21)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 02:10:28

- charges: one post-rental charge: kind, amount (VAT inside where it applies), the time it was incurred,
  status (platform_review, noticed, disputed, due, collecting, requires_action, retrying, unpaid, paid, waived,
  withdrawn, expired), the notice's time and outbox messages, due_at (24 hours later), the dispute and the
  disputes team's decision, the collection schedule (attempts, next_attempt_at, the attempt's lease).
- charge_evidence: the agency's evidence and the customer's dispute files (images in the vault).
- charge_payments (payments): one collection attempt under ``charge:<charge>:attempt:<n>``: from the deposit
  hold, off-session from the saved card, or on-session.
- payouts.source: "rental" or "charge:<charge payment>", one payout per booking and source (the unique
  constraint on booking_id alone goes).
- work_items (kind, ref) index: "is there open work for this charge" is asked every sweeper tick.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('charges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('amount_fils', sa.Integer(), nullable=False),
    sa.Column('vat_fils', sa.Integer(), nullable=False),
    sa.Column('collect_fils', sa.Integer(), nullable=False),
    sa.Column('collect_vat_fils', sa.Integer(), nullable=False),
    sa.Column('incurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('raised_by_id', sa.Integer(), nullable=False),
    sa.Column('review_reason', sa.String(length=300), nullable=True),
    sa.Column('reviewed_by_id', sa.Integer(), nullable=True),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notice_sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notice_email_id', sa.String(length=36), nullable=True),
    sa.Column('notice_in_app_id', sa.String(length=36), nullable=True),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('disputed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispute_reason', sa.Text(), nullable=True),
    sa.Column('decision', sa.String(length=10), nullable=True),
    sa.Column('decision_reason', sa.Text(), nullable=True),
    sa.Column('decided_by_id', sa.Integer(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('collecting_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=64), nullable=True),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('paid_via', sa.String(length=12), nullable=True),
    sa.Column('payment_id', sa.Integer(), nullable=True),
    sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('withdrawn_reason', sa.String(length=300), nullable=True),
    sa.Column('public_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_charges_agency_id_agencies')),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_charges_booking_id_bookings')),
    sa.ForeignKeyConstraint(['customer_id'], ['users.id'], name=op.f('fk_charges_customer_id_users')),
    sa.ForeignKeyConstraint(['decided_by_id'], ['users.id'], name=op.f('fk_charges_decided_by_id_users')),
    sa.ForeignKeyConstraint(['raised_by_id'], ['users.id'], name=op.f('fk_charges_raised_by_id_users')),
    sa.ForeignKeyConstraint(['reviewed_by_id'], ['users.id'], name=op.f('fk_charges_reviewed_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charges')),
    sa.UniqueConstraint('public_id', name=op.f('uq_charges_public_id'))
    )
    with op.batch_alter_table('charges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_charges_agency_id'), ['agency_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_charges_booking_id'), ['booking_id'], unique=False)
        batch_op.create_index('ix_charges_customer_status', ['customer_id', 'status'], unique=False)
        batch_op.create_index('ix_charges_status_due', ['status', 'due_at'], unique=False)

    op.create_table('charge_evidence',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('charge_id', sa.Integer(), nullable=False),
    sa.Column('blob_id', sa.Integer(), nullable=False),
    sa.Column('side', sa.String(length=10), nullable=False),
    sa.Column('uploaded_by_id', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('public_id', sa.String(length=36), nullable=False),
    sa.ForeignKeyConstraint(['blob_id'], ['blobs.id'], name=op.f('fk_charge_evidence_blob_id_blobs')),
    sa.ForeignKeyConstraint(['charge_id'], ['charges.id'], name=op.f('fk_charge_evidence_charge_id_charges'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['uploaded_by_id'], ['users.id'], name=op.f('fk_charge_evidence_uploaded_by_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charge_evidence')),
    sa.UniqueConstraint('public_id', name=op.f('uq_charge_evidence_public_id'))
    )
    with op.batch_alter_table('charge_evidence', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_charge_evidence_charge_id'), ['charge_id'], unique=False)

    op.create_table('charge_payments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('charge_id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=120), nullable=False),
    sa.Column('via', sa.String(length=12), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('amount_fils', sa.Integer(), nullable=False),
    sa.Column('vat_fils', sa.Integer(), nullable=False),
    sa.Column('description', sa.String(length=300), nullable=False),
    sa.Column('card_id', sa.Integer(), nullable=True),
    sa.Column('deposit_id', sa.Integer(), nullable=True),
    sa.Column('stripe_intent_id', sa.String(length=64), nullable=True),
    sa.Column('stripe_charge_id', sa.String(length=64), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('needs_review', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_charge_payments_agency_id_agencies')),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_charge_payments_booking_id_bookings')),
    sa.ForeignKeyConstraint(['card_id'], ['saved_cards.id'], name=op.f('fk_charge_payments_card_id_saved_cards')),
    sa.ForeignKeyConstraint(['deposit_id'], ['payment_intents.id'], name=op.f('fk_charge_payments_deposit_id_payment_intents')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charge_payments')),
    sa.UniqueConstraint('charge_id', 'attempt', name=op.f('uq_charge_payments_charge_id_attempt')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_charge_payments_idempotency_key')),
    sa.UniqueConstraint('stripe_intent_id', name=op.f('uq_charge_payments_stripe_intent_id'))
    )
    with op.batch_alter_table('charge_payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_charge_payments_booking_id'), ['booking_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_charge_payments_charge_id'), ['charge_id'], unique=False)
        batch_op.create_index('ix_charge_payments_open', ['state', 'updated_at'], unique=False)

    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=40), server_default='rental', nullable=False))
        batch_op.drop_constraint(batch_op.f('uq_payouts_booking_id'), type_='unique')
        batch_op.create_index(batch_op.f('ix_payouts_booking_id'), ['booking_id'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_payouts_booking_id_source'), ['booking_id', 'source'])

    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.create_index('ix_work_items_kind_ref', ['kind', 'ref'], unique=False)



def downgrade():
    with op.batch_alter_table('work_items', schema=None) as batch_op:
        batch_op.drop_index('ix_work_items_kind_ref')

    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_payouts_booking_id_source'), type_='unique')
        batch_op.drop_index(batch_op.f('ix_payouts_booking_id'))
        batch_op.create_unique_constraint(batch_op.f('uq_payouts_booking_id'), ['booking_id'])
        batch_op.drop_column('source')

    with op.batch_alter_table('charge_payments', schema=None) as batch_op:
        batch_op.drop_index('ix_charge_payments_open')
        batch_op.drop_index(batch_op.f('ix_charge_payments_charge_id'))
        batch_op.drop_index(batch_op.f('ix_charge_payments_booking_id'))

    op.drop_table('charge_payments')
    with op.batch_alter_table('charge_evidence', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_charge_evidence_charge_id'))

    op.drop_table('charge_evidence')
    with op.batch_alter_table('charges', schema=None) as batch_op:
        batch_op.drop_index('ix_charges_status_due')
        batch_op.drop_index('ix_charges_customer_status')
        batch_op.drop_index(batch_op.f('ix_charges_booking_id'))
        batch_op.drop_index(batch_op.f('ix_charges_agency_id'))

    op.drop_table('charges')
