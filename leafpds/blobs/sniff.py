"""
A blob's MIME type, as the reference PDS settles it: what the first bytes
show it to be if they are a format we recognise, else what the client
declared (if it is a well-formed type), else ``application/octet-stream``.

Blobs are served with ``x-content-type-options: nosniff`` and a sandboxing
CSP, so a wrong declared type cannot make a browser run a blob as a page.
"""

import re

OCTET_STREAM = "application/octet-stream"

# type "/" subtype, each an RFC 6838 restricted name.
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")

# (offset, magic bytes, type): the first match wins.
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"BM", "image/bmp"),
    (0, b"\x00\x00\x01\x00", "image/x-icon"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"fLaC", "audio/x-flac"),
    (0, b"OggS", "audio/ogg"),
]

# RIFF containers: the form type at offset 8.
_RIFF = {b"WEBP": "image/webp", b"AVI ": "video/vnd.avi", b"WAVE": "audio/wav"}

# ISO base media files ("ftyp" at offset 4): the major brand at offset 8.
# Brands not listed are MP4 video.
_FTYP_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/x-m4a",
    b"M4V ": "video/x-m4v",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
    b"3gp6": "video/3gpp",
}

_EBML = b"\x1a\x45\xdf\xa3"  # Matroska and WebM
_TS_PACKET = 188  # MPEG transport stream: a sync byte every packet


def sniff(head: bytes) -> str | None:
    """The type the first bytes of a blob show, or None if not recognised."""
    for offset, magic, mime in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head[:4] == _EBML:
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if len(head) > _TS_PACKET and head[0] == head[_TS_PACKET] == 0x47:
        return "video/mp2t"
    return None


def declared(content_type: str | None) -> str | None:
    """The client's Content-Type without parameters, if it is a well-formed type."""
    if not content_type:
        return None
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime if _MIME.fullmatch(mime) else None


def mime_type(head: bytes, content_type: str | None) -> str:
    return sniff(head) or declared(content_type) or OCTET_STREAM
