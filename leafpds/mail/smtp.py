"""
Handing a finished mail to a mail server, from the reactor, with Twisted's
own SMTP client (``twisted.mail.smtp.ESMTPSenderFactory``).

``--smtp-url`` names the server: ``smtp://[user:password@]host[:port]``
(port 25 by default; STARTTLS whenever the server offers it) or
``smtps://…`` (TLS from the first byte, port 465 by default).  The password
never appears in a repr, a log line or an error: Twisted's own SMTP errors
carry a transcript of the exchange, AUTH line included, so only their code
and the server's reply are ever shown (:func:`describe_failure`).

Without ``--smtp-url``, :class:`LogSender` writes each mail to the log
instead (development only).
"""

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.mail.smtp import ESMTPSenderFactory, SMTPClientError

log = Logger()

# Seconds to wait for the connection, then for each of the server's replies.
CONNECT_TIMEOUT = 15
REPLY_TIMEOUT = 60


class MailSender(Protocol):
    def send(self, sender: str, recipient: str, message: bytes) -> Deferred:
        """Deliver ``message`` (headers and body, ``\\n`` line ends); fires once the server took it."""


@dataclass(frozen=True)
class SMTPServer:
    """Where and how to reach the mail server (parsed ``--smtp-url``)."""

    host: str
    port: int
    implicit_tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> "SMTPServer":
        """Raises ValueError (whose message never holds the password) for a URL that is not one."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ValueError("--smtp-url must be smtp://[user:password@]host[:port] or smtps://…") from None
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError("--smtp-url must be smtp://[user:password@]host[:port] or smtps://…")
        implicit_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=port or (465 if implicit_tls else 25),
            implicit_tls=implicit_tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )

    def __str__(self) -> str:
        """The URL without the password (for the log)."""
        user = f"{self.username}@" if self.username else ""
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{user}{self.host}:{self.port}"

    @property
    def on_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class SMTPSender:
    """One connection per mail: mail is rare, and a fresh connection has no stale state."""

    def __init__(
        self,
        server: SMTPServer,
        reactor: Any,
        helo_name: str,
        tls: Callable[[str], IOpenSSLClientConnectionCreator] = optionsForClientTLS,
    ) -> None:
        self.server = server
        self.reactor = reactor
        self.helo_name = helo_name
        # Certificates are checked against the system's trust roots by default;
        # tests pass their own authority.
        self.tls = tls

    def __repr__(self) -> str:
        return f"<SMTPSender {self.server}>"

    def send(self, sender: str, recipient: str, message: bytes) -> Deferred:
        server = self.server
        result: Deferred = Deferred(lambda _: cancel())
        credentials = server.username is not None and server.password is not None
        tls = self.tls(server.host)
        factory = ESMTPSenderFactory(
            server.username.encode("utf-8") if credentials else None,
            server.password.encode("utf-8") if credentials else None,
            sender,
            [recipient],
            BytesIO(message),
            result,
            retries=0,  # the queue retries, with back-off
            timeout=REPLY_TIMEOUT,
            contextFactory=tls,
            # A server without EHLO is fine when there is nothing to protect.
            heloFallback=not credentials,
            requireAuthentication=credentials,
            # A password crosses the network only encrypted (STARTTLS or
            # smtps); a relay on this machine may take it in the clear.
            requireTransportSecurity=credentials and not server.on_loopback,
            hostname=server.host,
        )
        factory.domain = self.helo_name.encode("idna")
        if server.implicit_tls:
            connector = self.reactor.connectSSL(server.host, server.port, factory, tls, timeout=CONNECT_TIMEOUT)
        else:
            connector = self.reactor.connectTCP(server.host, server.port, factory, timeout=CONNECT_TIMEOUT)

        def cancel() -> None:
            factory.sendFinished = True
            if factory.currentProtocol is not None and factory.currentProtocol.transport is not None:
                factory.currentProtocol.transport.abortConnection()
            else:
                connector.disconnect()

        return result


class LogSender:
    """Development without a mail server: each mail goes to the log, code and all."""

    def __repr__(self) -> str:
        return "<LogSender>"

    def send(self, sender: str, recipient: str, message: bytes) -> Deferred:
        log.info(
            "Mail not sent (no --smtp-url), as it would have been:\n{message}",
            message=message.decode("utf-8", "replace"),
        )
        return succeed(None)


def describe_failure(error: BaseException) -> str:
    """
    What went wrong, for the log and the queue's ``last_error``: the SMTP code
    and reply, or the connection problem; never the transcript (it holds the
    AUTH exchange).
    """
    if isinstance(error, SMTPClientError):
        reply = error.resp.decode("utf-8", "replace") if isinstance(error.resp, bytes) else str(error.resp)
        code = f"{error.code} " if error.code and error.code > 0 else ""
        return f"{type(error).__name__}: {code}{reply}".strip()
    # Connection and TLS errors say what happened to the socket, nothing more.
    return f"{type(error).__name__}: {error}"[:300]
