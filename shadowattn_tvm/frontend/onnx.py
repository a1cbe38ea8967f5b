"""ONNX import: `from_onnx(model, seq_len=N)` -> (IRModule, params) on top of TVM's Relax importer.

Dynamic dimensions: specialise, then fold the shape subgraph
-----------------------------------------------------------
Exporters (``torch.onnx.export(..., dynamic_shapes=...)``) leave the batch and sequence length
symbolic and compute everything that depends on them in the graph: ``Shape -> Gather -> Add ->
Reshape``, ``Range``/``CumSum``/``GatherND`` for positions and the causal mask. TVM 0.27's importer
turns scalar shape arithmetic into ``PrimValue``s that most converters do not accept ("Reshape
expects the input data to be a Tensor. However, the given input is ir.PrimType"), and passing a
static ``shape_dict`` alone does not help (the same Reshape then receives ``PrimValue(17)``).

We chose to specialise: every named dynamic dimension gets a concrete value (``seq_len``,
``batch_size`` or ``dims``), ONNX shape inference makes every intermediate shape static, and the
subgraph that no longer depends on run-time data (``Shape`` of static tensors and everything
computed only from shapes and constants) is evaluated once with ONNX's own reference evaluator
and replaced by constants (`onnx_fold.specialize`). What reaches TVM is the graph a static-length
export would have been.
Why this and not an override converter or symbolic shapes:

- the pipeline wants static shapes anyway: NPU pilot graphs are built per static shape
  (DESIGN.md, phase 3), MetaSchedule tuning needs them, and the causal mask becomes a constant
  that detection classifies exactly (it then skips masked keys instead of carrying a mask);
- Reshape is only the first converter on the path: the same shape values then feed Range,
  CumSum, GatherND and Expand (the mask and position subgraph of every transformers export);
  overriding converters means patching each, per TVM release; folding before import patches none;
- the cost is one import per length, which is cheap (well under a second for small models;
  shadowAttn compiles per prefill length anyway).

A dimension left unbound raises a ``ValueError`` naming it, where it occurs and the argument that
fixes it.

Parameters and constants
------------------------
With ``keep_params_in_input=True`` (the default) the learned weights become trailing parameters
of ``main`` and are returned as ``params`` (name -> numpy array, in ``main``'s parameter order), so
``vm["main"](*inputs, *params.values())`` runs the model. A constant is a weight if it is a float
tensor of more than one element that is not mask-shaped (every value 0 or <= ``MASKED_BELOW``).
Scalars (softmax scales), integer tensors (shapes, indices) and masks stay ``relax.Constant``: the
detection pass must see them to recognise scales and causal masks. The rule looks at values only,
so folded tensors follow it too (a RoPE table folded at ``seq_len`` is a parameter, as it is in a
static-length export of the same model) and both exports split the same way.

Exporter idioms around attention
--------------------------------
transformers' default SDPA attention reaches ONNX through torch's decomposition, which differs
from the explicit form in three ways; `canonicalize_attention` rewrites them after import so
detection finds every block (30/30 for SmolLM2), each rewrite exact for finite inputs:
``matmul(q·√s, kᵀ·√s)`` becomes ``matmul(q, kᵀ)·s``; Kᵀ made as ``reshape(permute(reshape(k,
[B·H, S, D]), [0, 2, 1]), [B, H, D, S])`` becomes ``permute(k, [0, 1, 3, 2])``; and the NaN guard
``where(isnan(p), 0, p)`` after ``p = softmax(scores + mask)`` is dropped when every row of the
constant mask has a finite entry (no row can then be all -inf).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np

from .._compat import relax, tvm
from ..block import MASKED_BELOW
from .onnx_fold import DEFAULT_FOLD_LIMIT, _dims, _graph_inputs, _onnx, dynamic_dims, specialize

_TOKEN_DTYPES = (np.int32, np.int64)


def from_onnx(
    model,
    *,
    seq_len: int | None = None,
    batch_size: int = 1,
    dims: Mapping[str, int] | None = None,
    keep_params_in_input: bool = True,
    opset: int | None = None,
    fold_limit: int = DEFAULT_FOLD_LIMIT,
) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Import an ONNX model (path or ``onnx.ModelProto``) into Relax with static shapes.

    seq_len: binds the dynamic dimension at axis 1 of every 2-D integer input (``input_ids``,
        ``attention_mask``, ``token_type_ids``, ``position_ids``).
    batch_size: binds the dynamic dimension at axis 0 of those inputs (default 1).
    dims: binds dynamic dimensions by name (``{"seq": 128}``); unnamed ones are addressed as
        ``"<input>.<axis>"``. Wins over seq_len/batch_size.
    keep_params_in_input: weights as trailing ``main`` parameters (returned in ``params``);
        False bakes them into the module as constants and returns an empty dict.
    opset: override the model's ai.onnx opset (passed to TVM's importer).
    fold_limit: largest constant (in elements) the shape-subgraph folding may create.

    Returns (IRModule with ``main(inputs..., weights...)``, {weight name: numpy array}).
    """
    onnx, _, _, _ = _onnx()
    if isinstance(model, (str, PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"no ONNX model at {path}")
        model = onnx.load(str(path))
    elif not isinstance(model, onnx.ModelProto):
        raise TypeError(f"from_onnx expects a path or an onnx.ModelProto, got {type(model).__name__}")
    bound = bind_dims(model, seq_len=seq_len, batch_size=batch_size, dims=dims)
    model = specialize(model, bound, fold_limit=fold_limit)
    _check_constant_gathers(model, bound)
    model = _split_constants(model, keep_params_in_input)
    from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Renaming name")  # sanitised input names, expected
        mod = tvm_from_onnx(model, opset=opset, keep_params_in_input=keep_params_in_input)
    mod = canonicalize_attention(mod)
    if not keep_params_in_input:
        return mod, {}
    main = mod["main"]
    num_input = int(main.attrs["num_input"])
    mod, detached = relax.frontend.detach_params(mod)
    names = [p.name for p in main.params[num_input:]]
    params = {name: value.numpy() for name, value in zip(names, detached.get("main", []))}
    return mod, params


def _check_constant_gathers(model, bound) -> None:
    """A table read at constant indices (learned positions read at arange(seq_len)) must have the
    rows: past its end TVM's take reads other memory, so the model would run with made-up rows."""
    _, _, numpy_helper, _ = _onnx()
    tables = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in tables or node.input[1] not in tables:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        dims = list(tables[node.input[0]].dims)
        rows = dims[axis]
        idx = numpy_helper.to_array(tables[node.input[1]])
        if idx.size and (idx.max() >= rows or idx.min() < -rows):
            at = ", ".join(f"{k}={v}" for k, v in sorted(bound.items())) or "the exported shapes"
            raise ValueError(
                f"with {at}, Gather node {node.name or node.output[0]!r} reads row {int(idx.max())} of "
                f"{node.input[0]!r}, which has {rows} rows (for example, learned positions for {rows} tokens): "
                f"use a length of at most {rows}")


# ---------------------------------------------------------------- dynamic dimensions
def bind_dims(model, *, seq_len=None, batch_size=1, dims=None) -> dict[str, int]:
    """Resolve seq_len/batch_size/dims to a value for every dynamic dimension, or raise naming the rest."""
    dyn = dynamic_dims(model)
    bound = {str(k): _positive(v, f"dims[{k!r}]") for k, v in (dims or {}).items()}
    unknown = sorted(set(bound) - set(dyn))
    if unknown:
        raise ValueError(f"dims names {unknown} are not dynamic dimensions of the model's inputs "
                         f"(dynamic: {sorted(dyn) or 'none'})")
    token_inputs = [i for i in _graph_inputs(model) if len(_dims(i)) == 2 and _np_dtype(i) in _TOKEN_DTYPES]
    token_names = {i.name for i in token_inputs}
    for name, uses in dyn.items():
        if name in bound:
            continue
        axes = {axis for inp, axis in uses if inp in token_names}
        if axes == {1} and seq_len is not None:
            bound[name] = _positive(seq_len, "seq_len")
        elif axes == {0}:
            bound[name] = _positive(batch_size, "batch_size")
    if seq_len is not None:
        static = {i.name: _dims(i)[1].dim_value for i in token_inputs if _dims(i)[1].HasField("dim_value")}
        wrong = {name: n for name, n in static.items() if n != seq_len}
        if wrong:
            raise ValueError(f"seq_len={seq_len}, but the model was exported with a static length "
                             f"({', '.join(f'{k}: {v} tokens' for k, v in wrong.items())}); re-export it with a "
                             f"dynamic sequence dimension or at {seq_len} tokens")
    missing = {name: uses for name, uses in dyn.items() if name not in bound}
    if missing:
        where = "; ".join(f"{name!r} ({', '.join(f'{inp} axis {axis}' for inp, axis in uses)})"
                          for name, uses in missing.items())
        seq_names = [n for n, uses in missing.items() if all(a == 1 for _, a in uses)]
        hint = f"seq_len=<tokens> (binds {', '.join(map(repr, seq_names))}) or " if seq_names and seq_len is None else ""
        example = ", ".join(f"{n!r}: <int>" for n in missing)
        raise ValueError(
            f"the model has dynamic dimensions {where}. TVM 0.27's ONNX importer cannot lower shape "
            f"arithmetic on them (\"Reshape expects the input data to be a Tensor\"), so shadowattn "
            f"specialises them to concrete values: pass {hint}dims={{{example}}}")
    return bound


def _positive(value, what) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _np_dtype(value_info):
    _, helper, _, _ = _onnx()
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)).type
    except (KeyError, TypeError):  # not a tensor, or no element type declared
        return None


# ---------------------------------------------------------------- weights vs constants
def is_weight(array: np.ndarray) -> bool:
    """A learned tensor (becomes a parameter), as opposed to a scale, shape, index or mask."""
    if array.dtype.kind != "f" or array.size <= 1:
        return False
    if array.ndim >= 2:
        head = array.reshape(-1)[:256]
        if ((head == 0) | (head <= MASKED_BELOW)).all() and ((array == 0) | (array <= MASKED_BELOW)).all():
            return False  # an additive mask (or an all-zero tensor): detection must see its value
    return True


def _split_constants(model, keep_params_in_input: bool):
    """Initializers that are not weights become Constant nodes, so TVM imports them as constants
    even when it lifts the initializers into parameters."""
    if not keep_params_in_input:
        return model
    _, helper, numpy_helper, _ = _onnx()
    graph = model.graph
    weights, constants = [], []
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        if is_weight(array):
            weights.append(tensor)
        else:
            constants.append(helper.make_node("Constant", [], [tensor.name], value=tensor))
    if not constants:
        return model
    new_graph = helper.make_graph(constants + list(graph.node), graph.name, _graph_inputs(model),
                                  list(graph.output), initializer=weights, value_info=list(graph.value_info))
    return helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             producer_name=model.producer_name, producer_version=model.producer_version)


from .onnx_idioms import canonicalize_attention  # noqa: E402

__all__ = ["from_onnx", "canonicalize_attention", "bind_dims", "dynamic_dims", "specialize", "is_weight", "DEFAULT_FOLD_LIMIT"]
