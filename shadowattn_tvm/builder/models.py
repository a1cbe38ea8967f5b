"""Models `shadowattn compile` knows by name; each builds a static-length Relax module.

* ``default``: the Qwen2-0.5B-shaped attention block of `shadowattn demo block`;
* ``smollm2``: SmolLM2-135M-Instruct (`shadowattn demo`), `main(input_ids[1, tokens], *weights)`
  -> logits; its weights are inputs of `main` (not baked into the library), loaded from the GGUF
  by `ModelBuild.weights` when a deploy needs them.
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


def _tensor(var_name: str, ty) -> TensorSpec:
    shape = []
    for dim in ty.shape.values:
        value = getattr(dim, "value", None)
        if not isinstance(value, int):
            raise ValueError(f"{var_name}: dimension {dim} is symbolic; compile needs static shapes")
        shape.append(value)
    return TensorSpec(var_name, tuple(shape), str(ty.dtype))


def signature(mod) -> tuple[tuple, tuple]:
    """(inputs, outputs) of `mod["main"]` as TensorSpecs (single-tensor outputs only)."""
    main = mod["main"]
    inputs = tuple(_tensor(p.name, p.ty) for p in main.params)
    return inputs, (_tensor("output", main.ret_ty),)


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


def llama_build(runner, tokens: int, name: str, bind_weights: bool = False) -> ModelBuild:
    """A `frontend.model.LlamaRunner`'s model as a build: `main(input_ids[1, tokens], *weights)`
    -> logits, weights as inputs loaded from the GGUF at deploy; with `bind_weights` they are
    constants of the module instead (small models: the library carries them, deploy needs no file)."""
    mod, names = runner.export(tokens)
    entry = mod["forward"]
    if bind_weights:
        weights = runner.weights()
        entry = relax.transform.BindParams("forward", {n: tvm.runtime.tensor(weights[n]) for n in names})(
            tvm.IRModule({"forward": entry}))["forward"]
    mod = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv.name_hint != "forward"}, attrs=mod.attrs)
    mod["main"] = entry.with_attr("global_symbol", "main")
    inputs, outputs = signature(mod)
    cfg = runner.config
    return ModelBuild(
        name=name, mod=mod, inputs=inputs, outputs=outputs,
        description=f"{name} ({cfg.layers} layers, {cfg.heads} q heads, {cfg.kv_heads} kv heads), {tokens}-token "
                    f"prefill; weights are {'constants' if bind_weights else 'inputs'}",
        config={"gguf": runner.model.fingerprint}, weights=None if bind_weights else runner.weights,
    )


def _smollm2(tokens: int) -> ModelBuild:
    from ..frontend.model import LlamaRunner, resolve_model

    return llama_build(LlamaRunner(resolve_model("smollm2")), tokens, "smollm2")


MODELS: dict[str, Callable[[int], ModelBuild]] = {"default": _default, "smollm2": _smollm2}
DEFAULT_TOKENS = DEFAULT_SPEC.q_len


def get_model(name: str, tokens: int = DEFAULT_TOKENS) -> ModelBuild:
    """The model `name` at `tokens` prefill length; ValueError naming the known models otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))} "
                         f"(other models arrive with the model frontend)")
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a positive integer, got {tokens!r}")
    return MODELS[name](tokens)


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


__all__ = ["MODELS", "DEFAULT_TOKENS", "ModelBuild", "llama_build", "TensorSpec", "get_model", "make_inputs", "model_inputs", "signature"]
