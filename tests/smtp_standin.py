"""
A real SMTP server on loopback for the mail tests: aiosmtpd (an independent
implementation, so the client is tested against someone else's reading of
the protocol), in its own thread, keeping what it receives.  Optionally it
demands AUTH (``username``/``password``) and STARTTLS, or speaks TLS from
the first byte (smtps), with a certificate made here for 127.0.0.1, whose
authority ``client_tls`` trusts.
"""

import email
import email.policy
import re
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from twisted.internet import reactor, task

from tests.harness import free_port
from tests.tls_certs import self_signed

CODE = re.compile(r"\b[A-Z2-7]{5}-[A-Z2-7]{5}\b")


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    login: str | None
    tls: bool

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return self.message.get_content().replace("\r\n", "\n")

    @property
    def code(self) -> str:
        (found,) = set(CODE.findall(self.body))
        return found


class _Handler:
    def __init__(self, box: "Inbox") -> None:
        self.box = box

    async def handle_DATA(self, server, session, envelope):
        with self.box.lock:
            self.box.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content or envelope.content,
                    getattr(session, "signed_in_as", None),
                    server.transport.get_extra_info("ssl_object") is not None,
                )
            )
        return "250 Message accepted for delivery"


class Inbox:
    def __init__(
        self,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        implicit_tls: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.username, self.password = username, password
        self.auth_attempts = 0
        kwargs = {}
        if username is not None:
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=starttls)
        self.cert_pem: bytes | None = None
        if starttls or implicit_tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.cert_pem, key_pem = self_signed()
            folder = Path(tempfile.mkdtemp())
            (folder / "cert.pem").write_bytes(self.cert_pem)
            (folder / "key.pem").write_bytes(key_pem)
            context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
            if implicit_tls:  # smtps: TLS from the first byte
                kwargs.update(ssl_context=context)
            else:
                kwargs.update(tls_context=context, require_starttls=True)
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        self.auth_attempts += 1
        ok = auth_data.login == (self.username or "").encode() and auth_data.password == (self.password or "").encode()
        if ok:
            session.signed_in_as = auth_data.login.decode()
        return AuthResult(success=ok, handled=False)

    def start(self) -> "Inbox":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def client_tls(self, host: str):
        """TLS options trusting this server's certificate (for SMTPSender's ``tls``)."""
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        return optionsForClientTLS(host, trustRoot=Certificate.loadPEM(self.cert_pem))

    async def wait(self, count: int = 1, timeout: float = 15.0) -> list[Received]:
        """The mails received once there are at least ``count`` of them."""
        for _ in range(int(timeout / 0.02)):
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"expected {count} mails, got {len(self.received)}")

