"""LRU on a real Triton: with a budget that fits two of three tiny embedders, using the third
evicts the least recently used (only its encode step), and the evicted one loads again when
asked; models loaded by a client straight through Triton are noticed and the budget enforced."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.http as httpclient

from shoal.fleet.placement import LeastRecentlyUsed
from shoal.manifest import Manifest
from shoal.model_repository.repository import check_entry
from shoal.runtime.controller import (
    EntryBroken,
    LocalController,
    PlacementRefused,
    UnknownModel,
)
from tests.runtime.entries import export_tiny_embedders

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.timeout(300)]

NAMES = ["ma", "mb", "mc"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("lru") / "repository"
    export_tiny_embedders(tiny_model("bert"), path, NAMES)
    return path


def embed(server, model: str, text: str = "a shoal of fish") -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_address)
    try:
        tensor = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        return client.infer(model, [tensor]).as_numpy("EMBEDDING")
    finally:
        client.close()


def states(controller: LocalController) -> dict[str, tuple[str | None, str | None, bool]]:
    return {n: (e.ensemble, e.encode, e.light_steps_ready) for n, e in controller.entries.items()}


async def test_using_a_third_model_evicts_the_least_recently_used(triton_server, repository):
    server = triton_server(repository)
    manifests = {n: Manifest.read(repository / n) for n in NAMES}
    per_model = max(m.memory_bytes for m in manifests.values())
    controller = LocalController(
        server.http_url, manifests, budget_bytes=int(per_model * 2.5), policy=LeastRecentlyUsed()
    )
    assert await controller.start() == ["ma", "mb"]  # what fits, in name order
    before = embed(server, "ma")
    embed(server, "mb")  # mb is now the most recently used

    await controller.ensure_loaded("mc")
    await controller.refresh()
    assert states(controller)["ma"] == ("UNAVAILABLE", "UNAVAILABLE", True)
    assert controller.entries["mb"].ready and controller.entries["mc"].ready
    embed(server, "mc")

    # The evicted one loads again when asked (only its encode step), and answers the same.
    await controller.ensure_loaded("ma")
    await controller.refresh()
    assert controller.entries["ma"].ready
    assert not controller.entries["mb"].loaded  # mb was used before mc was loaded
    np.testing.assert_allclose(embed(server, "ma"), before, atol=1e-6)
    assert controller.used_bytes() <= controller.budget_bytes


async def test_a_client_loading_through_triton_is_noticed_and_the_budget_enforced(
    triton_server, repository
):
    server = triton_server(repository)
    manifests = {n: Manifest.read(repository / n) for n in NAMES}
    per_model = max(m.memory_bytes for m in manifests.values())
    controller = LocalController(
        server.http_url, manifests, budget_bytes=int(per_model * 2.5), policy=LeastRecentlyUsed()
    )
    await controller.start(load=["ma", "mb"])
    embed(server, "mb")
    embed(server, "ma")
    client = httpclient.InferenceServerClient(server.http_address)
    client.load_model("mc")  # plain tritonclient, behind the controller's back
    client.close()
    assert await controller.enforce_budget() == ["mb"]
    assert controller.used_bytes() <= controller.budget_bytes
    embed(server, "mc")
    embed(server, "ma")


async def test_unknown_and_oversized_models_get_clear_errors_and_serving_goes_on(
    triton_server, repository
):
    server = triton_server(repository)
    manifests = {n: Manifest.read(repository / n) for n in NAMES}
    per_model = max(m.memory_bytes for m in manifests.values())
    controller = LocalController(server.http_url, manifests, budget_bytes=int(per_model * 1.5))
    await controller.start(load=["ma"])
    with pytest.raises(UnknownModel, match="'nope'.*models: ma, mb, mc"):
        await controller.ensure_loaded("nope")
    controller.entries["ma"].pinned = True
    with pytest.raises(PlacementRefused, match="pinned: ma"):
        await controller.ensure_loaded("mb")
    client = httpclient.InferenceServerClient(server.http_address)
    with pytest.raises(Exception, match="nope"):
        client.infer("nope", [httpclient.InferInput("TEXT", [1, 1], "BYTES")])
    client.close()
    embed(server, "ma")


async def test_an_entry_that_fails_the_check_is_never_handed_to_triton(
    triton_server, repository, tmp_path
):
    # Triton hangs forever loading a python step without its model.py (and every load behind it).
    broken_repository = tmp_path / "repository"
    shutil.copytree(repository, broken_repository)
    (broken_repository / "mc__tokenize" / "1" / "model.py").unlink()
    server = triton_server(broken_repository)
    manifests = {n: Manifest.read(broken_repository / n) for n in NAMES}
    controller = LocalController(
        server.http_url,
        manifests,
        entry_check=lambda name: check_entry(broken_repository, name).problems,
    )
    assert await controller.start() == ["ma", "mb"]  # mc skipped, the others served
    with pytest.raises(EntryBroken, match=r"'mc'.*mc__tokenize/1/model.py is missing"):
        await controller.ensure_loaded("mc")
    await controller.refresh()
    assert controller.entries["mc"].ensemble is None  # Triton was never asked
    embed(server, "ma")
