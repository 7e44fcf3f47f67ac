"""audit: independent chains and month-keyed client addresses; kyc: identity numbers sealed

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-23 09:00:00

- audit_events gains ``chain``/``seq`` (one of 32 independent hash chains and the row's place in it,
  unique together) and ``key_period``/``ip_sealed`` (the client address sealed under a month key).
  Existing rows are left exactly as they are (they may never change): they stay one legacy chain with
  ``chain`` NULL, verified in id order with the hash they were written with.
  On PostgreSQL, ``audit_chain_claim`` locks a chain and reads its tail in one round trip.
- audit_keys: the month keys, wrapped by the master key.
- kyc_identities: ``id_document_number`` and ``licence_number`` are replaced by ``*_enc``, sealed under
  the customer's data key. Existing rows are converted here, with the app's key ring (the migration runs
  inside the app, as ``flask db upgrade`` does); a customer without a data key gets one, a customer
  whose key was destroyed gets values nobody can read. Offline (``--sql``) mode cannot convert data and
  refuses. On PostgreSQL the old values stay in dead row versions until ``VACUUM FULL kyc_identities``.

Downgrade decrypts the numbers back (unreadable ones become '') and drops the chain columns; rows
appended since this revision then no longer verify under the old single-chain rule.
"""
from datetime import datetime, timezone

from alembic import context, op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None

SEALED = ('id_document_number', 'licence_number')

# marketplace.audit._claim calls this: try the candidate chains' advisory locks without waiting, else queue
# for wait_on; then read that chain's tail in a statement of its own (a VOLATILE function's statements each
# take a fresh snapshot under READ COMMITTED, so appends committed while it waited are seen)
CLAIM_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_chain_claim(lock_class integer, candidates integer[], wait_on integer)
RETURNS TABLE (chain integer, seq bigint, hash varchar) AS $$
DECLARE
    candidate integer;
    got integer;
BEGIN
    FOREACH candidate IN ARRAY candidates LOOP
        IF pg_try_advisory_xact_lock(lock_class, candidate) THEN
            got := candidate;
            EXIT;
        END IF;
    END LOOP;
    IF got IS NULL THEN
        PERFORM pg_advisory_xact_lock(lock_class, wait_on);
        got := wait_on;
    END IF;
    RETURN QUERY SELECT got, t.seq, t.hash FROM audit_events t WHERE t.chain = got ORDER BY t.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN QUERY SELECT got, 0::bigint, repeat('0', 64)::varchar;
    END IF;
END;
$$ LANGUAGE plpgsql VOLATILE
"""


def upgrade():
    op.create_table('audit_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('master_key_id', sa.String(length=128), nullable=True),
    sa.Column('wrapped', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rewrapped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('destroyed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_keys')),
    sa.UniqueConstraint('period', name=op.f('uq_audit_keys_period'))
    )
    with op.batch_alter_table('audit_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_keys_master_key_id'), ['master_key_id'], unique=False)

    # ADD COLUMN and CREATE INDEX only: SQLite alters the table in place, so its append-only triggers stay
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chain', sa.SmallInteger(), nullable=True))
        batch_op.add_column(sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('key_period', sa.String(length=7), nullable=True))
        batch_op.add_column(sa.Column('ip_sealed', sa.LargeBinary(), nullable=True))
        batch_op.create_index('uq_audit_events_chain_seq', ['chain', 'seq'], unique=True)
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(CLAIM_FUNCTION)

    with op.batch_alter_table('kyc_identities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('id_document_number_enc', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('licence_number_enc', sa.LargeBinary(), nullable=True))
    _seal_identities()
    with op.batch_alter_table('kyc_identities', schema=None) as batch_op:
        batch_op.alter_column('id_document_number_enc', existing_type=sa.LargeBinary(), nullable=False)
        batch_op.alter_column('licence_number_enc', existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column('id_document_number')
        batch_op.drop_column('licence_number')


def downgrade():
    with op.batch_alter_table('kyc_identities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('id_document_number', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('licence_number', sa.String(length=32), nullable=True))
    _open_identities()
    with op.batch_alter_table('kyc_identities', schema=None) as batch_op:
        batch_op.alter_column('id_document_number', existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column('licence_number', existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column('id_document_number_enc')
        batch_op.drop_column('licence_number_enc')

    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP FUNCTION IF EXISTS audit_chain_claim(integer, integer[], integer)')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('uq_audit_events_chain_seq')
        batch_op.drop_column('ip_sealed')
        batch_op.drop_column('key_period')
        batch_op.drop_column('seq')
        batch_op.drop_column('chain')
    if op.get_bind().dialect.name == 'sqlite':
        # SQLite rebuilt the table to drop the columns, and its triggers went with the old one
        for verb in ('UPDATE', 'DELETE'):
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END"
            )

    with op.batch_alter_table('audit_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_keys_master_key_id'))
    op.drop_table('audit_keys')


# ---- data conversion ---------------------------------------------------------------------------------


def _field(name):
    return f'kyc_identities.{name}'  # the associated data marketplace.kyc.models.sealed_field gives


def _ring():
    if context.is_offline_mode():
        raise RuntimeError('migration 0008 seals identity numbers with the key ring: run it online')
    from flask import current_app

    return current_app.extensions['keyring']


def _data_key(bind, ring, owner, *, create):
    """The owner's data key; None once destroyed (or missing and not to be created)."""
    from marketplace.crypto import WrappedKey, new_data_key, unwrap_data_key, wrap_data_key

    row = bind.execute(sa.text('SELECT master_key_id, wrapped FROM data_keys WHERE owner = :o'),
                       {'o': owner}).first()
    if row is None:
        if not create:
            return None
        key = new_data_key()
        wrapped = wrap_data_key(ring, key, owner=owner)
        bind.execute(sa.text('INSERT INTO data_keys (owner, master_key_id, wrapped, created_at) '
                             'VALUES (:o, :m, :w, :c)'),
                     {'o': owner, 'm': wrapped.key_id, 'w': wrapped.blob, 'c': datetime.now(timezone.utc)})
        return key
    if row[0] is None or row[1] is None:
        return None
    return unwrap_data_key(ring, WrappedKey(row[0], bytes(row[1])), owner=owner)


def _identity_rows(bind, columns):
    return bind.execute(sa.text(
        f'SELECT k.id, u.public_id, {", ".join("k." + c for c in columns)} '  # noqa: S608 - fixed names
        'FROM kyc_identities k JOIN users u ON u.id = k.user_id ORDER BY k.id'
    )).all()


def _seal_identities():
    from marketplace.crypto import encrypt_value, new_data_key

    bind = op.get_bind()
    rows = _identity_rows(bind, SEALED)
    if not rows:
        return
    ring = _ring()
    for row_id, public_id, *values in rows:
        owner = f'user:{public_id}'
        # a destroyed key (an erased customer): seal under a key that is thrown away, unreadable as erased
        key = _data_key(bind, ring, owner, create=True) or new_data_key()
        sealed = {f'{name}_enc': encrypt_value(key, value.encode('utf-8'), owner=owner, field=_field(name))
                  for name, value in zip(SEALED, values)}
        bind.execute(sa.text('UPDATE kyc_identities SET id_document_number_enc = :id_document_number_enc, '
                             'licence_number_enc = :licence_number_enc WHERE id = :id'), {**sealed, 'id': row_id})


def _open_identities():
    from marketplace.crypto import DecryptionFailed, decrypt_value

    bind = op.get_bind()
    rows = _identity_rows(bind, [f'{name}_enc' for name in SEALED])
    if not rows:
        return
    ring = _ring()
    for row_id, public_id, *tokens in rows:
        owner = f'user:{public_id}'
        key = _data_key(bind, ring, owner, create=False)
        plain = {}
        for name, token in zip(SEALED, tokens):
            try:
                plain[name] = decrypt_value(key, bytes(token), owner=owner, field=_field(name)).decode('utf-8') \
                    if key is not None else ''
            except DecryptionFailed:
                plain[name] = ''
        bind.execute(sa.text('UPDATE kyc_identities SET id_document_number = :id_document_number, '
                             'licence_number = :licence_number WHERE id = :id'), {**plain, 'id': row_id})
