"""
Handles: the registration policy, and resolution against a real DNS server
and a real HTTP server, both on 127.0.0.1.
"""

import ipaddress

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.names import authority, dns, server
from twisted.web import resource, server as web_server

from leafpds.errors import XRPCError
from leafpds import outbound
from leafpds.identity.handles import (
    RESERVED_NAMES,
    HandleResolver,
    validate_new_handle,
)
from leafpds.outbound import is_public_address

DOMAINS = [".test"]
ALICE = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
BOB = "did:plc:z72i7hdynmk6r22z27h6tvur"


# validate_new_handle


def rejection(handle, domains=DOMAINS):
    with pytest.raises(XRPCError) as caught:
        validate_new_handle(handle, domains)
    return caught.value.status, caught.value.name, caught.value.message


@pytest.mark.parametrize(
    ("handle", "message"),
    [
        ("alice", "Handle domain needs at least two parts"),
        ("al ice.test", "Disallowed characters in handle"),
        ("alicé.test", "Disallowed characters in handle"),
        ("alice_1.test", "Disallowed characters in handle"),
        ("alice..test", "Handle parts can not be empty"),
        (".alice.test", "Handle parts can not be empty"),
        ("alice.test.", "Handle parts can not be empty"),
        ("-alice.test", "Handle parts can not start or end with hyphens"),
        ("alice-.test", "Handle parts can not start or end with hyphens"),
        ("a" * 64 + ".test", "Handle part too long (max 63 chars)"),
        (("a" * 60 + ".") * 5 + "test", "Handle is too long (253 chars max)"),
        ("alice.1test", "Handle final component (TLD) must start with ASCII letter"),
        ("127.0.0.1", "Handle final component (TLD) must start with ASCII letter"),
        ("", "Handle domain needs at least two parts"),
    ],
)
def test_bad_syntax_is_invalid_handle(handle, message):
    status, name, text = rejection(handle)
    assert (status, name) == (400, "InvalidHandle")
    assert text.startswith(message)


def test_kelvin_sign_is_not_lowered_into_ascii():
    # "\u212a".lower() == "k": lower-casing before validating would accept it.
    assert rejection("\u212aelvin.test")[1] == "InvalidHandle"


@pytest.mark.parametrize("handle", ["alice.com", "alice.bsky.social", "test.com"])
def test_domain_not_served_is_unsupported(handle):
    assert rejection(handle) == (400, "UnsupportedDomain", "Not a supported handle domain")


def test_domain_must_match_whole_labels():
    # "alicetest.com" ends with "test.com" but is not under it.
    assert rejection("alicetest.com", ["test.com"])[1] == "UnsupportedDomain"


def test_no_domains_serves_nothing():
    assert rejection("alice.test", [])[1] == "UnsupportedDomain"


@pytest.mark.parametrize(
    "handle", ["alice.local", "alice.onion", "x.in-addr.arpa", "alice.localhost", "handle.invalid"]
)
def test_reserved_tlds_are_invalid(handle):
    assert rejection(handle) == (400, "InvalidHandle", "Handle TLD is invalid or disallowed")


def test_reserved_tld_served_by_this_pds_is_allowed():
    assert validate_new_handle("alice.pds.local", [".pds.local"]) == "alice.pds.local"


@pytest.mark.parametrize(
    ("first", "message"), [("ab", "Handle too short"), ("a" * 19, "Handle too long")]
)
def test_first_label_length(first, message):
    assert rejection(first + ".test") == (400, "InvalidHandle", message)


@pytest.mark.parametrize("first", ["abc", "a" * 18, "a-1", "123"])
def test_first_label_length_bounds_are_accepted(first):
    assert validate_new_handle(first + ".test", DOMAINS) == first + ".test"


def test_nested_label_under_domain_is_invalid():
    assert rejection("alice.bob.test") == (400, "InvalidHandle", "Invalid characters in handle")


@pytest.mark.parametrize(
    "name", ["admin", "support", "www", "bsky", "atproto", "pds", "postmaster", "Google"]
)
def test_reserved_names_are_not_available(name):
    assert rejection(name + ".test") == (400, "HandleNotAvailable", "Reserved handle")


def test_reserved_names_are_lower_case():
    assert all(name == name.lower() for name in RESERVED_NAMES)


def test_normalizes_to_lower_case():
    assert validate_new_handle("Alice-1.TEST", DOMAINS) == "alice-1.test"


def test_domains_may_be_given_without_leading_dot_or_in_capitals():
    handle = validate_new_handle("alice.pds.example.com", ["PDS.Example.com"])
    assert handle == "alice.pds.example.com"


def test_any_of_several_domains():
    assert validate_new_handle("alice.two.test", [".one.test", ".two.test"]) == "alice.two.test"


def test_nested_domains_use_the_longest_match():
    assert validate_new_handle("alice.pds.test", [".test", ".pds.test"]) == "alice.pds.test"


# is_public_address


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "224.0.0.1", "224.0.1.1", "255.255.255.255",
        "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "64:ff9b::a00:1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    ],
)
def test_non_public_addresses(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses(address):
    assert is_public_address(ipaddress.ip_address(address))


# A real DNS server and a real HTTP server on loopback


class MemoryAuthority(authority.FileAuthority):
    """An authoritative zone ``test`` whose records tests edit in place."""

    def __init__(self):
        authority.FileAuthority.__init__(self, None)
        self.queries = []

    def loadFile(self, filename):
        soa = dns.Record_SOA(mname=b"ns.test", rname=b"root.test", expire=60, minimum=60)
        self.soa = (b"test", soa)
        self.records = {}

    def _lookup(self, name, cls, type, timeout=None):
        self.queries.append((name.decode(), dns.QUERY_TYPES.get(type, type)))
        return authority.FileAuthority._lookup(self, name, cls, type, timeout)

    def set(self, name, *records):
        self.records[name.encode()] = list(records)

    def txt_queries(self):
        return [name for name, kind in self.queries if kind == "TXT"]


class DNSServerFactory(server.DNSServerFactory):
    """Truncates answers over UDP at 512 bytes, as classic DNS servers do."""

    noisy = False

    def sendReply(self, protocol, message, address):
        if address is not None:
            message.maxSize = 512
        server.DNSServerFactory.sendReply(self, protocol, message, address)


class WellKnown(resource.Resource):
    """Answers ``/.well-known/atproto-did`` per Host with a configured behaviour."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.answers = {}
        self.requests = []

    def render_GET(self, request):
        host = request.getRequestHostname().decode()
        self.requests.append((host, request.path.decode()))
        return self.answers.get(host, not_found)(request)


def not_found(request):
    request.setResponseCode(404)
    return b"not here"


def body(data, code=200):
    def answer(request):
        request.setResponseCode(code)
        request.setHeader("Content-Type", "text/plain")
        return data

    return answer


def redirect(location):
    def answer(request):
        request.setResponseCode(302)
        request.setHeader("Location", location)
        return b""

    return answer


def streamed(first, chunk, count):
    """A body without Content-Length: only its chunks show how big it is."""

    def answer(request):
        request.write(first)
        for _ in range(count):
            request.write(chunk)
        request.finish()
        return web_server.NOT_DONE_YET

    return answer


class ObservedReactor:
    """
    The real reactor, with a clock the test can move and a record of every
    outgoing TCP connection.
    """

    def __init__(self):
        self.offset = 0.0
        self.connections = []

    def seconds(self):
        return reactor.seconds() + self.offset

    def advance(self, seconds):
        self.offset += seconds

    def connectTCP(self, host, port, *args, **kwargs):
        self.connections.append((host, port))
        return reactor.connectTCP(host, port, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(reactor, name)


class Network:
    def __init__(self):
        self.reactor = ObservedReactor()
        self.dns = MemoryAuthority()
        self.web = WellKnown()
        self.ports = []

    def start(self):
        factory = DNSServerFactory(authorities=[self.dns])
        # DNS over UDP and TCP on one port number (truncated answers are retried
        # over TCP): the TCP number a free UDP port has may be taken, so retry.
        for _ in range(20):
            udp = reactor.listenUDP(
                0, dns.DNSDatagramProtocol(controller=factory), interface="127.0.0.1"
            )
            self.dns_port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(self.dns_port, factory, interface="127.0.0.1")
                break
            except CannotListenError:
                udp.stopListening()
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        site = web_server.Site(self.web)
        site.noisy = False
        http = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.http_port = http.getHost().port
        self.ports = [udp, tcp, http]

    def resolver(self, **options):
        options.setdefault("timeout", 2.0)
        options.setdefault("allow_private", True)
        return HandleResolver(
            self.reactor,
            dns_servers=[("127.0.0.1", self.dns_port)],
            well_known_scheme="http",
            well_known_port=self.http_port,
            **options,
        )

    def serve(self, handle, answer):
        """Point ``handle`` at the loopback HTTP server, answering ``answer``."""
        self.dns.set(handle, dns.Record_A("127.0.0.1"))
        self.web.answers[handle] = answer


@pytest_twisted.async_yield_fixture
async def net():
    network = Network()
    network.start()
    yield network
    await gatherResults([port.stopListening() for port in network.ports])


# DNS TXT method


@pytest_twisted.ensureDeferred
async def test_dns_txt_record_resolves(net):
    net.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={ALICE}".encode()))
    assert await net.resolver().resolve("alice.test") == ALICE
    assert net.web.requests == []


@pytest_twisted.ensureDeferred
async def test_handle_is_lower_cased_before_lookup(net):
    net.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={ALICE}".encode()))
    assert await net.resolver().resolve("ALICE.Test") == ALICE
    assert net.dns.txt_queries() == ["_atproto.alice.test"]


@pytest_twisted.ensureDeferred
async def test_other_txt_records_are_ignored(net):
    net.dns.set(
        "_atproto.alice.test",
        dns.Record_TXT(b"v=spf1 -all"),
        dns.Record_TXT(f"did={ALICE}".encode()),
        dns.Record_TXT(b"hello"),
    )
    assert await net.resolver().resolve("alice.test") == ALICE


@pytest_twisted.ensureDeferred
async def test_txt_value_split_in_strings_is_joined(net):
    net.dns.set("_atproto.alice.test", dns.Record_TXT(b"did=did:plc:", ALICE[8:].encode()))
    assert await net.resolver().resolve("alice.test") == ALICE


@pytest_twisted.ensureDeferred
async def test_answer_too_big_for_udp_is_fetched_over_tcp(net):
    padding = [dns.Record_TXT(b"x" * 200) for _ in range(10)]
    net.dns.set("_atproto.alice.test", *padding, dns.Record_TXT(f"did={ALICE}".encode()))
    assert await net.resolver().resolve("alice.test") == ALICE
    assert net.reactor.connections == [("127.0.0.1", net.dns_port)]


@pytest_twisted.ensureDeferred
async def test_same_did_twice_is_not_a_conflict(net):
    record = dns.Record_TXT(f"did={ALICE}".encode())
    net.dns.set("_atproto.alice.test", record, dns.Record_TXT(f"did={ALICE}".encode()))
    assert await net.resolver().resolve("alice.test") == ALICE


@pytest_twisted.ensureDeferred
async def test_no_record_anywhere_does_not_resolve(net):
    assert await net.resolver().resolve("nobody.test") is None
    assert "_atproto.nobody.test" in net.dns.txt_queries()


@pytest_twisted.ensureDeferred
async def test_conflicting_records_fail_without_trying_https(net):
    net.dns.set(
        "_atproto.alice.test",
        dns.Record_TXT(f"did={ALICE}".encode()),
        dns.Record_TXT(f"did={BOB}".encode()),
    )
    net.serve("alice.test", body(ALICE.encode()))
    assert await net.resolver().resolve("alice.test") is None
    assert net.web.requests == []


@pytest.mark.parametrize(
    "value",
    [b"did=", b"did=plc:abc", b"did=did:PLC:abc", b"did=did:plc:abc:", b"did= did:plc:abc"],
)
@pytest_twisted.ensureDeferred
async def test_malformed_did_records_do_not_resolve(net, value):
    net.dns.set("_atproto.alice.test", dns.Record_TXT(value))
    assert await net.resolver().resolve("alice.test") is None


@pytest_twisted.ensureDeferred
async def test_malformed_dns_record_falls_back_to_https(net):
    net.dns.set("_atproto.alice.test", dns.Record_TXT(b"did=not a did"))
    net.serve("alice.test", body(ALICE.encode()))
    assert await net.resolver().resolve("alice.test") == ALICE


@pytest_twisted.ensureDeferred
async def test_dns_server_that_does_not_answer_times_out(net):
    # A UDP port that is bound but never answers.
    silent = reactor.listenUDP(0, dns.DNSDatagramProtocol(controller=None), interface="127.0.0.1")
    silent.protocol.datagramReceived = lambda data, address: None
    try:
        resolver = HandleResolver(
            reactor, timeout=0.3, dns_servers=[("127.0.0.1", silent.getHost().port)]
        )
        assert await resolver.resolve("alice.test") is None
    finally:
        await silent.stopListening()


@pytest.mark.parametrize(
    "handle", ["not a handle", "alice", "127.0.0.1", "alice.local", "x.onion"]
)
@pytest_twisted.ensureDeferred
async def test_invalid_or_reserved_handles_are_not_looked_up(net, handle):
    assert await net.resolver().resolve(handle) is None
    assert net.dns.queries == []


# HTTPS well-known method (over HTTP, on loopback)


@pytest_twisted.ensureDeferred
async def test_well_known_resolves_with_whitespace_trimmed(net):
    net.serve("alice.test", body(f"  {ALICE}\r\n".encode()))
    assert await net.resolver().resolve("alice.test") == ALICE
    # The request went to the address the test DNS gave, with the handle as
    # its Host: nothing else could have reached this server for "alice.test".
    assert net.web.requests == [("alice.test", "/.well-known/atproto-did")]
    assert net.reactor.connections == [("127.0.0.1", net.http_port)]


@pytest_twisted.ensureDeferred
async def test_well_known_body_within_the_limit_resolves(net):
    net.serve("alice.test", streamed(ALICE.encode(), b"\n" * 1000, 3))
    assert await net.resolver().resolve("alice.test") == ALICE


@pytest.mark.parametrize(
    "answer",
    [
        not_found,
        body(ALICE.encode(), code=500),
        body(b"<html>hello</html>"),
        body(b""),
        body(f"{ALICE} {BOB}".encode()),
        body(b"\xff\xfe" + ALICE.encode()),
        body(ALICE.encode() + b" " * 5000),
        streamed(ALICE.encode(), b" " * 1000, 10),
    ],
    ids=["404", "500", "html", "empty", "two-dids", "binary", "oversized", "oversized-streamed"],
)
@pytest_twisted.ensureDeferred
async def test_bad_well_known_answers_do_not_resolve(net, answer):
    net.serve("alice.test", answer)
    assert await net.resolver().resolve("alice.test") is None
    assert len(net.web.requests) == 1


@pytest_twisted.ensureDeferred
async def test_slow_server_times_out(net):
    stalled = []

    def never(request):
        stalled.append(request)
        return web_server.NOT_DONE_YET

    net.serve("alice.test", never)
    assert await net.resolver(timeout=0.3).resolve("alice.test") is None
    assert len(stalled) == 1


@pytest_twisted.ensureDeferred
async def test_redirects_are_followed_to_a_vetted_host(net):
    net.serve("alice.test", redirect(f"http://bob.test:{net.http_port}/elsewhere"))
    net.serve("bob.test", body(ALICE.encode()))
    assert await net.resolver().resolve("alice.test") == ALICE
    assert net.web.requests == [
        ("alice.test", "/.well-known/atproto-did"),
        ("bob.test", "/elsewhere"),
    ]


@pytest_twisted.ensureDeferred
async def test_redirect_loop_is_bounded(net):
    net.serve("alice.test", redirect("/.well-known/atproto-did"))
    assert await net.resolver().resolve("alice.test") is None
    assert len(net.web.requests) == HandleResolver.MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    "location",
    ["https://bob.test/x", "http://127.0.0.1/x", "http://bob..test/x", "ftp://bob.test/"],
)
@pytest_twisted.ensureDeferred
async def test_redirects_elsewhere_are_refused(net, location):
    net.serve("alice.test", redirect(location))
    net.serve("bob.test", body(ALICE.encode()))
    assert await net.resolver().resolve("alice.test") is None
    assert [host for host, _ in net.web.requests] == ["alice.test"]


# SSRF: hosts with non-public addresses are never connected to


@pytest.mark.parametrize(
    "record",
    [
        dns.Record_A("127.0.0.1"),
        dns.Record_A("10.0.0.1"),
        dns.Record_A("169.254.169.254"),
        dns.Record_A("100.64.0.1"),
        dns.Record_AAAA("::1"),
        dns.Record_AAAA("fd00::1"),
    ],
    ids=["loopback", "private", "link-local", "cgnat", "ipv6-loopback", "ipv6-ula"],
)
@pytest_twisted.ensureDeferred
async def test_non_public_address_is_refused_before_connecting(net, record):
    net.serve("alice.test", body(ALICE.encode()))
    net.dns.set("alice.test", record)
    assert await net.resolver(allow_private=False).resolve("alice.test") is None
    assert net.reactor.connections == []
    assert net.web.requests == []
    # The refusal came from the address check, after asking DNS for it.
    assert ("alice.test", "A") in net.dns.queries


@pytest_twisted.ensureDeferred
async def test_one_bad_address_refuses_the_host(net):
    net.serve("alice.test", body(ALICE.encode()))
    net.dns.set("alice.test", dns.Record_A("127.0.0.1"), dns.Record_AAAA("fe80::1"))
    assert await net.resolver(allow_private=False).resolve("alice.test") is None
    assert net.reactor.connections == []


@pytest_twisted.ensureDeferred
async def test_redirect_to_a_private_host_is_refused(net, monkeypatch):
    # Pretend this one loopback address is public, so the first hop connects.
    monkeypatch.setattr(outbound, "is_public_address", lambda a: str(a) == "127.0.0.1")
    net.serve("alice.test", redirect(f"http://bob.test:{net.http_port}/x"))
    net.dns.set("bob.test", dns.Record_A("127.0.0.2"))
    resolver = net.resolver(allow_private=False)
    assert await resolver.resolve("alice.test") is None
    assert net.reactor.connections == [("127.0.0.1", net.http_port)]
    assert ("bob.test", "A") in net.dns.queries


@pytest_twisted.ensureDeferred
async def test_dns_method_needs_no_address_check(net):
    # Only the HTTPS method connects to the handle's host.
    net.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={ALICE}".encode()))
    net.dns.set("alice.test", dns.Record_A("127.0.0.1"))
    assert await net.resolver(allow_private=False).resolve("alice.test") == ALICE


# Cache


@pytest_twisted.ensureDeferred
async def test_second_resolve_within_ttl_asks_nobody(net):
    net.serve("alice.test", body(ALICE.encode()))
    resolver = net.resolver()
    assert await resolver.resolve("alice.test") == ALICE
    queries, requests = len(net.dns.queries), len(net.web.requests)
    assert await resolver.resolve("Alice.test") == ALICE
    assert (len(net.dns.queries), len(net.web.requests)) == (queries, requests)


@pytest_twisted.ensureDeferred
async def test_answers_expire_after_ttl(net):
    clock = net.reactor
    resolver = net.resolver(cache_ttl=100.0)
    net.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={ALICE}".encode()))
    assert await resolver.resolve("alice.test") == ALICE

    net.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={BOB}".encode()))
    clock.advance(99)
    assert await resolver.resolve("alice.test") == ALICE
    clock.advance(2)
    assert await resolver.resolve("alice.test") == BOB
    assert net.dns.txt_queries() == ["_atproto.alice.test"] * 2


@pytest_twisted.ensureDeferred
async def test_failures_are_cached_for_a_shorter_time(net):
    clock = net.reactor
    resolver = net.resolver(cache_ttl=100.0)
    assert await resolver.resolve("alice.test") is None
    net.dns.set("_atproto.alice.test", dns.Record_TXT(f"did={ALICE}".encode()))
    assert await resolver.resolve("alice.test") is None
    assert len(net.dns.txt_queries()) == 1

    clock.advance(21)  # past the negative TTL, well within the positive one
    assert await resolver.resolve("alice.test") == ALICE
    assert len(net.dns.txt_queries()) == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_resolves_share_one_lookup(net):
    net.serve("alice.test", body(ALICE.encode()))
    resolver = net.resolver()
    answers = await gatherResults(
        [ensureDeferred(resolver.resolve("alice.test")) for _ in range(3)]
    )
    assert answers == [ALICE] * 3
    assert len(net.dns.txt_queries()) == 1
    assert len(net.web.requests) == 1



class NoDNS:
    """A resolver that must not be asked."""

    def lookupAddress(self, name, timeout=None):
        raise AssertionError(f"DNS asked for {name}")

    lookupIPV6Address = lookupAddress


@pytest.mark.parametrize("host", ["localhost", "app.localhost", "App.LocalHost."])
@pytest_twisted.ensureDeferred
async def test_localhost_names_are_loopback_never_a_dns_question(host):
    # RFC 6761 section 6.3: so no DNS answer can make them anything else.
    loopback = ipaddress.ip_address("127.0.0.1")
    assert await outbound.vetted_address(NoDNS(), host, allow_private=True, timeout=1) == loopback
    with pytest.raises(outbound.Refused, match="non-public"):
        await outbound.vetted_address(NoDNS(), host, allow_private=False, timeout=1)
