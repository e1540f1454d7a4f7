"""
Reading what a client sent (leafpds.web.incoming): sound values come
through as text, malformed ones raise the XRPC error of their kind, and
nothing else is ever raised.
"""

import re
from pathlib import Path

import pytest
from twisted.web.http import Request
from twisted.web.test.requesthelper import DummyChannel

from leafpds.errors import InvalidRequest, InvalidToken, XRPCError
from leafpds.web import incoming


def _request(headers: list[tuple[bytes, bytes]] = (), path: bytes = b"/", args: dict | None = None) -> Request:
    request = Request(DummyChannel())
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    request.parseCookies()
    request.path = path
    request.args = args or {}
    return request


def test_sound_values_come_through_as_text():
    request = _request([
        (b"Content-Type", b"text/plain; name=caf\xc3\xa9"),  # UTF-8 beyond ASCII is fine here
        (b"Accept-Language", b"en,\tfr"),
        (b"Authorization", b"Bearer abc.def-_~+/="),
        (b"Upgrade", b"h2c"),
        (b"Upgrade", b"websocket"),  # the last value counts, as with getHeader
    ])
    assert incoming.header(request, "content-type") == "text/plain; name=café"
    assert incoming.header(request, "accept-language") == "en,\tfr"
    assert incoming.header(request, "authorization") == "Bearer abc.def-_~+/="
    assert incoming.header(request, "upgrade") == "websocket"
    assert incoming.header(request, "dpop") is None


@pytest.mark.parametrize("value", [b"caf\xe9", b"\xed\xa0\x80", b"a\x01b", b"a\x7fb", b"a\x00b"])
def test_a_malformed_header_is_an_invalid_request(value):
    with pytest.raises(InvalidRequest, match="Invalid content-type header"):
        incoming.header(_request([(b"content-type", value)]), "content-type")


@pytest.mark.parametrize("value", [b"Bearer caf\xe9", b"Bearer caf\xc3\xa9", b"Bearer a\x01", b"\xff"])
def test_a_credential_that_is_not_printable_ascii_is_a_malformed_token(value):
    with pytest.raises(InvalidToken, match="Malformed authorization header") as raised:
        incoming.header(_request([(b"authorization", value)]), "authorization")
    assert raised.value.status == 400  # as the reference answers a token it cannot parse
    with pytest.raises(XRPCError) as raised:
        incoming.header(_request([(b"dpop", value)]), "dpop")
    assert (raised.value.status, raised.value.name) == (401, "invalid_dpop_proof")


def test_cookies_that_are_not_printable_ascii_count_as_none():
    request = _request([(b"cookie", b"good=abc.DEF_-; latin=caf\xe9; control=a\x01")])
    assert incoming.cookie(request, b"good") == "abc.DEF_-"
    assert incoming.cookie(request, b"latin") is None
    assert incoming.cookie(request, b"control") is None
    assert incoming.cookie(request, b"absent") is None


def test_query_parameters_must_be_utf8():
    request = _request(args={b"q": [b"caf\xc3\xa9", b"x"], b"n": [b"1"]})
    assert incoming.query_args(request) == {"q": ["café", "x"], "n": ["1"]}
    assert incoming.query_arg(request, "q") == "café"
    assert incoming.query_arg(request, "absent") == ""
    for args in [{b"q": [b"caf\xe9"]}, {b"\xff": [b"1"]}]:
        with pytest.raises(InvalidRequest, match="Query parameters must be UTF-8"):
            incoming.query_args(_request(args=args))


def test_the_path_and_host_must_be_utf8():
    incoming.check_url(_request([(b"host", b"pds.example")], path=b"/xrpc/caf%C3%A9"))
    incoming.check_url(_request(path=b"/"))  # no Host at all (HTTP/1.0)
    for path in [b"/xrpc/caf%E9", b"/caf\xe9", b"/%ff/x"]:
        with pytest.raises(InvalidRequest, match="The path must be UTF-8"):
            incoming.check_url(_request([(b"host", b"pds.example")], path=path))
    with pytest.raises(InvalidRequest, match="Invalid host header"):
        incoming.check_url(_request([(b"host", b"caf\xe9")]))


def test_nothing_else_reads_what_a_client_sent():
    """Headers, cookies and the query are read through incoming only (Twisted's own readers decode or raise)."""
    package = Path(__file__).resolve().parents[1] / "leafpds"
    readers = re.compile(r"\.getHeader\(|\.getCookie\(|\.getAllHeaders\(|\brequest\.args[.\[]|\.getUser\(|\.getPassword\(")
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name != "incoming.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if readers.search(line) and not line.lstrip().startswith("#")
    ]
    assert found == []
