"""
A real leafpds for end-to-end tests: the production service, on an
ephemeral loopback port, with its own data folder, driven over HTTP by treq.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor

from leafpds.config import Settings, resolve
from leafpds.service import LeafPDSService, open_app


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    given = {
        "listen": "tcp:0:interface=127.0.0.1",
        "plc-listen": "tcp:0:interface=127.0.0.1",
        "data-dir": str(data_dir),
        # One test process hosts many servers, and starts browsers and server
        # processes of its own, which would all inherit a pinned CPU.  The
        # pairing itself is tested on a real twistd process (test_affinity).
        "no-cpu-pairing": True,
    }
    given.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return Settings.from_options(resolve(given, {}))


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
    def __init__(self, service: LeafPDSService) -> None:
        self.service = service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port.getHost().port}"

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
