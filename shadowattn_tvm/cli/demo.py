"""`shadowattn demo [smollm2|block]`: the embedded default, end to end, on this machine."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="compile, verify and time the embedded default model (SmolLM2-135M)",
                       description="Compile the embedded default model, SmolLM2-135M-Instruct (fetched on first use), "
                                   "dense and with the shadowAttn pass set and its per-head profile, run a prefill of "
                                   "Pride and Prejudice, and compare perplexity, next-token distributions and host "
                                   "latency. 'block' instead compiles one Qwen2-0.5B-shaped attention block and checks "
                                   "it against numpy (and can run the two-lane NPU/CPU pipeline with --trace).")
    p.add_argument("model", nargs="?", default="smollm2", help="'smollm2' (default), a .gguf file or an .onnx "
                                                                "export (with --profile), or 'block'")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (or a .gguf) for an .onnx model")
    p.add_argument("--tokens", type=int, help="prefill length (default 512 for a model, 1024 for block)")
    p.add_argument("--keep", type=float, default=0.2, help="global keep ratio (default 0.2)")
    p.add_argument("--profile", help="calibrated profile JSON for a model file (default: the shipped SmolLM2 one)")
    p.add_argument("--k-min", type=int, default=16, help="block: minimum keys kept per row (default 16)")
    p.add_argument("--repeat", type=int, default=2, help="timing repetitions, best of (default 2)")
    p.add_argument("--report", metavar="FILE", help="also write the detection report as JSON")
    p.add_argument("--trace", metavar="FILE",
                   help="block: also run the two-lane NPU/CPU head pipeline and write a Chrome trace (Perfetto)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..calibrate.profile import check_keep
    from ._checks import positive, writable_file

    block = args.model == "block"
    tokens = args.tokens if args.tokens is not None else (1024 if block else 512)
    if tokens < 1:
        raise SystemExit(f"--tokens must be >= 1, got {tokens}")
    check_keep(args.keep)
    positive("--k-min", args.k_min)
    positive("--repeat", args.repeat)
    inputs = (args.model, args.profile, args.tokenizer)
    writable_file("--trace", args.trace, *inputs)
    writable_file("--report", args.report, *inputs)
    if not block and args.trace:
        raise SystemExit("--trace runs the two-lane pipeline on the attention block: "
                         "use `shadowattn demo block --trace FILE`")
    if block and (args.profile or args.tokenizer):
        raise SystemExit("--profile and --tokenizer go with a model: `shadowattn demo block` runs the attention "
                         "block at --keep")
    if block:
        from ..demo import run_demo

        result = run_demo(tokens=tokens, keep=args.keep, k_min=args.k_min, repeat=args.repeat)
    else:
        from ..calibrate.profile import SparsityProfile
        from ..frontend.source import open_model
        from ..model_demo import run_model_demo

        if args.profile is None and args.model != "smollm2":
            open_model(args.model, args.tokenizer)  # an unknown or missing model is named first
            raise SystemExit("--profile is required for models other than smollm2: run `shadowattn calibrate` first")
        profile = SparsityProfile.load(args.profile) if args.profile else None
        result = run_model_demo(args.model, tokens=tokens, keep=args.keep, repeat=args.repeat, profile=profile,
                                tokenizer=args.tokenizer, log=lambda line: print(line, file=sys.stderr))
    print(result.report.table())
    print()
    print(result.table())
    if args.report:
        result.report.save(args.report)
    if args.trace:
        from ..npu.demo import run_pipelined_demo

        print()
        print(run_pipelined_demo(tokens=tokens, keep=args.keep, k_min=args.k_min, repeat=args.repeat,
                                 trace=args.trace).table())
    return 0
