"""uvicorn's httptools protocol with a limit on the request head (request line and headers).

httptools buffers a header of any length until it ends (a 20 MB header was accepted), and
uvicorn has no option for it (h11_max_incomplete_event_size covers h11 only). Here a request
whose head is not complete after MAX_HEAD_BYTES is answered 431 and its connection closed.
Stripe's webhook heads are about 1 KB.
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


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Counts the bytes received while a request head is incomplete; 431 past the limit.

    Whole chunks are counted (the transport reads up to 256 KiB at once), so a head is cut off
    between MAX_HEAD_BYTES and one chunk more: bounded, which is what matters.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes = 0
        self._in_head = True
        super().connection_made(transport)

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
