"""payments: Stripe customers, saved cards, card setups, MIT mandate acceptances, payment intents (booking
payments and deposit holds), refunds, webhook events and the double-entry journal

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 17:13:12

Every row that leads to a Stripe call carries its idempotency key (unique); webhook events are unique by
Stripe's event id; journal entries are unique by their source, so nothing is posted twice.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('webhook_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=80), nullable=False),
    sa.Column('type', sa.String(length=80), nullable=False),
    sa.Column('outcome', sa.String(length=40), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_webhook_events_event_id'))
    )
    op.create_table('payment_customers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('stripe_customer_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_payment_customers_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_customers')),
    sa.UniqueConstraint('stripe_customer_id', name=op.f('uq_payment_customers_stripe_customer_id')),
    sa.UniqueConstraint('user_id', name=op.f('uq_payment_customers_user_id'))
    )
    op.create_table('saved_cards',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('stripe_payment_method_id', sa.String(length=64), nullable=False),
    sa.Column('brand', sa.String(length=20), nullable=False),
    sa.Column('last4', sa.String(length=4), nullable=False),
    sa.Column('exp_month', sa.Integer(), nullable=False),
    sa.Column('exp_year', sa.Integer(), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('removed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('public_id', sa.String(length=36), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_saved_cards_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_saved_cards')),
    sa.UniqueConstraint('public_id', name=op.f('uq_saved_cards_public_id')),
    sa.UniqueConstraint('stripe_payment_method_id', name=op.f('uq_saved_cards_stripe_payment_method_id'))
    )
    with op.batch_alter_table('saved_cards', schema=None) as batch_op:
        batch_op.create_index('ix_saved_cards_user', ['user_id', 'removed_at'], unique=False)

    op.create_table('card_setups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('stripe_setup_intent_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('card_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['card_id'], ['saved_cards.id'], name=op.f('fk_card_setups_card_id_saved_cards')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_card_setups_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_card_setups')),
    sa.UniqueConstraint('stripe_setup_intent_id', name=op.f('uq_card_setups_stripe_setup_intent_id'))
    )
    with op.batch_alter_table('card_setups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_card_setups_user_id'), ['user_id'], unique=False)

    op.create_table('journal_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=80), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=True),
    sa.Column('memo', sa.Text(), nullable=False),
    sa.Column('posted_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_journal_entries_booking_id_bookings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journal_entries')),
    sa.UniqueConstraint('source', name=op.f('uq_journal_entries_source'))
    )
    with op.batch_alter_table('journal_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_journal_entries_booking_id'), ['booking_id'], unique=False)

    op.create_table('mandate_acceptances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('card_id', sa.Integer(), nullable=False),
    sa.Column('stripe_customer_id', sa.String(length=64), nullable=False),
    sa.Column('stripe_payment_method_id', sa.String(length=64), nullable=False),
    sa.Column('card_brand', sa.String(length=20), nullable=False),
    sa.Column('card_last4', sa.String(length=4), nullable=False),
    sa.Column('text_version', sa.String(length=32), nullable=False),
    sa.Column('text_sha256', sa.String(length=64), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ip_address', sa.String(length=45), nullable=True),
    sa.Column('user_agent', sa.String(length=300), nullable=True),
    sa.Column('device', sa.String(length=100), nullable=True),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_mandate_acceptances_booking_id_bookings')),
    sa.ForeignKeyConstraint(['card_id'], ['saved_cards.id'], name=op.f('fk_mandate_acceptances_card_id_saved_cards')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_mandate_acceptances_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mandate_acceptances'))
    )
    with op.batch_alter_table('mandate_acceptances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_mandate_acceptances_booking_id'), ['booking_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_mandate_acceptances_user_id'), ['user_id'], unique=False)

    op.create_table('payment_intents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=120), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('amount_fils', sa.Integer(), nullable=False),
    sa.Column('card_id', sa.Integer(), nullable=False),
    sa.Column('stripe_intent_id', sa.String(length=64), nullable=True),
    sa.Column('stripe_charge_id', sa.String(length=64), nullable=True),
    sa.Column('capture_before', sa.DateTime(timezone=True), nullable=True),
    sa.Column('captured_fils', sa.Integer(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('needs_review', sa.String(length=200), nullable=True),
    sa.Column('replaces_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_payment_intents_booking_id_bookings')),
    sa.ForeignKeyConstraint(['card_id'], ['saved_cards.id'], name=op.f('fk_payment_intents_card_id_saved_cards')),
    sa.ForeignKeyConstraint(['replaces_id'], ['payment_intents.id'], name=op.f('fk_payment_intents_replaces_id_payment_intents')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_intents')),
    sa.UniqueConstraint('booking_id', 'kind', 'attempt', name=op.f('uq_payment_intents_booking_id_kind_attempt')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_payment_intents_idempotency_key')),
    sa.UniqueConstraint('stripe_intent_id', name=op.f('uq_payment_intents_stripe_intent_id'))
    )
    with op.batch_alter_table('payment_intents', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payment_intents_booking_id'), ['booking_id'], unique=False)
        batch_op.create_index('ix_payment_intents_open', ['state', 'updated_at'], unique=False)

    op.create_table('journal_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=True),
    sa.Column('account', sa.String(length=32), nullable=False),
    sa.Column('amount_fils', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_journal_lines_booking_id_bookings')),
    sa.ForeignKeyConstraint(['entry_id'], ['journal_entries.id'], name=op.f('fk_journal_lines_entry_id_journal_entries')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journal_lines'))
    )
    with op.batch_alter_table('journal_lines', schema=None) as batch_op:
        batch_op.create_index('ix_journal_lines_account', ['account', 'booking_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_journal_lines_entry_id'), ['entry_id'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('payment_id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('amount_fils', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('idempotency_key', sa.String(length=120), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('stripe_refund_id', sa.String(length=64), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('needs_review', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_refunds_booking_id_bookings')),
    sa.ForeignKeyConstraint(['payment_id'], ['payment_intents.id'], name=op.f('fk_refunds_payment_id_payment_intents')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_refunds_idempotency_key')),
    sa.UniqueConstraint('stripe_refund_id', name=op.f('uq_refunds_stripe_refund_id'))
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refunds_booking_id'), ['booking_id'], unique=False)
        batch_op.create_index('ix_refunds_open', ['state', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_refunds_payment_id'), ['payment_id'], unique=False)
    op.create_table('payout_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('stripe_account_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_payout_accounts_agency_id_agencies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payout_accounts')),
    sa.UniqueConstraint('agency_id', name=op.f('uq_payout_accounts_agency_id')),
    sa.UniqueConstraint('stripe_account_id', name=op.f('uq_payout_accounts_stripe_account_id'))
    )
    op.create_table('payouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('booking_id', sa.Integer(), nullable=False),
    sa.Column('agency_id', sa.Integer(), nullable=False),
    sa.Column('amount_fils', sa.Integer(), nullable=False),
    sa.Column('platform_fee_fils', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=120), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('stripe_transfer_id', sa.String(length=64), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['agency_id'], ['agencies.id'], name=op.f('fk_payouts_agency_id_agencies')),
    sa.ForeignKeyConstraint(['booking_id'], ['bookings.id'], name=op.f('fk_payouts_booking_id_bookings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payouts')),
    sa.UniqueConstraint('booking_id', name=op.f('uq_payouts_booking_id')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_payouts_idempotency_key')),
    sa.UniqueConstraint('stripe_transfer_id', name=op.f('uq_payouts_stripe_transfer_id'))
    )
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payouts_agency_id'), ['agency_id'], unique=False)


def downgrade():
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payouts_agency_id'))
    op.drop_table('payouts')
    op.drop_table('payout_accounts')
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refunds_payment_id'))
        batch_op.drop_index('ix_refunds_open')
        batch_op.drop_index(batch_op.f('ix_refunds_booking_id'))

    op.drop_table('refunds')
    with op.batch_alter_table('journal_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_journal_lines_entry_id'))
        batch_op.drop_index('ix_journal_lines_account')

    op.drop_table('journal_lines')
    with op.batch_alter_table('payment_intents', schema=None) as batch_op:
        batch_op.drop_index('ix_payment_intents_open')
        batch_op.drop_index(batch_op.f('ix_payment_intents_booking_id'))

    op.drop_table('payment_intents')
    with op.batch_alter_table('mandate_acceptances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_mandate_acceptances_user_id'))
        batch_op.drop_index(batch_op.f('ix_mandate_acceptances_booking_id'))

    op.drop_table('mandate_acceptances')
    with op.batch_alter_table('journal_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_journal_entries_booking_id'))

    op.drop_table('journal_entries')
    with op.batch_alter_table('card_setups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_card_setups_user_id'))

    op.drop_table('card_setups')
    with op.batch_alter_table('saved_cards', schema=None) as batch_op:
        batch_op.drop_index('ix_saved_cards_user')

    op.drop_table('saved_cards')
    op.drop_table('payment_customers')
    op.drop_table('webhook_events')
