"""What `shadowattn compile`, `tune` and `deploy` build: a static-length Relax module and its inputs.

MODEL is
* ``default``: the Qwen2-0.5B-shaped attention block of `shadowattn demo block`;
* ``smollm2``, a ``.gguf`` or an ``.onnx`` file (`frontend.open_model`):
  ``main(input_ids[1, tokens], *weights) -> logits``; the weights are inputs of ``main`` (not baked
  into the library), read from the model file through its `weights.WeightMap` when a run needs
  them; the manifest records the file's path and sha256 so deploy can find and check it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .._compat import relax, tvm

from ..demo import DEFAULT_SPEC
from ..testing import AttentionSpec, attention_module
from .manifest import TensorSpec


@dataclass(frozen=True)
class ModelBuild:
    """A model ready to compile: its Relax module, its `main` inputs, and what it is."""

    name: str
    mod: Any = field(compare=False)  # tvm.IRModule
    inputs: tuple
    outputs: tuple
    description: str
    config: dict = field(default_factory=dict, compare=False)  # JSON-able, recorded in the manifest
    weights: Callable[[], dict] | None = field(default=None, compare=False)  # input name -> array (real weights)
    npu_stats: Callable[[], Any] | None = field(default=None, compare=False)  # ScaleStats from sample activations
    weight_map: Any = field(default=None, compare=False)  # weights.WeightMap: where deploy reads the weights
    derived: dict = field(default_factory=dict, compare=False)  # weights in no file: stored in the build
    entry: str = "main"  # the function deploy runs and verifies ("prefill_c0" in a generation build)
    generation: Any = field(default=None, compare=False)  # runtime.generation.GenerationSpec: prefill + decode
    tokenizer: Any = field(default=None, compare=False)  # the model's TextTokenizer (a generation build keeps it)
    reference_prompt: tuple = ()  # token ids the build's reference generation starts from


def _tensor(var_name: str, ty) -> TensorSpec:
    shape = []
    for dim in ty.shape.values:
        value = getattr(dim, "value", None)
        if not isinstance(value, int):
            raise ValueError(f"{var_name}: dimension {dim} is symbolic; compile needs static shapes")
        shape.append(value)
    return TensorSpec(var_name, tuple(shape), str(ty.dtype))


def signature(mod, entry: str = "main") -> tuple[tuple, tuple]:
    """(inputs, outputs) of `mod[entry]` as TensorSpecs (the outputs of a tuple in order)."""
    func = mod[entry]
    inputs = tuple(_tensor(p.name, p.ty) for p in func.params)
    ret = func.ret_ty
    fields = getattr(ret, "fields", None)
    outputs = tuple(_tensor(f"output{i}", t) for i, t in enumerate(fields)) if fields is not None else (
        _tensor("output", ret),)
    return inputs, outputs


def _default(tokens: int) -> ModelBuild:
    spec = AttentionSpec(**{**DEFAULT_SPEC.__dict__, "q_len": tokens})
    mod = attention_module(spec)
    inputs, outputs = signature(mod)
    return ModelBuild(
        name="default", mod=mod, inputs=inputs, outputs=outputs,
        description=f"Qwen2-0.5B-shaped attention block ({spec.heads} q heads, {spec.kv_heads} kv heads, "
                    f"head_dim {spec.head_dim}, causal, GQA), {tokens} tokens",
        config={k: v for k, v in spec.__dict__.items()}, npu_stats=lambda: _default_stats(spec),
    )


def _default_stats(spec):
    from ..npu.demo import calibration_stats  # the block's activations are its inputs: sample them

    return calibration_stats(spec)


def source_build(source, tokens: int, bind_weights: bool = False, capacity: int | None = None,
                 prompt: str | None = None) -> ModelBuild:
    """A `frontend.ModelSource` as a build: `main(input_ids[1, tokens], *weights)` -> logits, weights
    as inputs read from the model file at deploy; with `bind_weights` they are constants of the
    module instead (small models: the library carries them, deploy needs no file).

    With `capacity` (a generation build, GGUF decoders): ``prefill_c0(input_ids[1, tokens], kv,
    last)`` and ``decode(token, kv, pos)`` over a KV cache of `capacity` rows instead of ``main``,
    the tokenizer, and a reference prompt (`prompt`, cut to `tokens`) for deploy to verify."""
    if capacity is not None:
        return _generation_build(source, tokens, capacity, prompt)
    exported = source.export(tokens)
    mod = exported.mod
    if bind_weights:
        weights = exported.weights()
        bound = relax.transform.BindParams("main", {n: tvm.runtime.tensor(weights[n]) for n in exported.weight_names})(
            tvm.IRModule({"main": mod["main"]}))["main"]
        mod = tvm.IRModule({**{gv: f for gv, f in mod.functions.items() if gv.name_hint != "main"}}, attrs=mod.attrs)
        mod["main"] = bound
    inputs, outputs = signature(mod)
    file = {} if source.path is None else {"file": str(source.path.absolute()), "sha256": exported.weight_map.sha256
                                           if exported.weight_map is not None else None}

    return ModelBuild(
        name=source.name, mod=mod, inputs=inputs, outputs=outputs,
        description=f"{source.describe()}, {tokens}-token prefill; weights are {'constants' if bind_weights else 'inputs'}",
        config={"fingerprint": source.fingerprint, **file}, weights=None if bind_weights else exported.weights,
        npu_stats=lambda: _sample_stats(source, tokens), weight_map=None if bind_weights else exported.weight_map,
        derived={} if bind_weights else dict(exported.derived),
    )


REFERENCE_PROMPT = "The capital of France is"


def _generation_build(source, tokens: int, capacity: int, prompt: str | None) -> ModelBuild:
    from ..frontend.source import ModelError
    from ..generation import generation_ir, generation_spec, prompt_ids, decoder_source
    from ..tokenizer import check_token_ids

    source = decoder_source(source)
    ids = prompt_ids(source.tokenizer, REFERENCE_PROMPT if prompt is None else prompt)
    if prompt is not None and len(ids) > tokens:  # our own prompt is cut to the length, a user's is not
        raise ModelError(f"the reference prompt has {len(ids)} tokens but the build prefills {tokens}: shorten "
                         "--prompt or raise --tokens")
    ids = ids[:tokens]
    check_token_ids(ids, source.config.vocab)
    spec = generation_spec(source, tokens, capacity, 1)
    mod, names = generation_ir(source, spec)
    inputs, outputs = signature(mod, "prefill_c0")
    weight_map = source.weight_map
    return ModelBuild(
        name=source.name, mod=mod, inputs=inputs, outputs=outputs,
        description=f"{source.describe()}: generation, {tokens}-token prefill into a {capacity}-row KV cache, "
                    "then decode; weights are inputs",
        config={"fingerprint": source.fingerprint, "file": str(source.path.absolute()), "sha256": weight_map.sha256},
        weights=lambda: {n: source.weights()[n] for n in names}, weight_map=weight_map,
        npu_stats=lambda: _sample_stats(source, tokens), entry="prefill_c0", generation=spec,
        tokenizer=source.tokenizer, reference_prompt=tuple(ids))


def _sample_stats(source, tokens: int):
    from ..calibrate.calibrate import sample_scale_stats
    from ..frontend.model import ModelRunner

    return sample_scale_stats(ModelRunner(source), tokens)


#: the names MODEL may take besides a .gguf or .onnx path
MODELS = ("default", "smollm2")
DEFAULT_TOKENS = DEFAULT_SPEC.q_len


def get_model(name: str, tokens: int = DEFAULT_TOKENS, tokenizer=None, capacity: int | None = None,
              prompt: str | None = None) -> ModelBuild:
    """MODEL (`default`, `smollm2`, a .gguf or .onnx path) at `tokens` prefill length (a generation
    build with a KV cache of `capacity` rows when given); ValueError (`frontend.ModelError`)
    naming the choices otherwise."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a positive integer, got {tokens!r}")
    if str(name) == "default":
        if capacity is not None:
            raise ValueError("'default' is an attention block: generation builds need smollm2 or a .gguf model")
        return _default(tokens)
    from ..frontend.source import open_model

    return source_build(open_model(name, tokenizer), tokens, capacity=capacity, prompt=prompt)


def make_inputs(inputs, seed: int = 0) -> list[np.ndarray]:
    """Deterministic inputs for a signature: standard normal floats, small non-negative ints."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in inputs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays.append(rng.standard_normal(spec.shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 2, size=spec.shape).astype(dtype))
    return arrays


def model_inputs(built: ModelBuild, seed: int = 0, weights: dict | None = None) -> list[np.ndarray]:
    """Inputs for a run of `built`: its real weights (`weights`, else loaded) where it has them,
    `make_inputs` for the rest."""
    if weights is None:
        weights = built.weights() if built.weights is not None else {}
    data = iter(make_inputs([s for s in built.inputs if s.name not in weights], seed))
    return [weights[s.name] if s.name in weights else next(data) for s in built.inputs]


__all__ = ["MODELS", "DEFAULT_TOKENS", "ModelBuild", "source_build", "TensorSpec", "get_model", "make_inputs", "model_inputs", "signature"]
