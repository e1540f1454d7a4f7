"""The database layer: migrations, transactions, the reader/writer pools."""

import sqlite3

import pytest
import pytest_twisted

from leafpds.db import migrations
from leafpds.db.pool import Database, connect


def test_migrations_are_idempotent_and_strict(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    assert migrations.migrate(conn) == len(migrations.MIGRATIONS)
    assert migrations.migrate(conn) == len(migrations.MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    tables = {
        name: sql
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")
    }
    for table in [
        "accounts", "signing_keys", "server_keys", "repo_roots", "blocks", "records",
        "repo_seq", "app_passwords", "refresh_tokens", "invite_codes", "oauth_identities",
        "blobs", "record_blobs",
    ]:
        assert "STRICT" in tables[table], table
    # STRICT really enforces types.
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO repo_seq (did, event_type, event, sequenced_at) VALUES ('d', 'x', 12, 't')"
        )
    # Foreign keys really are on.
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO repo_roots (did, commit_cid, rev, indexed_at) VALUES ('did:x', x'00', 'r', 't')"
        )


def test_newer_schema_refused(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    conn.execute(f"PRAGMA user_version = {len(migrations.MIGRATIONS) + 1}")
    with pytest.raises(migrations.SchemaTooNew):
        migrations.migrate(conn)
    # Nothing was created.
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def test_failed_migration_leaves_previous_version(tmp_path, monkeypatch):
    conn = connect(tmp_path / "db.sqlite")
    migrations.migrate(conn)
    version = migrations.schema_version(conn)
    monkeypatch.setattr(
        migrations, "MIGRATIONS",
        migrations.MIGRATIONS + ["CREATE TABLE extra (x INTEGER) STRICT; THIS IS NOT SQL"],
    )
    with pytest.raises(sqlite3.OperationalError):
        migrations.migrate(conn)
    assert migrations.schema_version(conn) == version
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'")]
    assert names == []


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "db.sqlite")
    database.migrate()
    database.start()
    yield database
    database.close()


def _insert_account(conn, did, fail=False):
    conn.execute(
        "INSERT INTO accounts (did, handle, created_at) VALUES (?, ?, 'now')", (did, did + ".test")
    )
    if fail:
        raise RuntimeError("boom")


def _accounts(conn):
    return [row[0] for row in conn.execute("SELECT did FROM accounts ORDER BY did")]


@pytest_twisted.ensureDeferred
async def test_write_commits_or_rolls_back_whole(db):
    await db.write(_insert_account, "did:a")
    with pytest.raises(RuntimeError):
        await db.write(_insert_account, "did:b", True)
    assert await db.read(_accounts) == ["did:a"]


@pytest_twisted.ensureDeferred
async def test_reader_sees_a_consistent_snapshot(db):
    seen = []

    def read_twice(conn):
        seen.append(_accounts(conn))
        # A write committed by another connection between our two statements
        # must not show up inside our read transaction.
        other = connect(db.path)
        other.execute("INSERT INTO accounts (did, handle, created_at) VALUES ('did:z', 'z.test', 'now')")
        other.close()
        seen.append(_accounts(conn))

    await db.read(read_twice)
    assert seen[0] == seen[1] == []
    assert await db.read(_accounts) == ["did:z"]


@pytest_twisted.ensureDeferred
async def test_concurrent_writes_are_grouped_and_isolated(db):
    from twisted.internet.defer import DeferredList

    calls = [db.write(_insert_account, f"did:{i:03d}", i % 7 == 3) for i in range(50)]
    outcomes = await DeferredList(calls, consumeErrors=True)
    failed = {i for i, (ok, _) in enumerate(outcomes) if not ok}
    assert failed == {i for i in range(50) if i % 7 == 3}
    # Every successful unit committed; every failed one left nothing behind.
    assert await db.read(_accounts) == [f"did:{i:03d}" for i in range(50) if i not in failed]
