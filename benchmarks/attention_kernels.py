"""Attention kernel benchmark: PyTorch SDPA vs TVM dense vs shadowAttn's pilot / top-k / sparse.

Per attention block, Qwen2-0.5B shape (14 query heads, 2 KV heads, head_dim 64), causal,
keep 0.2, 2 threads, all measured in this run on this host (no phone numbers here). The run
starts with the machine's peaks, measured by two TVM kernels built for the same target: FMA
throughput (independent FMA chains in registers) and stream read bandwidth (a vectorised sum
over 256 MB). Each kernel's row then shows its share: GFLOP/s of the FMA peak for the float
kernels (the pilot's int8 MACs are counted as flops too), GB/s of the stream peak for top-k
(bytes of visible scores read once).

Rows: the per-head CPU lane with int32 pilot scores (what the NPU graphs produce) and with the
CPU pilot's int16 scores, and the group mode (one selection per KV head and query row), its
top-k also on int16 scores (what an NPU graph emitting int16 would give; the graphs emit int32).

    pip install -e '.[bench]' && python benchmarks/attention_kernels.py [--tokens 1024 2048 4096]

`--runs N` measures everything N times in one process and ends with each run's lane ratios, their
median and the worst: on a shared VM the ratio of one run moves by several percent.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.script import tirx as T  # noqa: E402

from shadowattn_tvm import targets  # noqa: E402
from shadowattn_tvm.block import max_keep_count  # noqa: E402
from shadowattn_tvm.demo import DEFAULT_SPEC, _inputs, best_ms  # noqa: E402
from shadowattn_tvm.ops import pilot, quantize, reference, sparse_attention, topk, topk_group  # noqa: E402
from shadowattn_tvm.ops._isa import current_isa  # noqa: E402
from shadowattn_tvm.passes import lowering  # noqa: E402
from shadowattn_tvm.targets import cpu_kernels as cpu  # noqa: E402
from shadowattn_tvm.testing import AttentionSpec, attention_module  # noqa: E402

TARGET = targets.get("host").cpu
DEV = tvm.cpu()
THREADS = int(os.environ["TVM_NUM_THREADS"])
PEER = "PyTorch SDPA dense (peer)"


def _prim(func):
    if func.attrs is None or "global_symbol" not in func.attrs:
        func = func.with_attr("global_symbol", "main")
    with TARGET:
        return tvm.compile(func.with_attr("global_symbol", "main"), target=TARGET)


# ----------------------------------------------------------------------------- machine peaks
def _fma_kernel(lanes: int, chains: int):
    @T.prim_func
    def fma(out_h: T.handle, n: T.int64):
        T.func_attr({"tirx.noalias": True})
        out = T.match_buffer(out_h, (THREADS * lanes,), "float32")
        for t in T.parallel(THREADS):
            acc = T.alloc_buffer((chains, lanes), "float32", scope="global")
            for a in T.unroll(chains):
                acc[a, T.Ramp(0, 1, lanes)] = T.Broadcast(T.Cast("float32", a) * T.float32(1e-3), lanes)
            for _ in range(n):
                for a in T.unroll(chains):
                    acc[a, T.Ramp(0, 1, lanes)] = acc[a, T.Ramp(0, 1, lanes)] * T.Broadcast(T.float32(0.9999), lanes) + T.Broadcast(T.float32(1e-4), lanes)
            for a in T.unroll(chains - 1):
                acc[0, T.Ramp(0, 1, lanes)] = acc[0, T.Ramp(0, 1, lanes)] + acc[a + 1, T.Ramp(0, 1, lanes)]
            out[T.Ramp(t * lanes, 1, lanes)] = acc[0, T.Ramp(0, 1, lanes)]

    return fma


def _stream_kernel(lanes: int):
    @T.prim_func
    def stream(x_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(x_h, (n,), "float32")
        out = T.match_buffer(out_h, (THREADS * lanes,), "float32")
        for t in T.parallel(THREADS):
            acc = T.alloc_buffer((4, lanes), "float32", scope="global")
            for a in T.unroll(4):
                acc[a, T.Ramp(0, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
            per = T.Bind(n // (THREADS * 4 * lanes))
            for c in range(per):
                for a in T.unroll(4):
                    acc[a, T.Ramp(0, 1, lanes)] = acc[a, T.Ramp(0, 1, lanes)] + x[T.Ramp((t * per + c) * 4 * lanes + a * lanes, 1, lanes)]
            out[T.Ramp(t * lanes, 1, lanes)] = acc[0, T.Ramp(0, 1, lanes)] + acc[1, T.Ramp(0, 1, lanes)] + acc[2, T.Ramp(0, 1, lanes)] + acc[3, T.Ramp(0, 1, lanes)]

    return stream


def machine_peaks(repeat: int = 7) -> tuple[float, float]:
    """(FMA peak GFLOP/s, stream read GB/s) with THREADS threads, best of `repeat`."""
    with TARGET:
        isa = current_isa()
    lanes = isa.lanes()
    chains = 10 if isa.registers <= 16 else 16  # FMA latency x pipes, within the register file
    fma = _prim(_fma_kernel(lanes, chains))
    out = tvm.runtime.empty((THREADS * lanes,), "float32", DEV)
    n = 100_000_000 // (lanes * chains)  # ~20 ms per thread
    for _ in range(25):  # ~0.5 s of FMAs first: a cold start (clock ramp, idle threads) measured 35 % low
        fma(out, n)
    ms = best_ms(lambda: fma(out, n), repeat)
    gflops = 2 * THREADS * n * chains * lanes / ms / 1e6
    x = tvm.runtime.tensor(np.ones(64 << 20, "float32"))
    stream = _prim(_stream_kernel(lanes))
    ms = best_ms(lambda: stream(x, out), repeat)
    return gflops, x.numpy().nbytes / ms / 1e6


# ----------------------------------------------------------------------------- one length
def interleaved_ms(fns: dict, repeat: int) -> dict:
    """Best wall time (ms) of each callable, timed in rounds (every callable once per round) so a
    burst of load on this shared machine hits all of them alike."""
    import time

    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return best


def bench(tokens: int, keep: float, k_min: int, repeat: int, dense_max: int):
    """{row: (ms, flops or None, bytes or None)} and the kept share of visible keys."""
    spec = AttentionSpec(**{**DEFAULT_SPEC.__dict__, "q_len": tokens})
    block = spec.block()
    inputs = _inputs(spec, seed=0)
    q, k, v = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in inputs)
    h, hkv, d = block.num_heads, block.num_kv_heads, block.head_dim
    fns, work = {}, {}  # row -> callable, row -> (flops, bytes)
    causal_pairs = h * tokens * (tokens + 1) / 2  # visible (query, key) pairs

    try:
        import torch

        torch.set_num_threads(THREADS)
        pq, pk, pv = (torch.from_numpy(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fns[PEER] = lambda: sdpa(pq, pk, pv, is_causal=True, enable_gqa=True)
        work[PEER] = (4 * causal_pairs * d, None)
    except ImportError:
        print("torch not installed: pip install -e '.[bench]' for the PyTorch SDPA row")

    dense_ms = None
    if tokens <= dense_max:
        ex = tvm.compile(attention_module(spec), target=TARGET, relax_pipeline=lowering())
        vm = relax.VirtualMachine(ex, DEV)
        args = [tvm.runtime.tensor(x) for x in inputs]
        dense_ms = best_ms(lambda: vm["main"](*args), max(1, repeat // 3))  # slow: not in the rounds

    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), DEV)  # noqa: E731
    qs, ks = reference.absmax_scale(q), reference.absmax_scale(k)
    quant_q = _prim(cpu.schedule_quantize(quantize.quantize(q.shape, "float32")))
    quant_k = _prim(cpu.schedule_quantize(quantize.quantize(k.shape, "float32", transpose=True)))
    q8, k8t = tvm.runtime.empty(q.shape, "int8", DEV), tvm.runtime.empty((1, hkv, d, tokens), "int8", DEV)
    tq, tk, tv, tqs, tks = t(q), t(k), t(v), t(qs), t(ks)
    fns["quantize Q,K (int8)"] = lambda: (quant_q(tq, tqs, q8), quant_k(tk, tks, k8t))
    work["quantize Q,K (int8)"] = (None, None)
    top = max_keep_count(keep, tokens, k_min)
    ratios, ratios_g = t(np.full(h, keep)), t(np.full(hkv, keep))
    out = tvm.runtime.empty(q.shape, "float32", DEV)
    kept = {}
    for dtype in ("int32", "int16"):
        pilot_fn = _prim(cpu.schedule_pilot(pilot.pilot_scores(block, q.shape, tokens, out_dtype=dtype)))
        scores = tvm.runtime.empty((1, h, tokens, tokens), dtype, DEV)
        pilot_fn(q8, k8t, scores)
        fns[f"pilot Q·Kᵀ int8 -> {dtype}"] = (lambda f, s: lambda: f(q8, k8t, s))(pilot_fn, scores)
        work[f"pilot Q·Kᵀ int8 -> {dtype}"] = (2 * causal_pairs * d, None)
        topk_fn = _prim(topk.topk_indices(block, k_min, score_dtype=dtype))
        idx = tvm.runtime.empty((1, h, tokens, top), "int32", DEV)
        topk_fn(scores, ratios, idx)
        kept[dtype] = int((idx.numpy() >= 0).sum())
        fns[f"top-k ({dtype} scores)"] = (lambda f, s, i: lambda: f(s, ratios, i))(topk_fn, scores, idx)
        work[f"top-k ({dtype} scores)"] = (None, causal_pairs * np.dtype(dtype).itemsize)
        # group mode: one selection per KV head and query row, shared by the group's heads
        group_topk = _prim(topk_group.topk_group_indices(block, k_min, score_dtype=dtype))
        gidx = tvm.runtime.empty((1, hkv, tokens, top), "int32", DEV)
        group_topk(scores, ratios_g, tqs, tks, gidx)
        fns[f"group top-k ({dtype} scores)"] = (lambda f, s, i: lambda: f(s, ratios_g, tqs, tks, i))(group_topk, scores, gidx)
        work[f"group top-k ({dtype} scores)"] = (None, causal_pairs * np.dtype(dtype).itemsize)
        if dtype == "int32":
            sparse_fn = _prim(sparse_attention.sparse_attention(block, q.shape, tokens, d, top))
            fns["sparse attention"] = (lambda i: lambda: sparse_fn(tq, tk, tv, i, out))(idx)
            work["sparse attention"] = (4 * kept[dtype] * d, None)
            group_sparse = _prim(sparse_attention.sparse_attention_group(block, q.shape, tokens, d, top))
            fns["group sparse attention"] = (lambda i: lambda: group_sparse(tq, tk, tv, i, out))(gidx)
            work["group sparse attention"] = (4 * int((gidx.numpy() >= 0).sum()) * block.group * d, None)
    rows = {name: (ms,) + work[name] for name, ms in interleaved_ms(fns, repeat).items()}
    if dense_ms is not None:
        rows["TVM dense (sat.lowering schedules)"] = (dense_ms, 4 * causal_pairs * d, None)
    return rows, kept["int32"] / causal_pairs


def _set_threads(threads: int):
    global THREADS
    THREADS = threads
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts (first kernel)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--k-min", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7, help="timing rounds (best of)")
    parser.add_argument("--dense-max", type=int, default=2048,
                        help="skip TVM dense beyond this length (it is slow)")
    parser.add_argument("--runs", type=int, default=1,
                        help="measure everything this many times; a last table gives each run's lane ratios")
    parser.add_argument("--threads", type=int, default=THREADS, help="TVM and PyTorch threads (default: "
                        "TVM_NUM_THREADS, else 2); set before any kernel runs")
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    peak_gflops, peak_gbs = machine_peaks()
    with TARGET:
        isa = current_isa()
    load = os.getloadavg()
    print(f"host {TARGET}, {isa.name} ({isa.lanes()} float32 lanes), {THREADS} threads; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"peaks (TVM kernels, this run): FMA {peak_gflops:.1f} GFLOP/s, stream read {peak_gbs:.1f} GB/s")
    lanes = {
        "top-k + sparse, int32 scores": ("top-k (int32 scores)", "sparse attention"),
        "top-k + sparse, int16 scores": ("top-k (int16 scores)", "sparse attention"),
        "group top-k + group sparse": ("group top-k (int32 scores)", "group sparse attention"),
        "group, int16 scores": ("group top-k (int16 scores)", "group sparse attention"),
    }
    ratios = {}  # (tokens, lane) -> vs SDPA, one per run
    for run in range(args.runs):
        if args.runs > 1:
            print(f"\n=== run {run + 1} of {args.runs} ===")
        for tokens in args.tokens:
            rows, kept = bench(tokens, args.keep, args.k_min, args.repeat, args.dense_max)
            peer = rows.get(PEER, (None,))[0]
            for name, parts in lanes.items():
                rows[name] = (sum(rows[p][0] for p in parts), None, None)
            print(f"\n{tokens} tokens, keep {args.keep} (kept {100 * kept:.1f} % of visible keys), {THREADS} threads, "
                  f"host CPU, load {os.getloadavg()[0]:.2f}")
            print(f"{'kernel':36s} {'ms':>9s} {'GFLOP/s':>8s} {'% FMA':>6s} {'GB/s':>6s} {'% BW':>5s} {'vs SDPA':>8s}")
            for name, (ms, flops, nbytes) in rows.items():
                gf = f"{flops / ms / 1e6:8.1f} {100 * flops / ms / 1e6 / peak_gflops:5.0f}%" if flops else f"{'-':>8s} {'-':>6s}"
                bw = f"{nbytes / ms / 1e6:6.1f} {100 * nbytes / ms / 1e6 / peak_gbs:4.0f}%" if nbytes else f"{'-':>6s} {'-':>5s}"
                ratio = f"{ms / peer:7.2f}x" if peer else f"{'-':>8s}"
                print(f"{name:36s} {ms:9.2f} {gf} {bw} {ratio}")
                if peer:
                    ratios.setdefault((tokens, name), []).append(ms / peer)
    if args.runs > 1 and ratios:
        print(f"\nvs SDPA in each of the {args.runs} runs (lanes: top-k + sparse)")
        print(f"{'tokens':>6s} {'lane':36s} " + " ".join(f"{'run ' + str(r + 1):>6s}" for r in range(args.runs))
              + f" {'median':>7s} {'worst':>6s}")
        for (tokens, name), values in ratios.items():
            if name in lanes:
                print(f"{tokens:6d} {name:36s} " + " ".join(f"{v:5.2f}x" for v in values)
                      + f" {np.median(values):6.2f}x {max(values):5.2f}x")


if __name__ == "__main__":
    main()
