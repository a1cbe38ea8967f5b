"""SmolLM2-135M prefill: ONNX Runtime (CPU) vs TVM dense vs TVM shadowAttn, timed in one run.

    pip install -e '.[bench]' && python benchmarks/smollm2_prefill.py [--tokens 512 2048] [--keep 0.2]

The peer: transformers loads the embedded SmolLM2-135M-Instruct GGUF (dequantised to fp32) and
``torch.onnx.export(dynamo=True, opset 18)`` writes a static-length ``input_ids -> logits`` model,
cached under ``$SHADOWATTN_CACHE/bench/smollm2-onnx/``; ONNX Runtime runs it on the CPU execution
provider with all graph optimisations and 2 intra-op threads. Ours: the same GGUF through our
model source (`frontend.model.ModelRunner`), compiled with ``sat.lowering()`` (dense, default CPU schedules)
and with ``sat.pipeline(keep=...)`` (shadowAttn, dynamic int8 scales, no profile), 2 TVM threads.
Every engine sees the same token ids; the table also reports top-1 agreement of the logits
with ONNX Runtime's, so a fast wrong answer shows. These are host CPU numbers, not phone numbers.

A second table splits each TVM engine's prefill into attention and the rest (one extra run with
the VM's instrument timing every kernel call): attention is every kernel that reads or writes an
[.., n, n] tensor (the mask, Q.K^T, softmax, P.V of the dense program) or that the shadowAttn
passes add (``sat_*``: pilot, top-k, sparse attention, scales). The rest (projections, MLP,
norms, RoPE, lm_head) is the same in both programs: it bounds what sparse attention can save.

``--cpu-time`` adds a third table, measured in a child process with one thread per engine: the
CPU time of the calling thread (ONNX Runtime and TVM both run on it with one thread), which other
processes on a shared host barely change, unlike wall-clock times with two threads.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

THREADS = 2
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402

import shadowattn_tvm as sat  # noqa: E402
from shadowattn_tvm.frontend import smollm2_gguf  # noqa: E402
from shadowattn_tvm.frontend.model import ModelRunner, runner_for  # noqa: E402
from shadowattn_tvm.passes.lowering import KERNEL_PREFIX  # noqa: E402
from shadowattn_tvm.targets import get as get_device  # noqa: E402
from shadowattn_tvm.settings import cache_dir  # noqa: E402


def _versions() -> dict:
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__}


def export_onnx(seq_len: int, attn: str = "sdpa") -> Path:
    """SmolLM2 as a static-length ONNX model (exported once per length and library versions)."""
    import torch
    from transformers import AutoModelForCausalLM

    v = _versions()
    root = cache_dir() / "bench" / "smollm2-onnx" / f"n{seq_len}-{attn}-torch{v['torch']}-tf{v['transformers']}"
    if (root / "model.onnx").exists():
        return root / "model.onnx"
    part = root.with_name(root.name + ".part")  # exported here, renamed when complete
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    gguf = smollm2_gguf()
    torch.set_num_threads(THREADS)
    print(f"  exporting SmolLM2 ({seq_len} tokens, {attn} attention) to ONNX, once ...", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                     attn_implementation=attn).eval()

        class Logits(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                return self.m(input_ids=input_ids, use_cache=False).logits

        ids = torch.zeros((1, seq_len), dtype=torch.int64)
        torch.onnx.export(Logits(model).eval(), (ids,), str(part / "model.onnx"), dynamo=True, opset_version=18,
                          input_names=["input_ids"], output_names=["logits"], external_data=True)
    os.replace(part, root)
    return root / "model.onnx"


def _ort_session(path: Path, threads: int = THREADS):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda ids: session.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64)})[0][0]


def _token_ids(runner: ModelRunner, seq_len: int) -> tuple[np.ndarray, str]:
    """BOS + Pride and Prejudice (real text keeps top-1 agreement meaningful); random ids if unavailable."""
    try:
        from shadowattn_tvm.evaluation.corpus import austen

        ids = runner.tokenizer.encode(austen("prideprejudice")[:20 * seq_len])[: seq_len - 1]
        source = "Pride and Prejudice"
    except Exception as err:  # noqa: BLE001 - the corpus is optional here: speed does not depend on it
        print(f"  (no corpus: {err}; using random token ids)")
        ids, source = np.random.default_rng(0).integers(0, runner.tokenizer.vocab_size, seq_len - 1), "random ids"
    return np.array([runner.tokenizer.bos_id, *ids], np.int32), source


def _compile(runner: ModelRunner, seq_len: int, pipeline):
    """(forward(ids) -> logits, profile(ids) -> {kernel: [ms, calls, is_attention]}) for one TVM build."""
    import tvm_ffi

    forward = runner.compile(seq_len, pipeline, target=get_device("host").cpu)

    def profile(ids) -> dict:
        kernels, starts = {}, []

        def instrument(func, symbol, before, _ret, *args):
            if before:
                starts.append(time.perf_counter())
                return 0
            elapsed = (time.perf_counter() - starts.pop()) * 1e3
            if not isinstance(func, tvm_ffi.Function) or symbol.startswith("vm.builtin"):
                return 0  # a Relax function (a closure: its kernels are counted) or VM bookkeeping
            square = any(tuple(getattr(a, "shape", ()))[-2:] == (seq_len, seq_len) for a in args)
            entry = kernels.setdefault(symbol, [0.0, 0, symbol.startswith(KERNEL_PREFIX) or square])
            entry[0] += elapsed
            entry[1] += 1
            return 0

        forward.vm.set_instrument(instrument)
        try:
            forward(ids)
        finally:
            forward.vm.set_instrument(None)
        return kernels

    return forward, profile


def bench(seq_len: int, keep: float, repeat: int, runner: ModelRunner) -> list[dict]:
    """Build the three engines, then time them round-robin (shared-host load hits all alike)."""
    ids, source = _token_ids(runner, seq_len)
    engines, profilers = [], []  # (name, forward, setup seconds); per TVM engine: profile(ids)
    start = time.perf_counter()
    engines.append((f"ONNX Runtime {_versions()['onnxruntime']} (CPU EP)", _ort_session(export_onnx(seq_len)),
                    time.perf_counter() - start))
    report = sat.AttentionReport()
    for name, pipeline in (("TVM dense (sat.lowering)", sat.lowering()),
                           (f"TVM shadowAttn (keep {keep})", sat.pipeline(keep=keep, report=report))):
        start = time.perf_counter()
        forward, profile = _compile(runner, seq_len, pipeline)
        engines.append((name, forward, time.perf_counter() - start))
        profilers.append(profile)
    if len(report.rewritten) < len(report.candidates):  # a block left dense times dense attention
        print(f"  WARNING: shadowAttn rewrote {len(report.rewritten)} of {len(report.candidates)} attention blocks: "
              + "; ".join(sorted({c.reason for c in report.candidates if c.status != "rewritten"}))[:300])
    engines[-1] = (f"{engines[-1][0]}, {len(report.rewritten)}/{len(report.candidates)} sparse", *engines[-1][1:])
    logits = [fn(ids) for _, fn, _ in engines]  # warm-up, and the outputs compared below
    times = [[] for _ in engines]
    for _ in range(repeat):
        for i, (_, fn, _) in enumerate(engines):
            t0 = time.perf_counter()
            fn(ids)
            times[i].append((time.perf_counter() - t0) * 1e3)
    load = os.getloadavg()[0]
    split = [_attention_split(profile(ids)) for profile in profilers]
    ort_ms, dense_ms = statistics.median(times[0]), statistics.median(times[1])
    top = [x.argmax(-1) for x in logits]
    rows = []
    for i, (name, _, setup) in enumerate(engines):
        med = statistics.median(times[i])
        rows.append({"tokens": seq_len, "engine": name, "text": source, "median_ms": med, "best_ms": min(times[i]),
                     "times_ms": times[i], "setup_s": setup, "speedup_vs_ort": ort_ms / med,
                     "speedup_vs_tvm_dense": dense_ms / med, "top1_vs_ort": float((top[i] == top[0]).mean()),
                     "top1_vs_tvm_dense": float((top[i] == top[1]).mean()),
                     "max_abs_vs_ort": float(np.abs(logits[i] - logits[0]).max()), "load_avg_1min": load,
                     **({"kernels_ms": split[i - 1][0], "attention_ms": split[i - 1][1]} if i else {})})
        print(f"  {name}: median {med:.0f} ms (setup {setup:.0f} s)", flush=True)
    return rows


def _attention_split(kernels: dict) -> tuple[float, float]:
    """(all kernels ms, attention kernels ms) of one instrumented forward."""
    return sum(v[0] for v in kernels.values()), sum(v[0] for v in kernels.values() if v[2])


def _format(head, body) -> str:
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
             for x in [head, *body]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def table(rows) -> str:
    head = ("tokens", "engine", "median ms", "best ms", "vs ORT", "vs TVM dense", "top-1 = ORT", "max |Δlogit|",
            "setup s", "load")
    body = [(str(r["tokens"]), r["engine"], f"{r['median_ms']:.0f}", f"{r['best_ms']:.0f}",
             f"{r['speedup_vs_ort']:.2f}×", f"{r['speedup_vs_tvm_dense']:.2f}×", f"{100 * r['top1_vs_ort']:.1f}%",
             f"{r['max_abs_vs_ort']:.2g}", f"{r['setup_s']:.0f}", f"{r['load_avg_1min']:.1f}") for r in rows]
    return _format(head, body)


def attention_table(rows) -> str:
    """Attention vs the rest per TVM engine, and what attention costing nothing would give."""
    head = ("tokens", "engine", "kernels ms", "attention ms", "attention %", "rest ms", "prefill if attention free",
            "max speed-up")
    body = []
    for r in rows:
        if "kernels_ms" not in r:
            continue
        total, attention = r["kernels_ms"], r["attention_ms"]
        rest_share = (total - attention) / total
        body.append((str(r["tokens"]), r["engine"], f"{total:.0f}", f"{attention:.0f}",
                     f"{100 * attention / total:.1f}%", f"{total - attention:.0f}",
                     f"{r['median_ms'] * rest_share:.0f} ms", f"{1 / rest_share:.2f}×"))
    return _format(head, body)


def cpu_time_rows(tokens: list, keep: float, repeat: int, runner: ModelRunner) -> list[dict]:
    """One thread per engine (TVM_NUM_THREADS=1 in this process), best thread CPU time of `repeat`."""
    rows = []
    for n in tokens:
        ids, _ = _token_ids(runner, n)
        engines = {"ONNX Runtime (1 thread)": _ort_session(export_onnx(n), threads=1)}
        for name, pipeline in (("TVM dense", sat.lowering()), (f"TVM shadowAttn (keep {keep})", sat.pipeline(keep=keep))):
            engines[name] = _compile(runner, n, pipeline)[0]
        best = {}
        for name, fn in engines.items():
            fn(ids)  # warm-up
            best[name] = float("inf")
        for _ in range(repeat):
            for name, fn in engines.items():
                t0 = time.thread_time()
                fn(ids)
                best[name] = min(best[name], (time.thread_time() - t0) * 1e3)
        ort_ms = next(iter(best.values()))
        rows += [{"tokens": n, "engine": name, "cpu_ms": ms, "speedup_vs_ort": ort_ms / ms, "load_avg_1min": os.getloadavg()[0]}
                 for name, ms in best.items()]
    return rows


def cpu_time_table(rows) -> str:
    head = ("tokens", "engine", "CPU ms (1 thread)", "vs ORT", "load")
    return _format(head, [(str(r["tokens"]), r["engine"], f"{r['cpu_ms']:.0f}", f"{r['speedup_vs_ort']:.2f}×",
                           f"{r['load_avg_1min']:.1f}") for r in rows])


def _cpu_time_child(args) -> list[dict]:
    env = dict(os.environ, TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--cpu-time-child", "--keep", str(args.keep), "--repeat", str(args.repeat),
           "--tokens", *map(str, args.tokens)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048], help="prefill lengths")
    parser.add_argument("--keep", type=float, default=0.2, help="shadowAttn keep ratio")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per engine after one warm-up, their "
                        "median in the table (with 3, one slow run on a shared VM could move it by 20 %%)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--cpu-time", action="store_true", help="also time one-thread engines by thread CPU time")
    parser.add_argument("--cpu-time-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runner = runner_for("smollm2")
    if args.cpu_time_child:  # the parent set one thread for TVM and reads the last line
        print(json.dumps(cpu_time_rows(args.tokens, args.keep, args.repeat, runner)))
        return 0
    rows, load = [], [os.getloadavg()[0]]
    for n in args.tokens:
        print(f"prefill {n} tokens", flush=True)
        rows += bench(n, args.keep, args.repeat, runner)
        load.append(os.getloadavg()[0])
    print(f"\nSmolLM2-135M-Instruct prefill, fp32, batch 1, {rows[0]['text']}; host CPU, {os.cpu_count()} cores "
          f"visible, {THREADS} threads per engine, 1-min load average {min(load):.1f}-{max(load):.1f} during the run; "
          f"engines timed round-robin, median of {args.repeat}; speed-ups ×, > 1 = faster. Host numbers, not phone numbers.")
    print(table(rows))
    print("\nWhere the TVM prefill goes (one instrumented run per engine; attention = kernels on an [.., n, n] "
          "tensor or added by shadowAttn; 'if attention free' scales the median by the rest's share):")
    print(attention_table(rows))
    cpu_rows = _cpu_time_child(args) if args.cpu_time else []
    if cpu_rows:
        print(f"\nOne thread per engine, best CPU time of the calling thread over {args.repeat} runs (other "
              "processes' load barely changes it; same token ids):")
        print(cpu_time_table(cpu_rows))
    if args.json:
        args.json.write_text(json.dumps({"versions": _versions(), "threads": THREADS, "load_avg_1min": load,
                                         "rows": rows, "cpu_time_rows": cpu_rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
