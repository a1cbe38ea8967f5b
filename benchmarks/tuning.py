"""Untuned vs tuned on the host: what `shadowattn compile` builds without and with ``tune_logs/host``.

    python benchmarks/tuning.py [--tune-logs tune_logs/host] [--tokens 1024] [--keep 0.2]

All numbers are measured in this run, side by side, on this machine (2 TVM threads):

* per tuned kernel of the default model: the kernel compile ships without a database (the
  hand-written sparse attention, or the default CPU schedule) vs the kernel scheduled by its best
  record; for the sparse attention also the generic TE kernel under its default schedule
  (`targets.cpu_kernels`), i.e. what MetaSchedule starts from;
* the default model's prefill (one call of ``main``) built by `compile_model` without the
  database, with it (records used only where they beat the measured shipped baseline, as compile
  does), and with every record forced in (baselines ignored), each with its ratio to untuned.

The database must come from ``shadowattn tune default --device host --tokens T --keep K``.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

from tvm import relax  # noqa: E402

from shadowattn_tvm._compat import meta_schedule, tvm  # noqa: E402
from shadowattn_tvm.builder.models import get_model, make_inputs  # noqa: E402
from shadowattn_tvm.builder.options import BuildOptions  # noqa: E402
from shadowattn_tvm.demo import best_ms  # noqa: E402
from shadowattn_tvm.targets import cpu_kernels as cpu  # noqa: E402
from shadowattn_tvm.tuning.driver import SPARSE_TASK, _arrays  # noqa: E402
from shadowattn_tvm.tuning.database import TuningDatabase  # noqa: E402
from shadowattn_tvm.tuning.tasks import model_tasks  # noqa: E402
from shadowattn_tvm.targets import get as get_device  # noqa: E402

DEVICE = get_device("host")


def _kernel(func, like, index_bound: int):
    """A call of `func` (compiled for the host) on arrays shaped like `like`'s static arguments."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=DEVICE.cpu).mod
    infos = meta_schedule().arg_info.ArgInfo.from_prim_func(like)
    args = [tvm.runtime.tensor(a) for a in next(_arrays(infos, index_bound, 1))]
    run = lib["main"]
    return lambda: run(*args)


def _interleaved(runs: dict, repeat: int) -> dict:
    """Best ms of each call over `repeat` interleaved rounds: load from other jobs hits every variant alike."""
    timings = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            timings[name] = min(timings[name], best_ms(run, 1))
    return timings


def kernel_rows(database: TuningDatabase, tokens: int, keep: float, k_min: int, repeat: int) -> list[tuple]:
    rows = []
    for task in model_tasks("default", tokens, keep, k_min, DEVICE.cpu):
        tuned = database.scheduled(task.func, DEVICE.cpu)
        if tuned is None:
            continue
        runs = {"shipped": _kernel(task.shipped, task.func, task.index_bound),
                "tuned": _kernel(tuned, task.func, task.index_bound)}
        if task.name == SPARSE_TASK:
            runs["generic"] = _kernel(cpu.schedule_sparse_attention(task.func), task.func, task.index_bound)
        ms = _interleaved(runs, repeat)
        used = "tuned" if database.choice(task.name, task.func).use_tuned else "shipped"
        if task.name == SPARSE_TASK:
            rows.append((f"{task.name}: generic TE, default schedule", ms["generic"], ms["tuned"], ""))
        rows.append((f"{task.name}: shipped kernel", ms["shipped"], ms["tuned"], f"compile uses {used}"))
    return rows


def prefill_rows(database: TuningDatabase, tokens: int, keep: float, k_min: int, repeat: int) -> list[tuple]:
    built = get_model("default", tokens)
    inputs = [tvm.runtime.tensor(x) for x in make_inputs(built.inputs, seed=0)]
    forced = TuningDatabase(database.work_dir)
    forced.baselines = {}  # every record used, whether or not it beats the shipped kernel
    runs = {}
    for name, db in (("untuned", None), ("tuned", database), ("forced", forced)):
        pipeline = BuildOptions(keep=keep, k_min=k_min).relax_pipeline(db)  # what compile_model runs
        vm = relax.VirtualMachine(tvm.compile(built.mod, target=DEVICE.cpu, relax_pipeline=pipeline), tvm.cpu())
        runs[name] = (lambda f: lambda: f(*inputs))(vm["main"])
    timings = _interleaved(runs, repeat)
    return [
        ("default model prefill: compile with the database", timings["untuned"], timings["tuned"],
         "records used where they beat the baseline"),
        ("default model prefill: every record forced in", timings["untuned"], timings["forced"],
         "baselines ignored"),
    ]


def table(rows: list[tuple], tokens: int, work_dir) -> str:
    head = f"tuned vs untuned, host CPU, default model at {tokens} tokens, database {work_dir}"
    lines = [head, "-" * len(head), f"{'':58} {'untuned ms':>11} {'tuned ms':>10} {'ratio':>7}"]
    for name, untuned, tuned, note in rows:
        lines.append(f"{name:58} {untuned:11.3f} {tuned:10.3f} {untuned / tuned:6.2f}x  {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune-logs", default="tune_logs/host", help="MetaSchedule database (default tune_logs/host)")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--k-min", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per row (best is reported)")
    args = parser.parse_args(argv)
    database = TuningDatabase(args.tune_logs)
    rows = kernel_rows(database, args.tokens, args.keep, args.k_min, args.repeat)
    if not rows:
        raise SystemExit(f"{args.tune_logs} has no record for the default model at {args.tokens} tokens, keep "
                         f"{args.keep}: run `shadowattn tune default --device host --tokens {args.tokens} "
                         f"--keep {args.keep}` first")
    rows += prefill_rows(database, args.tokens, args.keep, args.k_min, args.repeat)
    print(table(rows, args.tokens, args.tune_logs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
