"""Text generation over a compiled generation module, on this host or a device over RPC.

The module (`frontend.generation.export_generation`) has ``prefill_c<i>(ids [1, P], kv, last) ->
logits`` per prompt chunk i and ``decode(token, kv, pos) -> logits``; the KV cache is one
static-capacity tensor the functions update in place. A `Session` owns the cache on the
device and runs a prompt in chunks (the last one padded: pads sit after every real token, so
causal attention never lets a real row see them, and decode overwrites their cache rows before
any step reads them), then one decode step per token. `generate` adds sampling, stop rules and
timings. Runtime only: numpy and the TVM runtime, no compiler module (deploy uses it).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .._compat import tvm


class GenerationError(ValueError):
    """A prompt or setting the compiled module cannot serve; the message names the limit."""


@dataclass(frozen=True)
class GenerationSpec:
    """The shape of a compiled generation module (recorded in a build's manifest)."""

    chunk: int  # prompt tokens per prefill function
    chunks: int  # prefill functions compiled: prompts up to chunk * chunks tokens
    capacity: int  # KV cache rows: prompt + generated tokens
    cache_shape: tuple
    pad_id: int = 0
    int8_cache_shape: tuple | None = None  # the INT8 key cache of sparse decode, when compiled in
    sparse_from: int = 0  # decode steps over at least this many keys use decode_sparse (0: never)

    @property
    def max_prompt(self) -> int:
        return self.chunk * self.chunks

    def to_json(self) -> dict:
        return {"chunk": self.chunk, "chunks": self.chunks, "capacity": self.capacity,
                "cache_shape": list(self.cache_shape), "pad_id": self.pad_id,
                "int8_cache_shape": None if self.int8_cache_shape is None else list(self.int8_cache_shape),
                "sparse_from": self.sparse_from}

    @classmethod
    def from_json(cls, data: dict) -> "GenerationSpec":
        int8 = data.get("int8_cache_shape")
        return cls(int(data["chunk"]), int(data["chunks"]), int(data["capacity"]),
                   tuple(int(x) for x in data["cache_shape"]), int(data.get("pad_id", 0)),
                   None if int8 is None else tuple(int(x) for x in int8), int(data.get("sparse_from", 0)))


class Session:
    """A generation module, its weights and its KV cache on one device."""

    def __init__(self, vm, device, weights: list, spec: GenerationSpec):
        self.vm, self.device, self.weights, self.spec = vm, device, weights, spec
        self.length = 0
        # allocated, not uploaded: every row a step reads was written before (prefill chunks in order,
        # decode writes its row first), so the initial content never matters
        self.kv = tvm.runtime.empty(spec.cache_shape, "float32", device)
        self.caches = [self.kv]
        if spec.int8_cache_shape is not None:  # sparse decode's INT8 keys, written with the float ones
            self.caches.append(tvm.runtime.empty(spec.int8_cache_shape, "int8", device))

    def _tensor(self, array):
        return tvm.runtime.tensor(np.ascontiguousarray(array), self.device)

    def prefill(self, ids) -> np.ndarray:
        """Run the prompt `ids` from position 0; the logits [V] of its last token."""
        ids = [int(i) for i in ids]
        n, spec = len(ids), self.spec
        if n == 0:
            raise GenerationError("the prompt is empty: give at least one token")
        if n > spec.max_prompt:
            raise GenerationError(f"the prompt has {n} tokens; this module prefills at most {spec.max_prompt} "
                                  f"({spec.chunks} chunk(s) of {spec.chunk}): shorten it or compile more chunks")
        if n >= spec.capacity:
            raise GenerationError(f"the prompt has {n} tokens and the KV cache holds {spec.capacity}: no room to "
                                  "generate; compile with a larger capacity")
        chunks = -(-n // spec.chunk)
        padded = np.full(chunks * spec.chunk, spec.pad_id, "int32")
        padded[:n] = ids
        logits = None
        for c in range(chunks):
            last = min(n - 1 - c * spec.chunk, spec.chunk - 1)
            logits = self.vm[f"prefill_c{c}"](self._tensor(padded[c * spec.chunk:(c + 1) * spec.chunk].reshape(1, -1)),
                                             *self.caches, self._tensor(np.array([last], "int32")), *self.weights)
        self.length = n
        return logits.numpy().reshape(-1)

    def decode(self, token: int) -> np.ndarray:
        """Append `token` at the next position; the logits [V] after it."""
        if self.length >= self.spec.capacity:
            raise GenerationError(f"the KV cache is full ({self.spec.capacity} tokens): compile with a larger capacity")
        sparse = 0 < self.spec.sparse_from <= self.length + 1  # keys this step attends over
        logits = self.vm["decode_sparse" if sparse else "decode"](
            self._tensor(np.array([[int(token)]], "int32")), *self.caches,
            self._tensor(np.array([self.length], "int32")), *self.weights)
        self.length += 1
        return logits.numpy().reshape(-1)


def prompt_ids(tokenizer, prompt: str, chat: bool = False) -> list:
    """The prompt's token ids: the chat template applied with `chat`, BOS first where the model wants it."""
    if not prompt:
        raise GenerationError("the prompt is empty: pass --prompt TEXT")
    text = tokenizer.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
    return ([tokenizer.bos_id] if tokenizer.add_bos and not chat else []) + tokenizer.encode(text)


@dataclass(frozen=True)
class Sampler:
    """Greedy (temperature 0), or softmax at `temperature` cut to the top-p nucleus, seeded."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise GenerationError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_p < 1 and self.temperature == 0:
            raise GenerationError(f"--top-p {self.top_p} has no effect on greedy decoding (temperature 0): pass "
                                  f"--temperature > 0 to sample, or drop --top-p")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise GenerationError(f"--seed must be a whole number >= 0, got {self.seed!r}")

    def rng(self):
        return np.random.default_rng(self.seed)

    def pick(self, logits: np.ndarray, rng) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), self.top_p) + 1)]
        return int(rng.choice(keep, p=p[keep] / p[keep].sum()))


@dataclass
class Generation:
    prompt_tokens: int
    tokens: list = field(default_factory=list)
    stopped: str = ""  # "eos", "max-new-tokens" or "capacity"
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0  # from the start of prefill to the first generated token
    decode_steps: int = 0
    decode_s: float = 0.0  # time in decode steps (each makes the logits of one more token)

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_steps else float("nan")


def generate(session: Session, ids, max_new_tokens: int, sampler: Sampler = Sampler(), eos_ids=(),
             on_token: Callable[[int], None] | None = None) -> Generation:
    """Prefill `ids`, then sample up to `max_new_tokens` tokens (stopping at an EOS id)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise GenerationError(f"--max-new-tokens must be a whole number >= 1, got {max_new_tokens!r}")
    result = Generation(prompt_tokens=len(ids))
    rng = sampler.rng()
    start = time.perf_counter()
    logits = session.prefill(ids)
    result.prefill_ms = (time.perf_counter() - start) * 1e3
    while True:
        token = sampler.pick(logits, rng)
        if not result.first_token_ms:
            result.first_token_ms = (time.perf_counter() - start) * 1e3
        if token in eos_ids:
            result.stopped = "eos"
            break
        result.tokens.append(token)
        if on_token is not None:
            on_token(token)
        if len(result.tokens) >= max_new_tokens:
            result.stopped = "max-new-tokens"
            break
        if session.length >= session.spec.capacity:
            result.stopped = "capacity"
            break
        step = time.perf_counter()
        logits = session.decode(token)
        result.decode_s += time.perf_counter() - step
        result.decode_steps += 1
    return result


__all__ = ["Generation", "GenerationError", "GenerationSpec", "Sampler", "Session", "generate", "prompt_ids"]
