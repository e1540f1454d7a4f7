"""Tests for leafpds.syntax, mostly against the official interop vectors."""

import pytest

from leafpds import syntax
from leafpds.syntax import AtUri, InvalidSyntax
from tests.vectors import VECTORS, load_lines

# Vector file prefixes that differ from the Lexicon format names.
_FORMAT_OF_PREFIX = {
    "atidentifier": "at-identifier",
    "aturi": "at-uri",
    "recordkey": "record-key",
}
_FILES = sorted(path.name for path in (VECTORS / "syntax").glob("*.txt"))


def _cases(valid: bool) -> list:
    cases = []
    for name in _FILES:
        prefix, _, outcome = name.removesuffix(".txt").split("_")
        if (outcome == "valid") != valid:
            continue
        format = _FORMAT_OF_PREFIX.get(prefix, prefix)
        for value in load_lines(f"syntax/{name}"):
            shown = value if len(value) <= 40 else value[:37] + "..."
            cases.append(pytest.param(format, value, id=f"{name}:{shown!r}"))
    return cases


def test_every_vector_is_collected() -> None:
    """The vector README promises 536 values in 24 files."""
    assert len(_FILES) == 24
    assert len(_cases(True)) + len(_cases(False)) == 536


@pytest.mark.parametrize(("format", "value"), _cases(valid=True))
def test_valid_vector(format: str, value: str) -> None:
    syntax.FORMATS[format](value)
    assert syntax.is_valid(format, value)


@pytest.mark.parametrize(("format", "value"), _cases(valid=False))
def test_invalid_vector(format: str, value: str) -> None:
    with pytest.raises(InvalidSyntax):
        syntax.FORMATS[format](value)
    assert not syntax.is_valid(format, value)


def test_formats_are_the_lexicon_names() -> None:
    assert set(syntax.FORMATS) == {
        "at-identifier",
        "at-uri",
        "cid",
        "datetime",
        "did",
        "handle",
        "language",
        "nsid",
        "record-key",
        "tid",
        "uri",
    }


def test_unknown_format_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        syntax.is_valid("color", "red")


def test_message_names_the_format_and_value() -> None:
    with pytest.raises(InvalidSyntax, match=r"^invalid handle 'jo_hn\.test': "):
        syntax.validate_handle("jo_hn.test")


def test_message_shortens_long_values() -> None:
    with pytest.raises(InvalidSyntax) as caught:
        syntax.validate_uri("https://example.com/" + "x" * 9000)
    assert len(str(caught.value)) < 200


def test_invalid_syntax_is_a_value_error() -> None:
    assert issubclass(InvalidSyntax, ValueError)


@pytest.mark.parametrize(
    ("format", "value"),
    [
        ("handle", "john.test"),
        ("did", "did:plc:abc"),
        ("at-identifier", "did:plc:abc"),
        ("nsid", "com.example.foo"),
        ("tid", "3jzfcijpj2z2a"),
        ("record-key", "self"),
        ("datetime", "1985-04-12T23:20:50.123Z"),
        ("language", "en"),
        ("cid", "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a"),
        ("uri", "https://example.com"),
        ("at-uri", "at://did:plc:abc/com.example.foo/self"),
    ],
)
def test_trailing_newline_rejected(format: str, value: str) -> None:
    """A ``$`` anchor would let a trailing newline through."""
    assert syntax.is_valid(format, value)
    assert not syntax.is_valid(format, value + "\n")


@pytest.mark.parametrize(
    "handle", ["laptop.local", "x.arpa", "a.onion", "a.invalid", "a.localhost"]
)
def test_reserved_tlds_are_syntactically_valid(handle: str) -> None:
    """Refusing them is registration policy, not syntax (handle spec)."""
    syntax.validate_handle(handle)


def test_normalize_handle_lowercases() -> None:
    assert syntax.normalize_handle("Alice.Example.COM") == "alice.example.com"


def test_normalize_handle_rejects_invalid() -> None:
    with pytest.raises(InvalidSyntax):
        syntax.normalize_handle("Alice")


def test_handle_is_ascii_only() -> None:
    # U+212A KELVIN SIGN lower-cases to "k"; it must not pass as a letter.
    with pytest.raises(InvalidSyntax):
        syntax.validate_handle("\u212aate.test")


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("at://did:plc:abc", AtUri("did:plc:abc", None, None)),
        (
            "at://alice.test/app.bsky.feed.post",
            AtUri("alice.test", "app.bsky.feed.post", None),
        ),
        (
            "at://did:plc:abc/app.bsky.feed.post/3jzfcijpj2z2a",
            AtUri("did:plc:abc", "app.bsky.feed.post", "3jzfcijpj2z2a"),
        ),
    ],
)
def test_parse_at_uri(uri: str, parts: AtUri) -> None:
    parsed = syntax.parse_at_uri(uri)
    assert parsed == parts
    assert parsed.authority == parts[0]
    assert parsed.collection == parts[1]
    assert parsed.rkey == parts[2]


@pytest.mark.parametrize(
    "uri",
    [
        "at://did:plc:abc/app.bsky.feed.post/3jzfcijpj2z2a?x=1",
        "at://did:plc:abc/app.bsky.feed.post/3jzfcijpj2z2a#/text",
        "at://did:plc:abc/app.bsky.feed.post/3jzfcijpj2z2a/",
    ],
)
def test_parse_at_uri_restricted_form(uri: str) -> None:
    """Lexicon at-uris have no query, no fragment, no trailing slash."""
    with pytest.raises(InvalidSyntax, match="^invalid at-uri "):
        syntax.parse_at_uri(uri)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2024-02-29T00:00:00Z", True),
        ("2023-02-29T00:00:00Z", False),
        ("1900-02-29T00:00:00Z", False),
        ("2000-02-29T00:00:00Z", True),
        ("0000-02-29T00:00:00Z", True),  # year 0 is a leap year (proleptic)
        ("1985-04-31T00:00:00Z", False),
        ("1985-04-12T23:20:60Z", False),
        ("1985-04-12T24:00:00Z", False),
        ("1985-04-12T23:20:50+24:00", False),
        ("1985-04-12T23:20:50-00:00", False),
        ("1985-04-12T23:20:50+00:00", True),
        ("0000-01-01T01:00:00+01:00", True),  # exactly year 0 in UTC
        ("0000-01-01T00:59:59.999+01:00", False),
        ("0000-01-02T00:00:00+01:00", True),
        ("0000-01-01T00:00:00-01:00", True),
    ],
)
def test_datetime_semantics(value: str, valid: bool) -> None:
    assert syntax.is_valid("datetime", value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("zh-yue-HK", True),  # extlang
        ("EN", False),  # the primary language is lower-case
        ("en-us", True),  # later subtags are case-insensitive
        ("x-whatever", True),
        ("en-x-a-a", True),  # private-use subtags may repeat
        ("en-\u212aaaaa", False),  # KELVIN SIGN must not match case-insensitively
        ("de-419-DE", False),
    ],
)
def test_language(value: str, valid: bool) -> None:
    assert syntax.is_valid("language", value) is valid


def test_cidv0_rejected() -> None:
    with pytest.raises(InvalidSyntax, match="CIDv0"):
        syntax.validate_cid("QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR")


def test_uri_length_limit() -> None:
    prefix = "https://example.com/"
    syntax.validate_uri(prefix + "x" * (8192 - len(prefix)))
    with pytest.raises(InvalidSyntax):
        syntax.validate_uri(prefix + "x" * (8193 - len(prefix)))


def test_did_length_limit() -> None:
    syntax.validate_did("did:web:" + "a" * 2040)
    with pytest.raises(InvalidSyntax):
        syntax.validate_did("did:web:" + "a" * 2041)
