"""TritonControl against a real Triton: load/unload/index/statistics, and failed loads classified
(permanent vs retryable) with the detail Triton gives."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.http as httpclient

from shoal.fleet.triton_control import (
    ModelNotFound,
    PermanentTritonError,
    RetryableTritonError,
    TritonControl,
)
from shoal.runtime.triton import free_port
from tests.support.triton import write_doubler

pytestmark = [pytest.mark.triton, pytest.mark.timeout(120)]

BAD_ENUM_CONFIG = """
name: "bad_enum"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_NOPE dims: [ -1 ] } ]
"""

NATIVE_ORT_CONFIG = """
name: "native_ort"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


@pytest.fixture
def repository(tmp_path):
    write_doubler(tmp_path, "doubler")
    for name, config in (("bad_enum", BAD_ENUM_CONFIG), ("native_ort", NATIVE_ORT_CONFIG)):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(config)
    (tmp_path / "native_ort" / "1" / "model.onnx").write_bytes(b"not really onnx")
    return tmp_path


async def test_load_infer_statistics_and_unload(triton_server, repository):
    server = triton_server(repository)
    async with TritonControl(server.http_url, log_reader=server.log_text) as control:
        names = {e.name: e for e in await control.index()}
        assert set(names) == {"doubler", "bad_enum", "native_ort"}
        assert not names["doubler"].ready

        await control.load("doubler")
        assert await control.is_model_ready("doubler")
        client = httpclient.InferenceServerClient(server.http_address)
        x = httpclient.InferInput("X", [2, 2], "FP32")
        x.set_data_from_numpy(np.ones((2, 2), dtype=np.float32))
        client.infer("doubler", [x])
        client.close()

        # Triton records statistics just after the response is sent: poll briefly.
        deadline = asyncio.get_running_loop().time() + 5.0
        (stats,) = await control.statistics("doubler")
        while stats.success_count == 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            (stats,) = await control.statistics("doubler")
        assert stats.last_inference_ms > 0 and stats.success_count == 1
        assert stats.inference_count == 2 and stats.batch_sizes == {2: 1}

        await control.unload("doubler")
        await control.wait_until_unloaded(["doubler"])
        assert not await control.is_model_ready("doubler")
        assert [e.ready for e in await control.index() if e.name == "doubler"] == [False]


async def test_a_config_that_does_not_parse_is_permanent_and_shows_the_parser_message(
    triton_server, repository
):
    server = triton_server(repository)
    async with TritonControl(server.http_url, log_reader=server.log_text) as control:
        with pytest.raises(PermanentTritonError) as failure:
            await control.load("bad_enum")
        assert not failure.value.retryable
        assert "TYPE_NOPE" in str(failure.value)


async def test_a_missing_backend_is_permanent_with_the_reason(triton_server, repository):
    server = triton_server(repository)
    async with TritonControl(server.http_url) as control:
        with pytest.raises(PermanentTritonError, match="unable to find backend library"):
            await control.load("native_ort")


async def test_an_unknown_model_is_named_and_the_server_keeps_serving(triton_server, repository):
    server = triton_server(repository, load_models=["doubler"])
    async with TritonControl(server.http_url, log_reader=server.log_text) as control:
        with pytest.raises(ModelNotFound, match="'no_such_model' is not in the model repository"):
            await control.load("no_such_model")
        assert await control.is_model_ready("doubler")


async def test_a_config_override_is_applied(triton_server, repository):
    server = triton_server(repository)
    async with TritonControl(server.http_url) as control:
        config = await _doubler_config_json(control, server)
        config["max_batch_size"] = 4
        await control.load("doubler", config=config)
        assert (await control.model_config("doubler"))["max_batch_size"] == 4


async def _doubler_config_json(control, server):
    await control.load("doubler")
    config = await control.model_config("doubler")
    await control.unload("doubler")
    await control.wait_until_unloaded(["doubler"])
    return config


async def test_an_unreachable_server_is_retryable():
    async with TritonControl(f"127.0.0.1:{free_port()}", timeout_s=1) as control:
        assert not await control.is_server_ready()
        with pytest.raises(RetryableTritonError, match="unreachable"):
            await control.index()
        with pytest.raises(RetryableTritonError):
            await control.load("anything")
