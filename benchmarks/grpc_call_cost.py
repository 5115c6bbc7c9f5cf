"""Question: what does one request cost a grpc.aio client, as a unary call and as a message on a
long-lived stream? This bounds what the router's gRPC side could gain by carrying unary calls to
Triton over ModelStreamInfer streams (it does not: that would lose each request's status code,
metadata and deadline), next to what a grpc.aio server costs per call (router_overhead.py's
"backend req/core-s").

An echo server (its own process, its own core) and the client on another core; concurrency 64,
8 streams of 8 requests in flight each. Printed: requests/s and the client's CPU per request.

    .venv/bin/python benchmarks/grpc_call_cost.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import time

import grpc

from shoal.runtime.triton import free_port

PAYLOAD = b"x" * 100
CONCURRENCY, STREAMS = 64, 8


def echo_server(port: int) -> None:
    async def unary(request: bytes, _context) -> bytes:
        return request

    async def stream(requests, _context):
        async for request in requests:
            yield request

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo", handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def unary_calls(channel: grpc.aio.Channel, seconds: float) -> tuple[int, float]:
    call = channel.unary_unary("/echo/Unary")
    done, stop, started = 0, time.monotonic() + seconds, cpu_seconds()

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call(PAYLOAD)
            done += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done, cpu_seconds() - started


async def stream_messages(channel: grpc.aio.Channel, seconds: float) -> tuple[int, float]:
    done, stop, started = 0, time.monotonic() + seconds, cpu_seconds()

    async def one_stream() -> None:
        call = channel.stream_stream("/echo/Stream")()
        in_flight = asyncio.Semaphore(CONCURRENCY // STREAMS)

        async def read() -> None:
            nonlocal done
            async for _ in call:
                done += 1
                in_flight.release()

        reader = asyncio.create_task(read())
        while time.monotonic() < stop:
            await in_flight.acquire()
            await call.write(PAYLOAD)
        await call.done_writing()
        await reader

    await asyncio.gather(*(one_stream() for _ in range(STREAMS)))
    return done, cpu_seconds() - started


async def measure(port: int, seconds: float) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)  # the server has bound its port
        await unary_calls(channel, 0.5)  # warm up
        for name, way in (("unary call", unary_calls), ("stream message", stream_messages)):
            done, cpu = await way(channel, seconds)
            print(f"  {name:<15} {done / seconds:8.0f} req/s   client {cpu / done * 1e6:5.0f} µs "
                  "CPU per request")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=echo_server, args=(port,), daemon=True
    )
    server.start()
    try:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) > 1:  # the client on one core, the server on another
            os.sched_setaffinity(0, {cores[0]})
            os.sched_setaffinity(server.pid, {cores[1]})
        print(f"grpcio {grpc.__version__}, {os.cpu_count()} cores, {args.seconds:.0f} s each")
        for _ in range(2):
            asyncio.run(measure(port, args.seconds))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
