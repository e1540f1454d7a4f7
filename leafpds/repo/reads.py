"""
Units of work for reading repositories (each runs in one read transaction):
resolving the ``repo`` an XRPC call names, records, commits, proofs.
"""

from dataclasses import dataclass
from typing import Any

from leafpds.errors import RepoNotFound, XRPCError
from leafpds.ipld.cid import CID
from leafpds.repo import storage
from leafpds.repo.commit import parse_commit
from leafpds.repo.mst import proof_for_key


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


def find_active_repo(conn: Any, did: str) -> RepoInfo:
    """For sync methods: the repo must exist and be active."""
    repo = find_repo(conn, did)
    if repo.status == "takendown":
        raise XRPCError(f"Repo has been takendown: {did}", name="RepoTakendown")
    if repo.status != "active":
        raise XRPCError(f"Repo has been deactivated: {did}", name="RepoDeactivated")
    return repo


def get_record(
    conn: Any, identifier: str, collection: str, rkey: str
) -> tuple[RepoInfo, tuple[CID, bytes] | None]:
    repo = find_repo(conn, identifier)
    return repo, storage.get_record(conn, repo.did, collection, rkey)


def list_records(
    conn: Any, identifier: str, collection: str, limit: int, cursor: str | None, reverse: bool
) -> tuple[RepoInfo, list[tuple[str, CID, bytes]]]:
    repo = find_repo(conn, identifier)
    return repo, storage.list_records(conn, repo.did, collection, limit, cursor, reverse)


def describe(conn: Any, identifier: str) -> tuple[RepoInfo, list[str]]:
    repo = find_repo(conn, identifier)
    return repo, storage.collections(conn, repo.did)


def record_proof(conn: Any, did: str, collection: str, rkey: str) -> tuple[CID, list[tuple[CID, bytes]]]:
    """
    The blocks proving a record's presence (or absence): the commit, the MST
    nodes on the key's path, and the record block if it exists.
    """
    repo = find_active_repo(conn, did)
    source = storage.SQLBlocks(conn, did)
    commit_block = source.get_block(repo.commit_cid)
    commit = parse_commit(commit_block)
    blocks = [(repo.commit_cid, commit_block)]
    blocks += proof_for_key(source, commit.data, f"{collection}/{rkey}")
    record = storage.get_record(conn, did, collection, rkey)
    if record is not None:
        blocks.append(record)
    return repo.commit_cid, blocks


def get_blocks(conn: Any, did: str, cids: list[CID]) -> list[tuple[CID, bytes]]:
    find_active_repo(conn, did)
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
