"""
Data-model and crypto micro-benchmarks: prints operations per second.

    .venv/bin/python bench/codec.py
"""

import time
from collections.abc import Callable

from leafpds import crypto
from leafpds.ipld import codec
from leafpds.ipld.cid import cid_for_cbor

LINK = cid_for_cbor(b"leaf")


def mst_node() -> dict:
    entries = [
        {"p": 0 if i == 0 else 20, "k": f"{i:06d}xyzabc".encode(), "v": LINK, "t": LINK if i % 3 else None}
        for i in range(16)
    ]
    return {"l": LINK, "e": entries}


def commit() -> dict:
    return {
        "did": "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
        "version": 3,
        "data": LINK,
        "rev": "3kbd2kzg3f22c",
        "prev": None,
        "sig": bytes(64),
    }


def post() -> dict:
    return {
        "$type": "app.bsky.feed.post",
        "text": "Hello from leafpds! This is a post of a typical length, with a link and a mention.",
        "createdAt": "2026-11-28T13:39:29.123Z",
        "langs": ["en"],
        "facets": [
            {
                "index": {"byteStart": 6, "byteEnd": 13},
                "features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:abc"}],
            }
        ],
    }


def rate(fn: Callable[[], object], seconds: float = 1.0) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    key = crypto.K256Keypair.generate()
    message = codec.encode(commit())
    signature = key.sign(message)
    did = key.did()
    cases = {}
    for name, make in [("MST node (16 entries)", mst_node), ("commit", commit), ("post record", post)]:
        value = make()
        data = codec.encode(value)
        cases[f"encode+decode {name}"] = lambda v=value, d=data: codec.decode(codec.encode(v))
    block = codec.encode(mst_node())
    cases["CID of an MST node block"] = lambda: cid_for_cbor(block)
    cases["K-256 sign"] = lambda: key.sign(message)
    cases["K-256 verify"] = lambda: crypto.verify_signature(did, message, signature)
    width = max(map(len, cases))
    for name, fn in cases.items():
        print(f"{name:<{width}}  {rate(fn):>12,.0f} ops/s")


if __name__ == "__main__":
    main()
