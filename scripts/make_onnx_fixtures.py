"""ONNX test fixtures: tiny random-weight Hugging Face models exported with torch.onnx.export.

    python scripts/make_onnx_fixtures.py [--out DIR] [--only llama qwen2 ...] [--force]

Each fixture is a 2-layer model with eager attention (the explicit matmul-softmax-matmul), or,
for ``llama-sdpa``, transformers' default SDPA attention, whose ONNX decomposition adds three
idioms (sqrt(scale) on Q and Kᵀ, Kᵀ through a 3-D transpose, a NaN guard after the softmax).
All are exported the way users export: dynamic batch and sequence dimensions.
Next to ``<name>.onnx`` goes ``<name>.npz`` with inputs at REF_LEN tokens (longer than the export
example, so a graph secretly specialised to the example length fails) and PyTorch's output
for them. Nothing here is committed: files go to ``$SHADOWATTN_CACHE/onnx-fixtures/<key>/``, where
the key hashes the configs, this script's version and the torch/transformers versions.

Exporters: the dynamo exporter (``dynamo=True``, opset 18) for all; BERT also through the legacy
TorchScript exporter (``bert-legacy``), which emits a different shape subgraph. The legacy
exporter fails on transformers 5's decoder masks (``aten::diff`` has no ONNX symbolic).

Needs torch and transformers (the package's ``test``/``bench`` extras), never the runtime package.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shadowattn_tvm.testing import tiny_models  # noqa: E402 - the decoder families' configs
from shadowattn_tvm.settings import cache_dir, cache_lock  # noqa: E402

VERSION = 2  # bump when the fixtures change meaning
EXAMPLE_LEN = 8  # tokens of the export example
REF_LEN = 24  # tokens of the stored reference
VOCAB = len(tiny_models.TOKENS)  # the tiny byte-level BPE of tiny_models.write_tokenizer_json
PAD_FROM = 18  # BERT: positions >= this are padding in the reference attention_mask


@dataclass(frozen=True)
class FixtureSpec:
    name: str
    family: str  # tiny_models.FAMILIES | gpt2 | bert
    exporter: str = "dynamo"  # dynamo | legacy
    description: str = ""
    attn: str = "eager"  # transformers attn_implementation

    @property
    def causal(self) -> bool:
        return self.family != "bert"


SPECS = {s.name: s for s in (
    FixtureSpec("llama", "llama", description="LlamaForCausalLM, GQA 4/2 heads, RoPE"),
    FixtureSpec("llama-sdpa", "llama", attn="sdpa",
                description="LlamaForCausalLM with SDPA attention (torch's decomposition: split scale, NaN guard)"),
    FixtureSpec("qwen2", "qwen2", description="Qwen2ForCausalLM, GQA 4/2 heads, RoPE, QKV bias"),
    FixtureSpec("qwen3", "qwen3", description="Qwen3ForCausalLM, GQA 4/2 heads, RoPE, Q/K RMSNorm"),
    FixtureSpec("mistral", "mistral", description=f"MistralForCausalLM, GQA 4/2 heads, sliding window "
                                                  f"{tiny_models.SLIDING_WINDOW}"),
    FixtureSpec("gpt2", "gpt2", description="GPT2LMHeadModel, 4 heads, learned positions"),
    FixtureSpec("bert", "bert", description="BertModel, 4 heads, bidirectional, padding mask"),
    FixtureSpec("bert-legacy", "bert", exporter="legacy", description="BertModel via the TorchScript exporter"),
)}


def _config(family: str, attn: str = "eager"):
    import transformers as T

    if family in tiny_models.FAMILIES:
        config = tiny_models.hf_config(family, VOCAB)
        config._attn_implementation = attn
        return config
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, attn_implementation=attn, initializer_range=0.1)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=0, eos_token_id=0, attn_implementation=attn, initializer_range=0.1)
    if family == "bert":
        return T.BertConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, max_position_embeddings=256,
                            **common)
    raise ValueError(f"unknown family {family!r}")


def _model(family: str, attn: str):
    import torch
    import transformers as T

    if family in tiny_models.FAMILIES:
        model = tiny_models.hf_model(family, vocab=VOCAB)
        model.config._attn_implementation = attn
    else:
        classes = {"gpt2": T.GPT2LMHeadModel, "bert": T.BertModel}
        torch.manual_seed(0)
        model = classes[family](_config(family, attn)).eval()
    causal_lm, encoder = _wrappers()
    return (encoder if family == "bert" else causal_lm)(model).eval()


@functools.cache
def _wrappers():
    import torch

    class CausalLM(torch.nn.Module):
        """input_ids -> logits (no KV cache)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    class Encoder(torch.nn.Module):
        """(input_ids, attention_mask) -> last_hidden_state."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return CausalLM, Encoder


def _inputs(spec: FixtureSpec, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (1, length)).astype(np.int64)
    if spec.family != "bert":
        return {"input_ids": ids}
    mask = np.ones((1, length), np.int64)
    mask[:, min(PAD_FROM, length - 2):] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _export(spec: FixtureSpec, model, path: Path) -> None:
    import torch

    example = {k: torch.from_numpy(v) for k, v in _inputs(spec, EXAMPLE_LEN, seed=1).items()}
    names = list(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.exporter == "dynamo":
            batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=2, max=256)
            torch.onnx.export(model, tuple(example.values()), str(path), dynamo=True, opset_version=18,
                              input_names=names, output_names=["output"], external_data=False, verbose=False,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names})
        else:
            torch.onnx.export(model, tuple(example.values()), str(path), dynamo=False, opset_version=18,
                              input_names=names, output_names=["output"],
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})


@dataclass
class Fixture:
    spec: FixtureSpec
    path: Path
    inputs: dict = field(repr=False)  # name -> int64 array [1, REF_LEN]
    expected: np.ndarray = field(repr=False)  # PyTorch's output for `inputs`

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def seq_len(self) -> int:
        return int(next(iter(self.inputs.values())).shape[1])


def cache_key() -> str:
    import torch
    import transformers

    blob = json.dumps({"version": VERSION, "torch": torch.__version__, "transformers": transformers.__version__,
                       "specs": [s.__dict__ for s in SPECS.values()], "lens": [EXAMPLE_LEN, REF_LEN],
                       "configs": {f: _config(f).to_json_string() for f in ("llama", "qwen2", "qwen3", "mistral", "gpt2",
                                                                           "bert")}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_dir() -> Path:

    return cache_dir() / "onnx-fixtures" / cache_key()


def make_fixture(spec: FixtureSpec, out_dir: Path, force: bool = False) -> Fixture:
    """Export `spec` into out_dir (unless cached) and return it with its reference."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    path, ref = out_dir / f"{spec.name}.onnx", out_dir / f"{spec.name}.npz"
    if force or not (path.exists() and ref.exists()):
        model = _model(spec.family, spec.attn)
        inputs = _inputs(spec, REF_LEN)
        with torch.no_grad():
            expected = model(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        tmp = path.with_suffix(".onnx.part")
        _export(spec, model, tmp)
        np.savez(ref, expected=expected, **{f"input:{k}": v for k, v in inputs.items()})
        tmp.replace(path)  # the .onnx appears last: its presence means the pair is complete
    data = np.load(ref)
    inputs = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    return Fixture(spec=spec, path=path, inputs=inputs, expected=data["expected"])


def make_fixtures(out_dir: Path | None = None, names=None, force: bool = False) -> dict[str, Fixture]:
    """All (or the named) fixtures, exported on first use and cached."""
    out_dir = Path(out_dir) if out_dir is not None else default_dir()
    names = list(names) if names else list(SPECS)
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        raise ValueError(f"unknown fixtures {unknown}; known: {', '.join(SPECS)}")
    with cache_lock("onnx-fixtures"):  # parallel test workers export each fixture once
        return {n: make_fixture(SPECS[n], out_dir, force) for n in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output directory (default: the cache)")
    parser.add_argument("--only", nargs="+", choices=list(SPECS), help="fixtures to make (default: all)")
    parser.add_argument("--force", action="store_true", help="re-export even if cached")
    args = parser.parse_args(argv)
    for name, fx in make_fixtures(args.out, args.only, args.force).items():
        print(f"{name:12s} {fx.path}  ({fx.spec.description}; {fx.path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
