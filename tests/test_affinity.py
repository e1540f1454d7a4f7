"""
The reactor and the database writer share one CPU; every other thread keeps
every CPU the process may use (leafpds.db.affinity).  Checked on a real
``twistd leafpds`` process through /proc, and on the function itself in a
thread of this process (never its main thread, which hosts other tests).
"""

import os
import threading

import pytest_twisted
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool

from leafpds.db import affinity
from tests.test_accounts import PASSWORD
from tests.harness import ServerProcess

ALLOWED = set(affinity.PROCESS_CPUS)


def cpus_of_threads(pid: int) -> dict[int, set[int]]:
    """Each thread of the process -> the CPUs it may run on."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = os.sched_getaffinity(int(tid))
        except ProcessLookupError:
            pass  # a thread that has just ended
    return out


async def busy_server(server: ServerProcess) -> None:
    """Make the server start the threads it starts on demand."""
    # Hashing passwords runs in the reactor's thread pool: four at once need
    # new pool threads, whatever start-up already ran there (the spool sweep).
    made = await defer.gatherResults([
        defer.Deferred.fromCoroutine(server.call(
            "com.atproto.server.createAccount",
            {"handle": f"pinned{i}.test", "email": f"pinned{i}@example.com", "password": PASSWORD},
        ))
        for i in range(4)
    ])
    assert all(code == 200 for code, _ in made), made
    did, token = made[0][1]["did"], made[0][1]["accessJwt"]
    for n in range(5):
        code, _ = await server.call(
            "com.atproto.repo.createRecord",
            {"repo": did, "collection": "com.example.pin", "record": {"n": n}},
            token,
        )
        assert code == 200
    # Concurrent reads grow the reader pool past its first thread.
    answers = await defer.gatherResults([
        defer.Deferred.fromCoroutine(server.call(
            "com.atproto.repo.listRecords", params={"repo": did, "collection": "com.example.pin"}
        ))
        for _ in range(30)
    ])
    assert all(code == 200 and len(body["records"]) == 5 for code, body in answers)


def server_log(server: ServerProcess) -> str:
    return (server.data_dir.parent / "server.log").read_text()


@pytest_twisted.ensureDeferred
async def test_the_reactor_and_the_writer_share_a_cpu_and_nothing_else_is_pinned(tmp_path):
    server = ServerProcess(tmp_path / "data")
    await server.start()
    try:
        at_start = set(cpus_of_threads(server.process.pid))
        await busy_server(server)
        threads = cpus_of_threads(server.process.pid)
    finally:
        server.kill()
    # Threads started on demand by the (pinned) reactor after start-up: at
    # least a pool thread that hashed a password.
    started_later = set(threads) - at_start
    assert len(started_later) >= 1
    assert all(threads[tid] == ALLOWED for tid in started_later)
    pinned = {tid: cpus for tid, cpus in threads.items() if cpus != ALLOWED}
    if len(ALLOWED) < 2:
        assert pinned == {}  # one CPU: nothing to pair
        assert "share CPU" not in server_log(server)
        return
    # The main thread runs the reactor; the one other pinned thread is the writer.
    assert set(pinned) == {server.process.pid, next(t for t in pinned if t != server.process.pid)}
    assert len(pinned) == 2
    (cpu,) = pinned[server.process.pid]
    assert list(pinned.values()) == [{cpu}, {cpu}]
    # The log is JSON: the message's format and its field.
    assert "The reactor and the database writer share CPU {cpu}" in server_log(server)
    assert f'"cpu": {cpu}' in server_log(server)
    # Among the free: the checkpointers and readers of both databases (the
    # PDS's and the embedded PLC directory's), the other writer, the pool's.
    assert len(threads) - len(pinned) >= 6


@pytest_twisted.ensureDeferred
async def test_no_cpu_pairing_pins_nothing(tmp_path):
    server = ServerProcess(tmp_path / "data", "--no-cpu-pairing")
    await server.start()
    try:
        await busy_server(server)
        threads = cpus_of_threads(server.process.pid)
    finally:
        server.kill()
    assert all(cpus == ALLOWED for cpus in threads.values())
    assert len(threads) >= 5
    assert "share CPU" not in server_log(server)


def test_pair_with_caller_pins_the_pair_and_lets_new_pool_threads_go():
    """In a thread standing in for the reactor, so this process's main thread stays free."""
    found: dict[str, object] = {}
    stop = threading.Event()
    writer = threading.Thread(target=stop.wait)
    writer.start()
    pool = ThreadPool(0, 2)
    free: threading.Thread | None = None

    def reactor_thread() -> None:
        nonlocal free
        found["cpu"] = affinity.pair_with_caller(writer, [pool])
        found["caller"] = os.sched_getaffinity(0)
        # A thread this (pinned) thread starts inherits its one CPU...
        plain = threading.Thread(target=lambda: found.setdefault("plain", os.sched_getaffinity(0)))
        plain.start()
        plain.join()
        # ...but not a FreeThread, nor one of the pool's.
        free = affinity.FreeThread(target=stop.wait)
        free.start()
        found["free"] = os.sched_getaffinity(free.native_id)
        pool.start()
        done = threading.Event()
        pool.callInThread(lambda: (found.setdefault("pool", os.sched_getaffinity(0)), done.set()))
        done.wait(10)
        pool.stop()

    caller = threading.Thread(target=reactor_thread)
    caller.start()
    caller.join()
    found["writer"] = os.sched_getaffinity(writer.native_id)
    stop.set()
    writer.join()
    free.join()
    assert os.sched_getaffinity(0) == ALLOWED  # this thread untouched
    if len(ALLOWED) < 2:
        assert found["cpu"] is None
        return
    cpu = found["cpu"]
    assert cpu in ALLOWED
    assert found["caller"] == found["writer"] == found["plain"] == {cpu}
    assert found["pool"] == found["free"] == ALLOWED


def test_current_cpu_is_one_this_thread_may_run_on():
    assert affinity.current_cpu() in ALLOWED
