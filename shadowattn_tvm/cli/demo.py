"""`shadowattn demo`: the embedded default, end to end, on this machine."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="compile, verify and time the embedded default attention block",
                       description="Compile a Qwen2-0.5B-shaped attention block with the shadowAttn pass set, "
                                   "check it against numpy and dense attention, and time it on this host.")
    p.add_argument("--tokens", type=int, default=1024, help="prefill length (default 1024)")
    p.add_argument("--keep", type=float, default=0.2, help="fraction of keys kept per row (default 0.2)")
    p.add_argument("--k-min", type=int, default=16, help="minimum keys kept per row (default 16)")
    p.add_argument("--repeat", type=int, default=3, help="timing repetitions, best of (default 3)")
    p.add_argument("--report", metavar="FILE", help="also write the detection report as JSON")
    p.add_argument("--trace", metavar="FILE",
                   help="also run the two-lane NPU/CPU head pipeline and write a Chrome trace (Perfetto)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..calibrate.profile import check_keep
    from ..demo import run_demo

    if args.tokens < 1:
        raise SystemExit(f"--tokens must be >= 1, got {args.tokens}")
    check_keep(args.keep)
    result = run_demo(tokens=args.tokens, keep=args.keep, k_min=args.k_min, repeat=args.repeat)
    print(result.report.table())
    print()
    print(result.table())
    if args.report:
        result.report.save(args.report)
    if args.trace:
        from ..npu.demo import run_pipelined_demo

        print()
        print(run_pipelined_demo(tokens=args.tokens, keep=args.keep, k_min=args.k_min, repeat=args.repeat,
                                 trace=args.trace).table())
    return 0
