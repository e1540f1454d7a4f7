"""
Signed commits (repository format v3).

A commit is ``{did, version: 3, data, rev, prev: null, sig}``: ``data`` is
the MST root, ``rev`` a TID that only grows, ``sig`` the account key's
signature over the DAG-CBOR encoding of the commit without ``sig``.
"""

from dataclasses import dataclass

from leafpds import crypto
from leafpds.ipld import codec
from leafpds.ipld.cid import CID


class InvalidCommit(ValueError):
    """A commit block that is malformed or not signed by the expected key."""


@dataclass(frozen=True)
class Commit:
    did: str
    data: CID
    rev: str
    sig: bytes

    def unsigned(self) -> dict:
        return {"did": self.did, "version": 3, "data": self.data, "rev": self.rev, "prev": None}

    def to_block(self) -> tuple[CID, bytes]:
        return codec.encode_with_cid({**self.unsigned(), "sig": self.sig})


def sign_commit(did: str, data: CID, rev: str, key: crypto.Keypair) -> Commit:
    unsigned = {"did": did, "version": 3, "data": data, "rev": rev, "prev": None}
    return Commit(did, data, rev, key.sign(codec.encode(unsigned)))


def parse_commit(block: bytes) -> Commit:
    """Decode a commit block and check its shape (not its signature)."""
    try:
        value = codec.decode(block)
    except codec.DecodeError as e:
        raise InvalidCommit(str(e)) from None
    if not isinstance(value, dict):
        raise InvalidCommit("commit is not a map")
    if value.get("version") != 3:
        raise InvalidCommit(f"unsupported repo version {value.get('version')!r}")
    did, data, rev, sig = (value.get(k) for k in ("did", "data", "rev", "sig"))
    if not (isinstance(did, str) and isinstance(data, CID) and isinstance(rev, str)):
        raise InvalidCommit("commit lacks did, data or rev")
    if not isinstance(sig, bytes):
        raise InvalidCommit("commit is not signed")
    if value.get("prev", None) is not None and not isinstance(value["prev"], CID):
        raise InvalidCommit("commit prev must be a CID or null")
    if set(value) - {"did", "version", "data", "rev", "prev", "sig"}:
        raise InvalidCommit("commit has unexpected fields")
    return Commit(did, data, rev, sig)


def verify_commit(block: bytes, did_key: str, did: str | None = None) -> Commit:
    """Parse a commit and check it is signed by ``did_key`` (and for ``did``)."""
    commit = parse_commit(block)
    if did is not None and commit.did != did:
        raise InvalidCommit(f"commit is for {commit.did}, expected {did}")
    unsigned = codec.decode(block)
    del unsigned["sig"]
    if not crypto.verify_signature(did_key, codec.encode(unsigned), commit.sig):
        raise InvalidCommit("commit signature does not verify")
    return commit
