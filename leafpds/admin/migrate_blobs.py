"""
``leafpds-admin blobs migrate --to s3://…``: every blob of a data folder's
disk store copied into an S3 bucket, beside the running server, so that the
operator can then restart it with ``--blobstore s3://…``.

Resumable: a blob already in the bucket is skipped (an object appears only
once whole).  Verified: each file is hashed against its CID before it goes
up, and goes up signed with that hash (parts each with their own), so S3
refuses bytes that differ.  The disk copies stay until the operator removes
them, after the switch.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leafpds.admin.backup import blob_list, file_cid
from leafpds.blobs.s3 import S3BlobStore, S3Config
from leafpds.ipld.cid import CID

Progress = Callable[[str, int, int], None]


class MigrationError(Exception):
    """The migration cannot go on (the message says why)."""


def disk_blobs(data_dir: Path) -> list[tuple[str, CID, int]]:
    """(did, cid, size) of every blob the data folder's database knows."""
    database = data_dir / "leafpds.sqlite"
    if not database.is_file():
        raise MigrationError(f"no leafpds database at {database}")
    return blob_list(database)


async def migrate(
    data_dir: Path, config: S3Config, reactor: Any, progress: Progress | None = None
) -> dict[str, Any]:
    """Copy ``data_dir``'s blobs into the bucket ``config`` names; a report of what was done."""
    blobs = disk_blobs(data_dir)
    store = S3BlobStore(config, reactor)
    uploaded = present = size = 0
    missing: list[tuple[str, str]] = []
    try:
        for n, (did, cid, length) in enumerate(blobs):
            source = data_dir / "blobs" / did / cid.encode()
            if await store.exists(did, cid):
                present += 1
            elif not source.is_file():
                missing.append((did, cid.encode()))  # deleted since (a record deleted, a temporary blob collected)
            else:
                if file_cid(source) != cid:
                    raise MigrationError(f"blob {cid.encode()} of {did} is damaged on disk")
                # The store consumes what it uploads: hand it a second name for the file.
                link = source.with_name(source.name + ".migrating")
                link.unlink(missing_ok=True)
                os.link(source, link)
                try:
                    await store.put(did, cid, link)
                finally:
                    link.unlink(missing_ok=True)
                uploaded += 1
                size += length
            if progress:
                progress("blobs", n + 1, len(blobs))
    finally:
        await store.close()
    return {"count": len(blobs), "uploaded": uploaded, "already_there": present, "bytes_uploaded": size,
            "missing": missing, "to": f"s3://{config.bucket}/{config.prefix}"}
