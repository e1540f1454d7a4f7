"""
Email end to end: a real leafpds over HTTP sending through Twisted's SMTP
client to a real SMTP server on loopback (aiosmtpd); the codes are read from
the mails it receives.
"""

import base64

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.task import Clock

from leafpds.accounts import email_tokens
from leafpds.mail import queue as mail_queue
from tests.harness import ServerProcess, free_port, make_settings, start_pds
from tests.smtp_standin import CODE, Inbox
from tests.test_accounts import PASSWORD, assert_error, bearer, create

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

SMTP_PASSWORD = "smtp-Pa55-w0rd"


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    """(leafpds sending to the inbox, the inbox)."""
    inbox = Inbox(username="mailer", password=SMTP_PASSWORD).start()
    pds = await start_pds(
        make_settings(
            tmp_path / "data",
            smtp_url=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{inbox.port}",
            email_from="pds@example.com",
        )
    )
    yield pds, inbox
    await pds.service.stopService()
    inbox.stop()


async def sign_up(pds, name="alice"):
    session = (await create(pds, name)).json()
    return session["did"], bearer(session["accessJwt"])


async def session_of(pds, auth):
    answer = await pds.get("com.atproto.server.getSession", headers=auth)
    assert answer.code == 200, answer.body
    return answer.json()


async def table(pds, sql, *args):
    return await pds.service.app.db.read(lambda conn: conn.execute(sql, args).fetchall())


async def queue_emptied(pds):
    for _ in range(500):
        if not await table(pds, "SELECT * FROM mail_queue"):
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("mail is left in the queue")


@pytest_twisted.ensureDeferred
async def test_confirm_an_email_address(world):
    pds, inbox = world
    did, auth = await sign_up(pds)
    assert (await session_of(pds, auth))["emailConfirmed"] is False

    answer = await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)
    assert answer.code == 200, answer.body
    (mail,) = await inbox.wait(1)
    assert mail.recipients == ["alice@example.com"] and mail.sender == "pds@example.com"
    assert mail.subject == "Email Confirmation" and mail.login == "mailer"
    assert mail.message["From"] == "pds@example.com" and mail.message["Message-ID"]
    assert "@alice.test" in mail.body and pds.service.app.public_url in mail.body
    code = mail.code
    assert CODE.fullmatch(code)
    # Only a keyed hash of the code is stored.
    ((stored,),) = await table(pds, "SELECT token_hash FROM email_tokens WHERE did = ?", did)
    assert code.encode() not in stored and len(stored) == 32
    await queue_emptied(pds)  # once the server took it

    # Wrong address, wrong code: refused, nothing changed.
    wrong_email = await pds.post(
        "com.atproto.server.confirmEmail", {"email": "bob@example.com", "token": code}, headers=auth
    )
    assert_error(wrong_email, 400, "InvalidEmail")
    wrong_code = await pds.post(
        "com.atproto.server.confirmEmail", {"email": "alice@example.com", "token": "AAAAA-BBBBB"}, headers=auth
    )
    assert_error(wrong_code, 400, "InvalidToken")
    assert (await session_of(pds, auth))["emailConfirmed"] is False

    # Case and surrounding space do not matter; the address's case neither.
    done = await pds.post(
        "com.atproto.server.confirmEmail",
        {"email": "Alice@Example.com", "token": f" {code.lower()} "},
        headers=auth,
    )
    assert done.code == 200, done.body
    assert (await session_of(pds, auth))["emailConfirmed"] is True
    signed_in = await pds.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": PASSWORD})
    assert signed_in.json()["emailConfirmed"] is True
    # Single use.
    again = await pds.post(
        "com.atproto.server.confirmEmail", {"email": "alice@example.com", "token": code}, headers=auth
    )
    assert_error(again, 400, "InvalidToken")


@pytest_twisted.ensureDeferred
async def test_a_new_code_replaces_the_old_and_codes_expire(world):
    pds, inbox = world
    did, auth = await sign_up(pds)
    for count in (1, 2):
        assert (await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)).code == 200
        await inbox.wait(count)  # (an unsent older mail would be replaced, not sent)
    first, second = inbox.received
    assert first.code != second.code
    refused = await pds.post(
        "com.atproto.server.confirmEmail", {"email": "alice@example.com", "token": first.code}, headers=auth
    )
    assert_error(refused, 400, "InvalidToken")

    # Fifteen minutes later the live code has expired (on a task.Clock).
    clock = Clock()
    clock.advance(reactor.seconds())
    pds.service.app.account_email.now = clock.seconds
    clock.advance(email_tokens.LIFETIME - 1)
    assert (await session_of(pds, auth))["emailConfirmed"] is False
    clock.advance(1)
    expired = await pds.post(
        "com.atproto.server.confirmEmail", {"email": "alice@example.com", "token": second.code}, headers=auth
    )
    assert_error(expired, 400, "ExpiredToken")
    assert (await session_of(pds, auth))["emailConfirmed"] is False


@pytest_twisted.ensureDeferred
async def test_a_code_is_for_one_account_and_one_purpose(world):
    pds, inbox = world
    _, alice = await sign_up(pds)
    _, bob = await sign_up(pds, "bob")
    await pds.post("com.atproto.server.requestEmailConfirmation", headers=alice)
    (mail,) = await inbox.wait(1)
    not_bobs = await pds.post(
        "com.atproto.server.confirmEmail", {"email": "bob@example.com", "token": mail.code}, headers=bob
    )
    assert_error(not_bobs, 400, "InvalidToken")
    # A confirmation code does not reset a password.
    reset = await pds.post("com.atproto.server.resetPassword", {"token": mail.code, "password": "new password 1"})
    assert_error(reset, 400, "InvalidToken")


@pytest_twisted.ensureDeferred
async def test_update_an_email_address(world):
    pds, inbox = world
    did, auth = await sign_up(pds)
    await sign_up(pds, "bob")

    # Unconfirmed: no code needed, none sent.
    answer = await pds.post("com.atproto.server.requestEmailUpdate", headers=auth)
    assert (answer.code, answer.json()) == (200, {"tokenRequired": False})
    changed = await pds.post("com.atproto.server.updateEmail", {"email": "alice2@example.com"}, headers=auth)
    assert changed.code == 200, changed.body
    assert (await session_of(pds, auth))["email"] == "alice2@example.com"

    # Confirm it; from then on a change needs the code mailed to it.
    await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)
    (confirm,) = await inbox.wait(1)
    await pds.post(
        "com.atproto.server.confirmEmail", {"email": "alice2@example.com", "token": confirm.code}, headers=auth
    )
    answer = await pds.post("com.atproto.server.requestEmailUpdate", headers=auth)
    assert (answer.code, answer.json()) == (200, {"tokenRequired": True})
    _, update = await inbox.wait(2)
    assert update.recipients == ["alice2@example.com"] and update.subject == "Email Update Requested"

    no_code = await pds.post("com.atproto.server.updateEmail", {"email": "alice3@example.com"}, headers=auth)
    assert_error(no_code, 400, "TokenRequired")
    bad_code = await pds.post(
        "com.atproto.server.updateEmail", {"email": "alice3@example.com", "token": "AAAAA-22222"}, headers=auth
    )
    assert_error(bad_code, 400, "InvalidToken")
    taken = await pds.post(
        "com.atproto.server.updateEmail", {"email": "BOB@example.com", "token": update.code}, headers=auth
    )
    assert_error(taken, 400, "InvalidRequest")
    assert "already in use" in taken.json()["message"]
    invalid = await pds.post(
        "com.atproto.server.updateEmail", {"email": "not an address", "token": update.code}, headers=auth
    )
    assert_error(invalid, 400, "InvalidRequest")
    me = await session_of(pds, auth)
    assert (me["email"], me["emailConfirmed"]) == ("alice2@example.com", True)  # nothing changed

    # The code still works after those refusals; the new address is unconfirmed.
    moved = await pds.post(
        "com.atproto.server.updateEmail", {"email": "Alice3@example.com", "token": update.code}, headers=auth
    )
    assert moved.code == 200, moved.body
    me = await session_of(pds, auth)
    assert (me["email"], me["emailConfirmed"]) == ("alice3@example.com", False)
    assert await table(pds, "SELECT purpose FROM email_tokens WHERE did = ?", did) == []
    # The old address no longer signs in; the new one does.
    old = await pds.post("com.atproto.server.createSession", {"identifier": "alice2@example.com", "password": PASSWORD})
    assert_error(old, 401, "AuthenticationRequired")
    new = await pds.post("com.atproto.server.createSession", {"identifier": "alice3@example.com", "password": PASSWORD})
    assert new.code == 200


@pytest_twisted.ensureDeferred
async def test_email_changes_need_the_accounts_password_not_an_app_password(world):
    pds, inbox = world
    _, auth = await sign_up(pds)
    app_password = (
        await pds.post("com.atproto.server.createAppPassword", {"name": "phone"}, headers=auth)
    ).json()["password"]
    app = await pds.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": app_password})
    app_auth = bearer(app.json()["accessJwt"])
    for nsid, body in [
        ("com.atproto.server.requestEmailUpdate", None),
        ("com.atproto.server.updateEmail", {"email": "evil@example.com"}),
    ]:
        assert_error(await pds.post(nsid, body, headers=app_auth), 400, "InvalidToken")
    assert (await session_of(pds, auth))["email"] == "alice@example.com"
    # Confirming is allowed to app passwords, as the official PDS allows it.
    assert (await pds.post("com.atproto.server.requestEmailConfirmation", headers=app_auth)).code == 200
    for nsid in ["com.atproto.server.requestEmailConfirmation", "com.atproto.server.requestEmailUpdate"]:
        assert_error(await pds.post(nsid), 401, "AuthMissing")


@pytest_twisted.ensureDeferred
async def test_reset_a_forgotten_password(world):
    pds, inbox = world
    did, auth = await sign_up(pds)
    other = (await pds.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": PASSWORD})).json()

    # An unknown address gets the same answer and no mail.
    unknown = await pds.post("com.atproto.server.requestPasswordReset", {"email": "nobody@example.com"})
    assert (unknown.code, unknown.body) == (200, b"")
    answer = await pds.post("com.atproto.server.requestPasswordReset", {"email": "ALICE@example.com"})
    assert (answer.code, answer.body) == (200, b"")
    (mail,) = await inbox.wait(1)
    assert mail.subject == "Password Reset Requested" and "@alice.test" in mail.body
    assert len(inbox.received) == 1

    too_short = await pds.post("com.atproto.server.resetPassword", {"token": mail.code, "password": "short"})
    assert_error(too_short, 400, "InvalidPassword")
    wrong = await pds.post("com.atproto.server.resetPassword", {"token": "ZZZZZ-77777", "password": "a new password"})
    assert_error(wrong, 400, "InvalidToken")
    assert (await pds.get("com.atproto.server.getSession", headers=auth)).code == 200  # nothing changed

    reset = await pds.post("com.atproto.server.resetPassword", {"token": mail.code.lower(), "password": "a new password"})
    assert reset.code == 200, reset.body
    # Every session ended at once: access and refresh tokens.
    assert_error(await pds.get("com.atproto.server.getSession", headers=auth), 400, "ExpiredToken")
    refreshed = await pds.post("com.atproto.server.refreshSession", headers=bearer(other["refreshJwt"]))
    assert_error(refreshed, 400, "ExpiredToken")
    old = await pds.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": PASSWORD})
    assert_error(old, 401, "AuthenticationRequired")
    new = await pds.post("com.atproto.server.createSession", {"identifier": "alice.test", "password": "a new password"})
    assert new.code == 200
    used = await pds.post("com.atproto.server.resetPassword", {"token": mail.code, "password": "another one 2"})
    assert_error(used, 400, "InvalidToken")


@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_refused(world):
    pds, _ = world
    _, auth = await sign_up(pds)
    for nsid, body in [
        ("com.atproto.server.confirmEmail", {"email": "alice@example.com"}),
        ("com.atproto.server.confirmEmail", {"token": "AAAAA-BBBBB"}),
        ("com.atproto.server.updateEmail", {}),
        ("com.atproto.server.requestPasswordReset", {}),
        ("com.atproto.server.resetPassword", {"token": "AAAAA-BBBBB"}),
        ("com.atproto.server.resetPassword", {"password": "a new password"}),
    ]:
        answer = await pds.post(nsid, body, headers=auth)
        assert_error(answer, 400, "InvalidRequest")


@pytest_twisted.ensureDeferred
async def test_request_methods_are_rate_limited(world):
    pds, inbox = world
    _, auth = await sign_up(pds)
    for _ in range(5):
        assert (await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)).code == 200
    limited = await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)
    assert_error(limited, 429, "RateLimitExceeded")
    assert limited.header("ratelimit-policy") == "5;w=3600"
    # Each method counts apart, as the official PDS counts them.
    assert (await pds.post("com.atproto.server.requestEmailUpdate", headers=auth)).code == 200
    for _ in range(15):
        answer = await pds.post("com.atproto.server.requestPasswordReset", {"email": "x@example.com"})
        assert answer.code == 200
    assert_error(await pds.post("com.atproto.server.requestPasswordReset", {"email": "x@example.com"}), 429, "RateLimitExceeded")


@pytest_twisted.ensureDeferred
async def test_smtp_down_the_request_answers_and_the_mail_follows(tmp_path, monkeypatch):
    monkeypatch.setattr(mail_queue, "FIRST_RETRY", 0.2)
    port = free_port()
    pds = await start_pds(make_settings(tmp_path / "data", smtp_url=f"smtp://127.0.0.1:{port}"))
    inbox = None
    try:
        _, auth = await sign_up(pds)
        answer = await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)
        assert answer.code == 200, answer.body
        for _ in range(500):
            rows = await table(pds, "SELECT attempts, last_error FROM mail_queue")
            if rows and rows[0][0] >= 1:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        ((attempts, error),) = rows
        assert attempts >= 1 and "refused" in error
        inbox = Inbox(port=port).start()
        (mail,) = await inbox.wait(1)
        assert mail.subject == "Email Confirmation"
        done = await pds.post(
            "com.atproto.server.confirmEmail", {"email": "alice@example.com", "token": mail.code}, headers=auth
        )
        assert done.code == 200
    finally:
        await pds.service.stopService()
        if inbox is not None:
            inbox.stop()


@pytest_twisted.ensureDeferred
async def test_without_smtp_mail_is_logged(pds):
    """Development: the mail, code and all, goes to the log."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        _, auth = await sign_up(pds)
        assert (await pds.post("com.atproto.server.requestEmailConfirmation", headers=auth)).code == 200
        for _ in range(500):  # logged, then deleted from the queue
            if any("Mail not sent" in line for line in lines) and not await table(pds, "SELECT * FROM mail_queue"):
                break
            await task.deferLater(reactor, 0.01, lambda: None)
    finally:
        globalLogPublisher.removeObserver(observer)
    (logged,) = [line for line in lines if "Mail not sent" in line]
    assert "To: alice@example.com" in logged and CODE.search(logged)
    assert await table(pds, "SELECT * FROM mail_queue") == []


@pytest_twisted.ensureDeferred
async def test_queued_mail_survives_a_killed_server(tmp_path):
    """twistd with the SMTP server down, killed; restarted with it up: the mail goes out."""
    data = tmp_path / "data"
    data.mkdir()
    inbox = Inbox(username="mailer", password=SMTP_PASSWORD)
    url = f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{inbox.port}"
    server = ServerProcess(data, "--smtp-url", url, "--email-from", "pds@example.com")
    await server.start()
    try:
        code, session = await server.call(
            "com.atproto.server.createAccount",
            {"handle": "alice.test", "email": "alice@example.com", "password": PASSWORD},
        )
        assert code == 200, session
        code, _ = await server.call("com.atproto.server.requestEmailConfirmation", {}, token=session["accessJwt"])
        assert code == 200
        for _ in range(500):  # the first attempt fails (and is logged) before the kill
            if any("not sent (attempt 1)" in line for line in log_lines(tmp_path / "server.log")):
                break
            await task.deferLater(reactor, 0.01, lambda: None)
    finally:
        server.kill()
    inbox.start()
    again = ServerProcess(data, "--smtp-url", url, "--email-from", "pds@example.com")
    again.port, again.plc_port = server.port, server.plc_port  # the same public URL and DID
    await again.start()
    try:
        (mail,) = await inbox.wait(1)
        assert mail.login == "mailer" and mail.recipients == ["alice@example.com"]
        code, _ = await again.call(
            "com.atproto.server.confirmEmail",
            {"email": "alice@example.com", "token": mail.code},
            token=session["accessJwt"],
        )
        assert code == 200
        code, me = await again.call("com.atproto.server.getSession", token=session["accessJwt"])
        assert me["emailConfirmed"] is True
    finally:
        again.kill()
        inbox.stop()
    # The SMTP password is in no log line, whatever happened.
    lines = log_lines(tmp_path / "server.log")
    assert any("Sending mail from pds@example.com through smtp://mailer@127.0.0.1" in line for line in lines)
    assert any("not sent (attempt 1): SMTPConnectError" in line for line in lines)
    assert any("sent to alice@example.com" in line for line in lines)
    assert SMTP_PASSWORD not in (tmp_path / "server.log").read_text()
    assert not any(SMTP_PASSWORD in line for line in lines)


def log_lines(path) -> list[str]:
    """The server's log (twist writes JSON events when not on a terminal), formatted."""
    from twisted.logger import eventsFromJSONLogFile, formatEvent

    with open(path) as f:
        return [formatEvent(event) for event in eventsFromJSONLogFile(f)]


def test_codes_have_the_official_shape():
    codes = {email_tokens.new_token() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(CODE.fullmatch(code) for code in codes)
    assert set("".join(codes).replace("-", "")) == set(email_tokens.ALPHABET)


@pytest_twisted.ensureDeferred
async def test_later_purposes_are_one_call_each(world):
    """deleteAccount and signPlcOperation will need only send_code and use_code."""
    from leafpds.errors import InvalidToken

    pds, inbox = world
    did, _ = await sign_up(pds)
    account_email = pds.service.app.account_email
    await account_email.send_code(did, email_tokens.PLC_OPERATION)
    (mail,) = await inbox.wait(1)
    assert mail.subject == "PLC Update Operation Requested"
    assert f"Your confirmation code is {mail.code}" in mail.body
    await account_email.send_code(did, email_tokens.DELETE_ACCOUNT)
    _, deletion = await inbox.wait(2)
    assert deletion.subject == "Account Deletion Requested"
    # Each code serves its own purpose, once.
    with pytest.raises(InvalidToken):
        await account_email.use_code(did, email_tokens.DELETE_ACCOUNT, mail.code)
    await account_email.use_code(did, email_tokens.PLC_OPERATION, mail.code)
    with pytest.raises(InvalidToken):
        await account_email.use_code(did, email_tokens.PLC_OPERATION, mail.code)
    await account_email.use_code(did, email_tokens.DELETE_ACCOUNT, deletion.code.lower())


@pytest_twisted.ensureDeferred
async def test_the_admin_sends_an_account_a_message(tmp_path):
    inbox = Inbox().start()
    pds = await start_pds(make_settings(
        tmp_path / "data", smtp_url=f"smtp://127.0.0.1:{inbox.port}", email_from="pds@example.com",
        admin_password="admin secret",
    ))
    try:
        did, _auth = await sign_up(pds)
        admin = {"Authorization": "Basic " + base64.b64encode(b"admin:admin secret").decode()}
        body = {"recipientDid": did, "senderDid": did, "content": "Your account is fine.\nThe operator",
                "subject": "About your account"}
        answer = await pds.post("com.atproto.admin.sendEmail", body, headers=admin)
        assert (answer.code, answer.json()) == (200, {"sent": True})
        (mail,) = await inbox.wait(1)
        assert mail.recipients == ["alice@example.com"] and mail.subject == "About your account"
        assert "Your account is fine." in mail.body
        # Without a subject, the official default; an unknown recipient is refused, nothing queued.
        body.pop("subject")
        assert (await pds.post("com.atproto.admin.sendEmail", body, headers=admin)).code == 200
        _, second = await inbox.wait(2)
        assert second.subject == "Message via your account provider"
        unknown = {**body, "recipientDid": "did:plc:abcdefghijklmnopqrstuvwx"}
        assert_error(await pds.post("com.atproto.admin.sendEmail", unknown, headers=admin), 400, "InvalidRequest")
        assert (await pds.post("com.atproto.admin.sendEmail", body)).code == 401
        await queue_emptied(pds)
        assert len(inbox.received) == 2

        # The admin's view of the account says when its address was confirmed.
        info = await pds.get("com.atproto.admin.getAccountInfo", {"did": did}, headers=admin)
        assert "emailConfirmedAt" not in info.json()
        await pds.service.app.db.write(lambda c: c.execute(
            "UPDATE accounts SET email_confirmed_at = '2026-12-06T00:00:00.000Z' WHERE did = ?", (did,)))
        info = await pds.get("com.atproto.admin.getAccountInfo", {"did": did}, headers=admin)
        assert info.json()["emailConfirmedAt"] == "2026-12-06T00:00:00.000Z"
        # An address the admin sets is unconfirmed again.
        changed = await pds.post("com.atproto.admin.updateAccountEmail", {"account": did, "email": "new@example.com"},
                                 headers=admin)
        assert changed.code == 200, changed.body
        info = await pds.get("com.atproto.admin.getAccountInfo", {"did": did}, headers=admin)
        assert info.json()["email"] == "new@example.com" and "emailConfirmedAt" not in info.json()
    finally:
        await pds.service.stopService()
        inbox.stop()
