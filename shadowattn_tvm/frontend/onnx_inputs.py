"""A causal-LM ONNX export reduced to ``input_ids -> logits`` for one prefill.

Exports carry more than the token ids: ``attention_mask`` (all ones for one unpadded prompt),
``position_ids`` and ``cache_position`` (0..n-1), ``token_type_ids`` (zeros). Each becomes a
constant of the graph before import, so folding (`onnx_fold.specialize`) turns the mask
subgraph into a constant causal (or sliding-window) mask that detection classifies exactly.
Extra outputs (``present.*`` key/value caches, hidden states) are dropped; the logits stay.
Inputs we cannot fill (a KV cache fed back in) are refused with the fix.
"""
from __future__ import annotations

import numpy as np

#: input name fragment -> values for [1, seq_len] (or [seq_len] when the input is 1-D)
_FILLS = {
    "attention_mask": lambda n: np.ones(n, np.int64),
    "position_ids": lambda n: np.arange(n, dtype=np.int64),
    "cache_position": lambda n: np.arange(n, dtype=np.int64),
    "token_type_ids": lambda n: np.zeros(n, np.int64),
}


def _token_input(inputs):
    named = [i for i in inputs if "input_ids" in i.name]
    if len(named) == 1:
        return named[0]
    ranked = [i for i in inputs if len(i.type.tensor_type.shape.dim) == 2 and i.type.tensor_type.elem_type in (6, 7)]
    if len(ranked) == 1 and not named:
        return ranked[0]
    raise ValueError(f"cannot tell which input holds the token ids among {[i.name for i in inputs]}: name it "
                     "input_ids when exporting")


def prepare_causal_lm(model, seq_len: int):
    """A copy of `model` with only the token-id input left and only the logits output."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs:
        raise ValueError("the ONNX model has no inputs: export it with input_ids as an input")
    tokens = _token_input(inputs)
    fills = []
    for inp in inputs:
        if inp is tokens:
            continue
        if inp.name.startswith(("past", "present")) or "key_values" in inp.name:
            raise ValueError(f"the export takes a KV cache ({inp.name}): export the prefill without one "
                             "(use_cache=False, or optimum's export without past)")
        fill = next((f for key, f in _FILLS.items() if key in inp.name), None)
        if fill is None:
            raise ValueError(f"input {inp.name!r} is neither input_ids nor one we can fill for a prompt "
                             f"({', '.join(_FILLS)}): export the model with input_ids only")
        rank = len(inp.type.tensor_type.shape.dim)
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        value = fill(seq_len).astype(dtype)
        fills.append(numpy_helper.from_array(value.reshape(1, seq_len) if rank == 2 else value, inp.name))
    keep = [i for i in graph.input if i.name in initializers or i is tokens]
    del graph.input[:]
    graph.input.extend(keep)
    graph.initializer.extend(fills)
    outputs = list(graph.output)
    logits = next((o for o in outputs if o.name == "logits"), outputs[0])
    if len(logits.type.tensor_type.shape.dim) != 3:
        raise ValueError(f"output {logits.name!r} is not [batch, seq, vocab] logits: export a causal LM that "
                         "returns logits")
    del graph.output[:]
    graph.output.append(logits)
    return out


__all__ = ["prepare_causal_lm"]
