"""
Backups that restore.

A backup is a folder: a consistent snapshot of the database (and of the
embedded PLC directory's, when there is one), the blobs the snapshot names,
and ``manifest.json`` saying what is there and how to check it.  It is taken
beside a running leafpds: the snapshot is one read transaction, which in
WAL mode never stalls the writer, and blobs are immutable files named by
their CID, so a second backup into the same folder copies only new blobs and
drops those the new snapshot no longer names.  The master secret stays out
unless asked for: without it the keys in the database cannot be opened, so
a backup without it is safe to store elsewhere.

A restore fills an empty data folder from a backup, checking every file
against the manifest (the database's hash, each blob's CID) first.
"""

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import leafpds
from leafpds.ipld.cid import RAW_PREFIX, CID
from leafpds.timestamps import now_iso

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE = "leafpds.sqlite"
PLC_DATABASE = Path("plc") / "plc.sqlite"
MASTER_KEY = "master.key"
BLOBS = "blobs"

#: Called with (what, done, total) as the work goes on.
Progress = Callable[[str, int, int], None]


class BackupError(Exception):
    """The backup or restore cannot be done (the message says why)."""


def backup(
    data_dir: Path,
    dest: Path,
    *,
    master_secret_file: Path | None = None,
    blobstore: str = "disk",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """
    Back ``data_dir`` up into ``dest`` (created, or a previous backup to
    update); ``master_secret_file`` is copied only when given.  Blobs in an
    S3 bucket (``blobstore`` ``s3://…``) are not copied: the manifest names
    the bucket.  Returns the manifest.
    """
    source = data_dir / DATABASE
    if not source.is_file():
        raise BackupError(f"no leafpds database at {source}")
    dest.mkdir(parents=True, exist_ok=True)
    database = _snapshot(source, dest / DATABASE)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "leafpds": leafpds.__version__,
        "created_at": now_iso(),
        "database": database,
        "blobstore": blobstore,
    }
    if (data_dir / PLC_DATABASE).is_file():
        (dest / PLC_DATABASE).parent.mkdir(exist_ok=True)
        manifest["plc_database"] = _snapshot(data_dir / PLC_DATABASE, dest / PLC_DATABASE)
    if blobstore == "disk":
        manifest["blobs"] = _copy_blobs(dest / DATABASE, data_dir / BLOBS, dest / BLOBS, progress)
    else:
        listed = blob_list(dest / DATABASE)
        manifest["blobs"] = {"count": len(listed), "bytes": sum(size for _, _, size in listed),
                             "copied": 0, "kept": 0, "dropped": 0, "missing": [], "in_bucket": True}
    if master_secret_file is not None:
        _copy_file(master_secret_file, dest / MASTER_KEY, mode=0o600)
    else:
        (dest / MASTER_KEY).unlink(missing_ok=True)
    manifest["master_secret_included"] = master_secret_file is not None
    _write_json(dest / MANIFEST, manifest)
    return manifest


def restore(src: Path, data_dir: Path, *, progress: Progress | None = None) -> dict[str, Any]:
    """Fill the empty (or new) ``data_dir`` from the backup at ``src``; returns its manifest."""
    manifest = read_manifest(src)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"{data_dir} is not empty: restore into a new data folder")
    _check_database(src / DATABASE, manifest["database"])
    if "plc_database" in manifest:
        _check_database(src / PLC_DATABASE, manifest["plc_database"])
    # Blobs in a bucket stay there: the restored server is pointed at it.
    blobs = blob_list(src / DATABASE) if manifest.get("blobstore", "disk") == "disk" else []
    missing = {(did, cid) for did, cid in manifest["blobs"]["missing"]}
    for n, (did, cid, _size) in enumerate(blobs):
        path = src / BLOBS / did / cid.encode()
        if (did, cid.encode()) in missing:
            continue
        if not path.is_file() or file_cid(path) != cid:
            raise BackupError(f"blob {cid.encode()} of {did} is missing or damaged in the backup")
        if progress:
            progress("checking blobs", n + 1, len(blobs))
    staging = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _copy_file(src / DATABASE, staging / DATABASE)
    if "plc_database" in manifest:
        (staging / PLC_DATABASE).parent.mkdir()
        _copy_file(src / PLC_DATABASE, staging / PLC_DATABASE)
    if (src / BLOBS).is_dir():
        shutil.copytree(src / BLOBS, staging / BLOBS)
    if manifest.get("master_secret_included"):
        _copy_file(src / MASTER_KEY, staging / MASTER_KEY, mode=0o600)
    # The data folder appears whole or not at all.
    if data_dir.exists():
        data_dir.rmdir()
    staging.rename(data_dir)
    return manifest


def read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"{src} holds no readable backup manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{src}: unknown backup format")
    return manifest


def _snapshot(source: Path, target: Path) -> dict[str, Any]:
    """A consistent copy of the database at ``source``; its size, hash and schema version."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            # One step: one read transaction, a snapshot as of its start.  A
            # stepwise copy would start over whenever the server commits.
            src.backup(dst)
            version = dst.execute("PRAGMA user_version").fetchone()[0]
            if dst.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise BackupError(f"the copy of {source} fails SQLite's check")
        finally:
            dst.close()
    finally:
        src.close()
    _fsync(partial)
    partial.rename(target)
    return {"file": str(target.name), "bytes": target.stat().st_size, "sha256": _sha256(target),
            "schema_version": version}


def blob_list(database: Path) -> list[tuple[str, CID, int]]:
    """(did, cid, size) of every blob the database at ``database`` knows, in one read."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [(did, CID(bytes(cid)), size) for did, cid, size in
                conn.execute("SELECT did, cid, size FROM blobs ORDER BY did, cid")]
    finally:
        conn.close()


def _copy_blobs(snapshot: Path, source: Path, target: Path, progress: Progress | None) -> dict[str, Any]:
    """The snapshot's blobs into ``target``: new ones copied and checked, others kept, the rest dropped."""
    blobs = blob_list(snapshot)
    wanted: set[Path] = set()
    copied = kept = size = 0
    missing: list[tuple[str, str]] = []
    for n, (did, cid, length) in enumerate(blobs):
        name = Path(did) / cid.encode()
        wanted.add(name)
        size += length
        if (target / name).is_file() and (target / name).stat().st_size == length:
            kept += 1  # immutable: a file of the right size under its CID is it
        elif (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            _copy_file(source / name, target / name)
            if file_cid(target / name) != cid:
                (target / name).unlink()
                raise BackupError(f"blob {cid.encode()} of {did} is damaged on disk")
            copied += 1
        else:
            # Deleted since the snapshot (a record deleted, a temporary blob collected).
            missing.append((did, cid.encode()))
        if progress:
            progress("blobs", n + 1, len(blobs))
    dropped = 0
    if target.is_dir():
        for path in sorted(target.glob("*/*")):
            if path.relative_to(target) not in wanted:
                path.unlink()
                dropped += 1
    return {"count": len(blobs), "bytes": size, "copied": copied, "kept": kept, "dropped": dropped,
            "missing": missing}


def _check_database(path: Path, expected: dict[str, Any]) -> None:
    if not path.is_file() or _sha256(path) != expected["sha256"]:
        raise BackupError(f"{path} is missing or does not match the manifest")


def _copy_file(source: Path, target: Path, mode: int | None = None) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    if mode is not None:
        os.chmod(partial, mode)
    _fsync(partial)
    partial.rename(target)


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n")
    _fsync(partial)
    partial.rename(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_cid(path: Path) -> CID:
    """The raw CID of a blob file, read a MiB at a time (blobs may be large)."""
    return CID(RAW_PREFIX + _digest(path).digest())


def _sha256(path: Path) -> str:
    return _digest(path).hexdigest()


def _digest(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest
