"""
`leafpds-admin` against a real `twistd leafpds` over its admin API, as an
operator runs it: a process of its own, human output and --json.
"""

import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.harness import ServerProcess
from tests.test_backup import admin

ADMIN_PASSWORD = "operator's secret"


class Relay(Resource):
    """A relay that records requestCrawl calls."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.asked = []

    def render_POST(self, request):
        self.asked.append((request.path.decode(), json.loads(request.content.read())))
        request.setHeader("content-type", "application/json")
        return b"{}"


def cli(server, *args):
    return admin("--url", server.url, "--admin-password", ADMIN_PASSWORD, *args)


@pytest_twisted.ensureDeferred
async def test_the_operator_manages_accounts_invites_and_crawls(tmp_path):
    server = ServerProcess(tmp_path / "data", "--admin-password", ADMIN_PASSWORD, "--invite-required")
    await server.start()
    relay = Relay()
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(relay))
    try:
        made = await deferToThread(cli, server, "--json", "account", "create", "eve@example.com", "eve.test")
        assert made.returncode == 0, made.stderr
        eve = json.loads(made.stdout)
        # The password works (an invite code was made for the account on the way).
        code, session = await server.call("com.atproto.server.createSession",
                                          {"identifier": "eve.test", "password": eve["password"]})
        assert code == 200 and session["did"] == eve["did"]

        human = await deferToThread(cli, server, "account", "create", "fay@example.com", "fay.test")
        assert human.returncode == 0 and "Password: " in human.stdout and "fay.test" in human.stdout

        listed = await deferToThread(cli, server, "--json", "account", "list")
        accounts = {a["handle"]: a for a in json.loads(listed.stdout)}
        assert set(accounts) == {"eve.test", "fay.test"} and accounts["eve.test"]["email"] == "eve@example.com"
        table = await deferToThread(cli, server, "account", "list")
        assert "eve.test" in table.stdout and eve["did"] in table.stdout

        down = await deferToThread(cli, server, "account", "takedown", eve["did"])
        assert down.returncode == 0, down.stderr
        code, refused = await server.call("com.atproto.server.createSession",
                                          {"identifier": "eve.test", "password": eve["password"]})
        assert (code, refused["error"]) == (401, "AccountTakedown")
        assert (await deferToThread(cli, server, "account", "untakedown", eve["did"])).returncode == 0

        reset = await deferToThread(cli, server, "--json", "account", "reset-password", eve["did"])
        new_password = json.loads(reset.stdout)["password"]
        assert (await server.call("com.atproto.server.createSession",
                                  {"identifier": "eve.test", "password": eve["password"]}))[0] == 401
        assert (await server.call("com.atproto.server.createSession",
                                  {"identifier": "eve.test", "password": new_password}))[0] == 200

        invite = await deferToThread(cli, server, "--json", "create-invite-code", "--uses", "2")
        code_ = json.loads(invite.stdout)["code"]
        code, _ = await server.call("com.atproto.server.createAccount", {
            "handle": "gus.test", "email": "gus@example.com", "password": "gus's password", "inviteCode": code_})
        assert code == 200

        relay_url = f"http://127.0.0.1:{listening.getHost().port}"
        crawl = await deferToThread(cli, server, "request-crawl", relay_url, "--hostname", "pds.example.com")
        assert crawl.returncode == 0, crawl.stderr
        assert relay.asked == [("/xrpc/com.atproto.sync.requestCrawl", {"hostname": "pds.example.com"})]

        gone = await deferToThread(cli, server, "account", "delete", eve["did"])
        assert gone.returncode == 0, gone.stderr
        listed = await deferToThread(cli, server, "--json", "account", "list")
        assert "eve.test" not in {a["handle"] for a in json.loads(listed.stdout)}
    finally:
        await listening.stopListening()
        server.kill()


@pytest_twisted.ensureDeferred
async def test_refusals_name_the_reason(tmp_path):
    server = ServerProcess(tmp_path / "data", "--admin-password", ADMIN_PASSWORD)
    await server.start()
    try:
        wrong = await deferToThread(admin, "--url", server.url, "--admin-password", "nope", "account", "list")
        assert wrong.returncode == 1 and "AuthenticationRequired" in wrong.stderr
        assert "nope" not in wrong.stderr
        unknown = await deferToThread(cli, server, "account", "delete", "did:plc:abcdefghijklmnopqrstuvwx")
        assert unknown.returncode == 1 and unknown.stderr.startswith("leafpds-admin: ")
        taken = await deferToThread(cli, server, "account", "create", "x@example.com", "x")
        assert taken.returncode == 1 and "handle" in taken.stderr.lower()
        no_password = await deferToThread(admin, "--url", server.url, "account", "list")
        assert no_password.returncode == 2 and "admin password" in no_password.stderr
    finally:
        server.kill()
    down = await deferToThread(cli, server, "account", "list")
    assert down.returncode == 1 and "cannot reach" in down.stderr
