"""
The firehose log (``repo_seq``): events appended inside the same transaction
as the change they announce, each stored as the complete frame a
``subscribeRepos`` subscriber receives (DAG-CBOR header + body), so it is
encoded once and every subscriber gets the same bytes.
"""

from typing import Any

from leafpds.ipld import codec

# The sync spec's limits: a #commit's blocks and op count.
MAX_COMMIT_BLOCKS_BYTES = 2_000_000
MAX_COMMIT_OPS = 200
# The largest record, as DAG-CBOR (the network's limit for one record).
MAX_RECORD_BYTES = 1024 * 1024


def encode_frame(event_type: str, body: dict[str, Any]) -> bytes:
    return codec.encode({"op": 1, "t": event_type}) + codec.encode(body)


def encode_error_frame(error: str, message: str | None = None) -> bytes:
    body = {"error": error}
    if message is not None:
        body["message"] = message
    return codec.encode({"op": -1}) + codec.encode(body)


def last_seq(conn: Any) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'repo_seq'").fetchone()
    return row[0] if row else 0


def append_event(
    conn: Any, did: str, event_type: str, body: dict[str, Any], now: str
) -> tuple[int, bytes]:
    """
    Give the event the next sequence number, encode its frame and append it.
    Only the single writer connection appends, so reading the last number and
    inserting the next is race-free.
    """
    seq = last_seq(conn) + 1
    frame = encode_frame(event_type, {"seq": seq, **body})
    conn.execute(
        "INSERT INTO repo_seq (seq, did, event_type, event, sequenced_at) VALUES (?, ?, ?, ?, ?)",
        (seq, did, event_type, frame, now),
    )
    return seq, frame


def append_identity(conn: Any, did: str, handle: str, now: str) -> tuple[int, bytes]:
    """Append ``#identity``: relays re-resolve the DID and its handle."""
    return append_event(conn, did, "#identity", {"did": did, "handle": handle, "time": now}, now)
