"""
A real leafpds for end-to-end tests: the production service, on an
ephemeral loopback port, with its own data folder, driven over HTTP by treq;
in this process (``start_pds``) or as ``twistd leafpds`` of its own
(``ServerProcess``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor, task

from leafpds.config import Settings
from leafpds.service import LeafPDSService, PDSService, open_app


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    defaults = {
        "listen": "tcp:0:interface=127.0.0.1",
        "plc_listen": "tcp:0:interface=127.0.0.1",
        "data_dir": str(data_dir),
        # One test process hosts many servers, and starts browsers and server
        # processes of its own, which would all inherit a pinned CPU.  The
        # pairing itself is tested on a real twistd process (test_affinity).
        "no_cpu_pairing": True,
    }
    return Settings.from_keywords({}, **{**defaults, **overrides})


@dataclass
class Answer:
    code: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class RunningPDS:
    """A started service, at ``url`` (by default its own port's)."""

    def __init__(self, service: PDSService, url: str | None = None) -> None:
        self.service = service
        self._url = url

    @property
    def url(self) -> str:
        return self._url or f"http://127.0.0.1:{self.service.port.getHost().port}"

    async def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        response = await treq.request(method, self.url + path, **kwargs)
        body = await response.content()
        return Answer(response.code, response.headers, body)

    async def get(self, nsid: str, params: Any = None, **kwargs: Any) -> Answer:
        return await self.request("GET", "/xrpc/" + nsid, params=params, **kwargs)

    async def post(self, nsid: str, body: Any = None, **kwargs: Any) -> Answer:
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
        return await self.request("POST", "/xrpc/" + nsid, **kwargs)


async def start_pds(settings: Settings, environ: dict[str, str] | None = None) -> RunningPDS:
    service = LeafPDSService(open_app(settings, environ or {}, reactor))
    service.startService()
    await service.listening
    return RunningPDS(service)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """
    ``twistd leafpds`` as its own process (with ``options`` added), started
    with its soft limit on open files lowered to ``soft_open_files`` if given.
    ``runner``: ``twist`` (``python -m twisted``) or ``twistd`` (``-n``);
    either writes its log to ``server.log`` beside the data folder.
    """

    RUNNERS = {
        "twist": ["-m", "twisted"],
        # In the foreground, without a pid file in the working directory.
        "twistd": ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile", ""],
    }

    def __init__(
        self, data_dir: Path, *options: str, soft_open_files: int | None = None, runner: str = "twist"
    ) -> None:
        self.data_dir = data_dir
        self.options = options
        self.soft_open_files = soft_open_files
        self.runner = self.RUNNERS[runner]
        self.port = free_port()
        self.plc_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._log = open(self.data_dir.parent / "server.log", "ab")
        # A shell sets the limit, then becomes twistd (the same pid).
        limited = ["/bin/sh", "-c", f'ulimit -S -n {self.soft_open_files} && exec "$@"', "sh"]
        self.process = subprocess.Popen(
            [
                *(limited if self.soft_open_files else []),
                sys.executable, *self.runner, "leafpds",
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--plc-listen", f"tcp:{self.plc_port}:interface=127.0.0.1",
                "--data-dir", str(self.data_dir),
                "--no-rate-limits",
                *self.options,
            ],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        for _ in range(300):
            try:
                response = await treq.get(self.url + "/xrpc/_health")
                await response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            await task.deferLater(reactor, 0.05, lambda: None)
        raise RuntimeError("leafpds did not start; see server.log")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    async def call(self, nsid: str, body: dict | None = None, token: str | None = None, params=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is None:
            response = await treq.get(f"{self.url}/xrpc/{nsid}", params=params, headers=headers)
        else:
            headers["Content-Type"] = "application/json"
            response = await treq.post(f"{self.url}/xrpc/{nsid}", json.dumps(body).encode(), headers=headers)
        content = await response.content()
        return response.code, json.loads(content) if content else {}
