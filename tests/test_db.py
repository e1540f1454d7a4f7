"""The database layer: migrations, transactions, the reader/writer pools."""

import sqlite3

import pytest
import pytest_twisted

from leafpds.db import migrations
from leafpds.db.pool import Database, DatabaseClosed, connect


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
        "accounts", "signing_keys", "server_keys", "repo_roots", "blocks", "fresh_blocks",
        "records", "repo_seq", "app_passwords", "refresh_tokens",
        "invite_codes", "oauth_identities", "blobs", "record_blobs",
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


def _plan(conn, query):
    """How SQLite means to run ``query``, as one line."""
    return " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + query))


def test_blocks_move_to_a_rowid_table_with_their_rows(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    assert migrations.migrate(conn, migrations.MIGRATIONS[:1]) == 1
    for did in ("did:a", "did:b"):
        _insert_account(conn, did)
    rows = [
        (did, bytes([i, n]), f"rev{n}", b"data" * n)
        for i, did in enumerate(["did:a", "did:b"])
        for n in range(50)
    ]
    conn.executemany("INSERT INTO blocks (did, cid, rev, data) VALUES (?, ?, ?, ?)", rows)

    assert migrations.migrate(conn) == len(migrations.MIGRATIONS)
    assert sorted(conn.execute("SELECT did, cid, rev, data FROM blocks")) == sorted(rows)
    table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'blocks'").fetchone()[0]
    assert "WITHOUT ROWID" not in table and "STRICT" in table
    # (did, cid) is still unique, and look-ups by it use the index.
    conn.execute(
        "INSERT OR IGNORE INTO blocks (did, cid, rev, data) VALUES ('did:a', x'0001', 'x', x'')"
    )
    revs = conn.execute("SELECT rev FROM blocks WHERE did = 'did:a' AND cid = x'0001'").fetchall()
    assert revs == [("rev1",)]
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO blocks (did, cid, rev, data) VALUES ('did:a', x'0001', 'x', x'')")
    assert "blocks_by_cid" in _plan(
        conn, "SELECT data FROM blocks WHERE did = 'did:a' AND cid = x'0001'"
    )
    # Blocks still go with their account.
    conn.execute("DELETE FROM accounts WHERE did = 'did:a'")
    assert conn.execute("SELECT DISTINCT did FROM blocks").fetchall() == [("did:b",)]


def test_blocks_that_records_share_are_counted_when_the_table_comes(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    assert migrations.migrate(conn, migrations.MIGRATIONS[:3]) == 3
    for did in ("did:a", "did:b"):
        _insert_account(conn, did)
    rows = [
        ("did:a", "c", "1", b"x"), ("did:a", "c", "2", b"x"), ("did:a", "d", "3", b"x"),
        ("did:a", "c", "4", b"y"), ("did:b", "c", "1", b"x"), ("did:b", "c", "2", b"z"),
        ("did:b", "c", "3", b"z"),
    ]
    conn.executemany(
        "INSERT INTO records (did, collection, rkey, cid, rev, indexed_at) VALUES (?, ?, ?, ?, 'r', 't')",
        rows,
    )
    assert migrations.migrate(conn, migrations.MIGRATIONS[:4]) == 4
    assert sorted(conn.execute("SELECT did, cid, refs FROM shared_blocks")) == [
        ("did:a", b"x", 3), ("did:b", b"z", 2),
    ]
    conn.execute("DELETE FROM accounts WHERE did = 'did:a'")  # they go with their account
    assert conn.execute("SELECT did FROM shared_blocks").fetchall() == [("did:b",)]


def test_records_take_their_blocks_into_their_rows(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    assert migrations.migrate(conn, migrations.MIGRATIONS[:4]) == 4
    for did in ("did:a", "did:b"):
        _insert_account(conn, did)
    node = b"\xa2\x61e\x80\x61l\xf6"  # the empty tree's node, {e: [], l: null}
    blocks = [  # (table, did, cid, data)
        ("blocks", "did:a", b"r1", b"record one"),
        ("blocks", "did:a", b"r2", b"shared"),
        ("fresh_blocks", "did:a", b"r3", b"young record"),
        ("blocks", "did:a", b"n1", b"a node"),
        ("fresh_blocks", "did:a", b"c1", b"a commit"),
        ("blocks", "did:a", b"nr", node),  # a node that a record also is
        ("blocks", "did:b", b"r2", b"shared"),
    ]
    for table, did, cid, data in blocks:
        conn.execute(f"INSERT INTO {table} (did, cid, rev, data) VALUES (?, ?, 'r', ?)", (did, cid, data))
    records = [
        ("did:a", "c", "1", b"r1"), ("did:a", "c", "2", b"r2"), ("did:a", "d", "2", b"r2"),
        ("did:a", "c", "3", b"r3"), ("did:a", "c", "4", b"nr"), ("did:b", "c", "1", b"r2"),
    ]
    conn.executemany(
        "INSERT INTO records (did, collection, rkey, cid, rev, indexed_at) VALUES (?, ?, ?, ?, 'r', 't')",
        records,
    )
    conn.execute("INSERT INTO shared_blocks (did, cid, refs) VALUES ('did:a', x'7232', 2)")
    conn.execute(
        "INSERT INTO record_blobs (did, blob_cid, collection, rkey) VALUES ('did:a', x'bb', 'c', '2')"
    )

    assert migrations.migrate(conn) == len(migrations.MIGRATIONS)
    data = {cid: data for table, did, cid, data in blocks}
    assert sorted(conn.execute("SELECT did, collection, rkey, cid, data FROM records")) == sorted(
        (did, c, r, cid, data[cid]) for did, c, r, cid in records
    )
    # The blockstore keeps the commit and the nodes, the one a record also is included.
    left = conn.execute("SELECT did, cid FROM blocks UNION ALL SELECT did, cid FROM fresh_blocks")
    assert sorted(left) == [("did:a", b"c1"), ("did:a", b"n1"), ("did:a", b"nr")]
    assert "shared_blocks" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'records'").fetchone()[0]
    assert "WITHOUT ROWID" not in table and "STRICT" in table
    assert "records_by_key" in _plan(
        conn, "SELECT data FROM records WHERE did = 'did:a' AND collection = 'c' AND rkey = '1'"
    )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO records (did, collection, rkey, cid, rev, indexed_at, data)"
            " VALUES ('did:a', 'c', '1', x'00', 'r', 't', x'')"
        )
    # The blob links came through, and still go with their record.
    assert conn.execute("SELECT did, blob_cid, collection, rkey FROM record_blobs").fetchall() == [
        ("did:a", b"\xbb", "c", "2")
    ]
    conn.execute("DELETE FROM records WHERE did = 'did:a' AND collection = 'c' AND rkey = '2'")
    assert conn.execute("SELECT count(*) FROM record_blobs").fetchone() == (0,)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.execute("DELETE FROM accounts WHERE did = 'did:a'")  # records go with their account
    assert conn.execute("SELECT DISTINCT did FROM records").fetchall() == [("did:b",)]


def test_preferences_come_in_their_own_table_kept_in_order_per_account(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    assert migrations.migrate(conn, migrations.MIGRATIONS[:5]) == 5
    for did in ("did:a", "did:b"):
        _insert_account(conn, did)
    assert migrations.migrate(conn, migrations.MIGRATIONS[:6]) == 6
    rows = [("did:a", "app.bsky.z", '{"n":1}'), ("did:b", "app.bsky.y", "{}"), ("did:a", "app.bsky.a", '{"n":2}')]
    conn.executemany("INSERT INTO account_prefs (did, name, value) VALUES (?, ?, ?)", rows)
    query = "SELECT name, value FROM account_prefs WHERE did = 'did:a' ORDER BY id"
    assert conn.execute(query).fetchall() == [("app.bsky.z", '{"n":1}'), ("app.bsky.a", '{"n":2}')]
    assert "account_prefs_by_did" in _plan(conn, query) and "TEMP B-TREE" not in _plan(conn, query)
    table = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'account_prefs'").fetchone()[0]
    assert "STRICT" in table
    with pytest.raises(sqlite3.IntegrityError):  # only for accounts that exist
        conn.execute("INSERT INTO account_prefs (did, name, value) VALUES ('did:c', 'app.bsky.x', '{}')")
    conn.execute("DELETE FROM accounts WHERE did = 'did:a'")  # they go with their account
    assert conn.execute("SELECT did FROM account_prefs").fetchall() == [("did:b",)]


def test_fresh_blocks_are_unique_per_repo_indexed_and_go_with_their_account(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    assert migrations.migrate(conn, migrations.MIGRATIONS[:2]) == 2
    for did in ("did:a", "did:b"):
        _insert_account(conn, did)
    conn.execute("INSERT INTO blocks (did, cid, rev, data) VALUES ('did:a', x'01', 'r', x'')")

    assert migrations.migrate(conn, migrations.MIGRATIONS[:3]) == 3
    assert conn.execute("SELECT count(*) FROM blocks").fetchone() == (1,)  # left where they are
    for did in ("did:a", "did:b"):
        conn.execute("INSERT INTO fresh_blocks (did, cid, rev, data) VALUES (?, x'01', 'r', x'')", (did,))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO fresh_blocks (did, cid, rev, data) VALUES ('did:a', x'01', 's', x'')")
    assert "fresh_blocks_by_cid" in _plan(
        conn, "SELECT data FROM fresh_blocks WHERE did = 'did:a' AND cid = x'01'"
    )
    conn.execute("DELETE FROM accounts WHERE did = 'did:a'")
    assert conn.execute("SELECT did FROM fresh_blocks").fetchall() == [("did:b",)]


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


def _record_statements(conn, seen):
    conn.set_trace_callback(seen.append)


def _stop_recording(conn):
    conn.set_trace_callback(None)


@pytest_twisted.ensureDeferred
async def test_units_that_arrive_while_the_writer_is_busy_share_one_transaction(db):
    import threading

    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList
    from twisted.internet.task import deferLater

    seen: list[str] = []
    await db.write(_record_statements, seen)
    busy, release = threading.Event(), threading.Event()

    def hold(conn):
        busy.set()
        release.wait(10)

    first = db.write(hold)
    while not busy.is_set():
        await deferLater(reactor, 0.001, lambda: None)
    # The writer is inside `hold`: these five wait, then go together.
    grouped = [db.write(_insert_account, f"did:g{i}", i == 2) for i in range(5)]
    release.set()
    await first
    outcomes = await DeferredList(grouped, consumeErrors=True)
    await db.write(_stop_recording)
    assert [ok for ok, _ in outcomes] == [True, True, False, True, True]
    # After hold's own transaction, the five go together without savepoints
    # until the third fails; that attempt is rolled back whole and the five
    # run again in one transaction, each in its own savepoint, the failing
    # one rolled back alone.
    rollback = seen.index("ROLLBACK")
    begin = max(i for i, sql in enumerate(seen[:rollback]) if sql == "BEGIN IMMEDIATE")
    attempt = seen[begin: rollback + 1]
    assert "COMMIT" not in attempt and "SAVEPOINT unit" not in attempt
    assert sum("INSERT INTO accounts" in sql for sql in attempt) == 3
    group = seen[seen.index("SAVEPOINT unit") - 1:]
    group = group[: group.index("COMMIT") + 1]
    assert seen[seen.index("SAVEPOINT unit") - 2] == "ROLLBACK"
    assert group[0] == "BEGIN IMMEDIATE" and group.count("BEGIN IMMEDIATE") == 1
    assert group.count("SAVEPOINT unit") == group.count("RELEASE unit") == 5
    assert group.count("ROLLBACK TO unit") == 1
    assert sum("INSERT INTO accounts" in sql for sql in group) == 5
    assert await db.read(_accounts) == ["did:g0", "did:g1", "did:g3", "did:g4"]


@pytest_twisted.ensureDeferred
async def test_units_submitted_while_results_are_delivered_form_one_batch(db):
    from twisted.internet.defer import DeferredList

    seen: list[str] = []
    await db.write(_record_statements, seen)
    seen.clear()
    follow_ups = []

    def next_write(_, i):
        follow_ups.append(db.write(_insert_account, f"did:next{i}"))

    firsts = [db.write(_insert_account, f"did:first{i}") for i in range(4)]
    for i, d in enumerate(firsts):
        d.addCallback(next_write, i)
    await DeferredList(firsts)
    await DeferredList(follow_ups)
    await db.write(_stop_recording)
    # The four follow-ups, made while results were being handed out, went as
    # one batch rather than as one lone write and then the rest.
    transactions = " ".join(seen).split("COMMIT")
    follow_up_transactions = [t for t in transactions if "did:next" in t]
    assert len(follow_up_transactions) == 1
    assert follow_up_transactions[0].count("did:next") == 4 * 2  # did and handle
    # None failed: no savepoints.
    assert "SAVEPOINT" not in follow_up_transactions[0]
    assert len(await db.read(_accounts)) == 8


@pytest_twisted.ensureDeferred
async def test_a_write_is_committed_before_its_deferred_fires(db):
    def committed_elsewhere(_):
        other = connect(db.path)
        try:
            return _accounts(other)
        finally:
            other.close()

    d = db.write(_insert_account, "did:seen")
    d.addCallback(committed_elsewhere)
    assert await d == ["did:seen"]


@pytest_twisted.ensureDeferred
async def test_writes_survive_close_and_reopen(tmp_path):
    database = Database(tmp_path / "db.sqlite")
    database.migrate()
    database.start()
    for i in range(20):
        await database.write(_insert_account, f"did:{i:02d}")
    database.close()

    reopened = Database(tmp_path / "db.sqlite")
    reopened.migrate()
    reopened.start()
    try:
        assert await reopened.read(_accounts) == [f"did:{i:02d}" for i in range(20)]
    finally:
        reopened.close()


@pytest_twisted.ensureDeferred
async def test_a_closed_database_refuses_work_at_once_and_starts_again(tmp_path):
    database = Database(tmp_path / "db.sqlite")
    database.migrate()
    database.start()
    await database.write(_insert_account, "did:a")
    database.close()
    # Refused, not dropped: a closed thread pool would never answer.
    for refused in (database.read(_accounts), database.write(_insert_account, "did:b")):
        assert refused.called
        with pytest.raises(DatabaseClosed):
            await refused

    database.start()  # the same object: new threads, a new reader pool
    try:
        await database.write(_insert_account, "did:c")
        assert await database.read(_accounts) == ["did:a", "did:c"]
    finally:
        database.close()


def _autocheckpoint(conn):
    return conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_the_checkpointer_copies_the_wal_and_the_writer_never_does(db):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    assert await db.write(_autocheckpoint) == 0
    runs = db.checkpointer.runs
    for i in range(30):
        await db.write(_insert_account, f"did:{i:02d}")
    for _ in range(200):
        if db.checkpointer.runs > runs:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert db.checkpointer.runs > runs
    # The rows reached the database file itself, not only the WAL, though
    # no connection of ours but the checkpointer's ever checkpoints.
    for _ in range(200):
        if b"did:29" in db.path.read_bytes():
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert b"did:29" in db.path.read_bytes()


@pytest_twisted.ensureDeferred
async def test_a_purge_empties_the_wal_once_older_readers_are_done(db):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    secure = lambda conn: conn.execute("PRAGMA secure_delete").fetchone()[0]  # noqa: E731
    assert await db.write(secure) == 1 and await db.read(secure) == 1
    wal = db.path.with_name(db.path.name + "-wal")
    db.checkpointer.purge_retry = 0.05
    await db.write(_insert_account, "did:before")
    # A reader on an older snapshot than the last commit holds a TRUNCATE off.
    reader = connect(db.path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM accounts").fetchone()
    await db.write(_insert_account, "did:gone")
    await db.write(lambda conn: conn.execute("DELETE FROM accounts WHERE did = 'did:gone'"))
    db.purge()
    await deferLater(reactor, 0.5, lambda: None)
    assert db.checkpointer.purging and wal.stat().st_size > 0
    await db.write(_insert_account, "did:meanwhile")  # writes go on, between the tries
    reader.execute("COMMIT")
    for _ in range(500):
        if not db.checkpointer.purging:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert not db.checkpointer.purging
    assert wal.stat().st_size == 0
    # Neither file keeps the deleted row's bytes.
    assert b"did:gone" not in db.path.read_bytes() and b"did:meanwhile" in db.path.read_bytes()
    reader.close()


def test_a_wal_past_its_bound_is_restarted(tmp_path):
    from leafpds.db.pool import Checkpointer

    path = tmp_path / "db.sqlite"
    writer = connect(path)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    migrations.migrate(writer)
    checkpointer = Checkpointer(path, max_wal_pages=50)
    conn = connect(path)
    for i in range(100):
        _insert_account(writer, f"did:{i:03d}")
    _busy, wal_pages, copied = checkpointer.checkpoint(conn)
    assert wal_pages >= 50 and copied == wal_pages
    # After a RESTART the next write starts the WAL over from its beginning.
    _insert_account(writer, "did:after")
    _busy, wal_pages, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert wal_pages < 10
    assert checkpointer.runs == 1
    conn.close()
    writer.close()


def test_admin_state_is_added_to_existing_accounts_and_blobs_and_goes_with_the_account(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    assert migrations.migrate(conn, migrations.MIGRATIONS[:6]) == 6
    for did in ("did:a", "did:b"):
        _insert_account(conn, did)
    conn.execute(
        "INSERT INTO blobs (did, cid, mime_type, size, created_at) VALUES ('did:a', x'01', 'image/png', 1, 't')"
    )
    migrations.migrate(conn)
    assert conn.execute("SELECT did, takedown_ref, invites_disabled FROM accounts ORDER BY did").fetchall() == [
        ("did:a", None, 0), ("did:b", None, 0)
    ]
    assert conn.execute("SELECT takedown_ref FROM blobs").fetchall() == [(None,)]
    for did in ("did:a", "did:b"):
        conn.execute("INSERT INTO record_takedowns (did, collection, rkey, ref) VALUES (?, 'c', 'k', 'T-1')", (did,))
    with pytest.raises(sqlite3.IntegrityError):  # one per record
        conn.execute("INSERT INTO record_takedowns (did, collection, rkey, ref) VALUES ('did:a', 'c', 'k', 'T-2')")
    with pytest.raises(sqlite3.IntegrityError):  # only for accounts that exist
        conn.execute("INSERT INTO record_takedowns (did, collection, rkey, ref) VALUES ('did:c', 'c', 'k', 'T-1')")
    assert "STRICT" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'record_takedowns'").fetchone()[0]
    conn.execute("DELETE FROM accounts WHERE did = 'did:a'")
    assert conn.execute("SELECT did FROM record_takedowns").fetchall() == [("did:b",)]
