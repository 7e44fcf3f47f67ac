"""payments: Connect onboarding state of an agency's payout account

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 18:40:00

- payout_accounts.details_submitted, payouts_enabled: as Stripe last reported them (the account itself, or an
  ``account.updated`` webhook); ready_at: when both became true (NULL: not ready; in production such an
  agency's cars are neither listable nor bookable). Accounts recorded before this revision were recorded
  only once onboarded, so they start ready.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('payout_accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('details_submitted', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('payouts_enabled', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('ready_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE payout_accounts SET details_submitted = true, payouts_enabled = true, ready_at = created_at")


def downgrade():
    with op.batch_alter_table('payout_accounts', schema=None) as batch_op:
        batch_op.drop_column('updated_at')
        batch_op.drop_column('ready_at')
        batch_op.drop_column('payouts_enabled')
        batch_op.drop_column('details_submitted')
