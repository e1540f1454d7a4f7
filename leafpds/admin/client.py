"""
What ``leafpds-admin`` asks a running server: its admin API over HTTP
(Basic ``admin``), with treq, one call at a time.
"""

import base64
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

import treq

from leafpds.timestamps import now_iso


class AdminError(Exception):
    """The server (or a relay) refused, or could not be reached (the message says which)."""


class AdminClient:
    def __init__(self, url: str, password: str, reactor: Any, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.reactor = reactor
        self.timeout = timeout
        credentials = base64.b64encode(f"admin:{password}".encode()).decode("ascii")
        self._auth = {"Authorization": f"Basic {credentials}"}

    def __repr__(self) -> str:
        return f"<AdminClient {self.url}>"  # never the password

    async def call(self, nsid: str, body: Any = None, params: dict[str, Any] | None = None,
                   admin: bool = True) -> Any:
        """A query (``body`` None) or procedure; its JSON answer, or :class:`AdminError`."""
        headers = dict(self._auth) if admin else {}
        url = f"{self.url}/xrpc/{nsid}"
        try:
            if body is None:
                d = treq.get(url, params=params, headers=headers, reactor=self.reactor)
            else:
                headers["Content-Type"] = "application/json"
                d = treq.post(url, json.dumps(body).encode(), headers=headers, reactor=self.reactor)
            d.addTimeout(self.timeout, self.reactor)
            response = await d
            content = await response.content()
        except Exception as e:
            raise AdminError(f"cannot reach {self.url}: {type(e).__name__}: {e}") from None
        try:
            answer = json.loads(content) if content else {}
        except ValueError:
            answer = {}
        if response.code != 200:
            error = answer.get("error", "Error") if isinstance(answer, dict) else "Error"
            message = answer.get("message", "") if isinstance(answer, dict) else ""
            raise AdminError(f"{nsid}: {response.code} {error}: {message}".rstrip(": "))
        return answer

    # The commands.

    async def list_accounts(self) -> list[dict[str, Any]]:
        # listRepos is public: a wrong password must not pass for "no accounts".
        await self.call("com.atproto.admin.getInviteCodes", params={"limit": "1"})
        dids, cursor = [], None
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = await self.call("com.atproto.sync.listRepos", params=params, admin=False)
            dids += [repo["did"] for repo in page["repos"]]
            cursor = page.get("cursor")
            if not cursor or not page["repos"]:
                break
        accounts = []
        for start in range(0, len(dids), 100):
            chunk = dids[start:start + 100]
            found = await self.call("com.atproto.admin.getAccountInfos", params={"dids": chunk})
            accounts += found["infos"]
        return accounts

    async def create_account(self, email: str, handle: str) -> dict[str, Any]:
        """An account with a fresh password (and an invite code of its own when the server wants one)."""
        code = (await self.call("com.atproto.server.createInviteCode", {"useCount": 1}))["code"]
        password = _password()
        made = await self.call("com.atproto.server.createAccount", {
            "email": email, "handle": handle, "password": password, "inviteCode": code}, admin=False)
        return {"did": made["did"], "handle": made["handle"], "password": password}

    async def delete_account(self, did: str) -> None:
        await self.call("com.atproto.admin.deleteAccount", {"did": did})

    async def takedown(self, did: str, applied: bool) -> dict[str, Any]:
        takedown: dict[str, Any] = {"applied": applied}
        if applied:
            takedown["ref"] = f"leafpds-admin {now_iso()}"
        return await self.call("com.atproto.admin.updateSubjectStatus", {
            "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": did}, "takedown": takedown})

    async def reset_password(self, did: str) -> str:
        password = _password()
        await self.call("com.atproto.admin.updateAccountPassword", {"did": did, "password": password})
        return password

    async def create_invite_code(self, uses: int) -> str:
        return (await self.call("com.atproto.server.createInviteCode", {"useCount": uses}))["code"]

    async def request_crawl(self, relay: str, hostname: str | None) -> str:
        """Ask ``relay`` to crawl this server (named by ``hostname``, else the URL's host)."""
        hostname = hostname or urlsplit(self.url).hostname or ""
        relay_client = AdminClient(relay, "", self.reactor, self.timeout)
        await relay_client.call("com.atproto.sync.requestCrawl", {"hostname": hostname}, admin=False)
        return hostname


def _password() -> str:
    """Like an app password: four groups of four, easy to read out."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))
