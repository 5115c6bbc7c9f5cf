"""Reading pool and model specs: quantities, defaults and the checks a schema cannot do."""

from __future__ import annotations

import pytest

from shoal.operator.specs import SpecError, model_spec, pool_spec

POOL = {
    "triton": {"image": "nvcr.io/nvidia/tritonserver:24.10-py3"},
    "storage": {"pvc": {"claimName": "models"}},
    "memoryPerReplica": "16Gi",
}


def test_a_size_the_grammar_refuses_is_a_spec_error_naming_the_field():
    with pytest.raises(SpecError, match=r"spec.memory='3Qi'.*Mi"):
        model_spec("m", "ns", {"pool": "p", "memory": "3Qi"})
    with pytest.raises(SpecError, match=r"spec.memoryPerReplica=.*64-bit"):
        pool_spec("p", "ns", {**POOL, "memoryPerReplica": "99999999999999999999Ei"})


def test_pool_defaults():
    pool = pool_spec("gpu-a", "ns", POOL)
    assert pool.memory_per_replica == 16 * 2**30
    assert (pool.min_replicas, pool.max_replicas) == (1, 1)
    assert pool.fixed_size
    assert pool.triton_repository == "/models"


def test_pool_min_above_max_is_reported_with_both_values():
    with pytest.raises(SpecError, match=r"min \(3\).*max \(2\)"):
        pool_spec("p", "ns", {**POOL, "replicas": {"min": 3, "max": 2}})


def test_pool_needs_exactly_one_storage():
    with pytest.raises(SpecError, match="exactly one"):
        pool_spec("p", "ns", {**POOL, "storage": {"pvc": {"claimName": "m"}, "uri": "s3://b/r"}})


def test_pool_with_object_store_passes_the_uri_to_triton():
    pool = pool_spec("p", "ns", {**POOL, "storage": {"uri": "s3://bucket/repo"}})
    assert pool.triton_repository == "s3://bucket/repo"


def test_model_entry_defaults_to_its_name_and_memory_override_parses():
    model = model_spec("minilm", "ns", {"pool": "p", "memory": "300Mi"})
    assert model.entry == "minilm"
    assert model.memory_override == 300 * 2**20
    assert (model.pinned, model.priority, model.min_replicas) == (False, 0, 1)


def test_model_without_pool_or_gpu_class_is_rejected():
    with pytest.raises(SpecError, match="spec.pool"):
        model_spec("m", "ns", {})


@pytest.mark.parametrize("name", ["pool.v2", "Pool", "9lives", "p" * 64, "gpu_a", "ends-"])
def test_a_pool_name_kubernetes_cannot_use_for_its_children_is_a_short_spec_error(name):
    with pytest.raises(SpecError, match="DNS-1035 label") as raised:
        pool_spec(name, "ns", POOL)
    assert len(str(raised.value)) < 400
    assert "pool-v2" in str(raised.value) or name != "pool.v2"


def test_a_63_character_pool_name_is_accepted():
    assert pool_spec("p" * 63, "ns", POOL).name == "p" * 63
