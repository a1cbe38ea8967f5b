"""Sparse decode on SmolLM2: accuracy of the continuation and the decode step's attention time.

    python benchmarks/sparse_decode.py [--prompts 2048 4096] [--steps 64] [--keep 0.2]

For each prompt length the prompt (Pride and Prejudice, BOS first) is prefilled densely into the
KV cache, then the next `steps` tokens of the text are fed one decode step at a time (teacher
forcing) through dense decode and through sparse decode (the INT8 pilot over the INT8 key cache
picks each step's keys, the shipped profile's static scales and per-head ratios at `keep`). The
table gives the continuation's perplexity under each, their next-token agreement, and the decode
step's attention time (the 30 layers' attention kernels, timed alone at that position) and whole
step time, dense vs sparse, all measured in this run on this host's CPU (not a phone).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import tvm  # noqa: E402

from shadowattn_tvm.calibrate.profile import SHIPPED_PROFILE, SparsityProfile  # noqa: E402
from shadowattn_tvm.evaluation.corpus import austen  # noqa: E402
from shadowattn_tvm.frontend import open_model  # noqa: E402
from shadowattn_tvm.frontend.generation import SparseDecode  # noqa: E402
from shadowattn_tvm.generation import Generator  # noqa: E402
from shadowattn_tvm.ops.decode import decode_attention  # noqa: E402
from shadowattn_tvm.ops.sparse_decode import sparse_decode_attention  # noqa: E402
from shadowattn_tvm.targets import get  # noqa: E402


def _nll(logits, token) -> float:
    z = logits.astype(np.float64)
    z -= z.max()
    return float(np.log(np.exp(z).sum()) - z[token])


def continuation(gen: Generator, ids: list, prompt: int, steps: int):
    """(mean NLL, argmax tokens, seconds per decode step) over `steps` teacher-forced steps."""
    session = gen.session()
    logits = session.prefill(ids[:prompt])
    nll, argmax, spent = 0.0, [], 0.0
    for t in range(steps):
        nll += _nll(logits, ids[prompt + t])
        argmax.append(int(np.argmax(logits)))
        start = time.perf_counter()
        logits = session.decode(ids[prompt + t])
        spent += time.perf_counter() - start
    return nll / steps, argmax, spent / steps


def attention_ms(config, capacity: int, pos: int, sparse: SparseDecode, repeat: int = 20) -> tuple:
    """(dense, sparse) ms of one decode step's attention kernels (every layer) at position `pos`."""
    target = get("host").cpu
    c, rng = config, np.random.default_rng(0)
    d, scale = c.head_dim, 1.0 / np.sqrt(c.head_dim)
    kv = rng.standard_normal((c.layers, 2, c.kv_heads, capacity, d)).astype("float32")
    ks = np.asarray(sparse.k_scales, "float32")
    k8 = np.clip(np.rint(kv[:, 0] / ks[:, :, None, None]), -127, 127).astype("int8")
    q = rng.standard_normal((1, 1, c.heads, d)).astype("float32")
    t = tvm.runtime.tensor
    args = dict(q=t(q), kv=t(kv), k8=t(k8), pos=t(np.array([pos], "int32")), out=tvm.runtime.empty(q.shape, "float32"),
                qs=t(np.asarray(sparse.q_scales, "float32")), ratios=t(np.asarray(sparse.ratios, "float32")))
    dense = tvm.compile(decode_attention(c.heads, c.kv_heads, capacity, d, scale).with_attr("global_symbol", "main"),
                        target=target)
    fast = tvm.compile(sparse_decode_attention(c.heads, c.kv_heads, capacity, d, scale, sparse.k_min)
                       .with_attr("global_symbol", "main"), target=target)

    def timed(call):
        call(0)
        start = time.perf_counter()
        for _ in range(repeat):
            for layer in range(c.layers):
                call(layer)
        return (time.perf_counter() - start) / repeat * 1e3

    a = args
    dense_ms = timed(lambda layer: dense(a["q"], a["kv"], a["pos"], layer, a["out"]))
    sparse_ms = timed(lambda layer: fast(a["q"], a["kv"], a["k8"], a["pos"], layer, a["qs"], a["ratios"], a["out"]))
    return dense_ms, sparse_ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--k-min", type=int, default=64)
    args = parser.parse_args(argv)
    source = open_model("smollm2")
    profile = SparsityProfile.load(SHIPPED_PROFILE).retarget(args.keep)
    text_ids = source.tokenizer.encode(austen("prideprejudice"))
    print(f"load {os.getloadavg()[0]:.2f}; SmolLM2-135M, Pride and Prejudice, {args.steps} teacher-forced decode "
          f"steps after each prompt, keep {args.keep}, k_min {args.k_min}; host CPU, {os.environ['TVM_NUM_THREADS']} threads")
    head = (f"{'prompt':>7} {'ppl dense':>10} {'ppl sparse':>11} {'Δ%':>7} {'argmax agree':>13} "
            f"{'attn dense ms':>14} {'attn sparse ms':>15} {'ratio':>6} {'step dense ms':>14} {'step sparse ms':>15}")
    rows = []
    for prompt in args.prompts:
        capacity = -(-(prompt + args.steps) // 1024) * 1024
        ids = [source.tokenizer.bos_id] + text_ids[: prompt + args.steps]
        common = dict(keep=None, profile=profile, k_min=args.k_min, dense=True, chunk=1024, capacity=capacity,
                      prompt_tokens=prompt)
        dense = Generator.open(source, **common)
        sparse = Generator.open(source, **common, sparse_decode_from=1)
        nll_d, top_d, step_d = continuation(dense, ids, prompt, args.steps)
        nll_s, top_s, step_s = continuation(sparse, ids, prompt, args.steps)
        spec = SparseDecode.from_profile(profile, args.k_min)
        att_d, att_s = attention_ms(source.config, capacity, prompt + args.steps // 2, spec)
        ppl_d, ppl_s = np.exp(nll_d), np.exp(nll_s)
        rows.append(f"{prompt:>7} {ppl_d:>10.3f} {ppl_s:>11.3f} {100 * (ppl_s / ppl_d - 1):>+7.2f} "
                    f"{100 * np.mean(np.array(top_d) == np.array(top_s)):>12.1f}% {att_d:>14.2f} {att_s:>15.2f} "
                    f"{att_s / att_d:>6.2f} {1e3 * step_d:>14.1f} {1e3 * step_s:>15.1f}")
        print("\n".join([head, *rows]) if len(rows) == 1 else rows[-1], flush=True)


if __name__ == "__main__":
    main()
