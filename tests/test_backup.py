"""
Backups that restore: `leafpds-admin backup` beside a real `twistd leafpds`
under write load, `leafpds-admin restore` into a new data folder, and a
second server on it that serves every repo (verified), every write
acknowledged before the backup began, and the same blobs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import defer, reactor, task, threads

from leafpds.repo.archive import verify_repo_car
from tests.harness import ServerProcess
from tests.test_accounts import PASSWORD

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "com.example.backup"


def admin(*args: str) -> subprocess.CompletedProcess:
    """`leafpds-admin` as a process of its own, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "leafpds.admin.cli", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )


async def make_account(server, name):
    code, made = await server.call(
        "com.atproto.server.createAccount",
        {"handle": f"{name}.test", "email": f"{name}@example.com", "password": PASSWORD},
    )
    assert code == 200, made
    return made["did"], made["accessJwt"]


async def upload(server, token, data):
    response = await treq.post(
        f"{server.url}/xrpc/com.atproto.repo.uploadBlob", data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    )
    body = json.loads(await response.content())
    assert response.code == 200, body
    return body["blob"]


async def write_until(server, did, token, stop, acked):
    n = 0
    while not stop:
        n += 1
        code, answer = await server.call(
            "com.atproto.repo.createRecord",
            {"repo": did, "collection": COLLECTION, "rkey": f"w{n:05d}", "record": {"n": n}}, token,
        )
        assert code == 200, answer
        acked.append(f"w{n:05d}")


async def record_keys(server, did):
    keys, cursor = set(), None
    while True:
        params = {"repo": did, "collection": COLLECTION, "limit": "100"}
        if cursor:
            params["cursor"] = cursor
        code, page = await server.call("com.atproto.repo.listRecords", params=params)
        assert code == 200, page
        keys |= {r["uri"].rsplit("/", 1)[1] for r in page["records"]}
        cursor = page.get("cursor")
        if not cursor:
            return keys


async def verified_repo(server, did):
    response = await treq.get(f"{server.url}/xrpc/com.atproto.sync.getRepo", params={"did": did})
    car = await response.content()
    assert response.code == 200
    plc = await treq.get(f"http://127.0.0.1:{server.plc_port}/{did}")
    document = json.loads(await plc.content())
    key = "did:key:" + document["verificationMethod"][0]["publicKeyMultibase"]
    return await threads.deferToThread(verify_repo_car, car, did, key)


@pytest_twisted.ensureDeferred
async def test_a_backup_under_load_restores_into_a_server_that_serves_it_all(tmp_path):
    data, dest, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    server = ServerProcess(data)
    await server.start()
    try:
        accounts = [await make_account(server, name) for name in ("ann", "ben")]
        blobs = {}
        for i, (did, token) in enumerate(accounts):
            payload = os.urandom(20_000 + i)
            blob = await upload(server, token, payload)
            blobs[did] = (blob["ref"]["$link"], payload)
            # A record that uses it keeps it (unreferenced uploads are temporary).
            code, _ = await server.call("com.atproto.repo.createRecord", {
                "repo": did, "collection": COLLECTION, "rkey": "withblob", "record": {"file": blob}}, token)
            assert code == 200

        # Writes go on while the backup runs.
        stop, acked = [], [[] for _ in accounts]
        writers = [defer.Deferred.fromCoroutine(write_until(server, did, token, stop, acked[i]))
                   for i, (did, token) in enumerate(accounts)]
        await task.deferLater(reactor, 0.5, lambda: None)
        before = [list(keys) for keys in acked]
        assert all(before), "the writers were writing"
        taken = await threads.deferToThread(
            admin, "--json", "backup", "--data-dir", str(data), str(dest), "--include-master-secret")
        await task.deferLater(reactor, 0.3, lambda: None)
        stop.append(True)
        await defer.gatherResults(writers)
        assert taken.returncode == 0, taken.stderr
        manifest = json.loads(taken.stdout)
        assert manifest["blobs"]["count"] == 2 and manifest["blobs"]["copied"] == 2
        assert manifest["master_secret_included"] and manifest["database"]["schema_version"] >= 6
        assert (dest / "plc" / "plc.sqlite").is_file()
    finally:
        server.kill()

    # A second backup of the same folder copies nothing it already has.
    again = await threads.deferToThread(admin, "--json", "backup", "--data-dir", str(data), str(tmp_path / "backup2"))
    assert again.returncode == 0, again.stderr
    second = await threads.deferToThread(admin, "--json", "backup", "--data-dir", str(data), str(tmp_path / "backup2"))
    blob_report = json.loads(second.stdout)["blobs"]
    assert (blob_report["copied"], blob_report["kept"]) == (0, 2)
    assert not json.loads(second.stdout)["master_secret_included"]
    assert not (tmp_path / "backup2" / "master.key").exists()

    put = await threads.deferToThread(admin, "restore", str(dest), "--data-dir", str(restored))
    assert put.returncode == 0, put.stderr
    assert "twistd leafpds --data-dir" in put.stdout
    second_server = ServerProcess(restored)
    await second_server.start()
    try:
        for i, (did, _token) in enumerate(accounts):
            repo = await verified_repo(second_server, did)
            assert repo is not None
            keys = await record_keys(second_server, did)
            # Everything acknowledged before the backup began is there.
            assert set(before[i]) <= keys and "withblob" in keys
            cid, payload = blobs[did]
            response = await treq.get(f"{second_server.url}/xrpc/com.atproto.sync.getBlob",
                                      params={"did": did, "cid": cid})
            assert response.code == 200 and await response.content() == payload
        # Signing keys open with the restored master secret: the server writes.
        code, login = await second_server.call("com.atproto.server.createSession",
                                               {"identifier": "ann.test", "password": PASSWORD})
        assert code == 200
        code, _ = await second_server.call("com.atproto.repo.createRecord", {
            "repo": login["did"], "collection": COLLECTION, "record": {"after": "restore"}}, login["accessJwt"])
        assert code == 200
    finally:
        second_server.kill()


def test_refusals_change_nothing(tmp_path):
    missing = admin("backup", "--data-dir", str(tmp_path / "nowhere"), str(tmp_path / "dest"))
    assert missing.returncode == 1 and "no leafpds database" in missing.stderr
    assert not (tmp_path / "dest").exists()

    not_a_backup = admin("restore", str(tmp_path), "--data-dir", str(tmp_path / "new"))
    assert not_a_backup.returncode == 1 and "manifest" in not_a_backup.stderr
    assert not (tmp_path / "new").exists()

    usage = admin("restore", str(tmp_path))
    assert usage.returncode == 2


@pytest_twisted.ensureDeferred
async def test_a_restore_checks_the_backup_and_wants_an_empty_folder(tmp_path):
    data, dest = tmp_path / "data", tmp_path / "backup"
    server = ServerProcess(data)
    await server.start()
    try:
        did, token = await make_account(server, "cal")
        blob = await upload(server, token, b"blob bytes " * 100)
        await server.call("com.atproto.repo.createRecord", {
            "repo": did, "collection": COLLECTION, "record": {"file": blob}}, token)
    finally:
        server.kill()
    assert (await threads.deferToThread(admin, "backup", "--data-dir", str(data), str(dest))).returncode == 0

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("mine")
    refused = admin("restore", str(dest), "--data-dir", str(occupied))
    assert refused.returncode == 1 and "not empty" in refused.stderr
    assert [p.name for p in occupied.iterdir()] == ["something"]

    (next((dest / "blobs").glob("*/*"))).write_bytes(b"tampered")
    damaged = admin("restore", str(dest), "--data-dir", str(tmp_path / "new"))
    assert damaged.returncode == 1 and "damaged" in damaged.stderr
    assert not (tmp_path / "new").exists()

    with open(dest / "leafpds.sqlite", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xff")
    tampered = admin("restore", str(dest), "--data-dir", str(tmp_path / "new"))
    assert tampered.returncode == 1 and "does not match the manifest" in tampered.stderr
    assert not (tmp_path / "new").exists()


@pytest_twisted.ensureDeferred
async def test_with_blobs_in_a_bucket_the_backup_names_it_and_copies_none(tmp_path):
    data, dest = tmp_path / "data", tmp_path / "backup"
    server = ServerProcess(data)
    await server.start()
    try:
        did, token = await make_account(server, "dee")
        blob = await upload(server, token, b"x" * 5000)
        await server.call("com.atproto.repo.createRecord", {
            "repo": did, "collection": COLLECTION, "record": {"file": blob}}, token)
    finally:
        server.kill()
    taken = await threads.deferToThread(
        admin, "--json", "backup", "--data-dir", str(data), str(dest), "--blobstore", "s3://bucket/pds")
    assert taken.returncode == 0, taken.stderr
    manifest = json.loads(taken.stdout)
    assert manifest["blobstore"] == "s3://bucket/pds" and manifest["blobs"]["count"] == 1
    assert not (dest / "blobs").exists()
    put = await threads.deferToThread(admin, "restore", str(dest), "--data-dir", str(tmp_path / "new"))
    assert put.returncode == 0, put.stderr
    assert "s3://bucket/pds" in put.stdout and not (tmp_path / "new" / "blobs").exists()
