"""The long-lived parts of a running leafpds, handed to every handler."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from leafpds.config import Settings
from leafpds.db.pool import Database
from leafpds.lexicon import Lexicons
from leafpds.repo import reads
from leafpds.repo.batch import BatchedReads
from leafpds.repo.cache import RecordCache

if TYPE_CHECKING:
    from leafpds.accounts.account_email import AccountEmail
    from leafpds.accounts.accounts import Accounts
    from leafpds.accounts.keys import AccountKeys
    from leafpds.accounts.service_auth import ServiceAuth
    from leafpds.accounts.sessions import TokenIssuer
    from leafpds.blobs.blobs import Blobs
    from leafpds.identity.dids import DIDResolver
    from leafpds.identity.handles import HandleResolver
    from leafpds.identity.plc import PLCClient
    from leafpds.mail.queue import MailQueue
    from leafpds.metrics import Metrics
    from leafpds.oauth.server import AuthorizationServer
    from leafpds.repo.transactor import RepoTransactor
    from leafpds.sequencer.crawlers import CrawlerNotifier
    from leafpds.sequencer.fanout import Sequencer
    from leafpds.xrpc.proxy import Proxy
    from leafpds.xrpc.ratelimit import RateLimiter


@dataclass
class AppContext:
    settings: Settings
    db: Database
    lexicons: Lexicons
    reactor: Any
    keys: "AccountKeys"
    tokens: "TokenIssuer"
    transactor: "RepoTransactor"
    plc: "PLCClient"
    #: Any DID to its document (did:plc through ``plc``, did:web over HTTPS).
    dids: "DIDResolver"
    handle_resolver: "HandleResolver"
    request_limits: "RateLimiter"
    write_limits: "RateLimiter"
    login_limits: "RateLimiter"
    #: The limits of single methods (xrpc.ratelimit.METHOD_LIMITS), by NSID.
    method_limits: dict[str, "RateLimiter"]
    blobs: "Blobs"
    #: Service JWTs signed with the accounts' keys (getServiceAuth, the proxy).
    service_auth: "ServiceAuth"
    #: The OAuth authorization server (:mod:`leafpds.oauth`), whose access
    #: tokens XRPC also accepts.
    oauth: "AuthorizationServer"
    # Set once the services are built and the port is bound (the default
    # public URL for localhost includes the port).
    accounts: "Accounts" = field(init=False)
    sequencer: "Sequencer" = field(init=False)
    #: Outgoing mail (leafpds.mail.queue) and the account flows that send it.
    mail: "MailQueue" = field(init=False)
    account_email: "AccountEmail" = field(init=False)
    crawlers: "CrawlerNotifier" = field(init=False)
    #: This server's Prometheus metrics (see :mod:`leafpds.metrics`).
    metrics: "Metrics" = field(init=False)
    #: Forwards calls to other services (set by the XRPC server).
    proxy: "Proxy" = field(init=False)
    public_url: str = ""
    #: This PDS's DID (--service-did, or did:web of the public URL's host and port).
    service_did: str = ""
    #: getRecord's answers (see :mod:`leafpds.repo.cache`).
    record_cache: RecordCache = field(init=False)
    #: getRecord's database look-ups, several to a reader trip.
    record_reads: BatchedReads = field(init=False)

    def __post_init__(self) -> None:
        self.record_reads = BatchedReads(self.db, reads.get_record)
        self.record_cache = RecordCache(self.settings.record_cache)
        # The cache forgets each record a commit changes, once it is durable.
        self.transactor.commit_hooks.append(self.record_cache.commit_hook)
