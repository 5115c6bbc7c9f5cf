"""The router's lean HTTP/1.1 upstream client against peers that show what Triton does not on
demand: idle keep-alive connections closed by the peer, interim 100 answers, chunked and
close-delimited bodies, garbage. The peers are small asyncio servers speaking raw HTTP/1.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from shoal.fleet.replica import Replica
from shoal.router.errors import ReplicaUnreachable
from shoal.router.upstream_http import HttpUpstream

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    return await reader.readexactly(length)


async def serve(answer: Answer) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_connection_the_peer_closed_while_idle_is_replaced_without_a_failure() -> None:
    connections = 0

    async def one_answer_per_connection(reader, writer) -> None:
        nonlocal connections
        connections += 1
        body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()  # no "Connection: close": the client learns only on its next request

    server, port = await serve(one_answer_per_connection)
    upstream = HttpUpstream()
    replica = Replica("r", "127.0.0.1", port)
    for index in range(5):
        answer = await upstream.send(replica, "POST", "/x", {}, b"body %d" % index, 5)
        assert (answer.status, answer.body) == (200, b"body %d" % index)
        await asyncio.sleep(0.01)  # let the close arrive, or not: both must work
    assert connections == 5
    await upstream.close()
    server.close()


async def test_interim_100_chunked_and_close_delimited_answers_are_read_whole() -> None:
    answers = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nuntil the end",
    ]

    async def answer(reader, writer) -> None:
        await read_request(reader)
        raw = answers.pop(0)
        for piece in (raw[:7], raw[7:20], raw[20:]):  # split across packets
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.close()

    server, port = await serve(answer)
    upstream = HttpUpstream()
    replica = Replica("r", "127.0.0.1", port)
    got = [await upstream.send(replica, "GET", "/", {}, b"", 5) for _ in range(3)]
    assert [(r.status, r.body) for r in got] == [
        (200, b"ok"), (200, b"abcde"), (201, b"until the end"),
    ]  # fmt: skip
    await upstream.close()
    server.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage that is no HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
    ],
)
async def test_garbage_or_a_cut_answer_is_an_unreachable_replica(raw: bytes) -> None:
    async def answer(reader, writer) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    server, port = await serve(answer)
    upstream = HttpUpstream()
    with pytest.raises(ReplicaUnreachable):
        await upstream.send(Replica("r", "127.0.0.1", port), "GET", "/", {}, b"", 5)
    await upstream.close()
    server.close()
