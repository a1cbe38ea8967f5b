"""SmolLM2-135M host prefill with phase 5 as it was (no fusion) and as it is (TVM's stages, fused).

    python benchmarks/lowering.py [--tokens 512 2048] [--keep 0.2] [--repeat 5] [--kernels 12]

"before": the lowering up to this change, TVM's CPU stages without AnnotateTIROpPattern,
FoldConstant, FuseOps and FuseTIR (every legalized operator its own kernel, default-scheduled).
"after": ``sat.lowering()`` (`passes/lowering.py`): the same stages with fusion, the shadowAttn
kernels kept whole. Both run the same Relax program (dense, and shadowAttn at ``--keep`` after
``pipeline(lower=False)``), on the same token ids, timed round-robin in one run, 2 TVM threads.
``--kernels N`` also prints the N kernels that take longest in one instrumented run of each fused
build (the VM's instrument times every kernel call): where the prefill time goes. Host numbers,
not phone numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import tvm  # noqa: E402

import shadowattn_tvm as sat  # noqa: E402
from shadowattn_tvm.frontend.model import ModelRunner, runner_for  # noqa: E402
from shadowattn_tvm.passes.lowering import cpu_stages  # noqa: E402
from shadowattn_tvm.targets import get as get_device  # noqa: E402

UNFUSED = {"KeepKernelsWhole", "AnnotateTIROpPattern", "FoldConstant", "FuseOps", "FuseTIR"}


@tvm.transform.module_pass(opt_level=0, name="LoweringBefore")
def lowering_before(mod, _ctx):
    stages = [p for p in cpu_stages(tvm.target.Target.current()) if p.info.name not in UNFUSED]
    return tvm.transform.Sequential(stages)(mod)


def _then(first, second):
    @tvm.transform.module_pass(opt_level=0, name="Then")
    def _both(mod, _ctx):
        return second(first(mod))

    return _both


def kernel_profile(runner: ModelRunner, n: int, lower, ids) -> dict:
    """{kernel: [ms, calls]} of one forward of `runner` compiled with `lower`, every call timed."""
    import tvm_ffi

    forward = runner.compile(n, lower, target=get_device("host").cpu)
    kernels, starts = {}, []

    def instrument(func, symbol, before, _ret, *_args):
        if before:
            starts.append(time.perf_counter())
        elif isinstance(func, tvm_ffi.Function) and not symbol.startswith("vm.builtin"):
            entry = kernels.setdefault(symbol, [0.0, 0])
            entry[0] += (time.perf_counter() - starts.pop()) * 1e3
            entry[1] += 1
        else:
            starts.pop()
        return 0

    forward(ids)  # warm-up
    forward.vm.set_instrument(instrument)
    forward(ids)
    return kernels


def kernel_table(n: int, program: str, kernels: dict, top: int) -> str:
    total = sum(ms for ms, _ in kernels.values())
    lines = [f"{n} tokens, {program}, fused: {total:.0f} ms in kernels"]
    for name, (ms, calls) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {name[:64]:<64}  x{calls:<3d} {ms:8.1f} ms  {100 * ms / total:5.1f}%")
    return "\n".join(lines)


def _ids(runner: ModelRunner, n: int) -> np.ndarray:
    tok = runner.tokenizer
    return np.array([tok.bos_id, *np.random.default_rng(0).integers(0, tok.vocab_size, n - 1)], np.int32)


def bench(runner: ModelRunner, n: int, keep: float, repeat: int) -> list:
    ids = _ids(runner, n)
    variants = []
    for program, front in (("dense", None), (f"shadowAttn {keep}", sat.pipeline(keep=keep, lower=False))):
        for label, lower in (("before (no fusion)", lowering_before), ("after (TVM stages, fused)", sat.lowering())):
            t0 = time.perf_counter()
            fn = runner.compile(n, lower if front is None else _then(front, lower))
            variants.append((program, label, fn, time.perf_counter() - t0))
            print(f"  {program} {label}: compiled in {variants[-1][3]:.0f} s", flush=True)
    outs = [fn(ids) for _, _, fn, _ in variants]
    times = [[] for _ in variants]
    for _ in range(repeat):
        for i, (_, _, fn, _) in enumerate(variants):
            t0 = time.perf_counter()
            fn(ids)
            times[i].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for i, (program, label, _, setup) in enumerate(variants):
        base = i - i % 2  # the "before" of the same program
        rows.append((n, program, label, statistics.median(times[i]), min(times[i]), setup,
                     statistics.median(times[base]) / statistics.median(times[i]),
                     float(np.abs(outs[i] - outs[base]).max())))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kernels", type=int, default=0, help="also print the N slowest kernels of each fused build")
    args = parser.parse_args(argv)
    runner = runner_for("smollm2")
    load, rows = [os.getloadavg()[0]], []
    for n in args.tokens:
        print(f"prefill {n} tokens", flush=True)
        rows += bench(runner, n, args.keep, args.repeat)
        load.append(os.getloadavg()[0])
    print(f"\nSmolLM2-135M prefill on the host ({os.cpu_count()} cores, 2 TVM threads), random token ids, median of "
          f"{args.repeat} round-robin runs; 1-min load average {min(load):.2f}-{max(load):.2f} during the run.")
    head = f"{'tokens':>6}  {'program':<16}  {'lowering':<26}  {'median ms':>9}  {'best ms':>8}  {'compile s':>9}  " \
           f"{'speed-up':>8}  {'max |Δlogit|':>12}"
    print(head + "\n" + "-" * len(head))
    for n, program, label, med, best, setup, speedup, diff in rows:
        print(f"{n:>6}  {program:<16}  {label:<26}  {med:>9.0f}  {best:>8.0f}  {setup:>9.0f}  {speedup:>7.2f}×  {diff:>12.2g}")
    for n in args.tokens if args.kernels else []:
        ids = _ids(runner, n)
        for program, lower in (("dense", sat.lowering()),
                               (f"shadowAttn {args.keep}", _then(sat.pipeline(keep=args.keep, lower=False),
                                                                 sat.lowering()))):
            print("\n" + kernel_table(n, program, kernel_profile(runner, n, lower, ids), args.kernels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
