"""Models `shadowattn compile` knows by name; each builds a static-length Relax module.

Only the embedded default exists yet (the Qwen2-0.5B-shaped attention block of `shadowattn demo`).
Real models (ONNX, GGUF/safetensors) join this registry when the frontend lands.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..demo import DEFAULT_SPEC
from ..testing import AttentionSpec, attention_module


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class ModelBuild:
    """A model ready to compile: its Relax module, its `main` inputs, and what it is."""

    name: str
    mod: Any = field(compare=False)  # tvm.IRModule
    inputs: tuple
    outputs: tuple
    description: str
    config: dict = field(default_factory=dict, compare=False)  # JSON-able, recorded in the manifest


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
        config={k: v for k, v in spec.__dict__.items()},
    )


MODELS: dict[str, Callable[[int], ModelBuild]] = {"default": _default}
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


__all__ = ["MODELS", "DEFAULT_TOKENS", "ModelBuild", "TensorSpec", "get_model", "make_inputs", "signature"]
