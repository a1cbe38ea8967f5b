"""Attention kernel benchmark: PyTorch SDPA vs TVM dense vs shadowAttn's pilot / top-k / sparse.

Per attention block, Qwen2-0.5B shape (14 query heads, 2 KV heads, head_dim 64), causal,
keep 0.2, 2 threads, all measured in this run on this host (no phone numbers here).

    pip install -e '.[bench]' && python benchmarks/attention_kernels.py [--tokens 1024 2048 4096]
"""
from __future__ import annotations

import argparse

import numpy as np
import tvm
from tvm import relax

from shadowattn_tvm import targets
from shadowattn_tvm.block import max_keep_count
from shadowattn_tvm.demo import DEFAULT_SPEC, _inputs, best_ms
from shadowattn_tvm.ops import pilot, quantize, reference, sparse_attention, topk
from shadowattn_tvm.passes import lowering
from shadowattn_tvm.targets import cpu_kernels as cpu
from shadowattn_tvm.testing import AttentionSpec, attention_module

TARGET = targets.get("host").cpu
DEV = tvm.cpu()


def _prim(func):
    return tvm.compile(func.with_attr("global_symbol", "main"), target=TARGET)


def bench(tokens: int, keep: float, k_min: int, repeat: int, dense_max: int):
    spec = AttentionSpec(**{**DEFAULT_SPEC.__dict__, "q_len": tokens})
    block = spec.block()
    inputs = _inputs(spec, seed=0)
    q, k, v = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in inputs)
    h, hkv, d = block.num_heads, block.num_kv_heads, block.head_dim
    rows = {}
    causal_pairs = h * tokens * (tokens + 1) / 2  # visible (query, key) pairs

    try:
        import torch

        torch.set_num_threads(2)
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        rows["PyTorch SDPA dense (peer)"] = (best_ms(lambda: sdpa(tq, tk, tv, is_causal=True, enable_gqa=True), repeat),
                                             4 * causal_pairs * d)
    except ImportError:
        print("torch not installed: pip install -e '.[bench]' for the PyTorch SDPA row")

    if tokens <= dense_max:
        ex = tvm.compile(attention_module(spec), target=TARGET, relax_pipeline=lowering())
        vm = relax.VirtualMachine(ex, DEV)
        args = [tvm.runtime.tensor(x, DEV) for x in inputs]
        rows["TVM dense (sat.lowering schedules)"] = (best_ms(lambda: vm["main"](*args), max(1, repeat // 3)),
                                                4 * causal_pairs * d)

    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), DEV)  # noqa: E731
    qs, ks = reference.absmax_scale(q), reference.absmax_scale(k)
    quant_q = _prim(cpu.schedule_quantize(quantize.quantize(q.shape, "float32")))
    quant_k = _prim(cpu.schedule_quantize(quantize.quantize(k.shape, "float32", transpose=True)))
    q8, k8t = tvm.runtime.empty(q.shape, "int8", DEV), tvm.runtime.empty((1, hkv, d, tokens), "int8", DEV)
    tq, tk, tv, tqs, tks = t(q), t(k), t(v), t(qs), t(ks)
    rows["quantize Q,K (int8)"] = (best_ms(lambda: (quant_q(tq, tqs, q8), quant_k(tk, tks, k8t)), repeat), None)
    pilot_fn = _prim(cpu.schedule_pilot(pilot.pilot_scores(block, q.shape, tokens)))
    scores = tvm.runtime.empty((1, h, tokens, tokens), "int32", DEV)
    rows["pilot Q·Kᵀ int8 (NPU's work)"] = (best_ms(lambda: pilot_fn(q8, k8t, scores), repeat), 2 * causal_pairs * d)
    top = max_keep_count(keep, tokens, k_min)
    topk_fn = _prim(topk.topk_indices(block, k_min))
    ratios, idx = t(np.full(h, keep)), tvm.runtime.empty((1, h, tokens, top), "int32", DEV)
    rows["top-k (CPU)"] = (best_ms(lambda: topk_fn(scores, ratios, idx), repeat), None)
    kept = int((idx.numpy() >= 0).sum())
    sparse_fn = _prim(cpu.schedule_sparse_attention(sparse_attention.sparse_attention(block, q.shape, tokens, d, top)))
    out = tvm.runtime.empty(q.shape, "float32", DEV)
    rows["sparse attention (CPU)"] = (best_ms(lambda: sparse_fn(tq, tk, tv, idx, out), repeat), 4 * kept * d)
    return rows, kept / causal_pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--k-min", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dense-max", type=int, default=2048,
                        help="skip TVM dense beyond this length (it is slow)")
    args = parser.parse_args(argv)
    for tokens in args.tokens:
        rows, kept = bench(tokens, args.keep, args.k_min, args.repeat, args.dense_max)
        peer = rows.get("PyTorch SDPA dense (peer)", (None,))[0]
        cpu_lane = rows["top-k (CPU)"][0] + rows["sparse attention (CPU)"][0]
        print(f"\n{tokens} tokens, keep {args.keep} (kept {100 * kept:.1f} % of visible keys), 2 threads, host CPU")
        print(f"{'kernel':34s} {'ms':>9s} {'GFLOP/s':>8s} {'vs SDPA':>8s}")
        for name, (ms, flops) in list(rows.items()) + [("top-k + sparse (phone CPU's share)", (cpu_lane, None))]:
            gflops = f"{flops / ms / 1e6:8.1f}" if flops else f"{'-':>8s}"
            ratio = f"{ms / peer:7.2f}x" if peer else f"{'-':>8s}"
            print(f"{name:34s} {ms:9.2f} {gflops} {ratio}")


if __name__ == "__main__":
    main()
