"""The web's connections send what one turn of the event loop writes in one write (app/http/limits.py)."""

from __future__ import annotations

import asyncio

from stripeline.http.limits import COALESCE_BYTES, CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket's transport: what reached it, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


async def a_turn() -> None:
    await asyncio.sleep(0)


async def test_an_answers_head_and_body_leave_in_one_write_after_the_turn():
    socket = RecordingTransport()
    transport = CoalescingTransport(socket)
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert socket.writes == []
    assert transport.get_write_buffer_size() == 40
    await a_turn()
    assert socket.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"next")
    await a_turn()
    assert socket.writes[1:] == [b"next"]


async def test_a_large_answer_is_not_held_and_closing_sends_what_is():
    socket = RecordingTransport()
    transport = CoalescingTransport(socket)
    transport.write(b"head")
    transport.write(b"x" * COALESCE_BYTES)
    assert socket.writes == [b"head" + b"x" * COALESCE_BYTES]
    transport.write(b"last")
    transport.close()
    assert socket.writes[1:] == [b"last"] and socket.closed
    await a_turn()
    assert len(socket.writes) == 2


async def test_other_calls_reach_the_socket_transport():
    socket = RecordingTransport()
    transport = CoalescingTransport(socket)
    socket.set_write_buffer_limits = lambda high=None, low=None: setattr(socket, "limits", (high, low))
    transport.set_write_buffer_limits(10, 5)
    assert socket.limits == (10, 5) and transport.is_closing() is False
