"""
Units of work for reading repositories (each runs in one read transaction):
resolving the ``repo`` an XRPC call names, records, commits, proofs.
"""

from dataclasses import dataclass
from typing import Any

from leafpds.errors import AuthenticationRequired, InvalidRequest, RepoNotFound, XRPCError
from leafpds.ipld.cid import CID
from leafpds.repo import storage
from leafpds.repo.commit import parse_commit
from leafpds.repo.mst import proof_for_key
from leafpds.tid import tid_from_parts
from leafpds.timestamps import epoch_from_iso


@dataclass(frozen=True)
class RepoInfo:
    did: str
    handle: str
    status: str
    commit_cid: CID
    rev: str


def find_repo(conn: Any, identifier: str) -> RepoInfo:
    """The repo named by a DID or a handle; RepoNotFound if there is none."""
    column = "did" if identifier.startswith("did:") else "handle"
    row = conn.execute(
        "SELECT a.did, a.handle, a.status, r.commit_cid, r.rev FROM accounts a"
        f" JOIN repo_roots r ON r.did = a.did WHERE a.{column} = ?",
        (identifier if column == "did" else identifier.lower(),),
    ).fetchone()
    if row is None:
        raise RepoNotFound(f"Could not find repo: {identifier}")
    return RepoInfo(row[0], row[1], row[2], CID(row[3]), row[4])


def check_writable(conn: Any, did: str) -> None:
    """
    Refuse a write into a repo whose account is not active; run in the
    commit's own transaction, so a deactivation or takedown just before it is seen.
    """
    row = conn.execute("SELECT status FROM accounts WHERE did = ?", (did,)).fetchone()
    if row is None or row[0] == "active":
        return  # a missing account is the commit's own RepoNotFound
    if row[0] == "takendown":
        raise AuthenticationRequired("Account has been taken down", name="AccountTakedown")
    raise AuthenticationRequired("Account is deactivated", name="AccountDeactivated")


def find_available_repo(conn: Any, identifier: str, self_or_admin: bool = False) -> RepoInfo:
    """
    For sync methods and describeRepo: the repo must exist, and be active
    unless the account itself or the admin asks (an account exports its
    own repo while deactivated, as a migration does).
    """
    repo = find_repo(conn, identifier)
    if self_or_admin:
        return repo
    if repo.status == "takendown":
        raise XRPCError(f"Repo has been takendown: {identifier}", name="RepoTakendown")
    if repo.status != "active":
        raise XRPCError(f"Repo has been deactivated: {identifier}", name="RepoDeactivated")
    return repo


def find_served_repo(conn: Any, identifier: str) -> RepoInfo:
    """
    For com.atproto.repo record reads: a repo that is not active is not
    found, as the official PDS answers (its actor lookup leaves taken-down
    and deactivated accounts out).
    """
    repo = find_repo(conn, identifier)
    if repo.status != "active":
        raise RepoNotFound(f"Could not find repo: {identifier}")
    return repo


def get_record(
    conn: Any, identifier: str, collection: str, rkey: str
) -> tuple[RepoInfo, tuple[CID, bytes] | None]:
    repo = find_served_repo(conn, identifier)
    return repo, storage.served_record(conn, repo.did, collection, rkey)


def list_records(
    conn: Any, identifier: str, collection: str, limit: int, cursor: str | None, reverse: bool
) -> tuple[RepoInfo, list[tuple[str, CID, bytes]]]:
    try:
        repo = find_served_repo(conn, identifier)
    except RepoNotFound as e:
        # The official PDS names no error for listRecords' missing repo.
        raise InvalidRequest(e.message) from None
    return repo, storage.list_records(conn, repo.did, collection, limit, cursor, reverse)


def describe(conn: Any, identifier: str) -> tuple[RepoInfo, list[str]]:
    repo = find_available_repo(conn, identifier)
    return repo, storage.collections(conn, repo.did)


def record_proof(
    conn: Any, did: str, collection: str, rkey: str, self_or_admin: bool
) -> tuple[CID, list[tuple[CID, bytes]]]:
    """
    The blocks proving a record's presence (or absence): the commit, the MST
    nodes on the key's path, and the record block if it exists.
    """
    repo = find_available_repo(conn, did, self_or_admin)
    source = storage.SQLBlocks(conn, did)
    commit_block = source.get_block(repo.commit_cid)
    commit = parse_commit(commit_block)
    blocks = [(repo.commit_cid, commit_block)]
    blocks += proof_for_key(source, commit.data, f"{collection}/{rkey}")
    record = storage.get_record(conn, did, collection, rkey)
    if record is not None:
        blocks.append(record)
    return repo.commit_cid, blocks


def get_blocks(conn: Any, did: str, cids: list[CID], self_or_admin: bool) -> list[tuple[CID, bytes]]:
    find_available_repo(conn, did, self_or_admin)
    source = storage.SQLBlocks(conn, did)
    found: dict[CID, bytes] = {}
    for cid in cids:
        try:
            found[cid] = source.get_block(cid)
        except KeyError:
            pass  # a record's, or none
    rest = [cid for cid in cids if cid not in found]
    if rest:
        found.update(storage.find_record_blocks(conn, did, rest))
    missing = [cid.encode() for cid in cids if cid not in found]
    if missing:
        raise XRPCError(f"Could not find cids: {', '.join(missing)}")
    return [(cid, found[cid]) for cid in cids]


@dataclass(frozen=True)
class LocalRecord:
    """A record as read-after-write needs it."""

    collection: str
    rkey: str
    cid: CID
    rev: str
    indexed_at: str
    data: bytes


@dataclass(frozen=True)
class WrittenSince:
    """An account's records written after a rev, for a view that is behind."""

    handle: str
    #: The oldest first, at most the limit asked for.
    records: list[LocalRecord]
    #: The account's profile record (app.bsky.actor.profile/self), whenever written.
    profile: LocalRecord | None


def written_since(conn: Any, did: str, rev: str, limit: int) -> WrittenSince | None:
    """
    What ``did`` wrote after ``rev`` (at most ``limit`` records), or None if
    nothing: the repo's head is not past ``rev``, or ``rev`` is not from
    this repo's life here (older than the account and than every record, as
    an AppView's view of a repo before it moved here would be: its records
    would all look new).
    """
    head = conn.execute(
        "SELECT a.handle, r.rev, a.created_at FROM accounts a JOIN repo_roots r ON r.did = a.did WHERE a.did = ?",
        (did,),
    ).fetchone()
    if head is None or head[1] <= rev:
        return None
    # A second's slack: the genesis rev and created_at are drawn apart.
    born = tid_from_parts(int((epoch_from_iso(head[2]) - 1) * 1_000_000), 0)
    # The account's records are few enough to scan: only a view that is
    # behind the repo gets here.
    columns = "collection, rkey, cid, rev, indexed_at, data"
    rows = conn.execute(
        f"SELECT {columns} FROM records WHERE did = ? AND rev > ? ORDER BY rev LIMIT ?", (did, rev, limit)
    ).fetchall()
    if not rows:
        return None
    if rev < born and conn.execute(
        "SELECT 1 FROM records WHERE did = ? AND rev <= ? LIMIT 1", (did, rev)
    ).fetchone() is None:
        return None
    profile = conn.execute(
        f"SELECT {columns} FROM records WHERE did = ? AND collection = 'app.bsky.actor.profile' AND rkey = 'self'",
        (did,),
    ).fetchone()

    def local(row: Any) -> LocalRecord:
        return LocalRecord(row[0], row[1], CID(row[2]), row[3], row[4], bytes(row[5]))

    return WrittenSince(head[0], [local(row) for row in rows], local(profile) if profile else None)
