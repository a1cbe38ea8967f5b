"""`shadowattn demo`: compile the embedded default, check it, time it, print one table.

The embedded default is a Qwen2-0.5B-shaped attention block (14 query heads, 2 KV heads,
head_dim 64, causal, GQA through HF's repeat_kv), fed with random activations whose keys
have a few strong directions, as real attention does. Every number is measured in this run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ._compat import relax, tvm
from .ops import reference
from .passes import AttentionReport, lowering, pipeline
from .testing import AttentionSpec, attention_module, sparse_reference

DEFAULT_SPEC = AttentionSpec(heads=14, kv_heads=2, head_dim=64, q_len=1024, gqa="expand", mask="causal_where")


@dataclass
class DemoResult:
    tokens: int
    keep: float
    blocks_found: int
    blocks_rewritten: int
    recall: float
    max_err_vs_reference: float
    rel_err_vs_dense: float
    dense_ms: float
    sparse_ms: float
    torch_ms: float | None
    report: AttentionReport

    def table(self) -> str:
        rows = [
            ("attention blocks found / rewritten", f"{self.blocks_found} / {self.blocks_rewritten}"),
            ("top-k recall, INT8 pilot vs float Q·Kᵀ", f"{100 * self.recall:.2f} %"),
            ("output vs numpy shadowAttn reference (max abs)", f"{self.max_err_vs_reference:.2e}"),
            (f"output vs dense attention (rel. L2, keep {self.keep})", f"{self.rel_err_vs_dense:.2e}"),
            ("host latency, TVM dense (same default schedules)", f"{self.dense_ms:.1f} ms"),
            ("host latency, TVM shadowAttn", f"{self.sparse_ms:.1f} ms  ({self.dense_ms / self.sparse_ms:.2f}x)"),
        ]
        if self.torch_ms is not None:
            rows.append(("host latency, PyTorch SDPA dense (peer)", f"{self.torch_ms:.1f} ms"))
        return key_value_table(
            f"shadowAttn demo: Qwen2-0.5B-shaped attention block, {self.tokens} tokens, keep {self.keep}, host CPU", rows)


def key_value_table(head: str, rows) -> str:
    """A titled two-column table of (label, value) rows, labels padded to one width."""
    width = max(len(k) for k, _ in rows)
    return "\n".join([head, "-" * len(head)] + [f"{k.ljust(width)}  {v}" for k, v in rows])


def _inputs(spec: AttentionSpec, seed: int):
    rng = np.random.default_rng(seed)
    b, s, h, hkv, d = spec.batch, spec.q_len, spec.heads, spec.kv_heads, spec.head_dim
    basis = rng.standard_normal((4, d))  # a few shared directions make scores peaked, as in LLMs
    q = rng.standard_normal((b, s, h, d)) + 2.0 * rng.standard_normal((b, s, h, 4)) @ basis
    k = rng.standard_normal((b, s, hkv, d)) + 2.0 * rng.standard_normal((b, s, hkv, 4)) @ basis
    v = rng.standard_normal((b, s, hkv, d))
    return [x.astype(spec.dtype) for x in (q, k, v)]


def best_ms(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls of `fn()` after one warm-up call, in milliseconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _torch_ms(inputs, spec, repeat):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    q, k, v = (torch.from_numpy(x).transpose(1, 2).contiguous() for x in inputs)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return best_ms(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True), repeat)


def run_demo(tokens: int = 1024, keep: float = 0.2, k_min: int = 16, repeat: int = 3, seed: int = 0) -> DemoResult:
    spec = AttentionSpec(**{**DEFAULT_SPEC.__dict__, "q_len": tokens})
    from . import targets

    target = targets.get("host").cpu
    mod = attention_module(spec)
    report = AttentionReport()
    sparse_ex = tvm.compile(mod, target=target, relax_pipeline=pipeline(keep=keep, k_min=k_min, report=report))
    dense_ex = tvm.compile(mod, target=target, relax_pipeline=lowering())
    inputs = _inputs(spec, seed)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(x, dev) for x in inputs]
    sparse_vm, dense_vm = relax.VirtualMachine(sparse_ex, dev), relax.VirtualMachine(dense_ex, dev)
    out = sparse_vm["main"](*args).numpy()
    dense_out = dense_vm["main"](*args).numpy()

    expected, idx, _ = sparse_reference(spec, inputs, [keep] * spec.heads, k_min)
    block = spec.block()
    q, k = inputs[0].transpose(0, 2, 1, 3), inputs[1].transpose(0, 2, 1, 3)
    logits = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k[:, reference.kv_index(block)].astype(np.float64))
    recall = reference.topk_recall(logits, idx, reference.visible(block, tokens, tokens))
    return DemoResult(
        tokens=tokens, keep=keep, blocks_found=len(report.candidates), blocks_rewritten=len(report.rewritten),
        recall=recall,
        max_err_vs_reference=float(np.abs(out - expected).max()),
        rel_err_vs_dense=float(np.linalg.norm(out - dense_out) / np.linalg.norm(dense_out)),
        dense_ms=best_ms(lambda: dense_vm["main"](*args), repeat),
        sparse_ms=best_ms(lambda: sparse_vm["main"](*args), repeat),
        torch_ms=_torch_ms(inputs, spec, repeat), report=report,
    )
