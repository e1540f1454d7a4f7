"""
Reading and pruning the firehose log (``repo_seq``): units of work for
:class:`~leafpds.db.pool.Database`.  Sequence numbers are dense (each event
takes the last one plus one, in the writer), and ``sequenced_at`` is an ISO
timestamp in one fixed format, so timestamps compare as strings.
"""

from dataclasses import dataclass
from typing import Any

from leafpds.repo import events


@dataclass(frozen=True)
class Page:
    """Consecutive frames ``(seq, frame)``; ``more``: it stopped at a limit."""

    frames: list[tuple[int, bytes]]
    more: bool


@dataclass(frozen=True)
class Start:
    """Where a subscription with a cursor begins."""

    #: The cursor is older than what is kept: events after it are missing.
    outdated: bool
    page: Page


def start(conn: Any, cursor: int, cutoff: str, max_frames: int, max_bytes: int) -> Start | None:
    """
    The first page after ``cursor``, or None if the cursor is in the future.
    A cursor whose next event is older than ``cutoff``, or already pruned,
    is outdated: the replay then starts at the oldest event kept.
    """
    last = events.last_seq(conn)
    if cursor > last:
        return None
    after = max(cursor, 0)
    following = conn.execute(
        "SELECT seq, sequenced_at FROM repo_seq WHERE seq > ? ORDER BY seq LIMIT 1", (after,)
    ).fetchone()
    outdated = following is not None and (following[0] != after + 1 or following[1] < cutoff)
    if outdated:
        oldest_kept = conn.execute(
            "SELECT seq FROM repo_seq WHERE sequenced_at >= ? ORDER BY sequenced_at, seq LIMIT 1",
            (cutoff,),
        ).fetchone()
        after = oldest_kept[0] - 1 if oldest_kept else last
    return Start(outdated, page(conn, after, max_frames, max_bytes))


def page(conn: Any, after: int, max_frames: int, max_bytes: int) -> Page:
    """Frames after ``after``: at most ``max_frames``, and about ``max_bytes``."""
    frames: list[tuple[int, bytes]] = []
    size = 0
    rows = conn.execute(
        "SELECT seq, event FROM repo_seq WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, max_frames + 1),
    )
    for seq, frame in rows:
        if len(frames) == max_frames or size >= max_bytes:
            return Page(frames, more=True)
        frames.append((seq, frame))
        size += len(frame)
    return Page(frames, more=False)


def prune(conn: Any, cutoff: str, limit: int) -> int:
    """
    Delete up to ``limit`` of the events sequenced before ``cutoff``; the
    newest event always stays.  Returns how many went.
    """
    return conn.execute(
        "DELETE FROM repo_seq WHERE seq IN ("
        " SELECT seq FROM repo_seq WHERE sequenced_at < ?"
        " AND seq < (SELECT max(seq) FROM repo_seq)"
        " ORDER BY sequenced_at, seq LIMIT ?)",
        (cutoff, limit),
    ).rowcount
