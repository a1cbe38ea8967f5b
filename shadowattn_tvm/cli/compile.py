"""`shadowattn compile [MODEL] --device NAME -o DIR`: build a model for a device into a directory."""
from __future__ import annotations


def add_parser(sub) -> None:
    from ..builder.models import DEFAULT_TOKENS

    p = sub.add_parser("compile", help="compile a model for a device into a build directory",
                       description="Compile MODEL with the shadowAttn pass set for a device profile and write the "
                                   "build directory: cpu.so (cross-compiled for phones), npu/ and plan.json (devices with an NPU: the "
                                   "Hexagon graph library every pilot launches), adreno/ (OpenCL C), reference/ (inputs "
                                   "and the host output deploy checks against), report.json, manifest.json. "
                                   "An existing build in DIR is replaced as a whole.")
    p.add_argument("model", nargs="?", default="default",
                   help="'default' (the embedded attention block, the default), 'smollm2' (the embedded model), a "
                        ".gguf file or an .onnx export; a model's weights stay inputs read from its file at deploy")
    p.add_argument("--device", required=True,
                   help="device profile name (host, snapdragon-8gen2, snapdragon-8gen3) or path of a profile JSON")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="build directory to (re)create")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help=f"static prefill length (default {DEFAULT_TOKENS})")
    p.add_argument("--keep", type=float, default=0.2, help="fraction of keys kept per row (default 0.2)")
    p.add_argument("--k-min", type=int, help="minimum keys kept per row (default 16; 64 with --generate, where short "
                                             "chat prompts at 16 keys per row can change the answer)")
    p.add_argument("--profile", metavar="FILE", help="calibration profile JSON (per-head ratios; overrides --keep; smollm2 "
                                                     "defaults to the shipped profile at --keep)")
    tuned = p.add_mutually_exclusive_group()
    tuned.add_argument("--tune-logs", metavar="DIR",
                       help="MetaSchedule database from `shadowattn tune` (default: tune_logs/<device> if it exists); "
                            "its records schedule the kernels where they beat the shipped kernels")
    tuned.add_argument("--no-tune-logs", action="store_true", help="ignore tune_logs/<device>: shipped kernels only")
    p.add_argument("--selection", choices=("head", "group"), default="head",
                   help="top-k per query head (default) or one per KV head shared by its query heads (group: "
                        "fewer gathers; on a phone these blocks' top-k and sparse attention stay on its CPU, not the GPU)")
    p.add_argument("--generate", action="store_true",
                   help="a generation build (smollm2 or a .gguf): prefill of --tokens prompt tokens into a KV cache, "
                        "then a decode step; deploy verifies greedy tokens from a reference prompt")
    p.add_argument("--capacity", type=int, help="--generate: KV cache rows, prompt plus new tokens (default --tokens + 64)")
    p.add_argument("--prompt", help="--generate: the reference prompt deploy verifies (default 'The capital of France is')")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..builder import compile_to_dir
    from ..builder.options import default_tune_logs
    from ..calibrate.profile import SHIPPED_PROFILE, SparsityProfile
    from ..targets import get as get_device
    from ._checks import writable_dir

    writable_dir("-o", args.output, args.model, args.profile, args.tune_logs)
    if (args.capacity is not None or args.prompt is not None) and not args.generate:
        raise ValueError("--capacity and --prompt describe a generation build: add --generate")
    capacity = None
    k_min = args.k_min if args.k_min is not None else (64 if args.generate else 16)
    if args.generate:
        capacity = args.capacity if args.capacity is not None else args.tokens + 64
        if capacity <= args.tokens:
            raise ValueError(f"--capacity {capacity} leaves no room to generate after {args.tokens} prompt tokens")
    profile = SparsityProfile.load(args.profile) if args.profile else None
    if profile is None and args.model == "smollm2":
        profile = SparsityProfile.load(SHIPPED_PROFILE).retarget(args.keep)
    tune_logs = args.tune_logs
    if tune_logs is None and not args.no_tune_logs:
        tune_logs = default_tune_logs(get_device(args.device).name)
    result = compile_to_dir(args.device, args.output, model=args.model, tokens=args.tokens, keep=args.keep,
                            k_min=k_min, profile=profile, tune_logs=tune_logs, capacity=capacity,
                            prompt=args.prompt, selection=args.selection,
                            log=(lambda _msg: None) if args.quiet else print)
    print(result.summary())
    return 0
