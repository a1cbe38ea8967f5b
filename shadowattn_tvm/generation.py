"""`shadowattn generate`: shadowAttn prefill into a KV cache, then dense decode, on this host.

    gen = Generator.open("smollm2", keep=0.2)
    result = gen.generate("What is the capital of France?", chat=True, max_new_tokens=64, on_text=print)

The KV cache is a static-capacity tensor of ours (`frontend.generation.export_generation`), not
TVM's paged `nn` KV cache: the prefill must stay the plain matmul-softmax attention the pass set
detects and rewrites (a paged cache hides it in opaque attention kernels), and a phone's NPU
graphs need static shapes. The module has one prefill function per prompt chunk (q_len < kv_len
after the first: bottom-right causal blocks, which detection handles) and one decode step over
the cache with our `ops.decode` kernels. Compiled modules are cached on disk by model, options
and shapes (``$SHADOWATTN_CACHE/generate/``), so a second run starts at once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._compat import relax, tvm
from .builder.options import BuildOptions, compile_model
from .frontend.source import GGUFSource, ModelSource, open_model
from .runtime.generation import Generation, GenerationError, GenerationSpec, Sampler, Session, generate, prompt_ids
from .settings import cache_dir
from .tokenizer import check_token_ids

DEFAULT_CHUNK = 256
DEFAULT_CAPACITY = 2048


def decoder_source(source: ModelSource) -> GGUFSource:
    if not isinstance(source, GGUFSource):
        raise GenerationError(f"{source.name}: generation needs a decoder we build (smollm2 or a .gguf file); an ONNX "
                              "export has no KV cache for us to drive (it runs prefill only: eval, compile)")
    return source


def generation_spec(source: GGUFSource, chunk: int, capacity: int, chunks: int, sparse_from: int = 0) -> GenerationSpec:
    """The shapes of a generation module; `sparse_from` > 0 compiles sparse decode in (an INT8 key
    cache, ``decode_sparse`` for steps over at least that many keys)."""
    from .frontend.generation import cache_shape, int8_cache_shape

    for name, value in (("chunk", chunk), ("capacity", capacity), ("chunks", chunks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GenerationError(f"{name} must be a positive integer, got {value!r}")
    if capacity > source.max_len:
        raise GenerationError(f"a KV cache of {capacity} exceeds {source.name}'s context length ({source.max_len})")
    if capacity % chunk or chunk * chunks > capacity:
        divisor = max(d for d in range(1, chunk + 1) if capacity % d == 0)
        multiple = max(chunk * chunks, capacity // chunk * chunk)
        raise GenerationError(f"the capacity ({capacity}) must be a multiple of the chunk ({chunk}) and hold "
                              f"{chunks} chunk(s): pass a --chunk dividing the capacity (e.g. {divisor}) or a "
                              f"--capacity of {multiple}")
    pad = source.tokenizer.eos_ids and min(source.tokenizer.eos_ids) or 0
    int8 = int8_cache_shape(source.config, capacity) if sparse_from else None
    return GenerationSpec(chunk, chunks, capacity, cache_shape(source.config, capacity), int(pad), int8, sparse_from)


def generation_ir(source: GGUFSource, spec: GenerationSpec, sparse=None):
    """(IRModule with prefill_c0.., decode [and decode_sparse], weight names); `sparse` is the
    `frontend.generation.SparseDecode` a spec with ``sparse_from`` needs."""
    from .frontend.generation import export_generation

    if (sparse is None) != (not spec.sparse_from):
        raise GenerationError("sparse decode needs both a threshold (sparse_from) and its scales and ratios")
    return export_generation(source.config, spec.chunk, spec.capacity, range(spec.chunks), sparse)


def _cache_key(source, options: BuildOptions | None, spec: GenerationSpec, target, sparse) -> str:
    from . import __version__

    blob = json.dumps({"model": source.fingerprint, "options": None if options is None else options.to_json(),
                       "spec": spec.to_json(), "target": str(target), "tvm": tvm.__version__, "sat": __version__,
                       "sparse": None if sparse is None else repr(sparse), "code": _code_digest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _code_digest() -> str:
    """The sources that decide what a generation module computes (a cached module goes stale with them)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("ops/*.py"), *root.glob("passes/*.py"), *root.glob("targets/*.py"),
                        root / "frontend" / "decoder.py", root / "frontend" / "generation.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def compile_generation(source: GGUFSource, spec: GenerationSpec, options: BuildOptions | None, target=None,
                       use_cache: bool = True, log=None, sparse=None):
    """The host executable of the generation module; options None compiles its prefill dense."""
    from .passes import lowering
    from .targets import get

    target = target or get("host").cpu
    path = cache_dir() / "generate" / f"{_cache_key(source, options, spec, target, sparse)}.so"
    if use_cache and path.exists():
        return tvm.runtime.load_module(str(path))
    mod, _ = generation_ir(source, spec, sparse)
    if log is not None:
        log(f"[generate] compiling {source.name}: {spec.chunks} prefill chunk(s) of {spec.chunk}, KV cache "
            f"{spec.capacity}, {'dense' if options is None else 'shadowAttn'} (cached for the next run)")
    if options is None:
        executable = tvm.compile(mod, target=target, relax_pipeline=lowering())
    else:
        executable = compile_model(mod, target, options)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.so")
        executable.export_library(str(tmp))
        tmp.replace(path)
    return executable


@dataclass
class Generator:
    """A compiled generation module of one model, ready to open sessions on this host."""

    source: GGUFSource
    spec: GenerationSpec
    executable: object
    weights: list

    @classmethod
    def open(cls, model, keep: float | None = 0.2, profile=None, k_min: int = 64, dense: bool = False,
             chunk: int = DEFAULT_CHUNK, capacity: int = DEFAULT_CAPACITY, prompt_tokens: int = 1,
             tokenizer=None, use_cache: bool = True, log=None, sparse_decode_from: int = 0,
             selection: str = "head") -> "Generator":
        """Compile (or load from the cache) the module for `model` with the prefill chunks a prompt of
        `prompt_tokens` tokens needs (each chunk is one more prefill function to compile).
        sparse_decode_from: decode steps over at least this many keys attend only over the keys the
        INT8 pilot picks (needs a profile with static scales; 0: dense decode).
        selection: the prefill's top-k, per query head ("head") or per KV group ("group"), as in
        `sat.pipeline`."""
        source = decoder_source(model if isinstance(model, ModelSource) else open_model(model, tokenizer))
        capacity = min(capacity, source.max_len)
        chunk = min(chunk, capacity)
        if prompt_tokens >= capacity:
            raise GenerationError(f"the prompt has {prompt_tokens} tokens and the KV cache holds {capacity}: no room "
                                  "to generate; raise --capacity (at most the model's context length)")
        spec = generation_spec(source, chunk, capacity, max(1, -(-prompt_tokens // chunk)), sparse_decode_from)
        options = None if dense else BuildOptions(keep=keep if profile is None else None, k_min=k_min, profile=profile,
                                                  selection=selection)
        sparse = None
        if sparse_decode_from:
            from .frontend.generation import SparseDecode

            if profile is None:
                raise GenerationError("sparse decode needs a calibrated profile (static Q/K scales): pass --profile")
            sparse = SparseDecode.from_profile(profile, k_min)
        executable = compile_generation(source, spec, options, use_cache=use_cache, log=log, sparse=sparse)
        arrays = source.weights()
        return cls(source, spec, executable, [tvm.runtime.tensor(arrays[n]) for n in source.parameter_names()])

    @property
    def tokenizer(self):
        return self.source.tokenizer

    def session(self) -> Session:
        return Session(relax.VirtualMachine(self.executable, tvm.cpu()), tvm.cpu(), self.weights, self.spec)

    def generate(self, prompt: str, *, chat: bool = False, max_new_tokens: int = 128, sampler: Sampler = Sampler(),
                 on_text=None) -> Generation:
        """Generate from `prompt`; `on_text(piece)` receives the decoded text as it grows."""
        ids = prompt_ids(self.tokenizer, prompt, chat)
        check_token_ids(ids, self.source.config.vocab)
        shown, tokens = "", []

        def on_token(token):
            nonlocal shown
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special=True)
            if on_text is not None and not text.endswith("\ufffd"):  # wait for a whole UTF-8 character
                on_text(text[len(shown):])
                shown = text

        return generate(self.session(), ids, max_new_tokens, sampler, self.tokenizer.eos_ids, on_token)


__all__ = ["DEFAULT_CAPACITY", "DEFAULT_CHUNK", "Generator", "compile_generation", "generation_ir", "generation_spec",
           "prompt_ids"]
