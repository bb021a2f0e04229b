"""Just enough HTTP/1.1 for the fault proxy: message heads and body boundaries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from io import BufferedReader
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass  # type-checking only: importable at runtime on 3.10 too

from .faultplan import _CHUNK, _MAX_HEADER_LINES, _MAX_LINE, FaultKind


class _ProtocolError(Exception):
    """Malformed or truncated HTTP message."""


class _UpstreamError(Exception):
    """The upstream server could not be reached or sent no response."""


@dataclass(frozen=True)
class _Head:
    start_line: str
    headers: tuple[tuple[str, str], ...]
    raw: bytes

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        values = (v for k, v in self.headers if k == name)
        return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def _read_line(rfile: BufferedReader) -> bytes:
    line = rfile.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise _ProtocolError("line too long")
    return line


def _read_head(rfile: BufferedReader) -> _Head | None:
    """Read a message head; None on a clean EOF before any byte."""
    lines: list[bytes] = []
    while True:
        line = _read_line(rfile)
        if not line:
            if lines:
                raise _ProtocolError("connection closed inside a message head")
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return _parse_head(lines, line)
            continue  # tolerate stray CRLF between messages
        lines.append(line)
        if len(lines) > _MAX_HEADER_LINES:
            raise _ProtocolError("too many header lines")


def _parse_head(lines: list[bytes], terminator: bytes) -> _Head:
    text = [line.decode("latin-1").rstrip("\r\n") for line in lines]
    headers: list[tuple[str, str]] = []
    for line in text[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _ProtocolError(f"bad header line {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return _Head(text[0], tuple(headers), b"".join(lines) + terminator)


def _request_line(head: _Head) -> tuple[str, str, str]:
    parts = head.start_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _ProtocolError(f"bad request line {head.start_line!r}")
    return parts[0].upper(), parts[1], parts[2]


def _status_line(head: _Head) -> tuple[str, int]:
    parts = head.start_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _ProtocolError(f"bad status line {head.start_line!r}")
    return parts[0], int(parts[1])


def _content_length(head: _Head) -> int | None:
    value = head.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise _ProtocolError(f"bad Content-Length {value!r}")
    return int(value)


def _keep_alive(version: str, head: _Head) -> bool:
    tokens = head.tokens("connection")
    if "close" in tokens:
        return False
    return version != "HTTP/1.0" or "keep-alive" in tokens


def _iter_fixed(rfile: BufferedReader, length: int) -> Iterator[bytes]:
    while length > 0:
        chunk = rfile.read(min(length, _CHUNK))
        if not chunk:
            raise _ProtocolError("connection closed inside a body")
        length -= len(chunk)
        yield chunk


def _iter_chunked(rfile: BufferedReader, framing: bool = True) -> Iterator[bytes]:
    """Yield a chunked body up to the end of its trailers: verbatim (framing included), or
    with ``framing=False`` only its data (framing and trailers dropped)."""
    while True:
        line = _read_line(rfile)
        if not line:
            raise _ProtocolError("connection closed inside a chunked body")
        if framing:
            yield line
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _ProtocolError(f"bad chunk size {size_text!r}") from None
        if size == 0:
            trailers = _iter_trailers(rfile)
            if framing:
                yield from trailers
            else:
                for _ in trailers:
                    pass
            return
        if framing:
            yield from _iter_fixed(rfile, size + 2)
        else:
            yield b"".join(_iter_fixed(rfile, size + 2))[:-2]


def _iter_trailers(rfile: BufferedReader) -> Iterator[bytes]:
    while True:
        line = _read_line(rfile)
        if not line:
            raise _ProtocolError("connection closed inside chunk trailers")
        yield line
        if line in (b"\r\n", b"\n"):
            return


def _iter_until_close(rfile: BufferedReader) -> Iterator[bytes]:
    while chunk := rfile.read1(_CHUNK):
        yield chunk


def _response_data(rfile: BufferedReader, head: _Head, method: str) -> tuple[bytes, bool]:
    """Return (the response body's data, unframed; delimited-by-close)."""
    if "chunked" in head.tokens("transfer-encoding"):
        _, status = _status_line(head)
        if method != "HEAD" and status not in (204, 304) and not 100 <= status < 200:
            return b"".join(_iter_chunked(rfile, framing=False)), False
    body, until_close = _response_body(rfile, head, method)
    return b"".join(body), until_close


def _read_request_body(rfile: BufferedReader, head: _Head) -> bytes:
    if "chunked" in head.tokens("transfer-encoding"):
        return b"".join(_iter_chunked(rfile))
    return b"".join(_iter_fixed(rfile, _content_length(head) or 0))


def _response_body(rfile: BufferedReader, head: _Head, method: str) -> tuple[Iterator[bytes], bool]:
    """Return (body iterator, delimited-by-close)."""
    _, status = _status_line(head)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return iter(()), False
    if "chunked" in head.tokens("transfer-encoding"):
        return _iter_chunked(rfile), False
    length = _content_length(head)
    if length is not None:
        return _iter_fixed(rfile, length), False
    return _iter_until_close(rfile), True


def _read_final_head(rfile: BufferedReader) -> tuple[_Head, bytes]:
    """Read the final response head, returning it plus any raw interim (1xx) heads."""
    interim = b""
    while True:
        head = _read_head(rfile)
        if head is None:
            raise _UpstreamError("upstream closed the connection without a response")
        _, status = _status_line(head)
        if not 100 <= status < 200 or status == 101:
            return head, interim
        interim += head.raw


def _local_response(status: int, kind: FaultKind, close: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected Fault"
    body = json.dumps({"detail": f"faultproxy injected {status} ({kind.value})"}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"X-Faultproxy-Fault: {kind.value}",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- sockets


def _discard(_: bytes) -> None:
    return None
