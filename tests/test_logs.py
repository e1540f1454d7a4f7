"""
``--log-format json`` on real server processes, under both runners: every
line of the log is a JSON object with the expected fields, and no secret
is in it.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.harness import ServerProcess

ADMIN_PASSWORD = "admin-secret-4c1f"
PASSWORD = "user-secret-9e2a hunter2"


def log_lines(server: ServerProcess) -> list[dict]:
    text = (server.data_dir.parent / "server.log").read_text()
    assert "\x1e" not in text  # plain JSON lines, not RFC 7464 sequences
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("runner", ["twist", "twistd"])
@pytest_twisted.ensureDeferred
async def test_json_logs_one_object_per_line_without_secrets(tmp_path, runner):
    server = ServerProcess(tmp_path / "data", "--log-format", "json", "--admin-password", ADMIN_PASSWORD,
                           runner=runner)
    await server.start()
    try:
        code, made = await server.call("com.atproto.server.createAccount", {
            "handle": "alice.test", "email": "alice@example.com", "password": PASSWORD,
        })
        assert code == 200, made
        code, _ = await server.call("com.atproto.server.createSession", {"identifier": "alice.test", "password": "wrong"})
        assert code == 401
        await deferLater(reactor, 1.5, lambda: None)  # the access log goes out every second
    finally:
        server.kill()
    lines = log_lines(server)
    for line in lines:
        assert {"time", "level", "namespace", "message"} <= line.keys(), line
        assert line["time"].endswith("+00:00")
    (serving,) = [line for line in lines if line["message"].startswith("leafpds ")]
    assert serving["namespace"] == "leafpds.service" and serving["level"] == "info"
    assert serving["url"] == server.url.replace("127.0.0.1", "localhost")
    assert serving["data_dir"] == str(server.data_dir.resolve())
    (access,) = [line for line in lines if line["namespace"] == "leafpds.access"]
    assert '"POST /xrpc/com.atproto.server.createAccount HTTP/1.1" 200' in access["requests"]
    text = (server.data_dir.parent / "server.log").read_text()
    secret = (server.data_dir / "master.key").read_text().strip()
    for value in (ADMIN_PASSWORD, PASSWORD, secret, made["accessJwt"], made["refreshJwt"]):
        assert value not in text


@pytest_twisted.ensureDeferred
async def test_without_smtp_the_start_says_mail_goes_to_the_log_and_it_does(tmp_path):
    server = ServerProcess(tmp_path / "data", "--log-format", "json")
    await server.start()
    try:
        code, made = await server.call("com.atproto.server.createAccount", {
            "handle": "alice.test", "email": "alice@example.com", "password": PASSWORD,
        })
        assert code == 200, made
        code, _ = await server.call("com.atproto.server.requestPasswordReset", {"email": "alice@example.com"})
        assert code == 200
        for _ in range(50):  # the mail queue sends from the reactor, soon after the answer
            if any("Mail not sent" in line["message"] for line in log_lines(server)):
                break
            await deferLater(reactor, 0.1, lambda: None)
    finally:
        server.kill()
    lines = log_lines(server)
    (said,) = [line for line in lines if line["message"].startswith("No --smtp-url")]
    assert said["namespace"] == "leafpds.service" and said["level"] == "warn"
    assert "written to this log instead of sent" in said["message"]
    serving = next(i for i, line in enumerate(lines) if line["message"].startswith("leafpds "))
    assert lines.index(said) < serving  # said at start-up, before serving
    (mail,) = [line for line in lines if "Mail not sent" in line["message"]]
    assert "To: alice@example.com" in mail["message"]


@pytest_twisted.ensureDeferred
async def test_with_smtp_the_start_names_the_server_but_not_its_password(tmp_path):
    smtp_password = "smtp-secret-77d1"
    server = ServerProcess(
        tmp_path / "data", "--log-format", "json",
        "--smtp-url", f"smtp://mailer:{smtp_password}@127.0.0.1:2525", "--email-from", "pds@example.com",
    )
    await server.start()
    server.kill()
    lines = log_lines(server)
    (said,) = [line for line in lines if line["message"].startswith("Sending mail from")]
    assert said["message"] == "Sending mail from pds@example.com through smtp://mailer@127.0.0.1:2525"
    assert not [line for line in lines if line["message"].startswith("No --smtp-url")]
    assert smtp_password not in (server.data_dir.parent / "server.log").read_text()
