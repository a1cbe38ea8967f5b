"""Specialise an ONNX graph's dynamic dimensions and fold its shape subgraph (see `frontend.onnx`).

`specialize(model, dims)` binds every dynamic input dimension, runs ONNX shape inference so
every intermediate shape is static, and evaluates with ONNX's reference evaluator every node that
no longer depends on run-time data (``Shape`` of static tensors and everything computed only from
shapes and constants), replacing it by a constant, until nothing more folds.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np

DEFAULT_FOLD_LIMIT = 1 << 24  # elements: a folded constant larger than this stays computed at run time

# Never evaluated at import: random ops and control flow (subgraphs are not folded).
_NO_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                      "Bernoulli", "If", "Loop", "Scan", "SequenceEmpty"})
_MAX_ROUNDS = 16


def _onnx():
    import onnx  # a runtime dependency, imported late to keep `import shadowattn_tvm` light
    from onnx import helper, numpy_helper, shape_inference

    return onnx, helper, numpy_helper, shape_inference


def dynamic_dims(model) -> dict[str, list[tuple[str, int]]]:
    """Every dynamic dimension of the graph inputs: name -> [(input, axis), ...].

    Unnamed dynamic dimensions are called ``"<input>.<axis>"``.
    """
    found: dict[str, list[tuple[str, int]]] = {}
    for inp in _graph_inputs(model):
        for axis, dim in enumerate(_dims(inp)):
            if dim.HasField("dim_value"):
                continue
            name = dim.dim_param or f"{inp.name}.{axis}"
            found.setdefault(name, []).append((inp.name, axis))
    return found


def _graph_inputs(model):
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(value_info):
    tt = value_info.type.tensor_type
    return list(tt.shape.dim) if tt.HasField("shape") else []


def specialize(model, dims: Mapping[str, int], *, fold_limit: int = DEFAULT_FOLD_LIMIT):
    """A copy of `model` with dynamic input dimensions bound and the shape subgraph folded.

    Raises ValueError if a dynamic input dimension is not in `dims` (see `bind_dims`).
    """
    onnx, helper, _, _ = _onnx()
    if model.functions:
        import onnx.inliner

        model = onnx.inliner.inline_local_functions(model)
    left = sorted(set(dynamic_dims(model)) - set(dims))
    if left:
        raise ValueError(f"dynamic dimensions {left} are not bound (see bind_dims)")
    graph = model.graph
    inputs = [_bind_value_info(i, dims) for i in _graph_inputs(model)]
    outputs = [_bind_value_info(o, dims, clear_unbound=True) for o in graph.output]
    opsets = {o.domain or "": o.version for o in model.opset_import}
    consts = _Constants(graph)
    nodes = list(graph.node)
    for _ in range(_MAX_ROUNDS):
        shapes = _infer_shapes(model, nodes, inputs, outputs, consts)
        nodes, folded = _fold_round(nodes, consts, shapes, opsets, fold_limit)
        if not folded:
            break
    used = {name for node in nodes for name in node.input} | {o.name for o in outputs}
    new_graph = helper.make_graph(nodes, graph.name, inputs, outputs, initializer=consts.tensors(used))
    new_graph.doc_string = graph.doc_string
    return helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             producer_name=model.producer_name, producer_version=model.producer_version)


def _bind_value_info(value_info, dims, clear_unbound=False):
    vi = type(value_info)()
    vi.CopyFrom(value_info)
    for axis, dim in enumerate(_dims(vi)):
        if dim.HasField("dim_value"):
            continue
        name = dim.dim_param or f"{vi.name}.{axis}"
        if name in dims:
            dim.dim_value = int(dims[name])
        elif clear_unbound:
            dim.ClearField("dim_param")
    return vi


class _Constants:
    """Known constant values by name: original initializers (left as TensorProto until needed)
    and folded results (numpy)."""

    def __init__(self, graph):
        self.values: dict = {t.name: t for t in graph.initializer}

    def __contains__(self, name):
        return name in self.values

    def array(self, name) -> np.ndarray:
        value = self.values[name]
        if not isinstance(value, np.ndarray):
            _, _, numpy_helper, _ = _onnx()
            value = numpy_helper.to_array(value)
            self.values[name] = value
        return value

    def shape(self, name):
        value = self.values[name]
        return tuple(value.shape) if isinstance(value, np.ndarray) else tuple(value.dims)

    def tensors(self, names):
        _, _, numpy_helper, _ = _onnx()
        out = []
        for name in sorted(n for n in names if n in self.values):
            value = self.values[name]
            out.append(numpy_helper.from_array(value, name) if isinstance(value, np.ndarray) else value)
        return out

    def value_info(self, name):
        _, helper, _, _ = _onnx()
        value = self.values[name]
        if isinstance(value, np.ndarray):
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            return helper.make_tensor_value_info(name, elem, value.shape)
        return helper.make_tensor_value_info(name, value.data_type, list(value.dims))


_SMALL = 4096  # constants up to this size go into the shape-inference model by value


def _infer_shapes(model, nodes, inputs, outputs, consts) -> dict[str, tuple | None]:
    """Static shapes (None where unknown) of every value, from ONNX shape inference on a copy of
    the graph that carries large constants by type only (no weight bytes copied)."""
    _, helper, _, shape_inference = _onnx()
    used = {name for node in nodes for name in node.input}
    small = [n for n in used if n in consts and math.prod(consts.shape(n)) <= _SMALL]
    large = [consts.value_info(n) for n in used if n in consts and math.prod(consts.shape(n)) > _SMALL]
    graph = helper.make_graph(nodes, "shapes", list(inputs) + large,
                              outputs, initializer=consts.tensors(small))
    skel = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        inferred = shape_inference.infer_shapes(skel, data_prop=True)
    except Exception as err:  # noqa: BLE001 - fall back to what is declared
        warnings.warn(f"ONNX shape inference failed ({err}); folding only what needs no shapes")
        inferred = skel
    shapes: dict[str, tuple | None] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = _dims(vi)
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        elif vi.name not in shapes:
            shapes[vi.name] = None
    return shapes


def _fold_round(nodes, consts, shapes, opsets, fold_limit):
    """Evaluate every node whose result needs no run-time data; returns (remaining nodes, #folded)."""
    kept, folded = [], 0
    for node in nodes:
        results = _evaluate(node, consts, shapes, opsets, fold_limit)
        if results is None:
            kept.append(node)
            continue
        for name, value in results.items():
            consts.values[name] = value
        folded += node.op_type != "Constant"
    return kept, folded


def _evaluate(node, consts, shapes, opsets, fold_limit):
    """{output: value} if `node` can be computed now, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _NO_FOLD:
        return None
    if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
        return None
    if node.op_type in ("Shape", "Size") and node.input[0] not in consts:
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        if node.op_type == "Size":
            return {node.output[0]: np.array(math.prod(shape), np.int64)}
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return {node.output[0]: np.array(shape[start:end], np.int64)}
    inputs = [name for name in node.input if name]
    if not all(name in consts for name in inputs):
        return None
    for out in node.output:
        shape = shapes.get(out)
        if shape is not None and math.prod(shape) > fold_limit:
            return None
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opsets.get("", opsets.get("ai.onnx", 18))})
        values = evaluator.run(None, {name: consts.array(name) for name in inputs})
    except Exception:  # noqa: BLE001 - an op the reference cannot run stays in the graph
        return None
    values = [np.asarray(v) for v in values]
    if any(v.size > fold_limit or v.dtype == object for v in values):
        return None
    return {name: value for name, value in zip(node.output, values) if name}


__all__ = ["DEFAULT_FOLD_LIMIT", "dynamic_dims", "specialize"]
