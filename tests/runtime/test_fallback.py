"""An entry exported for Triton's onnxruntime backend is served on this Triton (no such backend)
through the portable fallback view, and stays served when a client reloads it directly."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.fleet.triton_control import TritonControl
from shoal.runtime import client as triton_client
from shoal.runtime.serve import LocalServing

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]


async def test_an_onnxruntime_entry_is_served_with_the_portable_fallback(tmp_path, tiny_model):
    from shoal.exporter import ExportOptions, export_model

    repository = tmp_path / "repository"
    export_model(tiny_model("bert"), "native", repository, ExportOptions(runtime="onnxruntime"))
    assert 'backend: "onnxruntime"' in (repository / "native__encode" / "config.pbtxt").read_text()
    async with LocalServing(repository) as serving:
        assert serving.view.fallback_entries == ("native",)
        await serving.controller.ensure_loaded("native")
        client = triton_client.connect(serving.server.http_address)
        first = triton_client.embed(client, "native", ["a shoal of fish", "x"])
        client.unload_model("native__encode")
        async with TritonControl(serving.server.http_url) as control:
            await control.wait_until_unloaded(["native__encode"])
        client.load_model("native")  # plain tritonclient: the view keeps the fallback
        np.testing.assert_allclose(
            triton_client.embed(client, "native", ["a shoal of fish", "x"]), first, atol=1e-6
        )
        client.close()
        view = serving.view.path
    assert not view.exists()  # the temporary view is removed at stop
    assert (repository / "native__encode" / "config.pbtxt").exists()  # the repository untouched
