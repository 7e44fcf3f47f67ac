"""The migrations are the only way the schema changes: their head matches the models, and they run
down to base and back up again.

Runs on whichever database the suite uses (SQLite by default, PostgreSQL with ``TEST_DATABASE_URL``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import Column, MetaData, String, inspect, select, text

from marketplace.extensions import db


def _diff(connection: Any, metadata: MetaData) -> list[Any]:
    # the same comparison options as migrations/env.py (Flask-Migrate is set up with compare_type=True)
    context = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
    return list(compare_metadata(context, metadata))


def _copy(metadata: MetaData) -> MetaData:
    copy = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(copy)
    return copy


def test_migration_head_matches_the_models(app: Flask) -> None:
    # the session app's database was built by `flask db upgrade`, never by create_all()
    with app.app_context(), db.engine.connect() as connection:
        diff = _diff(connection, db.metadata)
    assert diff == [], f"models and migrations differ; write a migration for: {diff}"


def test_comparison_detects_a_column_missing_from_the_migrations(app: Flask) -> None:
    """Negative control: the comparison above is able to see a difference at all."""
    with app.app_context(), db.engine.connect() as connection:
        changed = _copy(db.metadata)
        changed.tables["users"].append_column(Column("shoe_size", String(8), nullable=True))
        diff = _diff(connection, changed)
    added = [d for d in diff if isinstance(d, tuple) and d[0] == "add_column"]
    assert [(d[2], d[3].name) for d in added] == [("users", "shoe_size")], diff
    assert db.metadata.tables["users"].c.get("shoe_size") is None  # the real metadata is untouched


# ---- downgrade to base and upgrade again, on a scratch database --------------------------------------


@pytest.fixture
def scratch_database_url(tmp_path: Path) -> Iterator[str]:
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    from tests.pg import temporary_database

    with temporary_database(base, "cj_scratch") as url:
        yield url


@pytest.fixture
def scratch_app(app_overrides: dict[str, Any], scratch_database_url: str, tmp_path: Path) -> Iterator[Flask]:
    from marketplace import create_app

    overrides = {
        **app_overrides,
        "DATABASE_URL": scratch_database_url,
        "VAR_DIR": str(tmp_path / "var"),
        "KEYRING_PATH": str(tmp_path / "var" / "keyring.json"),
        "BLOB_STORE_URL": f"file://{tmp_path / 'var' / 'blobs'}",
        "JOBS_MODE": "sync",
        "REDIS_URL": None,
    }
    scratch = create_app(overrides, start_background=False)
    try:
        yield scratch
    finally:
        with scratch.app_context():
            db.engine.dispose()


def _tables(app: Flask) -> set[str]:
    with app.app_context():
        return set(inspect(db.engine).get_table_names())


def _triggers(app: Flask) -> set[str]:
    with app.app_context(), db.engine.connect() as conn:
        if db.engine.dialect.name == "postgresql":
            rows = conn.execute(text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_events'::regclass AND NOT tgisinternal"
            ))
        else:
            rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        return {r[0] for r in rows}


def test_downgrade_to_base_and_upgrade_again(scratch_app: Flask) -> None:
    from flask_migrate import downgrade, upgrade

    model_tables = set(db.metadata.tables)
    with scratch_app.app_context():
        upgrade()
    assert model_tables <= _tables(scratch_app)
    assert _triggers(scratch_app)  # the audit log's append-only guard came with the schema

    with scratch_app.app_context():
        downgrade(revision="base")
    assert _tables(scratch_app) - {"alembic_version"} == set()

    with scratch_app.app_context():
        upgrade()
        with db.engine.connect() as connection:
            assert _diff(connection, db.metadata) == []
    assert model_tables <= _tables(scratch_app)
    assert _triggers(scratch_app)


def test_running_migrations_in_process_keeps_the_app_loggers_enabled(app: Flask) -> None:
    """migrations/env.py configures logging from alembic.ini; it must not disable the app's loggers.

    The session ``app`` fixture has already run ``upgrade()`` in this process (with the default
    ``disable_existing_loggers=True`` every ``marketplace.*`` logger went silent, PV-03/PV-04 saw nothing).
    """
    for name in ("marketplace", "marketplace.audit", "marketplace.jobs", "marketplace.errors"):
        assert not logging.getLogger(name).disabled, name


def test_0008_seals_existing_identity_numbers_and_downgrade_opens_them(scratch_app: Flask) -> None:
    """Issue 7 item 7: rows written before 0008 hold the numbers in clear; the upgrade seals them under
    each customer's data key (creating one if the customer has none) and drops the clear columns."""
    from flask_migrate import downgrade, upgrade

    from marketplace.kyc.models import KycIdentity
    from tests import factories

    with scratch_app.app_context():
        upgrade()
        person = factories.make_verified_customer()  # passport P1234567, licence DXB-778899
        other = factories.make_verified_customer()
        downgrade(revision="0008")
        downgrade(revision="-1")  # just before 0008: the numbers back in clear, as such databases hold them
        rows = db.session.execute(text(
            "SELECT id_document_number, licence_number FROM kyc_identities ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("P1234567", "DXB-778899")] * 2
        db.session.execute(text("DELETE FROM data_keys"))  # neither customer has a data key yet
        db.session.commit()
        db.session.remove()

        upgrade()
        columns = {c["name"] for c in inspect(db.engine).get_columns("kyc_identities")}
        assert {"id_document_number", "licence_number"} & columns == set()
        dump = db.session.execute(text("SELECT * FROM kyc_identities")).all()
        cells = b"\x00".join(v if isinstance(v, bytes) else str(v).encode() for row in dump for v in row)
        assert b"P1234567" not in cells and b"DXB-778899" not in cells
        owners = set(db.session.execute(text("SELECT owner FROM data_keys")).scalars())
        assert owners == {f"user:{person.public_id}", f"user:{other.public_id}"}
        identities = db.session.execute(select(KycIdentity).order_by(KycIdentity.id)).scalars().all()
        assert [(i.id_document_number, i.licence_number) for i in identities] == [("P1234567", "DXB-778899")] * 2
