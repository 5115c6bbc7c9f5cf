"""Triton python-backend model: the postprocess step of a shoal entry (graph outputs -> the
tensors an application gets: EMBEDDING, SCORE, SPARSE_*, COLBERT_*).

shoal copies this file to `<model>__postprocess/1/model.py`, beside `postprocessing.py` (the
exporter's standalone module, the same code its parity check ran) and `step.json`. No shoal
imports: it runs inside Triton with numpy only.

Each request is its own batch here: ragged outputs (sparse terms, ColBERT vectors) are padded per
request, and requests arrive with their own sequence lengths. One response per request; an error
answers that request only, as INTERNAL (HTTP 500): this step's inputs come from the entry's own
steps, so a failure here is the server's, never the client's (the tokenize step answers those).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

STEP_CONFIG = "step.json"
IDS, MASK = "input_ids", "attention_mask"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import postprocessing  # beside this file in the version folder

        version_dir = Path(args["model_repository"]) / args["model_version"]
        settings = json.loads((version_dir / STEP_CONFIG).read_text())
        model_config = json.loads(args["model_config"])
        self.postprocess = postprocessing.postprocess
        self.task = settings["task"]
        self.config = settings["postprocessing"]
        # Inputs that do not come from the graph (extract: the texts, token offsets, word ids).
        self.step_inputs = postprocessing.STEP_INPUTS_BY_TASK.get(self.task, ())
        self.token_inputs = {i["name"] for i in model_config["input"]} & {IDS, MASK}
        if self.task == "extract-zero-shot":  # GLiNER: span decoding, span_extraction.py
            import span_extraction

            self.postprocess = span_extraction.postprocess
            self.step_inputs = span_extraction.STEP_INPUTS
        self.graph_outputs = [
            i["name"]
            for i in model_config["input"]
            if i["name"] not in (IDS, MASK, *self.step_inputs)
        ]
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"]))
            for o in model_config["output"]
        ]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._postprocess(request))
            except Exception as exc:  # noqa: BLE001  one bad request must not fail the others
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses

    def _postprocess(self, request):
        def read(name: str) -> np.ndarray:
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        graph = {name: read(name) for name in self.graph_outputs}
        inputs = {name: read(name) for name in self.step_inputs}
        for name, values in inputs.items():  # TEXT, LABELS: the tokenize step checked the UTF-8
            if values.dtype == object:
                inputs[name] = [
                    v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)
                ]
        # An image entry's graph takes pixels: it has no token ids or mask to pass.
        ids, mask = (read(n) if n in self.token_inputs else None for n in (IDS, MASK))
        results = self.postprocess(self.task, graph, ids, mask, self.config, inputs)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(results[name], dtype=dtype))
                for name, dtype in self.outputs
            ]
        )
