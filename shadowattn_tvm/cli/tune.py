"""`shadowattn tune [MODEL] --device NAME --trials N [--rpc-tracker HOST:PORT --rpc-key KEY]`."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="tune the shadowAttn kernels with MetaSchedule into tune_logs/<device>/",
                       description="Run MetaSchedule (XGBoost cost model) over the kernels of MODEL as compiled "
                                   "(sparse attention in its tunable form, matmuls, other legalized ops; N trials "
                                   "in all) and append the records to DIR (default tune_logs/<device>/, MetaSchedule's JSON "
                                   "database layout; re-running resumes). Host kernels are measured here; a phone's "
                                   "through an RPC tracker (e.g. the emulated phone). The kernels compile ships "
                                   "without a database are measured too (shipped_baseline.json): `shadowattn "
                                   "compile` uses a record only where it beats them.")
    p.add_argument("model", nargs="?", default="default", help="model whose kernels to tune: 'default' (the embedded "
                                                                 "attention block, the default), 'smollm2', a .gguf or "
                                                                 "an .onnx file")
    p.add_argument("--device", required=True, help="device profile name or JSON path")
    p.add_argument("--trials", type=int, default=64, help="measured trials, spread over the kernels (default 64)")
    p.add_argument("--tokens", type=int, default=1024, help="static prefill length (default 1024)")
    p.add_argument("--keep", type=float, default=0.2, help="keep ratio: sets the top-k of the kernel (default 0.2)")
    p.add_argument("--k-min", type=int, default=16, help="minimum keys kept per row (default 16)")
    p.add_argument("--task", action="append", metavar="NAME",
                   help="tune only this kernel (repeatable; default: all tunable kernels of MODEL)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on a device from this tracker")
    p.add_argument("--rpc-key", metavar="KEY", help="device key (default: the device profile's rpc_key)")
    p.add_argument("-o", "--work-dir", metavar="DIR", help="database directory (default tune_logs/<device>)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..runtime.rpc_session import Endpoint, RPCUnavailable, check_available, parse_address
    from ..tuning.driver import compare_on_host, tune
    from ..targets import get as get_device
    from ._checks import writable_dir

    writable_dir("-o", args.work_dir)
    try:
        if args.trials < 1:
            raise ValueError("--trials must be >= 1")
        device = get_device(args.device)
        endpoint = None
        if args.rpc_tracker:
            endpoint = Endpoint(*parse_address(args.rpc_tracker, "--rpc-tracker"), args.rpc_key or device.rpc_key)
            check_available(endpoint)
        result = tune(device, model=args.model, tasks=args.task, trials=args.trials, tokens=args.tokens, keep=args.keep, k_min=args.k_min,
                      work_dir=args.work_dir, endpoint=endpoint)
    except (ValueError, RPCUnavailable) as err:
        raise SystemExit(f"shadowattn tune: error: {err}") from None
    for task, best in result.best_ms.items():
        shipped = result.shipped_ms.get(task)
        shipped = f", shipped kernel {shipped:.3f} ms" if shipped is not None else ""
        print(f"{task}: best record {best:.3f} ms{shipped}" if best is not None
              else f"{task}: no valid record yet{shipped}")
    print(f"{result.records} records in {result.work_dir} ({result.seconds:.0f} s)")
    if endpoint is None and not device.is_cross:
        for row in compare_on_host(result.work_dir, model=args.model, tokens=args.tokens, keep=args.keep,
                                   k_min=args.k_min):
            print(f"host, measured side by side: {row['task']}: shipped {row['shipped_ms']:.3f} ms, tuned "
                  f"{row['tuned_ms']:.3f} ms ({row['speedup']:.2f}x)")
    return 0
