"""Every generated config.pbtxt parses into Triton's ModelConfig protobuf, for every task and
runtime, and says what the manifest and options say."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from shoal.contract import OUTPUTS_BY_TASK, Runtime, Task
from shoal.model_repository.entry import (
    EntryError,
    EntryOptions,
    GpuAccelerator,
    InstanceKind,
    render_configs,
)
from tests.model_repository.sample_manifests import sample_image_manifest, sample_manifest


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("runtime", list(Runtime))
@pytest.mark.parametrize("task", list(Task))
def test_every_config_of_every_task_and_runtime_parses(task: Task, runtime: Runtime) -> None:
    manifest = sample_manifest(task, runtime)
    configs = {key: parse(text) for key, text in render_configs(manifest, EntryOptions()).items()}

    ensemble = configs["ensemble"]
    assert ensemble.platform == "ensemble"
    assert ensemble.name == manifest.name
    assert [o.name for o in ensemble.output] == list(OUTPUTS_BY_TASK[task])
    assert [i.name for i in ensemble.input] == [t.name for t in manifest.inputs]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        f"{manifest.name}__tokenize",
        f"{manifest.name}__encode",
        f"{manifest.name}__postprocess",
    ]
    for config in configs.values():
        assert config.max_batch_size == manifest.max_batch_size
    encode = configs["encode"]
    assert encode.backend == ("onnxruntime" if runtime is Runtime.ONNXRUNTIME else "python")
    assert encode.HasField("dynamic_batching")
    assert [i.name for i in encode.input] == [t.name for t in manifest.encoder_inputs]
    assert [o.name for o in encode.output] == [t.name for t in manifest.encoder_outputs]
    assert configs["tokenize"].backend == "python"
    assert configs["postprocess"].backend == "python"


def test_ensemble_wires_each_step_output_to_the_next_step() -> None:
    ensemble = parse(render_configs(sample_manifest(Task.MULTI), EntryOptions())["ensemble"])
    produced = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        assert set(step.input_map.values()) <= produced, step.model_name
        produced |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= produced


def test_text_type_is_an_optional_input_and_text_is_required() -> None:
    configs = render_configs(sample_manifest(Task.EMBED), EntryOptions())
    for key in ("ensemble", "tokenize"):
        inputs = {i.name: i for i in parse(configs[key]).input}
        assert inputs["TEXT_TYPE"].optional
        assert not inputs["TEXT"].optional
        assert inputs["TEXT"].data_type == model_config_pb2.TYPE_STRING


def test_portable_encode_accepts_requests_of_different_lengths_in_one_batch() -> None:
    configs = render_configs(sample_manifest(Task.EMBED, Runtime.PORTABLE), EntryOptions())
    assert all(i.allow_ragged_batch for i in parse(configs["encode"]).input)
    assert all(i.allow_ragged_batch for i in parse(configs["postprocess"]).input)


def test_gpu_pool_with_tensorrt_gets_fp16_and_a_profile_covering_every_shape() -> None:
    manifest = sample_manifest(Task.EMBED, Runtime.ONNXRUNTIME)
    options = EntryOptions(
        instance_kind=InstanceKind.GPU,
        instance_count=2,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_microseconds=250,
    )
    encode = parse(render_configs(manifest, options)["encode"])
    assert encode.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert encode.instance_group[0].count == 2
    assert list(encode.dynamic_batching.preferred_batch_size) == [4, 8]
    assert encode.dynamic_batching.max_queue_delay_microseconds == 250
    (accelerator,) = encode.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert "input_ids:8x64" in accelerator.parameters["trt_profile_max_shapes"]
    assert "input_ids:1x1" in accelerator.parameters["trt_profile_min_shapes"]


def test_a_gliner_tensorrt_profile_follows_each_inputs_rank_and_span_count() -> None:
    """GLiNER's inputs are not all [batch, tokens]: fixed dims stay, spans go to max_width per
    token (a word has at least one token)."""
    manifest = sample_manifest(Task.EXTRACT_ZERO_SHOT, Runtime.ONNXRUNTIME)
    encode = parse(render_configs(manifest, EntryOptions(instance_kind=InstanceKind.GPU))["encode"])
    (accelerator,) = encode.optimization.execution_accelerators.gpu_execution_accelerator
    shapes = dict(
        item.split(":") for item in accelerator.parameters["trt_profile_max_shapes"].split(",")
    )
    assert shapes == {
        "input_ids": "8x64",
        "attention_mask": "8x64",
        "words_mask": "8x64",
        "text_lengths": "8x1",
        "span_idx": "8x256x2",
        "span_mask": "8x256",
    }
    assert "span_idx:1x4x2" in accelerator.parameters["trt_profile_min_shapes"]


def test_gpu_pool_with_cuda_and_cpu_pool_without_accelerator() -> None:
    manifest = sample_manifest(Task.EMBED, Runtime.ONNXRUNTIME)
    cuda = EntryOptions(instance_kind="gpu", gpu_accelerator=GpuAccelerator.CUDA)
    encode = parse(render_configs(manifest, cuda)["encode"])
    (accelerator,) = encode.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "cuda"
    cpu = parse(render_configs(manifest, EntryOptions())["encode"])
    assert cpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator


def test_options_that_contradict_the_manifest_are_refused_with_both_values() -> None:
    manifest = sample_manifest(Task.EMBED, Runtime.PORTABLE)
    with pytest.raises(EntryError, match=r"'onnxruntime'.*'portable'"):
        render_configs(manifest, EntryOptions(runtime=Runtime.ONNXRUNTIME))
    with pytest.raises(EntryError, match="max_batch_size is 4 .* says 8"):
        render_configs(manifest, EntryOptions(max_batch_size=4))
    with pytest.raises(EntryError, match=r"\[16\]"):
        render_configs(manifest, EntryOptions(preferred_batch_sizes=(4, 16)))


def test_invalid_options_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="instance_count"):
        EntryOptions(instance_count=0)
    with pytest.raises(ValueError, match="'tpu' is not a valid InstanceKind"):
        EntryOptions(instance_kind="tpu")


@pytest.mark.parametrize("runtime", list(Runtime))
def test_an_image_entry_feeds_pixel_values_from_its_first_step(runtime: Runtime) -> None:
    manifest = sample_image_manifest(runtime)
    configs = {key: parse(text) for key, text in render_configs(manifest, EntryOptions()).items()}
    ensemble = configs["ensemble"]
    assert [(i.name, list(i.dims)) for i in ensemble.input] == [("IMAGE", [1])]
    assert [o.name for o in ensemble.output] == ["EMBEDDING"]
    steps = {s.model_name: s for s in ensemble.ensemble_scheduling.step}
    first = steps[f"{manifest.name}__tokenize"]
    assert dict(first.input_map) == {"IMAGE": "IMAGE"}
    assert list(first.output_map) == ["pixel_values"]
    assert list(steps[f"{manifest.name}__postprocess"].input_map) == ["embeddings"]
    assert [(i.name, list(i.dims)) for i in configs["encode"].input] == [
        ("pixel_values", [3, 32, 32])
    ]
    assert [(o.name, list(o.dims)) for o in configs["tokenize"].output] == [
        ("pixel_values", [3, 32, 32])
    ]


def test_an_image_entry_on_tensorrt_profiles_whole_images() -> None:
    manifest = sample_image_manifest(Runtime.ONNXRUNTIME)
    encode = parse(render_configs(manifest, EntryOptions(instance_kind="gpu"))["encode"])
    (accelerator,) = encode.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["trt_profile_min_shapes"] == "pixel_values:1x3x32x32"
    assert accelerator.parameters["trt_profile_max_shapes"] == "pixel_values:8x3x32x32"
