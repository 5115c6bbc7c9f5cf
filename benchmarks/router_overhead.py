"""Question: what does the router cost?

(a) The router pinned to one core (os.sched_setaffinity) in front of a fake backend that answers
    at once with a canned KServe v2 response (aiohttp + grpc.aio), so the router is the work:
    requests/s over HTTP and gRPC, and requests per CPU-second of the router process (read from
    /proc, since the load generator shares this machine). Goals: 2,500 (HTTP) and 1,500 (gRPC)
    per router core. The same load straight at the fake backend shows the load generator's
    ceiling.
(b) A real Triton serving a tiny model (the python-backend doubler of the tests), router vs
    direct, side by side at concurrency 1, 8 and 32: p50/p99 latency added by the router and the
    router/direct throughput ratio. Goals: p50 +0.5 ms, p99 +2 ms, >= 0.95x at 8 and 32. The
    router has its own core (as it has its own pod); Triton, its python stubs and the load
    generator share the others, in both runs.

    .venv/bin/python benchmarks/router_overhead.py [--seconds 5] [--router-core 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from shoal.runtime.triton import TritonServer, free_port

ROOT = Path(__file__).resolve().parent.parent
INFER = "/inference.GRPCInferenceService/ModelInfer"
HTTP_BODY = json.dumps(
    {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
).encode()
HTTP_ANSWER = json.dumps(
    {"model_name": "bench", "model_version": "1",
     "outputs": [{"name": "Y", "datatype": "FP32", "shape": [1, 2], "data": [2.0, 4.0]}]}
).encode()  # fmt: skip


def grpc_request(model: str) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="X", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.array([1.0, 2.0], np.float32).tobytes())
    return request.SerializeToString()


GRPC_ANSWER = service_pb2.ModelInferResponse(model_name="bench").SerializeToString()


# -- the fake backend (its own process) ------------------------------------------------------------
def fake_backend(http_port: int, grpc_port: int) -> None:
    from aiohttp import web

    async def ready(_request: web.Request) -> web.Response:
        return web.Response()

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=HTTP_ANSWER, content_type="application/json")

    async def grpc_infer(_request: bytes, _context) -> bytes:
        return GRPC_ANSWER

    async def main() -> None:
        app = web.Application()
        app.add_routes(
            [web.get("/v2/models/{m}/ready", ready), web.post("/v2/models/{m}/infer", infer)]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {"ModelInfer": grpc.unary_unary_rpc_method_handler(grpc_infer)},
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the router (its own process, pinned) -----------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RouterProcess:
    process: subprocess.Popen
    http_port: int
    grpc_port: int

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_router(
    model: str, http_port: int, grpc_port: int, cores: int | set[int], event_loop: str = "asyncio"
) -> RouterProcess:
    ports = RouterProcess(None, free_port(), free_port())  # type: ignore[arg-type]
    route = f"{model}=http://127.0.0.1:{http_port},grpc=127.0.0.1:{grpc_port}"
    command = [
        str(Path(sys.executable).parent / "shoal"), "router", "run", "--route", route,
        "--host", "127.0.0.1", "--http-port", str(ports.http_port), "--grpc-port",
        str(ports.grpc_port), "--metrics-port", "-1", "--probe-interval", "1",
        "--event-loop", event_loop,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    ports.process = subprocess.Popen(
        command,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cores if isinstance(cores, set) else {cores}),
    )
    return ports


async def wait_ready(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


# -- load -------------------------------------------------------------------------------------------
@dataclass
class Run:
    requests: int
    seconds: float
    latencies_s: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000)


async def load(send, concurrency: int, seconds: float, warmup_s: float = 0.5) -> Run:
    latencies: list[float] = []
    stop_at = time.perf_counter() + warmup_s + seconds
    measure_from = time.perf_counter() + warmup_s

    async def worker() -> None:
        while (now := time.perf_counter()) < stop_at:
            await send()
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(len(latencies), seconds, latencies)


async def http_load(address: str, model: str, concurrency: int, seconds: float) -> Run:
    url = f"http://{address}/v2/models/{model}/infer"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> None:
            async with session.post(url, data=HTTP_BODY) as answer:
                await answer.read()
                assert answer.status == 200, answer.status

        return await load(send, concurrency, seconds)


async def grpc_load(address: str, model: str, concurrency: int, seconds: float) -> Run:
    request = grpc_request(model)
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER)

        async def send() -> None:
            await call(request)

        return await load(send, concurrency, seconds)


async def measured(pid: int, run) -> tuple[Run, float]:
    """The run, and the CPU seconds process `pid` spent meanwhile."""
    cpu_before = cpu_seconds(pid)
    result = await run
    return result, cpu_seconds(pid) - cpu_before


# -- the two questions ------------------------------------------------------------------------------
async def part_a(args: argparse.Namespace) -> None:
    backend_http, backend_grpc = free_port(), free_port()
    backend = multiprocessing.get_context("spawn").Process(
        target=fake_backend, args=(backend_http, backend_grpc), daemon=True
    )
    backend.start()
    await wait_ready(f"http://127.0.0.1:{backend_http}/v2/models/bench/ready")
    print(f"\n(a) router pinned to core {args.router_core}, fake backend answering at once, "
          f"concurrency {args.concurrency}, {args.seconds:.0f} s each")  # fmt: skip
    print(
        "  backend req/core-s: what a do-nothing aiohttp / grpc.aio server (the fake backend,\n"
        "  asyncio loop) answers per CPU-second on this machine: the reference for the router's"
    )
    print(f"{'protocol':<8} {'loop':<8} {'direct req/s':>13} {'backend req/core-s':>19} "
          f"{'router req/s':>13} {'router CPU':>11} {'router req/core-s':>18} {'vs backend':>11} "
          f"{'goal':>6}")  # fmt: skip
    try:
        for event_loop in ("asyncio", "uvloop") if uvloop_installed() else ("asyncio",):
            router = start_router("bench", backend_http, backend_grpc, args.router_core, event_loop)
            try:
                await wait_ready(f"http://127.0.0.1:{router.http_port}/v2/models/bench/ready")
                await _part_a_rows(args, router, event_loop, backend, backend_http, backend_grpc)
            finally:
                router.stop()
    finally:
        backend.terminate()


async def _part_a_rows(
    args: argparse.Namespace,
    router: RouterProcess,
    event_loop: str,
    backend: multiprocessing.Process,
    backend_http: int,
    backend_grpc: int,
) -> None:
    for protocol, loader, port, backend_port, goal in (
        ("HTTP", http_load, router.http_port, backend_http, 2500),
        ("gRPC", grpc_load, router.grpc_port, backend_grpc, 1500),
    ):
        direct, backend_cpu = await measured(
            backend.pid,
            loader(f"127.0.0.1:{backend_port}", "bench", args.concurrency, args.seconds),
        )
        via, cpu = await measured(
            router.process.pid, loader(f"127.0.0.1:{port}", "bench", args.concurrency, args.seconds)
        )
        per_core = via.requests / cpu if cpu else float("nan")
        backend_per_core = direct.requests / backend_cpu if backend_cpu else float("nan")
        print(f"{protocol:<8} {event_loop:<8} {direct.rate:>13.0f} {backend_per_core:>19.0f} "
              f"{via.rate:>13.0f} {cpu / via.seconds:>10.0%} {per_core:>18.0f} "
              f"{per_core / backend_per_core:>10.2f}x {goal:>6}")  # fmt: skip


async def part_b(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.support.triton import write_doubler

    repository = Path(tempfile.mkdtemp(prefix="router-bench-"))
    write_doubler(repository, "tiny")
    every = set(os.sched_getaffinity(0))
    others = every - {args.router_core} or every if args.pin_b else every
    with TritonServer(repository, load_models=["tiny"]) as triton:
        for pid in [os.getpid(), triton.pid, *triton.stub_pids()]:
            pin_all_threads(pid, others)
        router_cores = {args.router_core} if args.pin_b else every
        router = start_router("tiny", triton.http_port, triton.grpc_port, router_cores)
        try:
            await wait_ready(f"http://127.0.0.1:{router.http_port}/v2/models/tiny/ready")
            print(f"\n(b) real Triton (python-backend doubler) and the load generator on cores "
                  f"{sorted(others)}, router on cores {sorted(router_cores)}, "
                  f"{args.seconds:.0f} s each")  # fmt: skip
            print(f"{'protocol':<8} {'conc':>4} {'direct p50/p99 ms':>18} {'router p50/p99 ms':>18} "
                  f"{'added p50/p99 ms':>17} {'direct req/s':>12} {'router req/s':>12} {'ratio':>6} "
                  f"{'router CPU':>10}")  # fmt: skip
            for protocol, loader, direct_port, router_port in (
                ("HTTP", http_load, triton.http_port, router.http_port),
                ("gRPC", grpc_load, triton.grpc_port, router.grpc_port),
            ):
                for concurrency in (1, 8, 32):
                    direct = await loader(
                        f"127.0.0.1:{direct_port}", "tiny", concurrency, args.seconds
                    )
                    via, cpu = await measured(
                        router.process.pid,
                        loader(f"127.0.0.1:{router_port}", "tiny", concurrency, args.seconds),
                    )
                    d50, d99 = direct.percentile_ms(50), direct.percentile_ms(99)
                    r50, r99 = via.percentile_ms(50), via.percentile_ms(99)
                    print(f"{protocol:<8} {concurrency:>4} {d50:>8.2f}/{d99:<9.2f} {r50:>8.2f}/{r99:<9.2f} "
                          f"{r50 - d50:>+7.2f}/{r99 - d99:<+9.2f} {direct.rate:>12.0f} "
                          f"{via.rate:>12.0f} {via.rate / direct.rate:>5.2f}x {cpu / via.seconds:>9.0%}")  # fmt: skip
        finally:
            router.stop()


def uvloop_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("uvloop") is not None


def pin_all_threads(pid: int, cores: set[int]) -> None:
    """sched_setaffinity on every thread of `pid` (it applies per thread on Linux)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64, help="for part (a)")
    parser.add_argument("--router-core", type=int, default=0)
    parser.add_argument("--only", choices=["a", "b"])
    parser.add_argument(
        "--no-pin-b",
        dest="pin_b",
        action="store_false",
        help="part (b) unpinned: on a shared machine a pinned core waits on its neighbours",
    )
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; the load generator shares the machine")  # fmt: skip
    if args.only != "b":
        asyncio.run(part_a(args))
    if args.only != "a":
        asyncio.run(part_b(args))


if __name__ == "__main__":
    main()
