"""
``leafpds-admin``: the operator's console tool.

    leafpds-admin account list|create EMAIL HANDLE|delete DID|takedown DID|untakedown DID|reset-password DID
    leafpds-admin create-invite-code [--uses N]
    leafpds-admin request-crawl [RELAY] [--hostname NAME]
    leafpds-admin blobs migrate --to s3://BUCKET[/PREFIX] --data-dir DATA [--s3-…]
    leafpds-admin backup --data-dir DATA DEST [--include-master-secret]
    leafpds-admin restore SRC --data-dir NEWDATA

The account, invite and crawl commands talk to a running server's admin API
(``--url``, default http://localhost:2583; the password from
``--admin-password`` or ``LEAFPDS_ADMIN_PASSWORD``); backup and restore work
on the data folder beside it.  Human output by default; ``--json`` prints one
JSON document on stdout.  Exit status 0 on success, 1 when the work cannot be
done (the reason on stderr), 2 for a usage error.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from leafpds.admin.backup import BackupError, backup, restore
from leafpds.admin.client import AdminClient, AdminError
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

    parser.add_argument("--url", default=os.environ.get(ENV_PREFIX + "URL", "http://localhost:2583"),
                        help="the running server [default: LEAFPDS_URL, else http://localhost:2583]")
    parser.add_argument("--admin-password", default=None,
                        help="its --admin-password [default: LEAFPDS_ADMIN_PASSWORD]")

    account = commands.add_parser("account", help="list, create, delete, take down accounts")
    actions = account.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every account: handle, DID, email")
    create = actions.add_parser("create", help="a new account with a fresh password")
    create.add_argument("email")
    create.add_argument("handle")
    for name, text in [("delete", "delete the account and everything of it"),
                       ("takedown", "take the account down (reversible)"),
                       ("untakedown", "lift its takedown"),
                       ("reset-password", "give the account a fresh password")]:
        actions.add_parser(name, help=text).add_argument("did")
    invite = commands.add_parser("create-invite-code", help="an invite code for --invite-required")
    invite.add_argument("--uses", type=int, default=1)
    crawl = commands.add_parser("request-crawl", help="ask a relay to crawl this server")
    crawl.add_argument("relay", nargs="?", default="https://bsky.network")
    crawl.add_argument("--hostname", help="this server's public hostname [default: the --url's host]")

    blobs = commands.add_parser("blobs", help="move the blobs to S3")
    blob_actions = blobs.add_subparsers(dest="action", required=True)
    moving = blob_actions.add_parser(
        "migrate", help="copy every blob of a data folder into an S3 bucket (resumable); then restart "
        "the server with that --blobstore")
    moving.add_argument("--to", required=True, metavar="s3://BUCKET[/PREFIX]")
    moving.add_argument("--data-dir", type=Path, default=Path("./leafpds-data"))
    for option in ("s3-endpoint", "s3-region", "s3-access-key-id", "s3-secret-access-key"):
        moving.add_argument(f"--{option}", help="as the server's (default: LEAFPDS_* or AWS_* variables)")
    moving.add_argument("--s3-force-path-style", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "blobs":
        task.react(lambda reactor: Deferred.fromCoroutine(_migrate_blobs(reactor, args)))
    if args.command not in ("backup", "restore"):
        password = args.admin_password or os.environ.get(ENV_PREFIX + "ADMIN_PASSWORD")
        if not password:
            parser.error("the server's admin password is needed: --admin-password or LEAFPDS_ADMIN_PASSWORD")
        task.react(lambda reactor: Deferred.fromCoroutine(_on_server(reactor, args, password)))
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


async def _migrate_blobs(reactor: Any, args: argparse.Namespace) -> None:
    from leafpds.admin.migrate_blobs import MigrationError, migrate
    from leafpds.blobs.s3 import S3Config
    from leafpds.config import ConfigError, Settings

    show = _Progress(enabled=not args.json and sys.stderr.isatty())
    options = {"data_dir": str(args.data_dir), "blobstore": args.to,
               "s3_force_path_style": args.s3_force_path_style or None}
    for name in ("s3_endpoint", "s3_region", "s3_access_key_id", "s3_secret_access_key"):
        if getattr(args, name):
            options[name] = getattr(args, name)
    try:
        settings = Settings.from_keywords(**{k: v for k, v in options.items() if v is not None})
        if settings.s3_bucket is None:
            raise MigrationError(f"--to must name an s3:// bucket, not {args.to!r}")
        config = S3Config.from_settings(settings, os.environ)
        report = await migrate(args.data_dir, config, reactor, progress=show)
    except (ConfigError, MigrationError, ValueError) as e:
        show.done()
        print(f"leafpds-admin blobs migrate: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as e:  # S3 refused or could not be reached, after its retries
        show.done()
        print(f"leafpds-admin blobs migrate: stopped ({type(e).__name__}: {e}); run it again to go on",
              file=sys.stderr)
        raise SystemExit(1) from None
    show.done()
    summary = (f"{report['count']} blobs: {report['uploaded']} copied to {report['to']} "
               f"({report['bytes_uploaded']:,} bytes), {report['already_there']} were already there.")
    if report["missing"]:
        summary += f"\n{len(report['missing'])} were deleted meanwhile."
    summary += "\nRestart the server with --blobstore " + args.to + " to use them."
    print(json.dumps(report) if args.json else summary)


async def _on_server(reactor: Any, args: argparse.Namespace, password: str) -> None:
    client = AdminClient(args.url, password, reactor)
    try:
        result, summary = await _server_command(client, args)
    except AdminError as e:
        print(f"leafpds-admin: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(result) if args.json else summary)


async def _server_command(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    """The command's result (for --json) and its human summary."""
    if args.command == "create-invite-code":
        code = await client.create_invite_code(args.uses)
        return {"code": code}, code
    if args.command == "request-crawl":
        hostname = await client.request_crawl(args.relay, args.hostname)
        return {"relay": args.relay, "hostname": hostname}, f"Asked {args.relay} to crawl {hostname}."
    if args.action == "list":
        accounts = await client.list_accounts()
        rows = [f"{a['handle']:<30} {a['did']:<34} {a.get('email', '')}" for a in accounts]
        return accounts, "\n".join(rows) or "No accounts."
    if args.action == "create":
        made = await client.create_account(args.email, args.handle)
        return made, (f"Account created: {made['handle']} ({made['did']})\n"
                      f"Password: {made['password']}  (give it to its owner; it is not shown again)")
    if args.action == "delete":
        await client.delete_account(args.did)
        return {"did": args.did, "deleted": True}, f"Deleted {args.did} and everything of it."
    if args.action in ("takedown", "untakedown"):
        status = await client.takedown(args.did, args.action == "takedown")
        return status, f"{args.did}: {'taken down' if args.action == 'takedown' else 'takedown lifted'}."
    password = await client.reset_password(args.did)
    return {"did": args.did, "password": password}, f"New password for {args.did}: {password}"


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
