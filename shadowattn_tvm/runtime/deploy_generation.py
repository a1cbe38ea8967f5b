"""Deploy of a generation build (``shadowattn compile --generate``): prefill and decode on the device.

The build's reference (``reference/generate.json``, ``prefill_logits.npy``) is a greedy run from a
reference prompt on this host. On the device the same prompt runs through ``prefill_c0`` (its
pilots NPU launches, counted against ``plan.json``) and greedy ``decode`` steps; the prefill
logits must match within the deploy tolerance and every token must match. A `Request` adds a
prompt of the user's, encoded with the build's own ``tokenizer/`` and streamed token by token.
Timings come from the device run and carry the server's label (emulated or device).
Runtime only: no compiler module.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..builder.manifest import ManifestError
from ..tokenizer import from_file
from ..weights import WeightMap, WeightsError
from .generation import GenerationError, GenerationSpec, Sampler, Session, generate, prompt_ids


@dataclass(frozen=True)
class Request:
    """A prompt to generate from after the verified reference run."""

    prompt: str
    max_new_tokens: int = 32
    chat: bool = False
    sampler: Sampler = Sampler()
    on_text: Callable[[str], None] | None = None


@dataclass
class Run:
    output: np.ndarray  # the device's prefill logits of the reference prompt's last token
    expected: np.ndarray
    tokens: list  # the device's greedy tokens
    expected_tokens: list
    prefill_ms: float
    decode_tokens_per_s: float
    prompt: dict = field(default_factory=dict)  # the user's prompt run: tokens, text, timings

    def to_json(self) -> dict:
        data = asdict(self)
        del data["output"], data["expected"]
        return data


def reference(manifest, model_file=None) -> tuple[list, dict]:
    """(the weights in the functions' order, the reference run) of a generation build."""
    folder = manifest.root / "reference"
    try:
        ref = json.loads((folder / "generate.json").read_text())
        ref["logits"] = np.load(folder / "prefill_logits.npy")
    except (OSError, ValueError, KeyError) as err:
        raise ManifestError(f"{manifest.root}: no usable reference/ ({err}): rebuild with `shadowattn compile`") from None
    try:
        weights = WeightMap.from_json(manifest.data["model"]["weights"]).load(model_file)
    except (KeyError, WeightsError) as err:
        raise ManifestError(f"{manifest.root}: cannot read the model's weights: {err}") from None
    return [weights[name] for name in ref["weights"]], ref


def work(timed, manifest, ref: dict, request: Request | None):
    """The workload `runtime.deploy` runs on the device (see the module docstring)."""
    spec = GenerationSpec.from_json(manifest.data["generation"])
    tokenizer, ids = None, None
    if request is not None:  # a prompt the build cannot take is refused before any upload
        tokenizer = from_file(manifest.root / "tokenizer" / "tokenizer.json")
        ids = prompt_ids(tokenizer, request.prompt, request.chat)
        if len(ids) > spec.max_prompt or len(ids) >= spec.capacity:
            raise GenerationError(f"the prompt has {len(ids)} tokens; this build prefills at most {spec.max_prompt} "
                                  f"into a KV cache of {spec.capacity}: shorten it or compile with larger --tokens")

    def run(vm, dev, args, npu):
        session = Session(vm, dev, args, spec)
        start = time.perf_counter()
        logits = timed("prefill", lambda: session.prefill(ref["prompt_ids"]))
        prefill_ms = (time.perf_counter() - start) * 1e3
        launches, events = timed("npu stats", npu.collect)
        tokens, step = [], logits
        start = time.perf_counter()
        for _ in ref["tokens"]:
            tokens.append(int(np.argmax(step)))
            step = timed("decode", lambda: session.decode(tokens[-1]))
        rate = len(ref["tokens"]) / (time.perf_counter() - start)
        result = Run(logits, ref["logits"], tokens, list(ref["tokens"]), prefill_ms, rate)
        if request is not None:
            result.prompt = _user_prompt(vm, dev, args, spec, tokenizer, ids, request, timed)
        return result, launches, events

    return run


def _user_prompt(vm, dev, args, spec, tokenizer, ids, request: Request, timed) -> dict:
    shown, tokens = "", []

    def on_token(token):
        nonlocal shown
        tokens.append(token)
        text = tokenizer.decode(tokens, skip_special=True)
        if request.on_text is not None and not text.endswith("\ufffd"):
            request.on_text(text[len(shown):])
            shown = text

    out = timed("generate", lambda: generate(Session(vm, dev, args, spec), ids, request.max_new_tokens,
                                             request.sampler, tokenizer.eos_ids, on_token))
    return {"prompt_tokens": len(ids), "tokens": out.tokens, "text": tokenizer.decode(out.tokens, skip_special=True),
            "stopped": out.stopped, "prefill_ms": out.prefill_ms, "first_token_ms": out.first_token_ms,
            "decode_tokens_per_s": out.decode_tokens_per_s}


def table_rows(run: dict, label: str) -> list:
    """The generation rows of deploy's table."""
    same = run["tokens"] == run["expected_tokens"]
    rows = [(f"prefill [{label}]", f"{run['prefill_ms']:.1f} ms (reference prompt)"),
            ("greedy tokens vs reference/", f"{sum(a == b for a, b in zip(run['tokens'], run['expected_tokens']))} of "
                                            f"{len(run['expected_tokens'])} equal: {'verified' if same else 'MISMATCH'}"),
            (f"decode [{label}]", f"{run['decode_tokens_per_s']:.2f} tokens/s")]
    prompt = run.get("prompt")
    if prompt:
        rows.append((f"your prompt [{label}]", f"{prompt['prompt_tokens']} tokens, prefill {prompt['prefill_ms']:.0f} "
                                               f"ms, first token {prompt['first_token_ms']:.0f} ms, "
                                               f"{len(prompt['tokens'])} tokens at {prompt['decode_tokens_per_s']:.2f}"
                                               f" tokens/s, stopped: {prompt['stopped']}"))
    return rows


__all__ = ["Request", "Run", "reference", "table_rows", "work"]
