"""
Settings: command-line options win over ``LEAFPDS_*`` environment variables,
which win over the embedded defaults.
"""

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from leafpds.mail.smtp import SMTPServer
from leafpds.syntax import InvalidSyntax, validate_did


# name -> (default, help).  The option is --name; the variable LEAFPDS_NAME.
# A default of None means "derived from other settings" (see Settings).
OPTIONS: dict[str, tuple[str | None, str]] = {
    "listen": (
        "tcp:2583:interface=127.0.0.1",
        "Twisted endpoint to listen on for HTTP and WebSocket.",
    ),
    "hostname": ("localhost", "Public hostname of this PDS."),
    "service-did": (
        None,
        "This PDS's own DID, the audience of the tokens it issues and accepts "
        "[default: did:web:<host of the public URL>, with %3A<port> when it has one, "
        "e.g. did:web:localhost%3A2583].",
    ),
    "data-dir": ("./leafpds-data", "Folder for the database and blobs (created on first run)."),
    "public-url": (
        None,
        "URL clients and DID documents use "
        "[default: https://<hostname>, or http://localhost:<port> for localhost].",
    ),
    "plc-url": (
        None,
        "PLC directory URL, e.g. https://plc.directory "
        "[default: the embedded PLC directory].",
    ),
    "plc-listen": (
        "tcp:2582:interface=127.0.0.1",
        "Endpoint of the embedded PLC directory (used when --plc-url is not given).",
    ),
    "handle-domain": (".test", "Domain under which new accounts get handles."),
    "admin-password": (None, "Password for admin (Basic auth) methods [default: none, admin off]."),
    "master-secret-file": (
        None,
        "File holding the master secret that encrypts keys at rest "
        "[default: <data-dir>/master.key, created 0600 on first run].",
    ),
    "max-json-body": ("1048576", "Largest JSON request body accepted, in bytes."),
    "max-blob-size": ("104857600", "Largest blob upload accepted, in bytes."),
    "max-import-size": (
        "1073741824",
        "Largest repo CAR importRepo accepts, in bytes (the body is spooled to disk, not memory).",
    ),
    "blobstore": (
        "disk",
        "Where blobs live: disk (<data-dir>/blobs) or s3://<bucket>[/<prefix>] "
        "(any S3-compatible store; see the --s3-* options).",
    ),
    "s3-endpoint": (
        None,
        "S3 endpoint URL, e.g. http://127.0.0.1:9000 for MinIO "
        "[default: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS in --s3-region].",
    ),
    "s3-region": (None, "S3 region [default: AWS_REGION or AWS_DEFAULT_REGION, else us-east-1]."),
    "s3-access-key-id": (None, "S3 access key id [default: AWS_ACCESS_KEY_ID]."),
    "s3-secret-access-key": (None, "S3 secret access key [default: AWS_SECRET_ACCESS_KEY]."),
    "blob-grace": (
        "3600",
        "Seconds an uploaded blob is kept while no record references it.",
    ),
    "firehose-window": (
        "72",
        "Hours of firehose events kept for subscribers resuming from a cursor.",
    ),
    "firehose-buffer": (
        "16777216",
        "Bytes of firehose events buffered per subscriber before it is dropped as too slow.",
    ),
    "record-cache": (
        "33554432",
        "Bytes of records kept in memory to answer getRecord without reading the database "
        "(0: none).",
    ),
    "crawlers": (
        None,
        "Comma-separated relay URLs to ask to crawl this PDS (requestCrawl), "
        "at start-up and after new events, at most every 20 minutes each.",
    ),
    "rate-limit-requests": (
        "3000/300",
        "Requests allowed per client IP, as points/seconds.",
    ),
    "rate-limit-writes": (
        "5000/3600,35000/86400",
        "Repo write points per account (create 3, update 2, delete 1), as "
        "comma-separated points/seconds windows.",
    ),
    "rate-limit-logins": (
        "30/300,300/86400",
        "Sign-in attempts per identifier, as comma-separated points/seconds windows.",
    ),
    "github-client-id": (None, "GitHub OAuth app client id [default: no GitHub sign-in]."),
    "github-client-secret": (None, "GitHub OAuth app client secret."),
    "github-url": ("https://github.com", "GitHub web URL (authorize and token endpoints)."),
    "github-api-url": ("https://api.github.com", "GitHub REST API URL."),
    "google-client-id": (None, "Google OAuth client id [default: no Google sign-in]."),
    "google-client-secret": (None, "Google OAuth client secret."),
    "google-issuer": (
        "https://accounts.google.com",
        "Google OpenID issuer; endpoints come from its discovery document.",
    ),
    "app-redirect-uri": (
        None,
        "Comma-separated app URLs that sign-in may send the user back to "
        "(exact match; nothing else is allowed).",
    ),
    "appview-url": (
        "https://api.bsky.app",
        "AppView that XRPC methods not served here are forwarded to (service proxying).",
    ),
    "appview-did": ("did:web:api.bsky.app", "Service DID of --appview-url (the service JWT's aud)."),
    "report-service-url": (
        "https://mod.bsky.app",
        "Where com.atproto.moderation.createReport is forwarded.",
    ),
    "report-service-did": (
        "did:plc:ar7c4by46qjdydhdevvrndac",
        "Service DID of --report-service-url.",
    ),
    "smtp-url": (
        None,
        "Mail server for account mails: smtp://user:password@host:port (STARTTLS when offered) "
        "or smtps://... [default: none; mails are written to the log, for development only].",
    ),
    "email-from": (None, "Sender address of account mails [default: noreply@<hostname>]."),
    "metrics-listen": (
        None,
        "Twisted endpoint to serve Prometheus metrics on, at /metrics, e.g. "
        "tcp:9090:interface=127.0.0.1 [default: none, no metrics endpoint].",
    ),
    "log-format": (
        None,
        "text or json (one JSON object per line) [default: the runner's: twistd writes text, "
        "twist JSON unless to a terminal].",
    ),
    "contact-email": (None, "Contact address shown by describeServer."),
    "privacy-policy-url": (None, "Privacy policy link shown by describeServer."),
    "terms-of-service-url": (None, "Terms of service link shown by describeServer."),
}

# Options whose value is a comma-separated list; on the command line they
# may also be repeated.
LIST_OPTIONS = ("crawlers", "app-redirect-uri")

# name -> help.  On/off switches: --name, or LEAFPDS_NAME=true/1/yes.
FLAGS: dict[str, str] = {
    "invite-required": "Require an invite code to create an account.",
    "no-rate-limits": "Turn rate limiting off (benchmarks, trusted setups).",
    "no-password-signup": (
        "Refuse createAccount, accounts moving in with their DID too: new accounts only through sign-in"
        " with GitHub or Google."
    ),
    "allow-private-services": "Let atproto-proxy headers name services on loopback or private "
    "addresses (development and tests only: it opens the server's own network to its users).",
    "s3-force-path-style": "Address the bucket as <endpoint>/<bucket>/ instead of "
    "<bucket>.<endpoint host>/ (MinIO, Ceph and most self-hosted stores need it).",
    "s3-presigned-get": "Answer getBlob with a redirect to a short-lived presigned S3 URL "
    "instead of streaming the blob through leafpds.",
    "oauth-allow-local-clients": "Accept OAuth clients whose client_id metadata document is served "
    "over http or from a loopback or private address (development and tests only; the "
    "http://localhost?... development clients need no switch).",
    "no-cpu-pairing": "Let the reactor and the database writer run on any CPU (by default they share one, "
    "which makes each commit's two hand-overs between them cheap).",
}

ENV_PREFIX = "LEAFPDS_"
# A bare address (no display name): it goes in the envelope and the From header.
_ADDRESS = re.compile(r"^[^\s@<>\"]+@[^\s@<>\"]+$")
_TRUE = {"1", "true", "yes", "on"}


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def resolve(given: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """
    Merge command-line values (None, or a false flag, when not given),
    environment and defaults.
    """
    merged: dict[str, Any] = {}
    for name, (default, _help) in OPTIONS.items():
        value = given.get(name)
        if value is None:
            value = environ.get(env_name(name), default)
        merged[name] = value
    for name in FLAGS:
        merged[name] = bool(given.get(name)) or (
            environ.get(env_name(name), "").strip().lower() in _TRUE
        )
    return merged


class ConfigError(ValueError):
    """A setting that leafpds cannot run with."""


@dataclass
class Settings:
    listen: str
    hostname: str
    data_dir: Path
    public_url: str | None
    plc_url: str | None
    plc_listen: str
    handle_domain: str
    admin_password: str | None = field(repr=False)
    master_secret_file: Path
    max_json_body: int
    contact_email: str | None = None
    privacy_policy_url: str | None = None
    terms_of_service_url: str | None = None
    invite_required: bool = False
    password_signup: bool = True
    rate_limit_requests: str = "3000/300"
    rate_limit_writes: str = "5000/3600,35000/86400"
    rate_limit_logins: str = "30/300,300/86400"
    rate_limits: bool = True
    cpu_pairing: bool = True
    crawlers: tuple[str, ...] = ()
    max_blob_size: int = 104857600
    max_import_size: int = 1073741824
    blob_grace: float = 3600.0
    blobstore: str = "disk"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_force_path_style: bool = False
    s3_presigned_get: bool = False
    firehose_window: float = 72.0
    firehose_buffer: int = 16777216
    record_cache: int = 33554432
    github_client_id: str | None = None
    github_client_secret: str | None = field(default=None, repr=False)
    github_url: str = "https://github.com"
    github_api_url: str = "https://api.github.com"
    google_client_id: str | None = None
    google_client_secret: str | None = field(default=None, repr=False)
    google_issuer: str = "https://accounts.google.com"
    app_redirect_uris: tuple[str, ...] = ()
    appview_url: str = "https://api.bsky.app"
    appview_did: str = "did:web:api.bsky.app"
    report_service_url: str = "https://mod.bsky.app"
    report_service_did: str = "did:plc:ar7c4by46qjdydhdevvrndac"
    allow_private_services: bool = False
    oauth_allow_local_clients: bool = False
    #: --service-did as given; the DID in use is ``AppContext.service_did``
    #: (the default depends on the public URL, known once the port is bound).
    explicit_service_did: str | None = None
    # The URL holds the SMTP password: never shown.
    smtp_url: str | None = field(default=None, repr=False)
    email_from: str = ""
    metrics_listen: str | None = None
    log_format: str | None = None

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> "Settings":
        data_dir = Path(values["data-dir"] or ".").expanduser()
        domain = (values["handle-domain"] or "").lower()
        if not domain.startswith("."):
            domain = "." + domain
        try:
            max_json_body = int(values["max-json-body"] or "")
        except ValueError:
            raise ConfigError("--max-json-body must be a number of bytes") from None
        try:
            max_blob_size = int(values["max-blob-size"] or "")
        except ValueError:
            raise ConfigError("--max-blob-size must be a number of bytes") from None
        try:
            max_import_size = int(values["max-import-size"] or "")
        except ValueError:
            raise ConfigError("--max-import-size must be a number of bytes") from None
        try:
            blob_grace = float(values["blob-grace"] or "")
        except ValueError:
            raise ConfigError("--blob-grace must be a number of seconds") from None
        try:
            firehose_window = float(values["firehose-window"] or "")
            firehose_buffer = int(values["firehose-buffer"] or "")
        except ValueError:
            raise ConfigError(
                "--firehose-window must be a number of hours, --firehose-buffer of bytes"
            ) from None
        try:
            record_cache = int(values["record-cache"] or "")
        except ValueError:
            raise ConfigError("--record-cache must be a number of bytes") from None
        smtp_url = (values["smtp-url"] or "").strip() or None
        if smtp_url is not None:
            try:
                SMTPServer.parse(smtp_url)
            except ValueError as e:  # its message never holds the password
                raise ConfigError(str(e)) from None
        hostname = (values["hostname"] or "").lower()
        email_from = (values["email-from"] or "").strip() or f"noreply@{hostname}"
        if not _ADDRESS.match(email_from):
            raise ConfigError(f"--email-from must be an email address, not {email_from!r}")
        blobstore = (values["blobstore"] or "disk").strip()
        try:
            s3_bucket, s3_prefix = parse_blobstore(blobstore) or (None, "")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        log_format = (values["log-format"] or "").strip().lower() or None
        if log_format not in (None, "text", "json"):
            raise ConfigError("--log-format must be text or json")
        secret_file = values["master-secret-file"]
        public_url = values["public-url"]
        service_did = (values["service-did"] or "").strip() or None
        if service_did is not None:
            try:
                validate_did(service_did)
            except InvalidSyntax:
                raise ConfigError(f"--service-did must be a DID, not {service_did!r}") from None
        return cls(
            listen=values["listen"] or "",
            hostname=(values["hostname"] or "").lower(),
            data_dir=data_dir,
            public_url=public_url.rstrip("/") if public_url else None,
            plc_url=(values["plc-url"] or "").rstrip("/") or None,
            plc_listen=values["plc-listen"] or "",
            handle_domain=domain,
            admin_password=values["admin-password"] or None,
            master_secret_file=Path(secret_file) if secret_file else data_dir / "master.key",
            max_json_body=max_json_body,
            contact_email=values["contact-email"],
            privacy_policy_url=values["privacy-policy-url"],
            terms_of_service_url=values["terms-of-service-url"],
            invite_required=values["invite-required"],
            password_signup=not values["no-password-signup"],
            rate_limit_requests=values["rate-limit-requests"],
            rate_limit_writes=values["rate-limit-writes"],
            rate_limit_logins=values["rate-limit-logins"],
            rate_limits=not values["no-rate-limits"],
            cpu_pairing=not values["no-cpu-pairing"],
            crawlers=_comma_list(values["crawlers"]),
            max_blob_size=max_blob_size,
            max_import_size=max_import_size,
            blob_grace=blob_grace,
            blobstore=blobstore,
            s3_bucket=s3_bucket,
            s3_prefix=s3_prefix,
            s3_endpoint=(values["s3-endpoint"] or "").rstrip("/") or None,
            s3_region=values["s3-region"] or None,
            s3_access_key_id=values["s3-access-key-id"] or None,
            s3_secret_access_key=values["s3-secret-access-key"] or None,
            s3_force_path_style=values["s3-force-path-style"],
            s3_presigned_get=values["s3-presigned-get"],
            firehose_window=firehose_window,
            firehose_buffer=firehose_buffer,
            record_cache=record_cache,
            github_client_id=values["github-client-id"] or None,
            github_client_secret=values["github-client-secret"] or None,
            github_url=(values["github-url"] or "").rstrip("/"),
            github_api_url=(values["github-api-url"] or "").rstrip("/"),
            google_client_id=values["google-client-id"] or None,
            google_client_secret=values["google-client-secret"] or None,
            google_issuer=(values["google-issuer"] or "").rstrip("/"),
            app_redirect_uris=_comma_list(values["app-redirect-uri"]),
            appview_url=(values["appview-url"] or "").rstrip("/"),
            appview_did=values["appview-did"] or "",
            report_service_url=(values["report-service-url"] or "").rstrip("/"),
            report_service_did=values["report-service-did"] or "",
            allow_private_services=values["allow-private-services"],
            oauth_allow_local_clients=values["oauth-allow-local-clients"],
            explicit_service_did=service_did,
            smtp_url=smtp_url,
            email_from=email_from,
            metrics_listen=values["metrics-listen"] or None,
            log_format=log_format,
        )

    @classmethod
    def from_keywords(cls, environ: Mapping[str, str] | None = None, **options: Any) -> "Settings":
        """
        Settings for an application that runs leafpds inside it: options by
        their command-line names with ``_`` for ``-`` (``data_dir="./pds"``,
        ``no_rate_limits=True``), over ``LEAFPDS_*`` in ``environ`` (the
        process's unless given), over the defaults.
        """
        given = {name.replace("_", "-"): value for name, value in options.items()}
        unknown = sorted(name for name in options if name.replace("_", "-") not in {*OPTIONS, *FLAGS})
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
        return cls.from_options(resolve(given, os.environ if environ is None else environ))

    def service_did_for(self, public_url: str) -> str:
        """
        --service-did, or ``did:web:`` + the public URL's host, with its port
        (``%3A``-encoded, as did:web writes it) unless it is the scheme's
        default: two PDSes on one machine then never share a DID, and a
        production server on https://pds.example.com is did:web:pds.example.com.
        """
        if self.explicit_service_did:
            return self.explicit_service_did
        parts = urlsplit(public_url)
        host = (parts.hostname or self.hostname).lower()
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        if parts.port is not None and parts.port != default_port:
            return f"did:web:{host}%3A{parts.port}"
        return f"did:web:{host}"

    def public_url_for_port(self, port: int | None) -> str:
        """The configured public URL, or the default derived from the hostname."""
        if self.public_url:
            return self.public_url
        if self.hostname == "localhost" and port is not None:
            return f"http://localhost:{port}"
        return f"https://{self.hostname}"


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_blobstore(value: str) -> tuple[str, str] | None:
    """
    ``s3://<bucket>[/<prefix>]`` -> (bucket, prefix ending in "/", or "");
    ``disk`` -> None.  Raises ValueError for anything else.
    """
    if value == "disk":
        return None
    if not value.startswith("s3://"):
        raise ValueError(f"--blobstore must be disk or s3://<bucket>[/<prefix>], not {value!r}")
    bucket, _, prefix = value[len("s3://"):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"--blobstore: not an S3 bucket name: {bucket!r}")
    prefix = prefix.strip("/")
    return bucket, prefix + "/" if prefix else ""


def _comma_list(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def load_master_secret(path: Path, environ: Mapping[str, str]) -> bytes:
    """
    The operator's master secret: ``LEAFPDS_MASTER_SECRET`` if set, else the
    secret file, which is created (mode 0600) with 32 random bytes if missing.
    Never overwrites an existing file.
    """
    from_env = environ.get(ENV_PREFIX + "MASTER_SECRET")
    if from_env:
        return from_env.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if not secret:
            raise ConfigError(f"master secret file {path} is empty") from None
        return secret
    with os.fdopen(fd, "wb") as f:
        secret = secrets.token_hex(32).encode("ascii")
        f.write(secret + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return secret
