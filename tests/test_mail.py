"""
The mail layer: --smtp-url, Twisted's SMTP client against a real SMTP server
on loopback (aiosmtpd: plain, AUTH, STARTTLS), the queue's back-off and
expiry on a task.Clock, and the SMTP password kept out of every log line.
"""

import base64

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from leafpds.config import ConfigError, Settings, resolve
from leafpds.db.pool import Database
from leafpds.mail import queue as mail_queue
from leafpds.mail.queue import MailQueue, build_message, enqueue_unit, retry_delay
from leafpds.mail.smtp import SMTPSender, SMTPServer, describe_failure
from leafpds.mail.templates import BY_PURPOSE
from leafpds.timestamps import iso_from_epoch
from tests.harness import free_port
from tests.smtp_standin import Inbox

PASSWORD = "s3cret-Pa55word"

# The stand-in demands AUTH without TLS on loopback on purpose (aiosmtpd warns).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def logged():
    """Every log event's text while the test runs."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observe(event):
        text = formatEvent(event)
        if event.get("log_failure") is not None:
            text += event["log_failure"].getTraceback()
        lines.append(text)

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def assert_secret_absent(texts, secret=PASSWORD):
    forms = [secret, base64.b64encode(secret.encode()).decode()]
    forms += [base64.b64encode(f"\0{user}\0{secret}".encode()).decode() for user in ("mailer",)]
    for text in texts:
        for form in forms:
            assert form not in text, text


def test_smtp_url_parsing_and_redaction():
    server = SMTPServer.parse(f"smtp://mailer:{PASSWORD}@mail.example.com:587")
    assert (server.host, server.port, server.implicit_tls) == ("mail.example.com", 587, False)
    assert (server.username, server.password) == ("mailer", PASSWORD)
    assert str(server) == "smtp://mailer@mail.example.com:587"
    assert PASSWORD not in repr(server) and PASSWORD not in str(server)
    assert SMTPServer.parse("smtps://mail.example.com").port == 465
    assert SMTPServer.parse("smtp://relay.local").port == 25
    # A password with reserved characters, percent-encoded.
    assert SMTPServer.parse("smtp://u%40x:p%3Aw%2Fd@h:25").password == "p:w/d"
    for bad in ["http://mail.example.com", "smtp://", f"smtp://mailer:{PASSWORD}@h:notaport", "smtp://h/path"]:
        with pytest.raises(ValueError) as raised:
            SMTPServer.parse(bad)
        assert PASSWORD not in str(raised.value)


def test_settings_hide_the_smtp_password_and_check_addresses():
    settings = Settings.from_options(resolve({"smtp-url": f"smtps://mailer:{PASSWORD}@mail.example.com"}, {}))
    assert settings.smtp_url and PASSWORD not in repr(settings)
    assert settings.email_from == "noreply@localhost"
    given = Settings.from_options(resolve({"email-from": "pds@example.com"}, {}))
    assert given.email_from == "pds@example.com" and given.smtp_url is None
    with pytest.raises(ConfigError) as raised:
        Settings.from_options(resolve({"smtp-url": f"ftp://mailer:{PASSWORD}@x"}, {}))
    assert PASSWORD not in str(raised.value)
    with pytest.raises(ConfigError):
        Settings.from_options(resolve({"email-from": "Someone <x@example.com>"}, {}))


def test_templates_fill_in_code_handle_and_service():
    for purpose, template in BY_PURPOSE.items():
        subject, body = template.render(token="ABCDE-23456", handle="alice.test", service="https://pds.example")
        assert "ABCDE-23456" in body and "$" not in subject + body, purpose
    assert BY_PURPOSE["plc_operation"].subject == "PLC Update Operation Requested"
    assert "Your confirmation code is ABCDE-23456" in BY_PURPOSE["plc_operation"].render(
        token="ABCDE-23456", handle="a", service="s")[1]


def _message(to="alice@example.com"):
    return build_message("pds@example.com", to, "Email Confirmation", "Your code: ABCDE-23456\n.\nend\n", "<m1@x>", 0)


@pytest_twisted.ensureDeferred
async def test_sender_delivers_to_a_real_smtp_server():
    inbox = Inbox().start()
    try:
        sender = SMTPSender(SMTPServer.parse(f"smtp://127.0.0.1:{inbox.port}"), reactor, "pds.example")
        await sender.send("pds@example.com", "alice@example.com", _message())
        (mail,) = await inbox.wait(1)
        assert mail.sender == "pds@example.com" and mail.recipients == ["alice@example.com"]
        assert mail.subject == "Email Confirmation"
        # A line holding only a dot survives (dot-stuffing), and so does the rest.
        assert mail.body == "Your code: ABCDE-23456\n.\nend\n"
        assert mail.login is None and not mail.tls
    finally:
        inbox.stop()


@pytest_twisted.ensureDeferred
async def test_sender_authenticates_after_starttls(logged):
    inbox = Inbox(username="mailer", password=PASSWORD, starttls=True).start()
    try:
        server = SMTPServer.parse(f"smtp://mailer:{PASSWORD}@127.0.0.1:{inbox.port}")
        sender = SMTPSender(server, reactor, "pds.example", tls=inbox.client_tls)
        await sender.send("pds@example.com", "alice@example.com", _message())
        (mail,) = await inbox.wait(1)
        assert mail.login == "mailer" and mail.tls
        # Without the server's authority the certificate is refused: nothing sent.
        untrusting = SMTPSender(server, reactor, "pds.example")
        with pytest.raises(Exception):
            await untrusting.send("pds@example.com", "bob@example.com", _message("bob@example.com"))
        assert len(inbox.received) == 1
    finally:
        inbox.stop()
    assert_secret_absent(logged)


@pytest_twisted.ensureDeferred
async def test_sender_speaks_tls_from_the_start_for_smtps():
    inbox = Inbox(username="mailer", password=PASSWORD, implicit_tls=True).start()
    try:
        server = SMTPServer.parse(f"smtps://mailer:{PASSWORD}@127.0.0.1:{inbox.port}")
        await SMTPSender(server, reactor, "pds.example", tls=inbox.client_tls).send(
            "pds@example.com", "alice@example.com", _message()
        )
        (mail,) = await inbox.wait(1)
        assert mail.login == "mailer" and mail.recipients == ["alice@example.com"] and mail.tls
    finally:
        inbox.stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_fails_without_showing_it(logged):
    inbox = Inbox(username="mailer", password="the-right-one").start()
    try:
        server = SMTPServer.parse(f"smtp://mailer:{PASSWORD}@127.0.0.1:{inbox.port}")
        with pytest.raises(Exception) as raised:
            await SMTPSender(server, reactor, "pds.example").send("pds@example.com", "a@example.com", _message())
        # Twisted's error carries the transcript, AUTH line and all; the
        # description leafpds logs and stores does not.
        reason = describe_failure(raised.value)
        assert "535" in reason
        assert_secret_absent([reason, repr(server), str(server)])
        assert inbox.received == [] and inbox.auth_attempts >= 1
    finally:
        inbox.stop()
    assert_secret_absent(logged)


@pytest_twisted.ensureDeferred
async def test_a_remote_server_without_tls_never_gets_the_password():
    """A password goes over the network only encrypted: no STARTTLS offered, no AUTH sent."""
    inbox = Inbox(username="mailer", password=PASSWORD).start()

    class SeenFromAfar(SMTPServer):  # this server, as if on another machine
        on_loopback = False

    try:
        sender = SMTPSender(SeenFromAfar("127.0.0.1", inbox.port, False, "mailer", PASSWORD), reactor, "pds.example")
        with pytest.raises(Exception) as raised:
            await sender.send("pds@example.com", "a@example.com", _message())
        assert "TLS" in describe_failure(raised.value)
        assert inbox.auth_attempts == 0 and inbox.received == []
    finally:
        inbox.stop()


@pytest_twisted.ensureDeferred
async def test_sender_fails_fast_when_the_server_is_down():
    sender = SMTPSender(SMTPServer.parse(f"smtp://127.0.0.1:{free_port()}"), reactor, "pds.example")
    with pytest.raises(Exception) as raised:
        await sender.send("pds@example.com", "a@example.com", _message())
    assert "refused" in describe_failure(raised.value)


# -- the queue, on a task.Clock ------------------------------------------------


class FakeSender:
    """Fails while ``down``; keeps what it sent."""

    def __init__(self) -> None:
        self.down = True
        self.sent: list[tuple[str, bytes]] = []
        self.attempts = 0

    def send(self, sender: str, recipient: str, message: bytes) -> Deferred:
        self.attempts += 1
        if self.down:
            from twisted.internet.error import ConnectionRefusedError

            return fail(ConnectionRefusedError())
        self.sent.append((recipient, message))
        return succeed(None)


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "leafpds.sqlite")
    database.migrate()
    database.start()
    yield database
    database.close()


async def _rows(db):
    return await db.read(
        lambda conn: conn.execute(
            "SELECT recipient, attempts, next_attempt_at, last_error FROM mail_queue ORDER BY id"
        ).fetchall()
    )


async def _settle(queue):
    """Let the run under way (database hops on threads) finish."""
    from twisted.internet import task

    for _ in range(500):
        if queue._running is None:
            return
        await task.deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("the queue did not settle")


def test_back_off_doubles_up_to_its_cap():
    delays = [retry_delay(n) for n in range(1, 10)]
    assert delays[:4] == [10, 20, 40, 80]
    assert max(delays) == mail_queue.MAX_RETRY == delays[-1]


@pytest_twisted.ensureDeferred
async def test_queue_retries_with_back_off_then_sends(db):
    clock = Clock()
    clock.advance(1_000_000)
    sender = FakeSender()
    queue = MailQueue(db, sender, "pds@example.com", "pds.example", clock)
    await db.write(enqueue_unit, "alice@example.com", "Hi", "Body\n", clock.seconds(), 900.0)
    queue.startService()
    await _settle(queue)
    ((recipient, attempts, next_at, error),) = await _rows(db)
    assert attempts == 1 and "ConnectionRefused" in error
    assert next_at == iso_from_epoch(clock.seconds() + 10)

    # Not before its time, even when woken.
    clock.advance(9)
    queue.wake()
    clock.advance(0)
    await _settle(queue)
    assert sender.attempts == 1
    for waited, expected_attempts in [(1, 2), (20, 3), (40, 4)]:
        clock.advance(waited)
        await _settle(queue)
        assert (await _rows(db))[0][1] == expected_attempts
    sender.down = False
    clock.advance(80)
    await _settle(queue)
    assert await _rows(db) == []
    ((to, message),) = sender.sent
    assert to == "alice@example.com" and b"Subject: Hi" in message
    queue.stopService()


@pytest_twisted.ensureDeferred
async def test_queue_drops_an_expired_mail_and_a_replaced_one(db, logged):
    clock = Clock()
    clock.advance(1_000_000)
    sender = FakeSender()
    queue = MailQueue(db, sender, "pds@example.com", "pds.example", clock)
    now = clock.seconds()
    await db.write(enqueue_unit, "a@example.com", "Code 1", "ONE", now, 900.0, "did:plc:a", "confirm_email")
    await db.write(enqueue_unit, "a@example.com", "Code 2", "TWO", now, 900.0, "did:plc:a", "confirm_email")
    await db.write(enqueue_unit, "a@example.com", "Other", "X", now, 900.0, "did:plc:a", "update_email")
    assert [r[0] for r in await _rows(db)] == ["a@example.com"] * 2  # the first code's mail is gone
    queue.startService()
    await _settle(queue)
    clock.advance(900)  # the codes expire before the server comes back
    sender.down = False
    await _settle(queue)
    assert await _rows(db) == [] and sender.sent == []
    assert any("dropped unsent" in line for line in logged)
    queue.stopService()


@pytest_twisted.ensureDeferred
async def test_a_stopped_queue_leaves_its_mail_for_the_next_start(db):
    clock = Clock()
    sender = FakeSender()
    first = MailQueue(db, sender, "pds@example.com", "pds.example", clock)
    first.startService()
    await _settle(first)
    await db.write(enqueue_unit, "a@example.com", "Hi", "Body", clock.seconds())
    first.wake()
    clock.advance(0)
    await _settle(first)
    first.stopService()
    assert (await _rows(db))[0][1] == 1
    # A new start tries at once, back-off or not.
    sender.down = False
    second = MailQueue(db, sender, "pds@example.com", "pds.example", clock)
    second.startService()
    await _settle(second)
    assert await _rows(db) == [] and len(sender.sent) == 1
    second.stopService()
