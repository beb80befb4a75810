"""uvicorn's httptools protocol with a limit on the request head (request line and headers),
whose answers leave in one write each.

httptools buffers a header of any length until it ends (a 20 MB header was accepted), and
uvicorn has no option for it (h11_max_incomplete_event_size covers h11 only). Here a request
whose head is not complete after MAX_HEAD_BYTES is answered 431 and its connection closed.
Stripe's webhook heads are about 1 KB.

uvicorn writes an answer's head and its body separately, and each write is a system call
that wakes the client: here what one turn of the event loop writes to a connection goes out
together (`CoalescingTransport`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 32 * 1024

_TOO_LARGE = b'{"error":"request line and headers larger than %d bytes"}' % MAX_HEAD_BYTES
TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE)
)


# Writes held for the end of the turn at most this many bytes; more go out at once, so that a
# large answer meets the transport's flow control as it did.
COALESCE_BYTES = 64 * 1024


class CoalescingTransport:
    """A connection's transport whose writes within one turn of the event loop are sent in one."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            asyncio.get_running_loop().call_soon(self._flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > COALESCE_BYTES:
            self._flush()

    def writelines(self, lines) -> None:  # noqa: ANN001 - any iterable of bytes, as asyncio's
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        if not self._held:
            return
        held, self._held, self._held_bytes = self._held, [], 0
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Counts the bytes received while a request head is incomplete; 431 past the limit.

    Whole chunks are counted (the transport reads up to 256 KiB at once), so a head is cut off
    between MAX_HEAD_BYTES and one chunk more: bounded, which is what matters.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._in_head = True
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next on this connection is the next request's head
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.transport.write(TOO_LARGE_RESPONSE)
            self.transport.close()
