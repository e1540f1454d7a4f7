"""
Driving sign-in end to end: a running leafpds pointed at local stand-ins for
GitHub and Google, and a :class:`Browser` that follows leafpds's redirects by
hand and keeps its cookies as a browser would.
"""

import gc
import html
import re
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest_twisted
import treq

from leafpds.web.auth import AuthPages
from tests.harness import make_settings, start_pds
from tests.oauth_standins import CLIENT_ID, CLIENT_SECRET, GitHubStandIn, GoogleStandIn

APP = "http://127.0.0.1:1/app/done?from=leafpds"
OTHER_APP = "http://127.0.0.1:1/other"


async def start_world(data_dir, **overrides):
    """A leafpds offering both providers, each a local stand-in: (pds, github, google)."""
    github = GitHubStandIn().listen()
    google = GoogleStandIn().listen()
    pds = await start_pds(make_settings(
        data_dir,
        github_client_id=CLIENT_ID,
        github_client_secret=CLIENT_SECRET,
        github_url=github.url,
        github_api_url=github.api_url,
        google_client_id=CLIENT_ID,
        google_client_secret=CLIENT_SECRET,
        google_issuer=google.url,
        app_redirect_uri=f"{APP},{OTHER_APP}",
        **overrides,
    ))
    return pds, github, google


async def stop_world(world) -> None:
    pds, github, google = world
    await pds.service.stopService()
    await github.stop()
    await google.stop()


@pytest_twisted.async_yield_fixture
async def world(tmp_path):
    started = await start_world(tmp_path / "data")
    yield started
    await stop_world(started)


def auth_pages(pds) -> AuthPages:
    """The running server's sign-in state (to move its clock in tests)."""
    # Found by identity rather than through the resource tree, whose layers change.
    return next(
        o for o in gc.get_objects() if isinstance(o, AuthPages) and o.ctx is pds.service.app
    )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def local(url: str) -> str:
    """The path and query of a URL on the PDS (whose public URL says localhost)."""
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


class Browser:
    """Follows leafpds's redirects by hand, keeping its cookies."""

    def __init__(self, pds) -> None:
        self.pds = pds
        self.cookies: dict[str, str] = {}

    def _headers(self) -> dict[str, str]:
        jar = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return {"Cookie": jar} if jar else {}

    def _keep(self, answer):
        for set_cookie in answer.headers.getRawHeaders("set-cookie") or []:
            name, _, value = set_cookie.split(";")[0].partition("=")
            if not value or "max-age=0" in set_cookie.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return answer

    async def get(self, path: str):
        return self._keep(
            await self.pds.request("GET", path, headers=self._headers(), allow_redirects=False)
        )

    async def post_form(self, path: str, fields: dict[str, str]):
        return self._keep(await self.pds.request(
            "POST", path, data=fields, headers=self._headers(), allow_redirects=False
        ))

    async def to_provider(self, provider: str, redirect_uri: str | None = APP, state: str = "app-state") -> str:
        """Start a sign-in (with no redirect_uri: for the account page); the provider's authorize URL."""
        params = {"redirect_uri": redirect_uri, "state": state} if redirect_uri else {}
        answer = await self.get(f"/auth/{provider}/login?" + treq_query(params))
        assert answer.code == 302, answer.body
        return answer.header("location")

    async def approve(self, authorize_url: str, decision: str = "approve") -> str:
        """Approve on the stand-in's authorize page; the callback URL it sends back to."""
        page = await treq.get(authorize_url)
        assert page.code == 200 and b"Authorize" in await page.content()
        fields = query(authorize_url)
        fields["decision"] = decision
        answer = await treq.post(authorize_url.split("?")[0], data=fields, allow_redirects=False)
        assert answer.code == 302
        await answer.content()
        return answer.headers.getRawHeaders("location")[0]

    async def sign_in(self, provider: str, redirect_uri: str | None = APP):
        """Up to the callback's answer (chooser page or redirect to the app)."""
        callback = await self.approve(await self.to_provider(provider, redirect_uri))
        return await self.get(local(callback))

    async def choose_handle(self, chooser, handle: str | None = None):
        text = chooser.body.decode()
        ticket = html.unescape(re.search(r'name="ticket" value="([^"]+)"', text).group(1))
        prefilled = html.unescape(re.search(r'id="handle" name="handle" value="([^"]+)"', text).group(1))
        return await self.post_form("/auth/signup", {"ticket": ticket, "handle": handle or prefilled})


def treq_query(params: dict[str, str]) -> str:
    return urlencode(params)


async def exchange(pds, code: str, redirect_uri: str = APP):
    return await pds.request(
        "POST", "/auth/exchange", json={"code": code, "redirect_uri": redirect_uri}
    )


def back_at_app(answer, redirect_uri: str = APP) -> dict[str, str]:
    assert answer.code in (302, 303), answer.body
    location = answer.header("location")
    assert location.startswith(redirect_uri.split("?")[0] + "?")
    return query(location)


async def first_sign_in(pds, provider: str, expected_handle: str):
    browser = Browser(pds)
    chooser = await browser.sign_in(provider)
    assert chooser.code == 200, chooser.body
    assert f'value="{expected_handle}"'.encode() in chooser.body
    params = back_at_app(await browser.choose_handle(chooser))
    assert params["state"] == "app-state" and params["from"] == "leafpds"
    assert "accessJwt" not in str(params)
    answer = await exchange(pds, params["code"])
    assert answer.code == 200, answer.body
    return answer.json(), params["code"]


