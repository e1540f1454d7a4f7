"""
MST write micro-benchmark: one ``apply_ops`` per commit, as the transactor
calls it for sequential single-record creates (new TID keys, so always the
rightmost path), from a warm node cache.  Prints µs per commit.  The keys
are fixed (a tree's shape, hence its cost, depends on its keys' hashes).

    .venv/bin/python bench/mst.py [--records 3000] [--commits 3000] [--profile]
"""

import argparse
import cProfile
import itertools
import pstats
import time

from leafpds.ipld.cid import cid_for_cbor
from leafpds.repo.mst import MemoryBlockSource, NodeCache, apply_ops
from leafpds.tid import tid_from_parts


def main(args) -> None:
    # A post every 700 µs from 2026-01-01, from clock 7.
    tids = (tid_from_parts(1_767_225_600_000_000 + 700 * n, 7) for n in itertools.count())
    source = MemoryBlockSource()
    cache = NodeCache()
    root = None
    # Grow the repo first, in commits of 200 records.
    for start in range(0, args.records, 200):
        ops = [
            ("create", f"app.bsky.feed.post/{next(tids)}", cid_for_cbor(b"%d" % n))
            for n in range(start, min(start + 200, args.records))
        ]
        diff = apply_ops(source, root, ops, cache)
        source.update(diff.new_blocks)
        root = diff.root
    ops = [
        [("create", f"app.bsky.feed.post/{next(tids)}", cid_for_cbor(b"x%d" % n))]
        for n in range(args.commits)
    ]

    def run() -> None:
        nonlocal root
        for commit in ops:
            diff = apply_ops(source, root, commit, cache)
            # What the transactor keeps: the new blocks, as storage would.
            source.update(diff.new_blocks)
            root = diff.root

    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run)
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        return
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    print(f"apply_ops, one create on {args.records:,}+ records: "
          f"{elapsed / args.commits * 1e6:6.1f} µs/commit")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--commits", type=int, default=3000)
    parser.add_argument("--profile", action="store_true")
    main(parser.parse_args())
