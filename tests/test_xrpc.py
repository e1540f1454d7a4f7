"""The XRPC framework, end to end over HTTP against a running leafpds."""

import base64

import pytest_twisted

import leafpds
from leafpds.db.pool import Database
from leafpds.lexicon import validate_output


@pytest_twisted.ensureDeferred
async def test_banner_robots_health(pds):
    banner = await pds.request("GET", "/")
    assert banner.code == 200
    assert banner.header("content-type").startswith("text/plain")
    assert b"leafpds" in banner.body

    robots = await pds.request("GET", "/robots.txt")
    assert robots.code == 200 and b"User-agent" in robots.body

    health = await pds.get("_health")
    assert health.code == 200
    assert health.json() == {"version": leafpds.__version__}


@pytest_twisted.ensureDeferred
async def test_health_503_when_database_unreadable(pds, tmp_path):
    # A database file that is not a database (say, corrupted on disk).
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not an SQLite database" * 200)
    working = pds.service.app.db
    unreadable = Database(broken)
    # Only its readers: the health check reads, and the writer would refuse
    # to open such a file at all.
    unreadable._readers.start()
    pds.service.app.db = unreadable
    try:
        health = await pds.get("_health")
    finally:
        unreadable._readers.close()
        pds.service.app.db = working
    assert health.code == 503
    assert health.json()["version"] == leafpds.__version__
    assert (await pds.get("_health")).code == 200


@pytest_twisted.ensureDeferred
async def test_describe_server(pds):
    answer = await pds.get("com.atproto.server.describeServer")
    assert answer.code == 200
    body = answer.json()
    # did:web of the public URL, port included (two local servers differ).
    assert body["did"] == f"did:web:localhost%3A{pds.service.port.getHost().port}"
    assert body["availableUserDomains"] == [".test"]
    assert body["inviteCodeRequired"] is False
    validate_output(pds.service.app.lexicons, "com.atproto.server.describeServer", body)
    assert answer.header("access-control-allow-origin") == "*"


@pytest_twisted.ensureDeferred
async def test_unknown_method_is_proxied_for_accounts_only(pds):
    # Served elsewhere (tests/test_proxy.py): forwarded for a signed-in account only.
    answer = await pds.get("com.example.nothing.here")
    assert answer.code == 401
    assert answer.json()["error"] == "AuthMissing"


@pytest_twisted.ensureDeferred
async def test_malformed_nsid_is_400(pds):
    for nsid in ["not-an-nsid", "com..example", "com.example.1abc", "a" * 400]:
        answer = await pds.get(nsid)
        assert answer.code == 400, nsid
        assert answer.json()["error"] == "InvalidRequest"


@pytest_twisted.ensureDeferred
async def test_wrong_http_method(pds):
    answer = await pds.post("com.atproto.server.describeServer", {})
    assert answer.code == 405
    assert answer.json()["error"] == "InvalidRequest"
    assert answer.header("allow") == "GET"


@pytest_twisted.ensureDeferred
async def test_unroutable_paths_answer_json(pds):
    answer = await pds.request("GET", "/no/such/page")
    assert answer.code == 404
    assert "error" in answer.json()


@pytest_twisted.ensureDeferred
async def test_cors_preflight(pds):
    answer = await pds.request(
        "OPTIONS",
        "/xrpc/com.atproto.server.describeServer",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, atproto-proxy",
        },
    )
    assert answer.code == 204
    assert answer.header("access-control-allow-origin") == "*"
    allowed = answer.header("access-control-allow-headers")
    for header in ["authorization", "content-type", "atproto-proxy", "atproto-accept-labelers"]:
        assert header in allowed
    assert "POST" in answer.header("access-control-allow-methods")


@pytest_twisted.ensureDeferred
async def test_request_body_limit(tmp_path):
    from tests.harness import make_settings, start_pds

    running = await start_pds(make_settings(tmp_path, max_json_body="1000"))
    try:
        answer = await running.request(
            "POST",
            "/xrpc/com.atproto.server.createInviteCode",
            data=b"{" + b" " * 5000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert answer.code == 413
        assert answer.json()["error"] == "PayloadTooLarge"
        # The server is still healthy afterwards.
        assert (await running.get("_health")).code == 200
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_query_params_are_validated(pds):
    ok = await pds.get("com.atproto.sync.listRepos", {"limit": "10"})
    assert ok.code == 200, ok.body
    assert ok.json() == {"repos": []}
    for params, fragment in [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ]:
        answer = await pds.get("com.atproto.sync.listRepos", params)
        assert answer.code == 400, params
        body = answer.json()
        assert body["error"] == "InvalidRequest"
        assert fragment in body["message"]


def basic(password: str) -> dict[str, str]:
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest_twisted.ensureDeferred
async def test_admin_procedure_auth_and_input(tmp_path):
    from tests.harness import make_settings, start_pds

    running = await start_pds(make_settings(tmp_path, admin_password="s3cret-admin"))
    nsid = "com.atproto.server.createInviteCode"
    try:
        missing = await running.post(nsid, {"useCount": 1})
        assert (missing.code, missing.json()["error"]) == (401, "AuthMissing")

        wrong = await running.post(nsid, {"useCount": 1}, headers=basic("nope"))
        assert (wrong.code, wrong.json()["error"]) == (401, "AuthenticationRequired")

        garbage = await running.post(
            nsid, {"useCount": 1}, headers={"Authorization": "Basic !!!"}
        )
        assert (garbage.code, garbage.json()["error"]) == (400, "InvalidToken")

        invalid = await running.post(nsid, {"useCount": "one"}, headers=basic("s3cret-admin"))
        assert invalid.code == 400
        assert "useCount" in invalid.json()["message"]

        absent = await running.post(nsid, {}, headers=basic("s3cret-admin"))
        assert absent.code == 400
        assert "useCount" in absent.json()["message"]

        not_json = await running.request(
            "POST", "/xrpc/" + nsid, data=b"{nope",
            headers={**basic("s3cret-admin"), "Content-Type": "application/json"},
        )
        assert (not_json.code, not_json.json()["error"]) == (400, "InvalidRequest")

        wrong_type = await running.request(
            "POST", "/xrpc/" + nsid, data=b'{"useCount": 1}',
            headers={**basic("s3cret-admin"), "Content-Type": "text/plain"},
        )
        assert (wrong_type.code, wrong_type.json()["error"]) == (400, "InvalidRequest")

        created = await running.post(nsid, {"useCount": 2}, headers=basic("s3cret-admin"))
        assert created.code == 200, created.body
        code = created.json()["code"]
        assert code.startswith("localhost-")

        def count(conn):
            return conn.execute(
                "SELECT available_uses FROM invite_codes WHERE code = ?", (code,)
            ).fetchall()

        assert await running.service.app.db.read(count) == [(2,)]
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_admin_methods_refused_without_admin_password(pds):
    answer = await pds.post(
        "com.atproto.server.createInviteCode", {"useCount": 1}, headers=basic("")
    )
    assert answer.code == 401
