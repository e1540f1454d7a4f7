"""
An account moves between two ``twistd leafpds`` processes that share one PLC
directory (the first one's embedded directory), A → B and back B → A, the
way ``goat account migrate`` and the Bluesky docs do it, driven by the Python
``atproto`` SDK: a service JWT from the old PDS, ``createAccount`` with the
DID on the new one, the repo exported and imported, the missing blobs
copied, the preferences carried over, the PLC operation requested by email,
signed by the old PDS and submitted by the new one, the new account
activated and the old one deactivated.

The SDK runs in a thread (it is synchronous); the servers are processes of
their own, and the mail goes to a real SMTP server on loopback.
"""

import os
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_twisted
from atproto import Client, models
from atproto.exceptions import AtProtocolError
from cbrrr import decode_multi_dag_cbor_in_violation_of_the_spec as frames
from twisted.internet import threads

from tests.harness import ServerProcess, free_port
from tests.smtp_standin import CODE, Inbox

PASSWORD = "migrate-Me-2026"
EMAIL = "alice@example.com"
HANDLE = "alice.test"


def png(seed: int) -> bytes:
    """A small valid PNG, different for every seed."""
    width = height = 4
    rows = b"".join(b"\x00" + bytes((seed * 7 + x + y * 11) % 256 for x in range(width * 3)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def code_in(message) -> str:
    """The one code in a mail, plain text or the text part of a multipart one (the official PDS's)."""
    part = message.get_body(preferencelist=("plain", "html"))
    (found,) = set(CODE.findall(part.get_content()))
    return found


class Mailbox:
    """The PLC codes the old PDS mails, read from the loopback SMTP server (from a thread)."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.seen = 0

    def next_code(self, subject: str) -> str:
        import time

        for _ in range(750):
            with self.inbox.lock:
                fresh = self.inbox.received[self.seen:]
            for index, mail in enumerate(fresh):
                if mail.message["subject"] == subject:
                    self.seen += index + 1
                    assert mail.recipients == [EMAIL]
                    return code_in(mail.message)
            time.sleep(0.02)
        raise AssertionError(f"no mail {subject!r}")


class PDS:
    """One running leafpds, seen from outside."""

    def __init__(self, url: str, public_url: str | None = None) -> None:
        self.url = url
        #: The URL DID documents name (a leafpds on loopback calls itself localhost).
        self.public_url = public_url or url
        self.client = Client(f"{self.url}/xrpc")
        self.service_did = self.client.com.atproto.server.describe_server().did

    def sign_in(self) -> Client:
        client = Client(f"{self.url}/xrpc")
        client.login(HANDLE, PASSWORD, fetch_bsky_profile=False)
        # The SDK's posting helpers write to the repo of ``me``, which it
        # fills from an AppView; there is none here, so from the session.
        session = client.com.atproto.server.get_session()
        client.me = models.AppBskyActorDefs.ProfileViewDetailed(did=session.did, handle=session.handle)
        return client

    def session(self) -> dict[str, str]:
        """Auth headers of a fresh session (SDK sessions follow the DID document, which may name the other PDS)."""
        answer = self.client.com.atproto.server.create_session({"identifier": HANDLE, "password": PASSWORD})
        return {"Authorization": f"Bearer {answer.access_jwt}"}


def leafpds(server: ServerProcess) -> PDS:
    return PDS(server.url, f"http://localhost:{server.port}")


def snapshot(client: Client, did: str) -> dict[str, Any]:
    """Every record (by URI: its CID, which names its exact bytes) and every blob (by CID: bytes) of the repo."""
    collections = client.com.atproto.repo.describe_repo({"repo": did}).collections
    records = {}
    for collection in collections:
        cursor = None
        while True:
            page = client.com.atproto.repo.list_records(
                {"repo": did, "collection": collection, "limit": 100, "cursor": cursor}
            )
            for record in page.records:
                records[record.uri] = record.cid
            cursor = page.cursor
            if not cursor or not page.records:
                break
    blobs = {}
    cursor = None
    while True:
        page = client.com.atproto.sync.list_blobs({"did": did, "limit": 500, "cursor": cursor})
        for cid in page.cids:
            blobs[cid] = client.com.atproto.sync.get_blob({"did": did, "cid": cid})
        cursor = page.cursor
        if not cursor or not page.cids:
            break
    return {"records": records, "blobs": blobs}


def migrate(old: PDS, new: PDS, mailbox: Mailbox, did: str, existing: bool) -> dict[str, str]:
    """
    Move ``did`` from ``old`` to ``new`` in the official sequence; the auth
    headers of the session on ``new``.  ``existing``: ``new`` still holds
    the account (deactivated) from before, so it signs in there instead.
    """
    old_client = old.sign_in()
    token = old_client.com.atproto.server.get_service_auth(
        {"aud": new.service_did, "lxm": "com.atproto.server.createAccount"}
    ).token
    account = {"handle": HANDLE, "email": EMAIL, "password": PASSWORD, "did": did}
    bearer = {"Authorization": f"Bearer {token}"}
    if existing:
        with pytest.raises(AtProtocolError) as refused:
            new.client.com.atproto.server.create_account(account, headers=bearer)
        assert refused.value.response.content.error == "AlreadyExists"
        auth = new.session()
    else:
        created = new.client.com.atproto.server.create_account(account, headers=bearer)
        assert created.did == did
        auth = {"Authorization": f"Bearer {created.access_jwt}"}
    api = new.client.com.atproto

    status = api.server.check_account_status(headers=auth)
    assert status.activated is False

    # The repo, then the blobs the new PDS lacks.
    car = old_client.com.atproto.sync.get_repo({"did": did})
    assert api.repo.import_repo(car, headers=auth)
    cursor = None
    while True:
        page = api.repo.list_missing_blobs({"limit": 100, "cursor": cursor}, headers=auth)
        for missing in page.blobs:
            blob = httpx.get(
                f"{old.url}/xrpc/com.atproto.sync.getBlob", params={"did": did, "cid": missing.cid}
            )
            blob.raise_for_status()
            uploaded = api.repo.upload_blob(
                blob.content, headers={**auth, "Content-Type": blob.headers["content-type"]}
            )
            assert uploaded.blob.cid == missing.cid
        cursor = page.cursor
        if not cursor or not page.blobs:
            break
    assert api.repo.list_missing_blobs(headers=auth).blobs == []

    carried = old_client.app.bsky.actor.get_preferences().preferences
    new.client.app.bsky.actor.put_preferences({"preferences": carried}, headers=auth)

    # The identity: the new PDS's credentials, signed by the old one's rotation key.
    credentials = api.identity.get_recommended_did_credentials(headers=auth)
    old_client.com.atproto.identity.request_plc_operation_signature()
    code = mailbox.next_code("PLC Update Operation Requested")
    signed = old_client.com.atproto.identity.sign_plc_operation(
        {
            "token": code,
            "rotationKeys": credentials.rotation_keys,
            "alsoKnownAs": credentials.also_known_as,
            "verificationMethods": credentials.verification_methods,
            "services": credentials.services,
        }
    )
    api.identity.submit_plc_operation({"operation": signed.operation}, headers=auth)

    api.server.activate_account(headers=auth)
    old_client.com.atproto.server.deactivate_account({})
    return auth


def check_moved(old: PDS, new: PDS, did: str, before: dict[str, Any], plc_url: str) -> Client:
    """Everything the issue promises after a move, looked at from outside."""
    client = new.sign_in()
    assert client.me.did == did
    # The SDK followed the DID document to the new PDS.
    assert str(client._base_url).startswith(new.public_url)

    assert snapshot(client, did) == before

    status = client.com.atproto.server.check_account_status()
    assert status.activated and status.valid_did
    assert status.indexed_records == len(before["records"])
    assert status.expected_blobs == status.imported_blobs == len(before["blobs"])

    document = httpx.get(f"{plc_url}/{did}").json()
    credentials = client.com.atproto.identity.get_recommended_did_credentials()
    assert document["service"][0]["serviceEndpoint"] == new.public_url
    signing_key = credentials.verification_methods["atproto"]
    assert document["verificationMethod"][0]["publicKeyMultibase"] == signing_key.removeprefix("did:key:")

    # The old PDS keeps the account deactivated and refuses its writes.
    old_auth = old.session()
    with pytest.raises(AtProtocolError) as refused:
        old.client.com.atproto.repo.create_record(
            {"repo": did, "collection": "app.bsky.feed.post",
             "record": {"$type": "app.bsky.feed.post", "text": "lost", "createdAt": "2026-12-06T00:00:00Z"}},
            headers=old_auth,
        )
    assert refused.value.response.content.error == "AccountDeactivated"
    status = httpx.get(f"{old.url}/xrpc/com.atproto.sync.getRepoStatus", params={"did": did}).json()
    assert (status["active"], status["status"]) == (False, "deactivated")

    # A new post on the new PDS reaches its firehose.
    from websockets.sync.client import connect

    url = new.url.replace("http://", "ws://") + "/xrpc/com.atproto.sync.subscribeRepos"
    with connect(url, max_size=None, open_timeout=10) as socket_:
        posted = client.send_post("from my new home")
        rkey = posted.uri.rsplit("/", 1)[1]
        while True:
            header, body = list(frames(socket_.recv(timeout=10)))
            if header.get("t") == "#commit" and body["repo"] == did:
                break
    assert [op["path"] for op in body["ops"]] == [f"app.bsky.feed.post/{rkey}"]
    return client


def populate(client: Client, did: str) -> None:
    """Records across collections, blobs, preferences, a profile with an avatar."""
    avatar = client.upload_blob(png(1)).blob
    client.com.atproto.repo.put_record(
        {"repo": did, "collection": "app.bsky.actor.profile", "rkey": "self",
         "record": {"$type": "app.bsky.actor.profile", "displayName": "Alice", "avatar": avatar}}
    )
    first = client.send_post("hello from A")
    for n in range(30):
        client.send_post(f"post {n}")
    client.send_image("a picture", image=png(2), image_alt="a picture")
    client.like(first.uri, first.cid)
    client.follow("did:plc:ewvi7nxzyoun6zhxrhs64oiz")
    client.app.bsky.actor.put_preferences(
        {"preferences": [
            {"$type": "app.bsky.actor.defs#adultContentPref", "enabled": False},
            {"$type": "app.bsky.actor.defs#savedFeedsPrefV2", "items": [
                {"id": "3l6ovcmm2vd2j", "type": "timeline", "value": "following", "pinned": True}]},
        ]}
    )


def there_and_back(a: PDS, b: PDS, mailbox: Mailbox, plc_url: str) -> None:
    signup = a.client.com.atproto.server.create_account({"handle": HANDLE, "email": EMAIL, "password": PASSWORD})
    did = signup.did
    alice = a.sign_in()
    populate(alice, did)
    preferences = alice.app.bsky.actor.get_preferences().preferences
    before = snapshot(alice, did)
    assert len(before["blobs"]) == 2

    migrate(a, b, mailbox, did, existing=False)
    on_b = check_moved(a, b, did, before, plc_url)
    assert on_b.app.bsky.actor.get_preferences().preferences == preferences

    # Life goes on at B: a post with a new blob A has never seen.
    on_b.send_image("made on B", image=png(3), image_alt="made on B")
    before = snapshot(on_b, did)
    assert len(before["blobs"]) == 3

    migrate(b, a, mailbox, did, existing=True)
    on_a = check_moved(b, a, did, before, plc_url)
    assert on_a.app.bsky.actor.get_preferences().preferences == preferences


@pytest_twisted.ensureDeferred
async def test_an_account_moves_between_two_leafpds_and_back(tmp_path):
    inbox = Inbox().start()
    mail = ("--smtp-url", f"smtp://127.0.0.1:{inbox.port}", "--email-from", "pds@example.com")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ServerProcess(tmp_path / "a" / "data", *mail)
    await a.start()
    plc_url = f"http://127.0.0.1:{a.plc_port}"
    b = ServerProcess(tmp_path / "b" / "data", *mail, "--plc-url", plc_url)
    try:
        await b.start()
        await threads.deferToThread(
            lambda: there_and_back(leafpds(a), leafpds(b), Mailbox(inbox), plc_url)
        )
    finally:
        for server in (a, b):
            if server.process is not None:
                server.kill()
        inbox.stop()


REFPDS = Path(__file__).resolve().parents[2] / "shared" / "refpds"


def start_official_pds(plc_url: str, smtp_port: int) -> str:
    """The official PDS (../shared/refpds) on loopback, on leafpds's PLC directory; its URL."""
    port = free_port()
    environ = {
        **os.environ,
        "PDS_PORT": str(port),
        "PLC_PORT": str(free_port()),
        "EXTERNAL_PLC_URL": plc_url,
        "PDS_SERVICE_DID": f"did:web:localhost%3A{port}",
        "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
        "EMAIL_FROM": "official@example.com",
        # It keeps preferences only with an AppView configured; they never reach it
        # (the PDS answers them itself), so nothing needs to listen there.
        "APPVIEW_URL": "http://127.0.0.1:9",
        "APPVIEW_DID": "did:web:appview.invalid",
    }
    # One instance at a time: its run folder is shared.
    subprocess.run(["bash", str(REFPDS / "stop.sh")], capture_output=True)
    started = subprocess.run(
        ["bash", str(REFPDS / "start.sh")], env=environ, capture_output=True, text=True, timeout=900
    )
    assert started.returncode == 0, started.stderr[-3000:]
    urls = dict(line.split("=", 1) for line in started.stdout.splitlines() if line.startswith("PDS_"))
    return urls.get("PDS_PUBLIC_URL") or urls["PDS_URL"]


def out_to_the_official_pds_and_back(ours: PDS, official: PDS, mailbox: Mailbox, plc_url: str) -> None:
    signup = ours.client.com.atproto.server.create_account({"handle": HANDLE, "email": EMAIL, "password": PASSWORD})
    did = signup.did
    alice = ours.sign_in()
    populate(alice, did)
    before = snapshot(alice, did)

    preferences = alice.app.bsky.actor.get_preferences().preferences
    migrate(ours, official, mailbox, did, existing=False)
    there = check_moved(ours, official, did, before, plc_url)
    assert there.app.bsky.actor.get_preferences().preferences == preferences

    there.send_image("made on the official PDS", image=png(4), image_alt="made there")
    before = snapshot(there, did)
    migrate(official, ours, mailbox, did, existing=True)
    back = check_moved(official, ours, did, before, plc_url)
    assert back.app.bsky.actor.get_preferences().preferences == preferences


# The first run installs the official PDS (npm, one native module compiled).
@pytest.mark.timeout(900)
@pytest_twisted.ensureDeferred
async def test_an_account_moves_to_the_official_pds_and_back(tmp_path):
    inbox = Inbox().start()
    (tmp_path / "ours").mkdir()
    ours = ServerProcess(
        tmp_path / "ours" / "data", "--smtp-url", f"smtp://127.0.0.1:{inbox.port}", "--email-from", "pds@example.com"
    )
    await ours.start()
    plc_url = f"http://127.0.0.1:{ours.plc_port}"
    try:
        official_url = await threads.deferToThread(start_official_pds, plc_url, inbox.port)
        await threads.deferToThread(
            lambda: out_to_the_official_pds_and_back(leafpds(ours), PDS(official_url), Mailbox(inbox), plc_url)
        )
    finally:
        subprocess.run(["bash", str(REFPDS / "stop.sh")], capture_output=True)
        ours.kill()
        inbox.stop()
