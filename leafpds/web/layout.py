"""
What leafpds's own HTML pages share: the page frame, answers (page,
redirect, JSON) with the headers every page carries, and reading forms.

The pages are server-rendered and work without JavaScript; a page may add
one small inline script, allowed by a per-answer CSP nonce.
"""

import html
import json
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from leafpds.errors import XRPCError
from leafpds.web import incoming

log = Logger()

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"

escape = html.escape

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
main{max-width:36rem;margin:2rem auto;padding:1.5rem;background:#fff;border:1px solid #d0d7de;border-radius:8px}
h1{font-size:1.5rem;margin-top:0}h2{font-size:1.1rem;margin-top:1.5rem}
label{display:block;margin:.75rem 0 .25rem;font-weight:600}
input[type=text],input[type=password],input:not([type]){width:100%;box-sizing:border-box;padding:.5rem;font:inherit}
button,.button{display:inline-block;margin:.5rem .5rem .5rem 0;padding:.5rem 1rem;font:inherit;border:1px solid #1f6feb;
border-radius:6px;background:#1f6feb;color:#fff;text-decoration:none;cursor:pointer}
button.quiet{background:#fff;color:#1f6feb}
[role=alert]{color:#a40e26;font-weight:600}[role=status]{color:#1a7f37}
code,.secret{font-family:ui-monospace,monospace;background:#eff1f3;padding:.1rem .3rem;border-radius:4px}
.secret{font-size:1.25rem}
img.logo{vertical-align:middle;border-radius:8px;margin-right:.25rem}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .5rem .25rem 0;vertical-align:middle}
"""


def page(title: str, content: str, script: str = "", nonce: str = "") -> bytes:
    """A whole page; ``script`` runs under ``nonce`` (which the CSP header must name)."""
    scripted = f'<script nonce="{nonce}">{script}</script>' if script else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · leafpds</title><style>{_STYLE}</style></head>\n"
        f"<body><main><h1>{escape(title)}</h1>\n{content}\n</main>{scripted}</body></html>\n"
    ).encode("utf-8")


def _no_store(request: IRequest) -> None:
    request.setHeader("cache-control", "no-store")
    # Sign-in URLs carry codes and states: never pass them on as a referrer.
    request.setHeader("referrer-policy", "no-referrer")


def send_page(
    request: IRequest, title: str, content: str, code: int = 200, script: str = "", images: str = ""
) -> bytes:
    """A page; ``images`` is the CSP source its images may come from (none unless given)."""
    nonce = secrets.token_urlsafe(16)
    img_src = f"img-src {images}; " if images else ""
    data = page(title, content, script, nonce)
    request.setResponseCode(code)
    request.setHeader("content-type", HTML)
    request.setHeader("content-length", str(len(data)))
    request.setHeader(
        "content-security-policy",
        f"default-src 'none'; style-src 'unsafe-inline'; connect-src 'self'; {img_src}"
        f"script-src 'nonce-{nonce}'; base-uri 'none'; frame-ancestors 'none'",
    )
    request.setHeader("x-frame-options", "DENY")
    request.setHeader("x-content-type-options", "nosniff")
    _no_store(request)
    return data


def send_redirect(request: IRequest, url: str) -> bytes:
    """A 303 See Other: after a form, the browser follows with a GET."""
    request.setResponseCode(303 if request.method == b"POST" else 302)
    request.setHeader("location", url.encode("utf-8"))
    request.setHeader("content-length", "0")
    _no_store(request)
    return b""


def send_json(request: IRequest, code: int, value: Any) -> bytes:
    data = json.dumps(value, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(code)
    request.setHeader("content-type", JSON)
    request.setHeader("content-length", str(len(data)))
    _no_store(request)
    return data


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def form_fields(request: IRequest) -> dict[str, str]:
    """
    The fields of a urlencoded form body.  Read here because the site never
    merges bodies into ``request.args`` (XRPC parameters are query-only).
    """
    content_type = (incoming.header(request, "content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    request.content.seek(0)
    pairs = parse_qsl(request.content.read().decode("utf-8", "replace"), keep_blank_values=True)
    return {name: value for name, value in reversed(pairs)}  # the first of repeated fields


def same_secret(a: str, b: str) -> bool:
    """Constant-time equality of two non-empty secrets."""
    return bool(a) and secrets.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def failure_page(request: IRequest, failure: Failure) -> bytes:
    """
    The page for what a page's handler could not do: a routing error, a
    request it refused (an XRPCError, e.g. from :mod:`leafpds.web.incoming`),
    or a bug (logged).
    """
    if failure.check(HTTPException):
        error = failure.value
        return send_page(request, error.name, f"<p role=alert>{escape(error.description or '')}</p>", error.code)
    if failure.check(XRPCError):
        error = failure.value
        return send_page(request, "Bad request", f"<p role=alert>{escape(error.message)}</p>", error.status)
    log.failure("A page failed", failure)
    return send_page(request, "Something went wrong", "<p role=alert>Please try again later.</p>", 500)
