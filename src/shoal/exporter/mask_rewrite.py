"""Rewrite an encoder graph's 4D padding mask into the form onnxruntime's attention fusion knows.

Used by `optimize.optimize_graph` before fusing. transformers 5 builds the additive 4D mask that is
added to the attention scores with boolean ops (`create_bidirectional_mask`); the dynamo exporter
turns that into GatherND/And/Where, which onnxruntime's matcher (fusion_attention.py) does not
recognise, so no attention block fuses. For a bidirectional encoder that 4D mask is only the 2D
padding mask broadcast over heads and queries, so we replace it with a pattern the matcher
expects (transformers 4's SDPA mask; its Mul-based classic form is not usable because transformers 5
scales the scores with a Mul too, and the matcher takes the first Mul it finds):

    inverted = 1 - Cast(Expand(Unsqueeze(Unsqueeze(attention_mask, 1), 2)), float)
    Where(Cast(inverted, bool), min_float, inverted)

The rewrite happens only after running the original mask subgraph on probe masks (right and left
padding, holes) and checking it computes exactly that padding mask: a causal or otherwise different
mask is left alone.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

# What the rewritten mask puts on padded keys (transformers uses the dtype's minimum as well).
MASK_FILTER_VALUE = float(np.finfo(np.float32).min)
# Original mask values at or below this count as "masked" when checking equivalence.
_MASKED_AT_MOST = -1e4
_PREFIX = "shoal_padding_mask"


def canonicalize_padding_mask(model: onnx.ModelProto) -> bool:
    """Rewrite the shared additive attention mask of `model` in place; True if rewritten."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    score_adds = _softmax_score_adds(graph, producers)
    if not score_adds:
        return False
    mask_names = {mask for _, mask in score_adds}
    if len(mask_names) != 1:
        logger.debug("attention blocks use %d different masks; not rewriting", len(mask_names))
        return False
    mask_name = mask_names.pop()
    if mask_name.startswith(_PREFIX):
        return False  # already canonical

    source = _padding_mask_source(model, mask_name, producers)
    if source is None:
        logger.debug("mask %s is not a plain padding mask; not rewriting", mask_name)
        return False

    new_mask = _add_canonical_mask(model, source)
    for add, old in score_adds:
        for i, name in enumerate(add.input):
            if name == old:
                add.input[i] = new_mask
    _remove_dead_nodes(model)
    logger.debug("rewrote attention mask %s from input %s", mask_name, source)
    return True


def _softmax_score_adds(
    graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto]
) -> list[tuple[onnx.NodeProto, str]]:
    """(Add node, mask tensor name) for each Softmax(Add(scaled scores, mask)) in the graph."""
    found = []
    initializers = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        add = producers.get(node.input[0])
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            continue
        kinds = [producers[i].op_type if i in producers else None for i in add.input]
        # The scores come from MatMul(Q, Kᵀ), possibly scaled by Mul/Div.
        score_index = next((i for i, k in enumerate(kinds) if k in ("Mul", "Div", "MatMul")), None)
        if score_index is None:
            continue
        mask = add.input[1 - score_index]
        if mask in initializers or kinds[1 - score_index] in ("Mul", "Div", "MatMul"):
            continue
        found.append((add, mask))
    return found


def _ancestors(name: str, producers: dict[str, onnx.NodeProto]) -> tuple[list[onnx.NodeProto], set]:
    """Nodes computing `name` (in graph order is not guaranteed) and the tensor names they read."""
    seen_nodes: dict[int, onnx.NodeProto] = {}
    read: set[str] = set()
    stack = [name]
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None:
            read.add(tensor)
            continue
        if id(node) in seen_nodes:
            continue
        seen_nodes[id(node)] = node
        stack.extend(i for i in node.input if i)
    return list(seen_nodes.values()), read


def _padding_mask_source(
    model: onnx.ModelProto, mask_name: str, producers: dict[str, onnx.NodeProto]
) -> str | None:
    """The graph input the mask is a plain padding mask of, checked numerically; else None."""
    nodes, read = _ancestors(mask_name, producers)
    graph_inputs = {i.name: i for i in model.graph.input}
    inputs_read = [graph_inputs[n] for n in graph_inputs if n in read]
    if not inputs_read or any(_rank(i) != 2 or not _is_integer(i) for i in inputs_read):
        return None  # only [batch, sequence] integer inputs (ids, mask, token types) expected

    initializers = [t for t in model.graph.initializer if t.name in read]
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    probe_graph = helper.make_graph(
        nodes,
        "mask_probe",
        inputs_read,
        [helper.make_tensor_value_info(mask_name, TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    probe = helper.make_model(probe_graph, opset_imports=model.opset_import)
    probe.ir_version = model.ir_version
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # an unusual graph: leave it to the optimizer as it is
        logger.debug("could not run the mask subgraph on its own: %s", error)
        return None

    masks = _probe_masks()
    for candidate in inputs_read:
        if all(_is_padding_mask(session, inputs_read, candidate.name, m) for m in masks):
            return candidate.name
    return None


def _probe_masks() -> list[np.ndarray]:
    right = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]])
    left = right[:, ::-1].copy()
    holes = np.array([[1, 0, 1, 0, 1, 1, 0], [0, 1, 1, 1, 0, 1, 1]])
    return [m.astype(np.int64) for m in (right, left, holes, np.ones((1, 3), np.int64))]


def _is_padding_mask(session, inputs, mask_input: str, mask: np.ndarray) -> bool:
    feed = {}
    for value in inputs:
        dtype = np.int32 if value.type.tensor_type.elem_type == TensorProto.INT32 else np.int64
        feed[value.name] = (
            mask.astype(dtype) if value.name == mask_input else np.zeros_like(mask, dtype)
        )
    try:
        (out,) = session.run(None, feed)
    except Exception:
        return False
    batch, seq = mask.shape
    if out.ndim != 4 or out.shape[0] not in (1, batch) or out.shape[-1] != seq:
        return False
    out = np.broadcast_to(out, (batch, out.shape[1], out.shape[2], seq))
    keep = np.broadcast_to(mask[:, None, None, :].astype(bool), out.shape)
    return bool(np.all(out[keep] == 0) and np.all(out[~keep] <= _MASKED_AT_MOST))


def _add_canonical_mask(model: onnx.ModelProto, source: str) -> str:
    graph = model.graph
    names = {n: f"{_PREFIX}/{n}" for n in ("axis1", "axis2", "one", "filter")}
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], np.int64), names["axis1"]),
            numpy_helper.from_array(np.array([2], np.int64), names["axis2"]),
            numpy_helper.from_array(np.array(1.0, np.float32), names["one"]),
            numpy_helper.from_array(np.array(MASK_FILTER_VALUE, np.float32), names["filter"]),
        ]
    )
    out = f"{_PREFIX}/additive"
    n = _PREFIX
    new_nodes = [
        helper.make_node("Unsqueeze", [source, names["axis1"]], [f"{n}/u1"], f"{n}/Unsqueeze1"),
        helper.make_node("Unsqueeze", [f"{n}/u1", names["axis2"]], [f"{n}/u2"], f"{n}/Unsqueeze2"),
        # A no-op Expand (to its own shape) that the matcher's pattern includes.
        helper.make_node("Shape", [f"{n}/u2"], [f"{n}/shape"], f"{n}/Shape"),
        helper.make_node("Expand", [f"{n}/u2", f"{n}/shape"], [f"{n}/expanded"], f"{n}/Expand"),
        helper.make_node(
            "Cast", [f"{n}/expanded"], [f"{n}/float"], f"{n}/Cast", to=TensorProto.FLOAT
        ),
        helper.make_node("Sub", [names["one"], f"{n}/float"], [f"{n}/inverted"], f"{n}/Sub"),
        helper.make_node(
            "Cast", [f"{n}/inverted"], [f"{n}/padded"], f"{n}/CastBool", to=TensorProto.BOOL
        ),
        helper.make_node(
            "Where", [f"{n}/padded", names["filter"], f"{n}/inverted"], [out], f"{n}/Where"
        ),
    ]
    # Graph inputs come first, so the new nodes can lead the (topologically sorted) node list.
    for position, node in enumerate(new_nodes):
        graph.node.insert(position, node)
    return out


def _remove_dead_nodes(model: onnx.ModelProto) -> None:
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_reads(node))
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names read inside a node's subgraphs (If/Loop bodies may use outer-scope tensors)."""
    reads: set[str] = set()
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for sub in graphs:
            for inner in sub.node:
                reads.update(i for i in inner.input if i)
                reads.update(_subgraph_reads(inner))
    return reads


def _rank(value: onnx.ValueInfoProto) -> int:
    return len(value.type.tensor_type.shape.dim)


def _is_integer(value: onnx.ValueInfoProto) -> bool:
    return value.type.tensor_type.elem_type in (TensorProto.INT64, TensorProto.INT32)
