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
