"""
``leafpds-admin``: the operator's console tool.

    leafpds-admin backup --data-dir DATA DEST [--include-master-secret]
    leafpds-admin restore SRC --data-dir NEWDATA

Human output by default; ``--json`` prints one JSON document on stdout.
Exit status 0 on success, 1 when the work cannot be done (the reason on
stderr), 2 for a usage error.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from leafpds.admin.backup import BackupError, backup, restore
from leafpds.config import ENV_PREFIX


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="leafpds-admin", description="Operate a leafpds server.")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    commands = parser.add_subparsers(dest="command", required=True)

    take = commands.add_parser("backup", help="back a data folder up (beside the running server)")
    take.add_argument("dest", type=Path, help="the backup folder (created, or a previous backup to update)")
    take.add_argument("--data-dir", type=Path, default=Path("./leafpds-data"))
    take.add_argument("--include-master-secret", action="store_true",
                      help="copy the master secret too (then keep the backup as safe as the secret)")
    take.add_argument("--master-secret-file", type=Path, help="[default: <data-dir>/master.key]")
    take.add_argument("--blobstore", default=os.environ.get(ENV_PREFIX + "BLOBSTORE", "disk"),
                      help="the server's --blobstore: blobs in an s3:// bucket are named, not copied "
                      "[default: LEAFPDS_BLOBSTORE, else disk]")

    put = commands.add_parser("restore", help="fill an empty data folder from a backup")
    put.add_argument("src", type=Path, help="the backup folder")
    put.add_argument("--data-dir", type=Path, required=True, help="the new, empty data folder")

    args = parser.parse_args(argv)
    show = _Progress(enabled=not args.json and sys.stderr.isatty())
    try:
        if args.command == "backup":
            secret = None
            if args.include_master_secret:
                secret = args.master_secret_file or args.data_dir / "master.key"
                if os.environ.get(ENV_PREFIX + "MASTER_SECRET"):
                    raise BackupError("the master secret comes from LEAFPDS_MASTER_SECRET: keep it yourself")
                if not secret.is_file():
                    raise BackupError(f"no master secret at {secret}")
            result = backup(args.data_dir, args.dest, master_secret_file=secret,
                            blobstore=args.blobstore.strip() or "disk", progress=show)
            summary = _backup_summary(args.dest, result)
        else:
            result = restore(args.src, args.data_dir, progress=show)
            summary = _restore_summary(args.data_dir, result)
    except BackupError as e:
        show.done()
        print(f"leafpds-admin {args.command}: {e}", file=sys.stderr)
        return 1
    show.done()
    print(json.dumps(result) if args.json else summary)
    return 0


def _backup_summary(dest: Path, manifest: dict[str, Any]) -> str:
    blobs = manifest["blobs"]
    if blobs.get("in_bucket"):
        return (f"Backed up to {dest}: database {manifest['database']['bytes']:,} bytes; "
                f"{blobs['count']} blobs stay in {manifest['blobstore']} (not copied)."
                + ("" if manifest["master_secret_included"] else
                   "\nThe master secret is not in the backup: keep it safe elsewhere."))
    lines = [
        f"Backed up to {dest}: database {manifest['database']['bytes']:,} bytes "
        f"(schema {manifest['database']['schema_version']}), "
        f"{blobs['count']} blobs ({blobs['copied']} copied, {blobs['kept']} already there, "
        f"{blobs['dropped']} no longer needed removed).",
    ]
    if blobs["missing"]:
        lines.append(f"{len(blobs['missing'])} blobs were deleted while backing up and are not in it.")
    if not manifest["master_secret_included"]:
        lines.append("The master secret is not in the backup: keep it safe elsewhere.")
    return "\n".join(lines)


def _restore_summary(data_dir: Path, manifest: dict[str, Any]) -> str:
    lines = [f"Restored the backup of {manifest['created_at']} into {data_dir}."]
    if manifest.get("blobstore", "disk") != "disk":
        lines.append(f"Its blobs are in {manifest['blobstore']}: start the server with that --blobstore.")
    if not manifest["master_secret_included"]:
        lines.append("Give the server the master secret (master.key in the data folder, "
                     "--master-secret-file or LEAFPDS_MASTER_SECRET) before starting it.")
    lines.append(f"Start it with: twistd leafpds --data-dir {data_dir}")
    return "\n".join(lines)


class _Progress:
    """A one-line progress report on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = False

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.enabled and (done == total or done % 50 == 0):
            width = 30
            filled = width * done // max(total, 1)
            sys.stderr.write(f"\r{what:<15} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


if __name__ == "__main__":
    sys.exit(main())
