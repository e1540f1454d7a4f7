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


@pytest_twisted.ensureDeferred
async def test_blobs_migrate_to_s3_then_the_server_serves_them_from_there(tmp_path, s3):
    import os

    import treq

    from tests.s3_standin import BUCKET
    from tests.test_backup import make_account, upload

    server = ServerProcess(tmp_path / "data")
    await server.start()
    try:
        did, token = await make_account(server, "hal")
        payloads = [os.urandom(3000), os.urandom(70_000)]
        cids = []
        for data in payloads:
            blob = await upload(server, token, data)
            cids.append(blob["ref"]["$link"])
            code, _ = await server.call("com.atproto.repo.createRecord", {
                "repo": did, "collection": "com.example.file", "record": {"file": blob}}, token)
            assert code == 200
        environ = {"AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}

        def migrate(*extra):
            import subprocess
            import sys

            from tests.test_backup import ROOT

            return subprocess.run(
                [sys.executable, "-m", "leafpds.admin.cli", "--json", "blobs", "migrate",
                 "--to", f"s3://{BUCKET}/moved", "--data-dir", str(tmp_path / "data"),
                 "--s3-endpoint", s3.url, "--s3-force-path-style", *extra],
                capture_output=True, text=True, cwd=ROOT, timeout=120,
                env={**os.environ, **environ, "PYTHONPATH": str(ROOT)},
            )

        # A damaged file stops it, naming the blob; nothing of it reaches the bucket.
        damaged = tmp_path / "data" / "blobs" / did / cids[1]
        good = damaged.read_bytes()
        damaged.write_bytes(b"not the blob")
        stopped = await deferToThread(migrate)
        assert stopped.returncode == 1 and cids[1] in stopped.stderr
        assert f"moved/blocks/{did}/{cids[1]}" not in s3.keys()
        damaged.write_bytes(good)

        moved = await deferToThread(migrate)  # runs on: what is there stays
        assert moved.returncode == 0, moved.stderr
        report = json.loads(moved.stdout)
        assert report["count"] == 2 and report["uploaded"] + report["already_there"] == 2
        assert s3.keys() == {f"moved/blocks/{did}/{cid}": data for cid, data in zip(cids, payloads)}
        again = json.loads((await deferToThread(migrate)).stdout)
        assert (again["uploaded"], again["already_there"]) == (0, 2)
        # The disk copies stay until the operator switches.
        assert damaged.read_bytes() == good
    finally:
        server.kill()

    switched = ServerProcess(tmp_path / "data", "--blobstore", f"s3://{BUCKET}/moved",
                             "--s3-endpoint", s3.url, "--s3-force-path-style",
                             "--s3-access-key-id", s3.access_key_id, "--s3-secret-access-key", s3.secret_access_key)
    await switched.start()
    try:
        for cid, data in zip(cids, payloads):
            response = await treq.get(f"{switched.url}/xrpc/com.atproto.sync.getBlob", params={"did": did, "cid": cid})
            assert response.code == 200 and await response.content() == data
    finally:
        switched.kill()
