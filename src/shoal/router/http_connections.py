"""A lean HTTP/1.1 client for the router's upstream calls: keep-alive connections pooled per
replica on asyncio protocols, one request at a time per connection, the response read whole.
The router forwards bytes, so it needs no more than this; aiohttp's client costs about twice
the CPU per request (benchmarks/router_overhead.py).

Responses carry Content-Length (Triton always sends it), are chunked, or end at close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass


class ConnectionFailed(Exception):
    """Refused, reset or closed before a whole response came back. `reused` says whether the
    connection had served an earlier request (then the peer may simply have closed it idle)."""

    def __init__(self, message: str, reused: bool, answered: bool = False) -> None:
        super().__init__(message)
        self.reused = reused
        self.answered = answered  # some response bytes had arrived


class BadResponse(Exception):
    """Bytes from the peer that are not an HTTP/1.1 response."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.used = False
        self._head: tuple[int, dict[str, str]] | None = None
        self._body_start = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            head = self._head
            if head is not None and "content-length" not in head[1] and not _chunked(head[1]):
                self._finish(bytes(self.buffer[self._body_start :]))  # a body that ends at close
                return
            self.waiter.set_exception(
                ConnectionFailed(
                    f"connection closed before a whole response ({exc or 'by the peer'})",
                    reused=self.used,
                    answered=bool(self.buffer),
                )
            )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            self._parse()
        except BadResponse as exc:
            self.waiter.set_exception(exc)
            self.close()

    def _parse(self) -> None:
        while self._head is None:
            end = self.buffer.find(b"\r\n\r\n", self._body_start)
            if end < 0:
                return
            status, headers = _parse_head(bytes(self.buffer[self._body_start : end]))
            self._body_start = end + 4
            if not 100 <= status < 200:  # 1xx answers (100 Continue) are interim: skip them
                self._head = status, headers
        headers = self._head[1]
        length = headers.get("content-length")
        if length is not None:
            end = self._body_start + int(length)
            if len(self.buffer) >= end:
                self._finish(bytes(self.buffer[self._body_start : end]))
        elif _chunked(headers):
            body = _dechunk(self.buffer, self._body_start)
            if body is not None:
                self._finish(body)

    def _finish(self, body: bytes) -> None:
        assert self._head is not None and self.waiter is not None
        status, headers = self._head
        self.waiter.set_result(Response(status, headers, body))
        if headers.get("connection", "").lower() == "close":
            self.close()

    def send(self, head: bytes, body: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.buffer.clear()
        self._head = None
        self._body_start = 0
        self.waiter = asyncio.get_running_loop().create_future()
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _chunked(headers: Mapping[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    try:
        lines = raw.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status), headers
    except ValueError as exc:
        raise BadResponse(f"not an HTTP/1.1 response: {raw[:80]!r}") from exc


def _dechunk(buffer: bytearray, start: int) -> bytes | None:
    """The whole body of a chunked response, or None while chunks are still missing."""
    body = bytearray()
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        try:
            size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        except ValueError as exc:
            raise BadResponse("bad chunk size") from exc
        pos = line_end + 2
        if size == 0:
            return bytes(body) if buffer.find(b"\r\n", pos) >= 0 else None
        if len(buffer) < pos + size + 2:
            return None
        body += buffer[pos : pos + size]
        pos += size + 2


class ConnectionPool:
    """Idle keep-alive connections by (host, port)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def request(
        self, host: str, port: int, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        head = _request_head(method, path, host, port, headers, len(body))
        connection = await self._acquire(host, port)
        try:
            response = await connection.send(head, body)
        except BaseException:
            connection.close()  # cancelled or failed mid-request: the connection is unusable
            raise
        connection.used = True
        if not connection.closed:
            self._idle.setdefault((host, port), []).append(connection)
        return response

    async def _acquire(self, host: str, port: int) -> _Connection:
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, host, port)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect: {exc}", reused=False) from exc
        return connection

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()


def _request_head(
    method: str, path: str, host: str, port: int, headers: Mapping[str, str], length: int
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
