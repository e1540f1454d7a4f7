"""
What SQLite's ``secure_delete`` costs the repository engine, through the real
transactor and SQLite (leafpds.db.pool sets ``ON``; ``FAST`` would leave the
bytes of pages freed whole).  For each setting, in alternating rounds so
that the machine's drift falls on all of them alike:

- sequential single-record creates on one DID, then single-record deletes
  spread over its records: bytes written to files (``wchar`` of
  /proc/self/io, the WAL and the checkpoints' copies) and CPU time of the
  process (every thread), per commit; commits/s
- the deletion of the whole account (its rows, as leafpds.admin.actions
  deletes them, without the rest of the service): s

    .venv/bin/python bench/secure_delete.py [--records 2000] [--rounds 3]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repo import Keys, new_repo, post  # noqa: E402

from leafpds.db import pool  # noqa: E402
from leafpds.db.pool import Database  # noqa: E402
from leafpds.repo.transactor import RepoTransactor, Write  # noqa: E402
from leafpds.tid import TIDClock  # noqa: E402

SETTINGS = ("OFF", "FAST", "ON")


def written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def with_secure_delete(setting: str) -> None:
    # Every connection opened from now on (writer, readers, checkpointer).
    pool._PRAGMAS = tuple(
        f"PRAGMA secure_delete={setting}" if p.startswith("PRAGMA secure_delete") else p
        for p in pool._PRAGMAS
    )


async def one_round(setting: str, records: int, folder: Path) -> dict[str, float]:
    with_secure_delete(setting)
    db = Database(folder / f"{setting}-{time.monotonic_ns()}.sqlite")
    db.migrate()
    db.start()
    keys = Keys()
    transactor = RepoTransactor(db, keys)
    rkeys = TIDClock()
    did = "did:plc:bench"
    await new_repo(db, transactor, keys, did)
    made = [rkeys.next() for _ in range(records)]
    result = {}
    for name, writes in (
        ("create", [Write("create", "app.bsky.feed.post", rkey, post(n)) for n, rkey in enumerate(made)]),
        ("delete", [Write("delete", "app.bsky.feed.post", rkey) for rkey in made[::4]]),
    ):
        bytes_before, cpu_before, start = written(), time.process_time(), time.perf_counter()
        for write in writes:
            await transactor.apply_writes(did, [write])
        elapsed = time.perf_counter() - start
        result[f"{name} bytes"] = (written() - bytes_before) / len(writes)
        result[f"{name} cpu"] = (time.process_time() - cpu_before) / len(writes) * 1e6
        result[f"{name} rate"] = len(writes) / elapsed

    def delete_account(conn):
        conn.execute("DELETE FROM accounts WHERE did = ?", (did,))

    start = time.perf_counter()
    await db.write(delete_account)
    result["account deletion"] = time.perf_counter() - start
    db.close()
    return result


async def main(reactor, args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="leafpds-bench-"))
    rounds: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            rounds[setting].append(await one_round(setting, args.records, folder))
    print(f"{args.records:,} creates then {args.records // 4:,} deletes on one DID; medians of {args.rounds} rounds")
    for setting in SETTINGS:
        m = {key: statistics.median(r[key] for r in rounds[setting]) for key in rounds[setting][0]}
        print(
            f"secure_delete={setting:<4}  create: {m['create bytes'] / 1024:6.1f} KiB written,"
            f" {m['create cpu']:5.0f} us CPU, {m['create rate']:6,.0f}/s;"
            f"  delete: {m['delete bytes'] / 1024:6.1f} KiB, {m['delete cpu']:5.0f} us, {m['delete rate']:6,.0f}/s;"
            f"  account deletion {m['account deletion']:.3f} s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    task.react(main, [parser.parse_args()])
