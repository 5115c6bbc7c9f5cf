"""Tiny model-repository entries for the operator's tests: the real entry layout (three
python-backend steps and an ensemble, plus a shoal.json manifest), with steps that do trivial
arithmetic. The operator's tests are about placement, not model math.
"""

from __future__ import annotations

from pathlib import Path

from shoal.manifest import Manifest, TensorSpec
from shoal.model_repository.layout import VERSION, EntryLayout

STEP_MODEL_PY = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        broken = config.get("parameters", {}).get("BROKEN", {}).get("string_value")
        if broken:
            raise RuntimeError(broken)
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            if data.dtype == np.object_:
                values = np.array([[float(len(x[0]))] for x in data], dtype=np.float32)
            else:
                values = data.astype(np.float32) + 1.0
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, values)]))
        return responses
"""

STEP_IO = {"tokenize": ("TEXT", "TYPE_STRING", "IDS"), "encode": ("IDS", "TYPE_FP32", "HIDDEN"),
           "postprocess": ("HIDDEN", "TYPE_FP32", "EMBEDDING")}  # fmt: skip


def _step_config(name: str, step: str, broken: str | None) -> str:
    source, dtype, target = STEP_IO[step]
    parameters = (
        f'parameters {{ key: "BROKEN" value: {{ string_value: "{broken}" }} }}\n' if broken else ""
    )
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
        f'input [{{ name: "{source}" data_type: {dtype} dims: [1] }}]\n'
        f'output [{{ name: "{target}" data_type: TYPE_FP32 dims: [1] }}]\n'
        "instance_group [{ kind: KIND_CPU count: 1 }]\n" + parameters
    )


def _ensemble_config(layout: EntryLayout) -> str:
    steps = layout.step_names
    return f'''name: "{layout.model}"
platform: "ensemble"
max_batch_size: 8
input [{{ name: "TEXT" data_type: TYPE_STRING dims: [1] }}]
output [{{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [1] }}]
ensemble_scheduling {{ step [
  {{ model_name: "{steps["tokenize"]}" model_version: -1
     input_map {{ key: "TEXT" value: "TEXT" }} output_map {{ key: "IDS" value: "ids" }} }},
  {{ model_name: "{steps["encode"]}" model_version: -1
     input_map {{ key: "IDS" value: "ids" }} output_map {{ key: "HIDDEN" value: "hidden" }} }},
  {{ model_name: "{steps["postprocess"]}" model_version: -1
     input_map {{ key: "HIDDEN" value: "hidden" }}
     output_map {{ key: "EMBEDDING" value: "EMBEDDING" }} }}
] }}
'''


def write_entry(repository: Path, model: str, memory_bytes: int, broken: str | None = None) -> None:
    """An entry whose manifest says it needs `memory_bytes`; `broken` makes its encode step fail
    to load with that message."""
    layout = EntryLayout(repository, model)
    for step, name in layout.step_names.items():
        version_dir = layout.model_dir(name) / VERSION
        version_dir.mkdir(parents=True, exist_ok=True)
        (version_dir / "model.py").write_text(STEP_MODEL_PY)
        step_broken = broken if step == "encode" else None
        (layout.model_dir(name) / "config.pbtxt").write_text(_step_config(name, step, step_broken))
    (layout.ensemble_dir / VERSION).mkdir(parents=True, exist_ok=True)
    (layout.ensemble_dir / "config.pbtxt").write_text(_ensemble_config(layout))
    _manifest(model, memory_bytes).write(layout.ensemble_dir)


def _manifest(model: str, memory_bytes: int) -> Manifest:
    return Manifest(
        name=model,
        source="tests/operator",
        architecture="bert",
        model_type="bert",
        task="embed",
        pooling="mean",
        normalize=True,
        max_length=16,
        dims=1,
        dtype="fp32",
        runtime="portable",
        padding_side="right",
        inputs=[TensorSpec("TEXT", "BYTES", [1])],
        outputs=[TensorSpec("EMBEDDING", "FP32", [1])],
        encoder_inputs=[TensorSpec("IDS", "FP32", [1])],
        encoder_outputs=[TensorSpec("HIDDEN", "FP32", [1])],
        parameter_count=1,
        weights_bytes=memory_bytes // 2,
        memory_bytes=memory_bytes,
        max_batch_size=8,
        fused_attention=0,
        onnx_opset=17,
        sha256={},
        source_sha256="0" * 64,
        parity=[],
    )
