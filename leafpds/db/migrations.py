"""
Versioned schema migrations.

The schema version lives in SQLite's ``user_version``.  Each migration runs
in one transaction together with the version bump, so a crash mid-way leaves
the previous version intact and the next start simply runs it again.  A
database from a newer leafpds is refused rather than guessed at.
"""

import sqlite3
from collections.abc import Sequence

from twisted.logger import Logger

log = Logger()


class SchemaTooNew(RuntimeError):
    """The database was written by a newer leafpds."""


# Tables are STRICT (types are enforced) and foreign keys are on.  CIDs are
# stored binary; DIDs, handles, revs and times as text (ISO 8601 UTC).
MIGRATIONS: list[str] = [
    # 1: the foundation
    """
    CREATE TABLE accounts (
        did TEXT PRIMARY KEY,
        handle TEXT NOT NULL UNIQUE,
        email TEXT UNIQUE,
        password_hash BLOB,
        status TEXT NOT NULL DEFAULT 'active',
        created_at TEXT NOT NULL
    ) STRICT;

    CREATE TABLE signing_keys (
        did TEXT PRIMARY KEY REFERENCES accounts(did) ON DELETE CASCADE,
        algorithm TEXT NOT NULL,
        encrypted_key BLOB NOT NULL
    ) STRICT;

    -- Keys that belong to the PDS itself (e.g. the PLC rotation key), encrypted.
    CREATE TABLE server_keys (
        name TEXT PRIMARY KEY,
        algorithm TEXT NOT NULL,
        encrypted_key BLOB NOT NULL
    ) STRICT;

    CREATE TABLE repo_roots (
        did TEXT PRIMARY KEY REFERENCES accounts(did) ON DELETE CASCADE,
        commit_cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        indexed_at TEXT NOT NULL
    ) STRICT;

    -- Every block of a repo, keyed by (repo, CID) so one account's blocks can be
    -- exported, counted and deleted without touching anyone else's.  `rev` is
    -- the revision that introduced the block (for getRepo?since=).  No index
    -- on `rev`: every commit inserts and deletes ~20 blocks, and a second
    -- B-tree to keep up costs each of them; a since-export scans the repo's
    -- blocks instead, which it streams anyway.
    CREATE TABLE blocks (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (did, cid)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE records (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL,
        cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        indexed_at TEXT NOT NULL,
        PRIMARY KEY (did, collection, rkey)
    ) STRICT, WITHOUT ROWID;

    -- The firehose log: each row is a frame body ready to send.
    CREATE TABLE repo_seq (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        did TEXT NOT NULL,
        event_type TEXT NOT NULL,
        event BLOB NOT NULL,
        sequenced_at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX repo_seq_by_time ON repo_seq (sequenced_at);

    CREATE TABLE app_passwords (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        name TEXT NOT NULL,
        password_hash BLOB NOT NULL,
        privileged INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        PRIMARY KEY (did, name)
    ) STRICT;

    -- A session is a chain of refresh tokens (each refresh rotates it) that
    -- shares one session_id, also carried by its access tokens.
    CREATE TABLE refresh_tokens (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        app_password_name TEXT,
        expires_at TEXT NOT NULL,
        next_id TEXT
    ) STRICT;
    CREATE INDEX refresh_tokens_by_did ON refresh_tokens (did);
    CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

    -- Sessions ended before their access tokens expire (deleteSession, a
    -- revoked app password): access tokens naming them are refused.
    CREATE TABLE revoked_sessions (
        session_id TEXT PRIMARY KEY,
        expires_at TEXT NOT NULL
    ) STRICT;

    CREATE TABLE invite_codes (
        code TEXT PRIMARY KEY,
        available_uses INTEGER NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        for_account TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL
    ) STRICT;

    CREATE TABLE invite_code_uses (
        code TEXT NOT NULL REFERENCES invite_codes(code),
        used_by TEXT NOT NULL,
        used_at TEXT NOT NULL,
        PRIMARY KEY (code, used_by)
    ) STRICT;

    -- Sign-in with GitHub/Google: (provider, stable subject id) -> DID.
    CREATE TABLE oauth_identities (
        provider TEXT NOT NULL,
        subject TEXT NOT NULL,
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        PRIMARY KEY (provider, subject)
    ) STRICT;
    CREATE INDEX oauth_identities_by_did ON oauth_identities (did);

    -- Blob metadata; the bytes live in the blob store.  `temp_key` is set while
    -- the blob is uploaded but not yet referenced by a committed record.
    CREATE TABLE blobs (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        cid BLOB NOT NULL,
        mime_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        temp_key TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (did, cid)
    ) STRICT;
    -- The collector's question: which temporary blobs are past their grace period.
    CREATE INDEX blobs_temporary ON blobs (created_at) WHERE temp_key IS NOT NULL;

    CREATE TABLE record_blobs (
        did TEXT NOT NULL,
        blob_cid BLOB NOT NULL,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL,
        PRIMARY KEY (did, blob_cid, collection, rkey),
        FOREIGN KEY (did, collection, rkey) REFERENCES records(did, collection, rkey)
            ON DELETE CASCADE
    ) STRICT;
    -- Deleting or updating a record finds its links through this (without
    -- it, the cascade would scan the table for every record deleted).
    CREATE INDEX record_blobs_by_record ON record_blobs (did, collection, rkey);
    """,
    # 2: blocks in a rowid table, found through a separate (did, cid) index.
    # Keyed by CID, a commit's new blocks (the changed MST path, the commit,
    # the records) landed on as many random pages of one wide B-tree as there
    # are blocks, each page split or merged as whole blocks came and went.
    # In a rowid table they are appended on one page at the end; the random
    # part is left to the index, whose entries are small (~60 bytes, not
    # ~300).  Measured with 8 DIDs writing: WAL pages per commit 14.4 -> 8.7,
    # the writer's CPU per commit 195-203 -> 173-181 us (alternating runs).
    """
    CREATE TABLE blocks_by_rowid (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        data BLOB NOT NULL
    ) STRICT;
    INSERT INTO blocks_by_rowid (did, cid, rev, data) SELECT did, cid, rev, data FROM blocks;
    DROP TABLE blocks;
    ALTER TABLE blocks_by_rowid RENAME TO blocks;
    CREATE UNIQUE INDEX blocks_by_cid ON blocks (did, cid);
    """,
    # 3: new blocks go to a small table of their own, and only those that
    # live on are moved into ``blocks`` now and then, in one sorted pass (see
    # leafpds/repo/storage.py).  Most blocks a commit writes are MST nodes
    # that the next commit replaces: in ``blocks`` alone, each of them put an
    # entry on a random page of the big (did, cid) index, and took it out
    # again.  Measured: WAL pages per commit, one DID at 3,000 records,
    # 25.4 -> 16.6; 8 DIDs at 400 records each 11.6 -> 6.2, at 1,500 each
    # 17.4 -> 7.2.
    """
    CREATE TABLE fresh_blocks (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        data BLOB NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX fresh_blocks_by_cid ON fresh_blocks (did, cid);
    """,
    # 4: how many records share a block, for the blocks two or more records
    # of a repo share (the same record bytes under several keys).  Deleting
    # or updating a record deletes its block unless another record still
    # needs it, and asking the records table that scanned all the repo's
    # records: 12 ms per commit at 100,000 records, in the one writer all
    # share.  An index on records (did, cid) would cost every create an
    # entry (5-11% of bench/repo.py's commit rates in alternating runs);
    # this table is written only when a block is shared.
    """
    CREATE TABLE shared_blocks (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        cid BLOB NOT NULL,
        refs INTEGER NOT NULL,
        PRIMARY KEY (did, cid)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO shared_blocks (did, cid, refs)
        SELECT did, cid, count(*) FROM records GROUP BY did, cid HAVING count(*) > 1;
    """,
    # 5: a record's bytes live in its row of the records index, not in the
    # blockstore, which keeps the tree's nodes and the commit.  A create
    # writes one row where it wrote three (the index row, the block, and the
    # block's entry at a random place of the big (did, cid) index when it
    # settled) and no longer probes that index for a block with the same
    # bytes; records that share bytes share nothing, so ``shared_blocks``
    # goes; a read takes the record from one row.  Measured with 8 DIDs at
    # ~1,000 records each: 403 -> 360 us per commit, the writer's part
    # 177 -> 139 us (medians of five alternating runs).  Rows with a
    # record's bytes are too big for a WITHOUT ROWID table (whose interior
    # pages hold copies of whole rows), so ``records`` becomes a rowid
    # table found through a unique index.  ``record_blobs`` references
    # ``records``: dropping the old table would cascade to its rows, so it
    # is set aside and put back, as migration 1 made it, around the change.
    """
    CREATE TABLE record_blobs_saved (
        did TEXT NOT NULL,
        blob_cid BLOB NOT NULL,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL
    ) STRICT;
    INSERT INTO record_blobs_saved SELECT did, blob_cid, collection, rkey FROM record_blobs;
    DROP TABLE record_blobs;

    CREATE TABLE records_with_data (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL,
        cid BLOB NOT NULL,
        rev TEXT NOT NULL,
        indexed_at TEXT NOT NULL,
        data BLOB NOT NULL
    ) STRICT;
    INSERT INTO records_with_data (did, collection, rkey, cid, rev, indexed_at, data)
        SELECT r.did, r.collection, r.rkey, r.cid, r.rev, r.indexed_at,
            coalesce((SELECT data FROM blocks b WHERE b.did = r.did AND b.cid = r.cid),
                     (SELECT data FROM fresh_blocks f WHERE f.did = r.did AND f.cid = r.cid))
        FROM records r ORDER BY r.did, r.collection, r.rkey;
    -- The records' blocks go, but for one that is also a tree node (a node
    -- is the map {e, l}, which no record with a $type can equal).
    DELETE FROM blocks WHERE rowid IN (
        SELECT b.rowid FROM records_with_data r JOIN blocks b ON b.did = r.did AND b.cid = r.cid
        WHERE substr(b.data, 1, 3) != x'a26165');
    DELETE FROM fresh_blocks WHERE rowid IN (
        SELECT f.rowid FROM records_with_data r
        JOIN fresh_blocks f ON f.did = r.did AND f.cid = r.cid
        WHERE substr(f.data, 1, 3) != x'a26165');
    DROP TABLE shared_blocks;
    DROP TABLE records;
    ALTER TABLE records_with_data RENAME TO records;
    CREATE UNIQUE INDEX records_by_key ON records (did, collection, rkey);

    CREATE TABLE record_blobs (
        did TEXT NOT NULL,
        blob_cid BLOB NOT NULL,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL,
        PRIMARY KEY (did, blob_cid, collection, rkey),
        FOREIGN KEY (did, collection, rkey) REFERENCES records(did, collection, rkey)
            ON DELETE CASCADE
    ) STRICT;
    INSERT INTO record_blobs (did, blob_cid, collection, rkey)
        SELECT did, blob_cid, collection, rkey FROM record_blobs_saved;
    DROP TABLE record_blobs_saved;
    CREATE INDEX record_blobs_by_record ON record_blobs (did, collection, rkey);
    """,
    # 6: the accounts' private preferences (app.bsky.actor.getPreferences /
    # putPreferences), one row per preference in the order they were put:
    # the rowid is that order.  `name` is the preference's $type, so a put
    # can replace one namespace and keep what a session may not see;
    # `value` is the preference as JSON, $type included, as the client sent it.
    """
    CREATE TABLE account_prefs (
        id INTEGER PRIMARY KEY,
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL
    ) STRICT;
    CREATE INDEX account_prefs_by_did ON account_prefs (did, id);
    """,
    # 7: email.  When the account's email was confirmed (NULL: not yet; a new
    # address clears it).  The short codes mailed for confirming, changing the
    # address, resetting the password (and later deleting the account, signing
    # a PLC operation): one per (account, purpose), kept as an HMAC, never as
    # the code, and found by it for resetPassword, which names no account.
    # The outgoing mail queue: a row per mail until the SMTP server takes it;
    # `did`/`purpose` let a newer code's mail replace an unsent older one.
    """
    ALTER TABLE accounts ADD COLUMN email_confirmed_at TEXT;
    CREATE TABLE email_tokens (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        purpose TEXT NOT NULL,
        token_hash BLOB NOT NULL,
        requested_at TEXT NOT NULL,
        PRIMARY KEY (did, purpose)
    ) STRICT;
    CREATE INDEX email_tokens_by_hash ON email_tokens (purpose, token_hash);
    CREATE TABLE mail_queue (
        id INTEGER PRIMARY KEY,
        did TEXT,
        purpose TEXT,
        recipient TEXT NOT NULL,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        queued_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT
    ) STRICT;
    CREATE INDEX mail_queue_by_next_attempt ON mail_queue (next_attempt_at);
    CREATE INDEX mail_queue_by_purpose ON mail_queue (did, purpose);
    """,
    # 8: the admin API's state (issue #17).  A takedown keeps the operator's
    # reference (`ref`, e.g. a ticket number) so getSubjectStatus can give
    # it back; an account's is beside its status ('takendown' while it
    # holds), a blob's on its row.  A record's takedown has a table of its
    # own, keyed by the record's path: the records index is rewritten by
    # every commit that touches the record, and a takedown must outlive the
    # owner's edits (as the official PDS's does) without the write path
    # knowing about it.  `invites_disabled`: enable/disableAccountInvites.
    """
    ALTER TABLE accounts ADD COLUMN takedown_ref TEXT;
    ALTER TABLE accounts ADD COLUMN invites_disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE blobs ADD COLUMN takedown_ref TEXT;
    CREATE TABLE record_takedowns (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        collection TEXT NOT NULL,
        rkey TEXT NOT NULL,
        ref TEXT NOT NULL,
        PRIMARY KEY (did, collection, rkey)
    ) STRICT, WITHOUT ROWID;
    """,
    # 9: atproto OAuth (leafpds/oauth/tokens.py).  Only hashes (SHA-256) of
    # codes and refresh tokens are kept, never the tokens.  A grant is one
    # authorization of one client by one account: the refresh tokens that
    # rotate from its first one (a family), its DPoP key and its scope; the
    # account page lists grants and revoking one deletes its tokens (and
    # lists its id in revoked_sessions, which refuses its access tokens).  A
    # code row outlives its use (grant_id set) so that a replayed code can
    # kill the grant it gave.  Consents remembered per account and client
    # let a second authorization with the same scope skip the consent page.
    """
    CREATE TABLE oauth_grants (
        id TEXT PRIMARY KEY,
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        client_id TEXT NOT NULL,
        client_auth TEXT NOT NULL,
        scope TEXT NOT NULL,
        dpop_jkt TEXT NOT NULL,
        created_at TEXT NOT NULL,
        refreshed_at TEXT NOT NULL
    ) STRICT;
    CREATE INDEX oauth_grants_by_did ON oauth_grants (did);

    CREATE TABLE oauth_refresh_tokens (
        token_hash BLOB PRIMARY KEY,
        grant_id TEXT NOT NULL REFERENCES oauth_grants(id) ON DELETE CASCADE,
        expires_at TEXT NOT NULL,
        rotated INTEGER NOT NULL DEFAULT 0
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX oauth_refresh_tokens_by_grant ON oauth_refresh_tokens (grant_id);

    CREATE TABLE oauth_codes (
        code_hash BLOB PRIMARY KEY,
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        client_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        code_challenge TEXT NOT NULL,
        dpop_jkt TEXT,
        expires_at TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        grant_id TEXT
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE oauth_consents (
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        client_id TEXT NOT NULL,
        scope TEXT NOT NULL,
        consented_at TEXT NOT NULL,
        PRIMARY KEY (did, client_id)
    ) STRICT, WITHOUT ROWID;
    """,
    # 10: deactivateAccount's time and its optional deleteAfter; a reversed
    # takedown restores a deactivation that came before it.
    """
    ALTER TABLE accounts ADD COLUMN deactivated_at TEXT;
    ALTER TABLE accounts ADD COLUMN delete_after TEXT;
    """,
    # 11: the accounts signed in on a browser at the OAuth authorization
    # page, for its account chooser (leafpds/oauth/devices.py): the hash of
    # the browser's device cookie and the session each sign-in started there.
    """
    CREATE TABLE oauth_device_accounts (
        device_hash BLOB NOT NULL,
        did TEXT NOT NULL REFERENCES accounts(did) ON DELETE CASCADE,
        session_id TEXT NOT NULL,
        signed_in_at TEXT NOT NULL,
        PRIMARY KEY (device_hash, did)
    ) STRICT, WITHOUT ROWID;
    """,
]


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, steps: Sequence[str] | None = None) -> int:
    """
    Apply every migration the database lacks; return the resulting version.
    ``steps`` is leafpds's own list unless another database (the PLC
    directory's) brings its own.
    """
    steps = MIGRATIONS if steps is None else steps
    current = schema_version(conn)
    latest = len(steps)
    if current > latest:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this leafpds "
            f"understands ({latest}); refusing to touch it"
        )
    for version in range(current + 1, latest + 1):
        # executescript() would commit on its own; run statement by statement
        # inside one explicit transaction instead.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(steps[version - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("Database schema migrated to version {version}", version=version)
    return latest


def _statements(script: str) -> list[str]:
    # Our scripts have no semicolons inside literals or triggers, so once the
    # comment lines are gone a plain split is exact; complete_statement guards
    # that assumption.
    code = "\n".join(
        line for line in script.splitlines() if not line.strip().startswith("--")
    )
    statements = [part.strip() + ";" for part in code.split(";") if part.strip()]
    for statement in statements:
        if not sqlite3.complete_statement(statement):
            raise ValueError(f"incomplete SQL statement in migration: {statement!r}")
    return statements
